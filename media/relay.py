"""Per-source forwarding: one :class:`SourceRelay` per participant source, fanning encoded frames out.

A relay outlives the participant's peer connections: each new connection is a new
*epoch* (recorded as a separate track epoch), while subscribers keep their
:class:`ForwardTrack` and see continuous, rebased timestamps across the rejoin.
Every queue is bounded; nothing here decodes or encodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import passthrough
from media.assembler import vp8_dimensions
from media.bandwidth import DownlinkRate
from media.sink import EncodedFrame, PacketSink, TrackInfo, TrackWriter

if TYPE_CHECKING:
    from media.passthrough import ReceiverTap

logger = logging.getLogger(__name__)

KEYFRAME_MIN_INTERVAL = 0.5  # seconds between keyframe requests sent upstream for one source
GOP_MAX_FRAMES = 600  # frames kept since the last keyframe, for snapshots
GOP_MAX_BYTES = 8 * 1024 * 1024
SOURCE_KINDS = {"camera": "video", "screen": "video", "microphone": "audio"}

Emit = Callable[[str, dict], None]


def _now() -> float:
    """The event loop's clock (monotonic), also outside a running loop (stats)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class ForwardTrack(MediaStreamTrack):
    """The track a subscriber's sender pulls: a source's encoded frames as ``av.Packet``.

    Bounded: at most ``maxlen`` frames wait. A subscriber that falls behind loses the
    whole queue and waits for a keyframe (which is requested upstream) instead of growing
    memory; nothing is queued before its sender starts pulling.
    """

    def __init__(self, relay: "SourceRelay", subscriber: str, maxlen: int, caps_upstream: bool = True,
                 downlink: DownlinkRate | None = None) -> None:
        super().__init__()
        self.caps_upstream = caps_upstream
        # Shared by every track forwarded to the same subscriber connection (its REMB covers them all).
        self.downlink = downlink if downlink is not None else DownlinkRate()
        self.downlink.kinds.append(relay.kind)
        self.kind = relay.kind
        self.relay = relay
        self.subscriber = subscriber
        self.maxlen = max(2, maxlen)
        self._queue: deque[tuple[bytes, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.need_keyframe = relay.kind == "video"
        self.started = False
        self.frames_out = 0
        self.drops = 0
        self.queue_max = 0
        self.remb: int | None = None

    def offer(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        """Queue one frame (called by the relay; never blocks)."""
        if not self.started or self.readyState != "live":
            return
        if self.need_keyframe and not keyframe:
            self.drops += 1
            self.relay.request_keyframe(f"{self.subscriber} waits for a keyframe")
            return
        self.need_keyframe = False
        if len(self._queue) >= self.maxlen:
            if self.kind == "video":
                self.drops += len(self._queue)
                self._queue.clear()
                if not keyframe:
                    self.need_keyframe = True
                    self.drops += 1
                    self.relay.request_keyframe(f"{self.subscriber} is too slow")
                    return
            else:
                self._queue.popleft()
                self.drops += 1
        self._queue.append((data, timestamp))
        self.queue_max = max(self.queue_max, len(self._queue))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def recv(self) -> Any:
        """The next encoded frame as an ``av.Packet`` (pts in the codec clock)."""
        if not self.started:
            self.started = True
            self.relay.request_keyframe(f"{self.subscriber} started")
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        data, timestamp = self._queue.popleft()
        self.frames_out += 1
        self.downlink.meter.add(len(data), asyncio.get_running_loop().time())
        return passthrough.make_packet(data, timestamp, self.relay.clock_rate)

    def stop(self) -> None:
        super().stop()
        self._queue.clear()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
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
        self.subscribers: set[ForwardTrack] = set()
        self._remb: dict[ForwardTrack, int] = {}
        self.epoch = -1
        self.tap: ReceiverTap | None = None
        self._epoch_started = False
        self._last_raw = 0
        self._rel = 0  # timestamp since the epoch's first frame
        self._out_base = 0
        self._out_last: int | None = None
        self._out_last_at = 0.0
        self._writer: TrackWriter | None = None
        self._started_at = 0.0
        self.last_frame_at: float | None = None  # loop time
        self.last_frame_wall: float | None = None
        self._last_keyframe_request = -1e9
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
        self._apply_remb()

    def detach(self) -> None:
        """The current epoch's connection is gone: close its recording."""
        self.tap = None
        self._close_writer()

    def on_frame(self, epoch: int, data: bytes, timestamp: int, keyframe: bool, now: float) -> None:
        """A complete encoded frame from epoch ``epoch`` (frames from older epochs are ignored)."""
        if epoch != self.epoch:
            return
        if not self._epoch_started:
            self._start_epoch(data, now)
        else:
            delta = (timestamp - self._last_raw) & 0xFFFFFFFF
            if delta < 0x80000000:
                self._rel += delta
        self._last_raw = timestamp
        out = self._out_base + self._rel
        self._out_last, self._out_last_at = out, now
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
        for track in list(self.subscribers):
            track.offer(data, out, keyframe)
        if self._writer is not None:
            self._write(EncodedFrame(data=data, timestamp=self._rel, keyframe=keyframe,
                                     arrival=self.last_frame_wall))

    def _start_epoch(self, first_frame: bytes, now: float) -> None:
        self._epoch_started = True
        self._rel = 0
        if self._out_last is not None:
            # Rebase: continue where the previous epoch ended, plus the wall-clock gap, so
            # subscribers see neither a jump nor a step back.
            gap = max(1, int((now - self._out_last_at) * self.clock_rate))
            self._out_base = self._out_last + gap
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
        """Send a PLI upstream, at most once per KEYFRAME_MIN_INTERVAL unless ``force``."""
        tap = self.tap
        if tap is None or self.kind != "video":
            return
        now = asyncio.get_running_loop().time()
        if not force and now - self._last_keyframe_request < KEYFRAME_MIN_INTERVAL:
            return
        self._last_keyframe_request = now
        self.keyframe_requests += 1
        logger.debug("session %s: keyframe request for %s-%s (%s)",
                     self.session_id, self.participant, self.source, reason)
        self._spawn(tap.send_pli())

    def set_remb(self, track: ForwardTrack, bitrate: int) -> None:
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
    def subscribe(self, subscriber: str, maxlen: int, *, caps_upstream: bool = True,
                  downlink: DownlinkRate | None = None) -> ForwardTrack:
        """A new forwarding track for ``subscriber`` (silent until this source has frames).

        ``caps_upstream``: whether this subscriber's bandwidth estimate limits the sender
        (not for a silent monitor, whose weak link must not degrade the call). ``downlink``:
        the subscriber connection's meter and cap, shared by all the tracks it receives.
        """
        track = ForwardTrack(self, subscriber, maxlen, caps_upstream, downlink)
        self.subscribers.add(track)
        return track

    def unsubscribe(self, track: ForwardTrack) -> None:
        self.subscribers.discard(track)
        if self._remb.pop(track, None) is not None:
            self._apply_remb()

    def close(self) -> None:
        """End of the session: close the recording, stop every forwarding track."""
        self.detach()
        for track in list(self.subscribers):
            track.stop()
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
            "frames_out": sum(t.frames_out for t in self.subscribers),
            "subscribers": [
                {"subscriber": t.subscriber, "frames_out": t.frames_out, "drops": t.drops,
                 "queued": t.queued, "queue_max": t.queue_max, "queue_limit": t.maxlen,
                 "remb_bps": t.remb, "sent_bps": t.downlink.meter.rate(_now()),
                 "cap_bps": self._remb.get(t)}
                for t in self.subscribers
            ],
        }
