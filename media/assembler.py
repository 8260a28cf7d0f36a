"""Frame assembly: turns RTP payloads into complete encoded frames, in order, without decoding.

This replaces aiortc's jitter buffer on the server's receivers (installed by
:mod:`media.passthrough`). Differences that matter for forwarding:

- a video frame is released as soon as its last packet (RTP marker bit) arrives and every
  packet since the previous frame is present, instead of when the *next* frame starts
  (aiortc's buffer holds one frame, +33 ms at 30 fps; its audio buffer prefetches 4 packets,
  +80 ms). Audio packets are released as they arrive.
- it knows the sequence numbers, so it *sees* gaps: after a hole (a packet missing while a
  later one is here) that retransmission (the receiver still NACKs) did not fill within
  ``max_wait`` seconds (0.5 s until the link's round
  trip is known, then 1.5 x RTT + 0.1 s within 0.3-1.5 s, set by the session: shorter would
  turn every loss on a long island link into a keyframe) it drops everything up to the next frame start,
  reports picture loss (the caller asks the sender for a keyframe) and drops every frame
  until a keyframe arrives. Forwarding a frame that references a lost one corrupts the
  picture at every subscriber and in the recording. A frame that is still arriving, with
  nothing after it missing, is not a hole however long it takes: a browser paces a key frame
  out at 2.5 times its bitrate and an island link may take seconds to carry it.
- it is bounded: at most ``max_packets`` packets are held.

Nothing here touches aiortc: it works on plain values.
"""

from __future__ import annotations

from typing import Callable

FrameCallback = Callable[[bytes, int, bool, float], None]  # data, rtp timestamp, keyframe, arrival


