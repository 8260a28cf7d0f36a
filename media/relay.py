"""Per-source forwarding: one :class:`SourceRelay` per participant source, one :class:`Forward` per subscriber.

Forwarding is at the RTP level: every packet a publisher sends is, as it arrives, rewritten
(sequence number, timestamp) and sent to each subscriber through a
:class:`media.passthrough.SenderLink` — no frame assembly, no queue, no task in between, so
the server adds no jitter-buffer delay and almost no work per hop. Loss upstream reaches the
subscriber as a gap it can NACK (the retransmission we obtain upstream is forwarded late
with the same rewritten number); its PLI/FIR and REMB come back to the relay.

A relay outlives the participant's peer connections: each new connection is a new *epoch*
(recorded as a separate track epoch), while subscribers keep their :class:`Forward` and see
continuous sequence numbers and rebased timestamps across the rejoin. Frames (assembled by
the receiver tap, for the recorder and snapshots) arrive separately through
:meth:`SourceRelay.on_frame`. Nothing here decodes or encodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from media.assembler import vp8_dimensions
from media.bandwidth import DownlinkRate
from media.sink import EncodedFrame, PacketSink, TrackInfo, TrackWriter

if TYPE_CHECKING:
    from media.passthrough import ReceiverTap, SenderLink

logger = logging.getLogger(__name__)

KEYFRAME_MIN_INTERVAL = 0.5  # seconds between keyframe requests sent upstream for one source, at least
GOP_MAX_FRAMES = 600  # frames kept since the last keyframe, for snapshots
GOP_MAX_BYTES = 8 * 1024 * 1024
SOURCE_KINDS = {"camera": "video", "screen": "video", "microphone": "audio"}
OFFSET_HISTORY = 16  # sequence-number offset changes remembered, to place late packets exactly

Emit = Callable[[str, dict], None]


def _now() -> float:
    """The event loop's clock (monotonic), also outside a running loop (stats)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class Forward:
    """One source forwarded to one subscriber connection, packet by packet.

    Sequence numbers: the relay numbers its stream continuously across epochs (``rseq``,
    never wrapping); a forward sends ``rseq + offset``. It starts — and restarts after a new
    epoch or a dropped packet — only at a key frame, choosing the offset so that what the
    subscriber sees has no hole where we skipped on purpose (only real losses show as holes,
    which it may NACK). Offsets are remembered per range, so a late retransmission gets
    exactly the number its slot was given.
    """

    def __init__(self, relay: "SourceRelay", subscriber: str, link: "SenderLink", caps_upstream: bool = True,
                 downlink: DownlinkRate | None = None) -> None:
        self.caps_upstream = caps_upstream
        # Shared by every stream forwarded to the same subscriber connection (its REMB covers them all).
        self.downlink = downlink if downlink is not None else DownlinkRate()
        self.downlink.kinds.append(relay.kind)
        self.kind = relay.kind
        self.relay = relay
        self.subscriber = subscriber
        self.link = link
        self.need_keyframe = relay.kind == "video"
        self.closed = False
        self._offsets: list[tuple[int, int]] = []  # (first rseq, offset), ascending
        self._floor: int | None = None  # rseq below which nothing is sent (before our (re)start)
        self._last_out = -1  # highest sequence number sent, unwrapped
        self._waiting_since: float | None = None
        self.packets_out = self.frames_out = 0
        self.drops = 0  # packets not sent: waiting for a key frame, or the socket backlog was full
        self.keyframe_wait_max = 0.0  # longest wait for a key frame (s)
        self.remb: int | None = None

    def restart(self) -> None:
        """A new upstream epoch: video must start again at a key frame."""
        if self.kind == "video":
            self.need_keyframe = True

    def _offset_for(self, rseq: int) -> int | None:
        offsets = self._offsets
        if offsets and rseq >= offsets[-1][0]:  # the packet of the current range: nearly every one
            return offsets[-1][1]
        for first, offset in reversed(offsets):
            if rseq >= first:
                return offset
        return None

    def _rebase(self, rseq: int) -> None:
        """Number ``rseq`` right after the last packet sent."""
        self._offsets.append((rseq, self._last_out + 1 - rseq))
        del self._offsets[:-OFFSET_HISTORY]
        self._floor = rseq if self._floor is None else self._floor

    def packet(self, rseq: int, newest: bool, timestamp: int, marker: int, payload: bytes, keyframe: bool,
               level: int | None, wall: float, now: float) -> None:
        """Forward one packet (relay numbering); ``newest``: no packet after it was seen yet."""
        if self.closed:
            return
        link = self.link
        if self.need_keyframe:
            if not newest or not keyframe or not link.ready:
                if payload:
                    self.drops += 1
                if self._waiting_since is None:
                    self._waiting_since = now
                if link.ready:
                    self.relay.request_keyframe(f"{self.subscriber} waits for a key frame")
                return
            self.need_keyframe = False
            if self._waiting_since is not None:
                self.keyframe_wait_max = max(self.keyframe_wait_max, now - self._waiting_since)
                self._waiting_since = None
            self._rebase(rseq)
            self._floor = rseq
        elif self._floor is None:  # audio: starts anywhere
            if not newest or not link.ready:
                return
            self._rebase(rseq)
        if rseq < self._floor:
            return  # from before our (re)start: that slot was never numbered
        offset = self._offset_for(rseq)
        if not payload:
            # Padding takes no number of ours when it comes next in line: later packets close up.
            if newest and offset is not None and rseq + offset == self._last_out + 1:
                self._rebase(rseq + 1)
            return
        if offset is None:
            return
        out = rseq + offset
        sent = link.send(out & 0xFFFF, timestamp, marker, payload, wall, level)
        if sent > 0:
            if out > self._last_out:
                self._last_out = out
            self.packets_out += 1
            if marker or self.kind == "audio":
                self.frames_out += 1
            self.downlink.meter.add(sent, now)
        elif sent < 0:  # the subscriber's socket is backed up: drop, restart at a key frame
            self.drops += 1
            if self.kind == "video" and not self.need_keyframe:
                self.need_keyframe = True
                self._waiting_since = now
                self.relay.request_keyframe(f"{self.subscriber} is backed up")

    def close(self) -> None:
        self.closed = True
        self.relay.unsubscribe(self)


