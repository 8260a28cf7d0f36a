"""Frame assembly from RTP payloads: in order, released on the marker bit, gaps seen and healed at a keyframe."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from media.assembler import FrameAssembler, vp8_dimensions, vp8_is_keyframe

KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01"  # VP8 key frame header, 640x480
DELTA = b"\x11\x00\x00"


class Collector:
    def __init__(self, kind: str = "video", max_wait: float = 0.3) -> None:
        self.frames: list[tuple[bytes, int, bool]] = []
        self.losses = 0
        self.assembler = FrameAssembler(kind, self.on_frame, self.on_loss, max_wait=max_wait)

    def on_frame(self, data: bytes, timestamp: int, keyframe: bool, arrival: float) -> None:
        self.frames.append((data, timestamp, keyframe))

    def on_loss(self) -> None:
        self.losses += 1

    def frame(self, first_seq: int, timestamp: int, parts: list[bytes], now: float = 0.0, skip: tuple = ()) -> None:
        for i, part in enumerate(parts):
            seq = (first_seq + i) & 0xFFFF
            if i in skip:
                continue
            self.assembler.push(seq, timestamp, i == len(parts) - 1, i == 0, part, now)


def test_vp8_header_parsing():
    assert vp8_is_keyframe(KEY) and not vp8_is_keyframe(DELTA)
    assert vp8_dimensions(KEY) == (640, 480)
    assert vp8_dimensions(DELTA) is None


def test_frames_are_released_on_their_last_packet_in_order():
    c = Collector()
    c.frame(100, 3000, [KEY, b"a", b"b"])
    assert c.frames == [(KEY + b"ab", 3000, True)]
    c.frame(103, 6000, [DELTA, b"c"])
    assert c.frames[-1] == (DELTA + b"c", 6000, False)


def test_reordered_packets_wait_for_the_missing_one():
    c = Collector()
    c.frame(65534, 3000, [KEY, b"x", b"y"])  # wraps the sequence number
    a = c.assembler
    a.push(1, 6000, False, True, DELTA, 0.0)
    a.push(3, 9000, True, True, DELTA + b"n", 0.0)  # next frame complete, but seq 2 is missing
    assert len(c.frames) == 1
    a.push(2, 6000, True, False, b"late", 0.1)  # retransmission fills the hole
    assert [f[1] for f in c.frames] == [3000, 6000, 9000]
    assert a.gaps == 0


def test_a_hole_not_repaired_in_time_drops_until_the_next_keyframe_and_asks_for_one():
    c = Collector(max_wait=0.2)
    c.frame(10, 3000, [KEY, b"k"])
    losses_at_start = c.losses
    c.frame(12, 6000, [DELTA, b"lost"], now=0.0, skip=(1,))  # second packet never comes
    c.frame(14, 9000, [DELTA], now=0.1)
    assert len(c.frames) == 1
    c.frame(15, 12000, [DELTA], now=0.5)  # past max_wait: give up on seq 13
    assert c.assembler.gaps == 1
    assert c.losses > losses_at_start
    assert len(c.frames) == 1, "frames after a hole must not be forwarded before a keyframe"
    c.frame(16, 15000, [KEY], now=0.6)
    c.frame(17, 18000, [DELTA], now=0.7)
    assert [f[1] for f in c.frames] == [3000, 15000, 18000]


def test_the_stream_starts_at_a_keyframe():
    c = Collector()
    c.frame(5, 3000, [DELTA])
    assert c.frames == [] and c.losses >= 1
    c.frame(6, 6000, [KEY])
    assert c.frames[0][2]


def test_memory_is_bounded_when_a_frame_never_completes():
    c = Collector(max_wait=1000)
    c.frame(0, 0, [KEY])
    for i in range(2000):
        c.assembler.push(2 + i, 100 + i, False, False, b"z" * 10, 0.0)  # never a marker, seq 1 missing
    assert len(c.assembler._pending) <= 512


def test_audio_packets_pass_straight_through_and_late_ones_are_dropped():
    c = Collector("audio")
    for seq, ts in [(1, 960), (2, 1920), (4, 3840), (3, 2880), (5, 4800)]:
        c.assembler.push(seq, ts, True, True, b"opus", 0.0)
    assert [f[1] for f in c.frames] == [960, 1920, 3840, 4800]
    assert c.assembler.late_packets == 1


def test_padding_packets_take_sequence_numbers_without_making_a_gap():
    c = Collector(max_wait=0.1)
    c.frame(1, 3000, [KEY])
    c.assembler.push_padding(2, 0.0)
    c.assembler.push_padding(3, 0.0)
    c.frame(4, 6000, [DELTA, b"x"], now=1.0)
    assert [f[1] for f in c.frames] == [3000, 6000]
    assert c.assembler.gaps == 0


class _Rescanning(FrameAssembler):
    """The assembler without its resumed scans: walks each frame from its start on every packet."""

    def _collect(self, seq: int):  # type: ignore[override]
        self._scan = None
        return super()._collect(seq)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.booleans()), min_size=1, max_size=12),
       st.randoms(use_true_random=False), st.integers(0, 0xFFFF))
def test_resumed_scans_release_exactly_what_rescanning_releases(frames, rng, first_seq):
    """Multi-packet frames, reordered within a few packets, some lost, some duplicated, across the seq wrap."""
    packets = []
    seq, timestamp = first_seq, 0
    for index, (size, key) in enumerate(frames):
        head = KEY if key or index == 0 else DELTA
        for i in range(size):
            packets.append(((seq + i) & 0xFFFF, timestamp, i == size - 1, i == 0,
                            head + bytes([index, i]) if i == 0 else bytes([index, i])))
        seq, timestamp = seq + size, timestamp + 3000
    arrivals = []
    for packet in packets:
        roll = rng.random()
        if roll < 0.05:
            continue  # lost
        arrivals.append(packet)
        if roll > 0.95:
            arrivals.append(packet)  # duplicated (a retransmission that crossed the original)
    for i in range(len(arrivals) - 1):  # reordered: neighbours swap
        if rng.random() < 0.2:
            arrivals[i], arrivals[i + 1] = arrivals[i + 1], arrivals[i]
    results = []
    for kind in (FrameAssembler, _Rescanning):
        got: list = []
        assembler = kind("video", lambda *frame: got.append(frame[:3]), lambda: None, max_wait=0.05)
        for n, packet in enumerate(arrivals):
            assembler.push(*packet, now=n * 0.01)
        results.append((got, assembler.gaps, assembler.dropped_frames))
    assert results[0] == results[1]


def test_a_frame_still_arriving_is_not_a_hole_however_long_it_takes():
    # A key frame paced out over an island link: 150 packets, 20 ms apart (3 s), nothing missing.
    c = Collector(max_wait=0.3)
    parts = [KEY] + [b"p%d" % i for i in range(149)]
    for i, part in enumerate(parts):
        c.assembler.push(1000 + i, 3000, i == len(parts) - 1, i == 0, part, 0.02 * i)
    assert c.frames == [(b"".join(parts), 3000, True)]
    assert c.assembler.gaps == 0
    c.frame(1150, 6000, [DELTA, b"d"], now=3.1)  # and the stream goes on from it
    assert [f[1] for f in c.frames] == [3000, 6000]


def test_a_hole_inside_a_frame_still_arriving_is_a_hole():
    c = Collector(max_wait=0.3)
    c.frame(0, 0, [KEY])
    c.assembler.push(1, 3000, False, True, DELTA, 0.0)
    for i in range(3, 30):  # seq 2 is missing while the rest of the frame keeps coming
        c.assembler.push(i, 3000, False, False, b"x", 0.02 * i)
    assert c.assembler.gaps == 1, "a missing packet with later ones present gives up after max_wait"