def seq_newer_or_equal(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` is ``b`` or after it (wrap-aware)."""
    return ((a - b) & 0xFFFF) < 0x8000


def vp8_is_keyframe(frame_data: bytes) -> bool:
    """VP8 payload header (RFC 6386 9.1): bit 0 of the first byte is 0 for a key frame."""
    return bool(frame_data) and not frame_data[0] & 0x01


def vp8_dimensions(frame_data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame header, or None if this is not one."""
    if len(frame_data) < 10 or not vp8_is_keyframe(frame_data):
        return None
    if frame_data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame_data[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame_data[8:10], "little") & 0x3FFF
    return width, height


class FrameAssembler:
    """Assemble one RTP stream's packets into frames; see the module docstring.

    ``on_frame(data, timestamp, keyframe, arrival)`` receives complete frames in order;
    ``on_picture_loss()`` is called whenever a keyframe is needed (start, gap, still waiting).
    """

    def __init__(
        self,
        kind: str,
        on_frame: FrameCallback,
        on_picture_loss: Callable[[], None],
        *,
        max_wait: float = 0.5,
        max_packets: int = 512,
    ) -> None:
        self.kind = kind
        self._on_frame = on_frame
        self._on_picture_loss = on_picture_loss
        self.max_wait = max_wait
        self._max_packets = max_packets
        # seq -> (timestamp, marker, frame_start, data, arrival)
        self._pending: dict[int, tuple[int, bool, bool, bytes, float]] = {}
        self._next_seq: int | None = None
        self._blocked_since: float | None = None
        # Where the last incomplete scan of the frame at _next_seq stopped: (start, cursor,
        # parts, marker). Packets are only added between scans, so the next one resumes here
        # instead of walking the frame again (an 11-packet screen frame cost 66 steps, not 11).
        self._scan: tuple[int, int, list[bytes], bool] | None = None
        self._newest: int | None = None  # the newest sequence number pushed
        self.need_keyframe = kind == "video"
        self.frames = 0
        self.dropped_frames = 0  # complete frames dropped while waiting for a keyframe
        self.gaps = 0  # holes that retransmission did not fill
        self.late_packets = 0

    def push(
        self, seq: int, timestamp: int, marker: bool, frame_start: bool, data: bytes, now: float
    ) -> None:
        """Add one packet (``data`` is the depayloaded codec data)."""
        if self.kind == "audio":
            self._push_audio(seq, timestamp, data, now)
            return
        if self._next_seq is not None and not seq_newer_or_equal(seq, self._next_seq):
            self.late_packets += 1
            return
        if self._next_seq is None and not self._pending:
            self._on_picture_loss()
        if self._newest is None or seq_newer_or_equal(seq, self._newest):
            self._newest = seq
        self._pending[seq] = (timestamp, marker, frame_start, data, now)
        self._drain(now)

    def push_padding(self, seq: int, now: float) -> None:
        """A payload-less packet (padding for bandwidth probing): it takes a sequence number, no frame."""
        if self.kind == "audio":
            return
        if self._next_seq is not None and not seq_newer_or_equal(seq, self._next_seq):
            return
        if self._next_seq is None and not self._pending:
            return
        if self._newest is None or seq_newer_or_equal(seq, self._newest):
            self._newest = seq
        self._pending[seq] = (-1, False, False, None, now)  # type: ignore[assignment]
        self._drain(now)

    def _push_audio(self, seq: int, timestamp: int, data: bytes, now: float) -> None:
        if self._next_seq is not None and not seq_newer_or_equal(seq, self._next_seq):
            self.late_packets += 1
            return
        if self._next_seq is not None and seq != self._next_seq:
            self.gaps += 1
        self._next_seq = (seq + 1) & 0xFFFF
        self.frames += 1
        self._on_frame(data, timestamp, False, now)

    def _drain(self, now: float) -> None:
        while self._pending:
            if self._next_seq is None:
                start = self._first_start(None)
                if start is None:
                    if len(self._pending) >= self._max_packets:
                        self._pending.clear()
                        self._scan = None
                    return
                self._discard_before(start)
                self._next_seq = start
            while self._pending.get(self._next_seq, (0, 0, 0, b""))[3] is None:
                self._pending.pop(self._next_seq)  # padding between frames
                self._next_seq = (self._next_seq + 1) & 0xFFFF
            if not self._pending:
                return
            frame = self._collect(self._next_seq)
            if frame is not None:
                self._blocked_since = None
                self._emit(*frame)
                continue
            if self._arriving():
                self._blocked_since = None
                if len(self._pending) < self._max_packets:
                    return
            else:
                if self._blocked_since is None:
                    self._blocked_since = now
                if now - self._blocked_since < self.max_wait and len(self._pending) < self._max_packets:
                    return
            self._skip_gap()

    def _arriving(self) -> bool:
        """Whether the frame at _next_seq is whole up to the newest packet: still arriving, no hole."""
        scan = self._scan
        return scan is not None and scan[0] == self._next_seq and scan[1] == self._newest

    def _collect(self, seq: int) -> tuple[bytes, int, bool, float, int] | None:
        """The frame starting at ``seq`` if all its packets are here, and the seq after it."""
        first = self._pending.get(seq)
        if first is None or not first[2]:
            return None
        timestamp = first[0]
        scan = self._scan
        if scan is not None and scan[0] == seq:
            _, cursor, parts, marker = scan
        else:
            cursor, parts, marker = seq, [first[3]], first[1]
        pending = self._pending
        while not marker:
            nxt = pending.get((cursor + 1) & 0xFFFF)
            if nxt is None:
                self._scan = (seq, cursor, parts, marker)
                return None
            if nxt[0] != timestamp:
                break  # contiguous packets but a new timestamp: the frame ended
            cursor = (cursor + 1) & 0xFFFF
            parts.append(nxt[3])
            marker = nxt[1]
        self._scan = None
        end = (cursor + 1) & 0xFFFF
        for i in range(((end - seq) & 0xFFFF)):
            self._pending.pop((seq + i) & 0xFFFF, None)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return data, timestamp, vp8_is_keyframe(parts[0]), first[4], end

    def _emit(self, data: bytes, timestamp: int, keyframe: bool, arrival: float, end: int) -> None:
        self._next_seq = end
        if self.need_keyframe and not keyframe:
            self.dropped_frames += 1
            self._on_picture_loss()
            return
        self.need_keyframe = False
        self.frames += 1
        self._on_frame(data, timestamp, keyframe, arrival)

    def _skip_gap(self) -> None:
        """Give up on the missing packets: resume at the next frame start, then at a keyframe."""
        self.gaps += 1
        self._blocked_since = None
        self._scan = None
        self.need_keyframe = True
        self._on_picture_loss()
        assert self._next_seq is not None
        start = self._first_start(self._next_seq, exclude=self._next_seq)
        if start is None:
            self._pending.clear()
            self._next_seq = None
            return
        self._discard_before(start)
        self._next_seq = start

    def _first_start(self, origin: int | None, exclude: int | None = None) -> int | None:
        """The earliest pending packet that starts a frame (relative to ``origin``)."""
        if origin is None:
            ref = next(iter(self._pending))
            origin = min(self._pending, key=lambda s: (s - ref + 0x8000) & 0xFFFF)
        best: int | None = None
        best_distance = 0x10000
        for seq, packet in self._pending.items():
            if not packet[2] or seq == exclude:
                continue
            distance = (seq - origin) & 0xFFFF
            if distance < best_distance:
                best, best_distance = seq, distance
        return best

    def _discard_before(self, start: int) -> None:
        self._scan = None
        for seq in [s for s in self._pending if not seq_newer_or_equal(s, start)]:
            del self._pending[seq]
