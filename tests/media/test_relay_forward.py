"""Packet-level forwarding policy: numbering, key-frame starts, rejoins, backlog, congestion caps.

The relay is driven with plain packets and a recording link; the real SenderLink is exercised
end to end by the aiortc-peer tests (test_forwarding, test_rejoin, test_late_subscriber).
"""

from __future__ import annotations

import asyncio

from media.bandwidth import UplinkRate
from media.relay import GOP_MAX_FRAMES, SourceRelay

KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" + b"k" * 100
DELTA = b"\x11\x00\x00" + b"d" * 100


class UpstreamFake:
    """Stands in for a receiver tap: counts keyframe requests."""

    def __init__(self) -> None:
        self.plis = 0
        self.rembs_sent = 0
        self.uplink = UplinkRate()
        self.remb_limit = None
        self.upstream_estimate = None
        self.assembler = None

    async def send_pli(self) -> None:
        self.plis += 1

    async def send_remb(self, bitrate: int | None = None) -> None:
        self.rembs_sent += 1


class LinkFake:
    """Stands in for a SenderLink: records what would go out; can be down or backed up."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, int, bytes]] = []
        self.ready = True
        self.backed_up = False
        self.backlog_drops = 0
        self.send_errors = 0
        self.retransmits = 0

    def send(self, seq: int, timestamp: int, marker: int, payload: bytes, wall: float, level: int | None = None) -> int:
        if not self.ready:
            return 0
        if self.backed_up:
            self.backlog_drops += 1
            return -1
        self.sent.append((seq, timestamp, marker, payload))
        return 12 + len(payload)

    @property
    def seqs(self) -> list[int]:
        return [p[0] for p in self.sent]


def make_relay(events: list | None = None) -> tuple[SourceRelay, UpstreamFake]:
    relay = SourceRelay("s", "outlet", "camera", sink=None,
                        emit=lambda kind, data: (events or []).append((kind, data)),
                        on_first_frame=lambda relay, epoch: None)
    upstream = UpstreamFake()
    relay.attach(0, upstream)  # type: ignore[arg-type]
    return relay, upstream


def send_frames(relay: SourceRelay, frames: int, *, epoch: int = 0, seq: int = 0, ts: int = 0, t0: float = 0.0,
                key_every: int = 0, packets: int = 2, skip: set[int] | None = None, first_key: bool = True) -> int:
    """``frames`` frames of ``packets`` packets each (the first a key frame); returns the next seq."""
    for i in range(frames):
        key = (i == 0 and first_key) or bool(key_every and i and i % key_every == 0)
        for j in range(packets):
            if skip is None or seq not in skip:
                relay.on_packet(epoch, seq & 0xFFFF, (ts + i * 3000) & 0xFFFFFFFF, int(j == packets - 1),
                                (KEY if key else DELTA) if j == 0 else b"\x00more", bool(key and j == 0),
                                None, t0 + i / 30)
            seq += 1
    return seq


def feed(relay: SourceRelay, count: int, start_ts: int = 0, t0: float = 0.0) -> None:
    for i in range(count):
        relay.on_frame(0, KEY if i == 0 else DELTA, (start_ts + i * 3000) & 0xFFFFFFFF, i == 0, t0 + i / 30)


def contiguous(seqs: list[int]) -> bool:
    return all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:]))


async def test_every_packet_goes_out_as_it_arrives_numbered_without_holes_across_the_wrap():
    relay, upstream = make_relay()
    link = LinkFake()
    relay.subscribe("agent", link)  # type: ignore[arg-type]
    send_frames(relay, 100, seq=65_500, ts=4_294_000_000)  # both numbers wrap
    assert len(link.sent) == 200 and contiguous(link.seqs)
    stamps = [p[1] for p in link.sent]
    assert all((b - a) & 0xFFFFFFFF in (0, 3000) for a, b in zip(stamps, stamps[1:]))
    assert [p[2] for p in link.sent[:4]] == [0, 1, 0, 1]  # marker bits kept
    assert upstream.plis == 0  # it started on a key frame: nothing to ask for


async def test_a_late_subscriber_waits_for_a_key_frame_and_asks_for_one():
    relay, upstream = make_relay()
    seq = send_frames(relay, 10)
    link = LinkFake()
    forward = relay.subscribe("agent", link)  # type: ignore[arg-type]
    seq = send_frames(relay, 5, seq=seq, ts=30_000, t0=1.0, first_key=False)
    await asyncio.sleep(0)
    assert link.sent == [] and forward.need_keyframe and upstream.plis == 1  # throttled to one request
    send_frames(relay, 3, seq=seq, ts=60_000, t0=2.0)  # starts with a key frame
    assert link.sent[0][3] == KEY and len(link.sent) == 6 and contiguous(link.seqs)
    assert relay.stats()["subscribers"][0]["drops"] == 10


async def test_a_real_loss_stays_a_hole_and_its_late_retransmission_fills_it():
    relay, _ = make_relay()
    link = LinkFake()
    relay.subscribe("agent", link)  # type: ignore[arg-type]
    seq = send_frames(relay, 5, skip={4})  # packet 4 lost upstream
    assert 4 not in [s - link.seqs[0] for s in link.seqs]
    first = link.seqs[0]
    relay.on_packet(0, 4, 6000, 0, DELTA, False, None, 0.5)  # the upstream NACK brought it back
    assert link.seqs[-1] == first + 4, "the retransmission must take the number of its slot"
    assert seq == 10


async def test_padding_takes_no_number_and_late_packets_keep_theirs():
    relay, _ = make_relay()
    link = LinkFake()
    relay.subscribe("agent", link)  # type: ignore[arg-type]
    seq = send_frames(relay, 2)  # seqs 0-3
    relay.on_packet(0, seq, 6000, 0, b"", False, None, 0.1)  # padding-only probe
    send_frames(relay, 2, seq=seq + 1, ts=6000, t0=0.2)
    assert contiguous(link.seqs) and len(link.seqs) == 8


async def test_a_subscriber_whose_link_is_not_up_yet_gets_nothing_then_starts_at_a_key_frame():
    relay, upstream = make_relay()
    link = LinkFake()
    link.ready = False
    relay.subscribe("agent", link)  # type: ignore[arg-type]
    seq = send_frames(relay, 30)
    assert link.sent == [] and upstream.plis == 0
    link.ready = True
    seq = send_frames(relay, 2, seq=seq, ts=90_000, t0=1.0, key_every=99)  # first is a key frame
    assert link.sent and link.sent[0][3] == KEY


async def test_a_backed_up_subscriber_drops_then_restarts_at_a_key_frame():
    relay, upstream = make_relay()
    link = LinkFake()
    forward = relay.subscribe("agent", link)  # type: ignore[arg-type]
    seq = send_frames(relay, 10)
    link.backed_up = True
    seq = send_frames(relay, 10, seq=seq, ts=30_000, t0=1.0)
    await asyncio.sleep(0)
    assert forward.need_keyframe and upstream.plis >= 1 and link.backlog_drops == 1
    link.backed_up = False
    before = len(link.sent)
    seq = send_frames(relay, 10, seq=seq, ts=60_000, t0=2.0, key_every=5)
    resumed = link.sent[before:]
    assert resumed and resumed[0][3] == KEY and len(resumed) == 20
    assert contiguous(link.seqs), "the packets skipped on purpose must not show as losses"
    relay.close()


async def test_the_snapshot_cache_is_bounded():
    relay, _ = make_relay()
    feed(relay, GOP_MAX_FRAMES * 3)
    assert len(relay.gop) == GOP_MAX_FRAMES and relay.gop_overflow


async def test_numbers_and_timestamps_continue_across_a_rejoin():
    relay, _ = make_relay()
    link = LinkFake()
    relay.subscribe("agent", link)  # type: ignore[arg-type]
    audio_relay = SourceRelay("s", "outlet", "microphone", sink=None, emit=lambda kind, data: None,
                              on_first_frame=lambda relay, epoch: None)
    audio_relay.attach(0, UpstreamFake())  # type: ignore[arg-type]
    audio = LinkFake()
    audio_relay.subscribe("agent", audio)  # type: ignore[arg-type]
    send_frames(relay, 60, seq=65_000, ts=4_294_000_000, t0=0.0)  # wraps past 2**32
    for i in range(50):
        audio_relay.on_packet(0, 9_000 + i, 7_000 + i * 960, 0, b"opus", True, None, i / 50)
    relay.attach(1, UpstreamFake())  # type: ignore[arg-type]
    audio_relay.attach(1, UpstreamFake())  # type: ignore[arg-type]
    # New epoch 0.53 s after the last frame: unrelated RTP numbers, a delta frame first.
    relay.on_packet(1, 17, 55, 1, DELTA, False, None, 59 / 30 + 0.53)
    send_frames(relay, 3, epoch=1, seq=18, ts=123, t0=59 / 30 + 0.56)
    for i in range(3):
        audio_relay.on_packet(1, 40_000 + i, 5 + i * 960, 0, b"opus", True, None, 49 / 50 + 0.5 + i / 50)
    assert len(link.sent) == 120 + 6 and contiguous(link.seqs), "the video numbering has a hole or a jump"
    assert link.sent[120][3] == KEY, "after a rejoin video resumes at a key frame"
    steps = [(b[1] - a[1]) & 0xFFFFFFFF for a, b in zip(link.sent, link.sent[1:])]
    # The epoch's first packet (0.53 s after the last) sets the base; the key frame is 68 ticks after it.
    assert max(steps) == int(0.53 * 90000) + 123 - 55, "the rejoin step is not the wall-clock gap"
    assert all(step < 0x80000000 for step in steps), "a timestamp went back"
    assert len(audio.sent) == 53 and contiguous(audio.seqs)
    audio_steps = [(b[1] - a[1]) & 0xFFFFFFFF for a, b in zip(audio.sent, audio.sent[1:])]
    assert audio_steps[49] == int(0.5 * 48000) and set(audio_steps[:49]) == {960}
    relay.close()


async def test_only_a_congested_subscriber_caps_the_sender_and_a_monitor_never_does():
    relay, upstream = make_relay()
    now = asyncio.get_running_loop().time()
    agent = relay.subscribe("agent", LinkFake())  # type: ignore[arg-type]
    monitor = relay.subscribe("monitor", LinkFake(), caps_upstream=False)  # type: ignore[arg-type]
    for track in (agent, monitor):
        track.downlink.meter.add(125_000, now)  # 1 Mbit/s forwarded to each
    # Above what it receives: a receive-side estimator's ~1.5x bound, not congestion. Capping
    # at it is what spiralled a call down to 60 kbit/s.
    relay.set_remb(agent, 1_400_000)
    relay.set_remb(monitor, 100_000)  # congested, but a monitor never slows the call
    assert upstream.remb_limit is None
    island = relay.subscribe("island", LinkFake())  # type: ignore[arg-type]
    island.downlink.meter.add(125_000, now)
    relay.set_remb(island, 300_000)  # far below what it receives: congestion, sent upstream at once
    assert upstream.remb_limit == 300_000
    await asyncio.sleep(0)
    assert upstream.rembs_sent == 1
    island.close()
    assert upstream.remb_limit is None
    relay.set_remb(island, 50_000)  # a late estimate from a closed subscriber is ignored
    assert upstream.remb_limit is None
    relay.close()


async def test_keyframe_requests_upstream_are_spaced_by_the_relay_interval():
    relay, upstream = make_relay()
    relay.keyframe_interval = 1.0  # a long link: a key frame asked for takes this long to come
    relay.request_keyframe("subscriber waits")
    relay._last_keyframe_request -= 0.6  # 0.6 s later: past the 0.5 s floor, not the link's 1 s
    relay.request_keyframe("subscriber still waits")
    await asyncio.sleep(0)
    assert upstream.plis == 1, "asked again before the first key frame could have arrived"
    relay.request_keyframe("recorder opened", force=True)
    await asyncio.sleep(0)
    assert upstream.plis == 2  # a forced request is never held back
    relay._last_keyframe_request -= 1.0  # the link's interval has passed
    relay.request_keyframe("subscriber still waits")
    await asyncio.sleep(0)
    assert upstream.plis == 3


async def test_a_long_uplink_waits_longer_for_repairs_and_key_frames(monkeypatch):
    from types import SimpleNamespace

    from cloudhall.settings import MediaSettings
    from media import passthrough
    from media.relay import KEYFRAME_MIN_INTERVAL
    from media.session import MediaSession, _Peer

    session = MediaSession("s", MediaSettings(), configuration=lambda: None, addresses=[],  # type: ignore[arg-type,return-value]
                           sink=None, emit=lambda *event: None, media_timeout=10)
    try:
        tap = SimpleNamespace(assembler=SimpleNamespace(max_wait=0.5))
        peer = _Peer("outlet", 0, pc=None, lines=[], taps={"camera": tap})  # type: ignore[arg-type,dict-item]
        relay = session.relay("outlet", "camera")
        rtt = {"value": 0.8}  # seconds: a congested island link
        monkeypatch.setattr(passthrough, "round_trip_time", lambda pc: rtt["value"])
        session._adapt_repair_wait(peer)
        assert tap.assembler.max_wait == relay.keyframe_interval == 1.5 * 0.8 + 0.1
        rtt["value"] = 0.02  # a short link: the floors
        session._adapt_repair_wait(peer)
        assert tap.assembler.max_wait == 0.3 and relay.keyframe_interval == KEYFRAME_MIN_INTERVAL
    finally:
        await session.end()