class SourceRelay:
    """One participant source (e.g. outlet camera) across all its connection epochs."""

    def __init__(
        self, session_id: str, participant: str, source: str, *,
        sink: PacketSink | None, emit: Emit, on_first_frame: Callable[["SourceRelay", int], None],
    ) -> None:
        self.session_id = session_id
        self.participant = participant
        self.source = source
        self.kind = SOURCE_KINDS[source]
        self.codec = "VP8" if self.kind == "video" else "opus"
        self.clock_rate = 90000 if self.kind == "video" else 48000
        self._sink = sink
        self._emit = emit
        self._on_first_frame = on_first_frame
        self.subscribers: set[Forward] = set()
        self._remb: dict[Forward, int] = {}
        self.epoch = -1
        self.tap: ReceiverTap | None = None
        self._epoch_started = False
        self._last_raw = 0
        self._rel = 0  # timestamp since the epoch's first frame (recording)
        # Packet numbering continuous across epochs (see Forward): this epoch's first extended
        # sequence number and the relay number it got; the highest extended one seen.
        self._packets_started = False
        self._ext_first = self._ext_high = 0
        self._rseq_base = 0
        self._rseq_high: int | None = None
        self._ts_offset = 0
        self._rts_last: int | None = None
        self._rts_last_at = 0.0
        self.packets_in = 0
        self._writer: TrackWriter | None = None
        self._started_at = 0.0
        self.last_frame_at: float | None = None  # loop time
        self.last_frame_wall: float | None = None
        self._last_keyframe_request = -1e9
        # Longer on a long link: a key frame asked for comes no sooner (MediaSession._adapt_repair_wait).
        self.keyframe_interval = KEYFRAME_MIN_INTERVAL
        self._tasks: set[asyncio.Task[None]] = set()
        self.gop: list[bytes] = []
        self._gop_bytes = 0
        self.gop_overflow = False
        self._keyframe_waiters: list[asyncio.Future[None]] = []
        self.frames_in = self.bytes_in = self.keyframes_in = self.keyframe_requests = 0
        self.frames_recorded = 0
        self.bitrate_bps = 0
        self._rate_bytes = 0
        self._rate_since = 0.0

    # -- upstream epochs ---------------------------------------------------------------
    def attach(self, epoch: int, tap: "ReceiverTap") -> None:
        """A new connection of the participant carries this source from now on."""
        self.detach()
        self.epoch = epoch
        self.tap = tap
        self._epoch_started = False
        self._packets_started = False
        for forward in self.subscribers:
            forward.restart()
        self._apply_remb()

    def detach(self) -> None:
        """The current epoch's connection is gone: close its recording."""
        self.tap = None
        self._close_writer()

    def on_packet(self, epoch: int, seq: int, timestamp: int, marker: int, payload: bytes, keyframe: bool,
                  level: int | None, now: float) -> None:
        """One RTP packet of epoch ``epoch`` as it arrives (older epochs are ignored): forward it."""
        if epoch != self.epoch:
            return
        self.packets_in += 1
        if not self._packets_started:
            self._packets_started = True
            self._ext_first = self._ext_high = seq
            self._rseq_base = 0 if self._rseq_high is None else self._rseq_high + 1
            if self._rts_last is not None:
                # Rebase: continue where the previous epoch ended, plus the wall-clock gap, so
                # subscribers see neither a jump nor a step back.
                gap = max(1, int((now - self._rts_last_at) * self.clock_rate))
                self._ts_offset = (self._rts_last + gap - timestamp) & 0xFFFFFFFF
            ext, newest = seq, True
        else:
            delta = (seq - self._ext_high) & 0xFFFF
            if delta < 0x8000:
                ext, newest = self._ext_high + delta, delta > 0
                self._ext_high = ext
            else:
                ext, newest = self._ext_high - (0x10000 - delta), False
        rseq = self._rseq_base + ext - self._ext_first
        if rseq < self._rseq_base:
            return  # from before this epoch's first packet
        rts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if newest:
            self._rseq_high, self._rts_last, self._rts_last_at = rseq, rts, now
        if self.subscribers:
            wall = time.time()
            for forward in self.subscribers:
                forward.packet(rseq, newest, rts, marker, payload, keyframe, level, wall, now)

    def on_frame(self, epoch: int, data: bytes, timestamp: int, keyframe: bool, now: float) -> None:
        """A complete encoded frame from epoch ``epoch`` (older epochs are ignored): record it, keep the GOP."""
        if epoch != self.epoch:
            return
        if not self._epoch_started:
            self._start_epoch(data, now)
        else:
            delta = (timestamp - self._last_raw) & 0xFFFFFFFF
            if delta < 0x80000000:
                self._rel += delta
        self._last_raw = timestamp
        self.last_frame_at = now
        self.last_frame_wall = time.time()
        self.frames_in += 1
        self.bytes_in += len(data)
        self._rate_bytes += len(data)
        if now - self._rate_since >= 1.0:
            self.bitrate_bps = int(self._rate_bytes * 8 / (now - self._rate_since))
            self._rate_bytes, self._rate_since = 0, now
        if self.kind == "video":
            self._keep_gop(data, keyframe)
        if self._writer is not None:
            self._write(EncodedFrame(data=data, timestamp=self._rel, keyframe=keyframe,
                                     arrival=self.last_frame_wall))

    def _start_epoch(self, first_frame: bytes, now: float) -> None:
        self._epoch_started = True
        self._rel = 0
        self._rate_since = now
        self._on_first_frame(self, self.epoch)
        self._open_writer(first_frame)

    def _keep_gop(self, data: bytes, keyframe: bool) -> None:
        if keyframe:
            self.keyframes_in += 1
            self.gop, self._gop_bytes, self.gop_overflow = [data], len(data), False
            for waiter in self._keyframe_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._keyframe_waiters.clear()
        elif self.gop and not self.gop_overflow:
            if len(self.gop) < GOP_MAX_FRAMES and self._gop_bytes + len(data) <= GOP_MAX_BYTES:
                self.gop.append(data)
                self._gop_bytes += len(data)
            else:
                self.gop_overflow = True

    async def wait_keyframe(self, timeout: float) -> None:
        """Ask for a keyframe and wait until one arrives (raises TimeoutError)."""
        waiter = asyncio.get_running_loop().create_future()
        self._keyframe_waiters.append(waiter)
        self.request_keyframe("snapshot", force=True)
        async with asyncio.timeout(timeout):
            await waiter

    # -- recording ---------------------------------------------------------------------
    def _open_writer(self, first_frame: bytes) -> None:
        if self._sink is None:
            return
        dims = vp8_dimensions(first_frame) if self.kind == "video" else None
        info = TrackInfo(
            session_id=self.session_id, participant=self.participant, source=self.source,
            kind=self.kind, codec=self.codec, clock_rate=self.clock_rate, epoch=self.epoch,
            started_at=time.time(), width=dims[0] if dims else None, height=dims[1] if dims else None,
        )
        try:
            self._writer = self._sink.open_track(info)
        except Exception as exc:  # the recorder failing must not stop the call
            self._recording_failed("open_track", exc)
            return
        if self.kind == "video":
            self.request_keyframe("recorder opened", force=True)

    def _write(self, frame: EncodedFrame) -> None:
        assert self._writer is not None
        try:
            self._writer.write(frame)
            self.frames_recorded += 1
        except Exception as exc:
            self._writer = None
            self._recording_failed("write", exc)

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:
                self._recording_failed("close", exc)

    def _recording_failed(self, step: str, exc: BaseException) -> None:
        logger.warning("session %s: recording of %s-%s epoch %d failed in %s: %r",
                       self.session_id, self.participant, self.source, self.epoch, step, exc)
        self._emit("recording_failed", {
            "participant": self.participant, "source": self.source, "epoch": self.epoch,
            "step": step, "error": f"{type(exc).__name__}: {exc}",
        })

    # -- feedback upstream -------------------------------------------------------------
    def request_keyframe(self, reason: str, *, force: bool = False) -> None:
        """Send a PLI upstream, at most once per ``keyframe_interval`` unless ``force``."""
        tap = self.tap
        if tap is None or self.kind != "video":
            return
        now = asyncio.get_running_loop().time()
        if not force and now - self._last_keyframe_request < self.keyframe_interval:
            return
        self._last_keyframe_request = now
        self.keyframe_requests += 1
        logger.debug("session %s: keyframe request for %s-%s (%s)",
                     self.session_id, self.participant, self.source, reason)
        self._spawn(tap.send_pli())

    def set_remb(self, track: Forward, bitrate: int) -> None:
        """A subscriber's receiver estimate: it caps the sender only if it signals congestion.

        A REMB below what that subscriber is being sent caps the sender (sent upstream at
        once: the island's estimate reaches the sending browser); a REMB at or above it is
        the estimator's ~1.5 × incoming bound, not a limit, and capping at it would spiral
        down (see :mod:`media.bandwidth`). A monitor never caps.
        """
        track.remb = bitrate
        if track not in self.subscribers or not track.caps_upstream:
            return
        previous = self.remb_limit
        cap = track.downlink.on_estimate(bitrate, asyncio.get_running_loop().time())
        if cap is None:
            self._remb.pop(track, None)
        else:
            self._remb[track] = cap
        limit = self.remb_limit
        self._apply_remb()
        if self.tap is not None and limit is not None and (previous is None or limit < previous):
            self._spawn(self.tap.send_remb())

    @property
    def remb_limit(self) -> int | None:
        return min(self._remb.values()) if self._remb else None

    def _apply_remb(self) -> None:
        if self.tap is not None:
            self.tap.remb_limit = self.remb_limit

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("session %s: feedback to %s-%s failed: %r", self.session_id,
                         self.participant, self.source, task.exception())

    # -- subscribers -------------------------------------------------------------------
    def subscribe(self, subscriber: str, link: "SenderLink", *, caps_upstream: bool = True,
                  downlink: DownlinkRate | None = None) -> Forward:
        """Forward this source to ``subscriber`` through ``link`` (silent until this source has packets).

        ``caps_upstream``: whether this subscriber's bandwidth estimate limits the sender
        (not for a silent monitor, whose weak link must not degrade the call). ``downlink``:
        the subscriber connection's meter and cap, shared by all the streams it receives.
        """
        forward = Forward(self, subscriber, link, caps_upstream, downlink)
        self.subscribers.add(forward)
        return forward

    def unsubscribe(self, forward: Forward) -> None:
        self.subscribers.discard(forward)
        if self._remb.pop(forward, None) is not None:
            self._apply_remb()

    def close(self) -> None:
        """End of the session: close the recording, stop every forwarding track."""
        self.detach()
        for forward in list(self.subscribers):
            forward.close()
        for task in self._tasks:
            task.cancel()

    def stats(self) -> dict:
        """Counters for :meth:`media.server.MediaServer.stats`."""
        assembler = self.tap.assembler if self.tap is not None else None
        return {
            "participant": self.participant, "source": self.source, "kind": self.kind,
            "epoch": self.epoch, "frames_in": self.frames_in, "bytes_in": self.bytes_in,
            "keyframes_in": self.keyframes_in, "keyframe_requests": self.keyframe_requests,
            "bitrate_bps": self.bitrate_bps, "frames_recorded": self.frames_recorded,
            "gaps": assembler.gaps if assembler else 0,
            "frames_dropped_for_keyframe": assembler.dropped_frames if assembler else 0,
            "upstream_estimate_bps": self.tap.upstream_estimate if self.tap else None,
            "remb_limit_bps": self.remb_limit,
            "remb_sent_bps": self.tap.uplink.sent if self.tap else None,
            "packets_in": self.packets_in,
            "frames_out": sum(f.frames_out for f in self.subscribers),
            "subscribers": [
                {"subscriber": f.subscriber, "frames_out": f.frames_out, "packets_out": f.packets_out,
                 "drops": f.drops, "backlog_drops": f.link.backlog_drops, "send_errors": f.link.send_errors,
                 "retransmits": f.link.retransmits,
                 "waiting_for_keyframe": f.need_keyframe,
                 "keyframe_wait_max_seconds": round(f.keyframe_wait_max, 3),
                 "remb_bps": f.remb, "sent_bps": f.downlink.meter.rate(_now()),
                 "cap_bps": self._remb.get(f)}
                for f in self.subscribers
            ],
        }
