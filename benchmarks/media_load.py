"""Load benchmark for the media server (not part of CI): K concurrent recorded calls.

    .venv/bin/python benchmarks/media_load.py --calls 1,4,8 --seconds 15 --baseline-calls 1

Each call: outlet camera 640x480@30 + screen 1280x720@10 + Opus, agent camera 640x480@30 + Opus
(432 RTP packets/s into the server). The server runs in its own process (one core's worth:
one asyncio loop) and is either ``passthrough`` (media.MediaServer + recordings'
SessionRecorder) or ``stock`` (aiortc MediaRelay forwarding + MediaRecorder per track, the
baseline). Clients run in separate processes and send *pre-encoded*, pre-packetized VP8/Opus
loops (encoded once at start, keyframe at the loop start and on PLI; :class:`PacedLoop`,
straight to the socket through ``media.passthrough.SenderLink``; video paced out at 2.5 times
its rate, as Chromium's pacer does, unless ``--burst``) and count frames with the passthrough tap
instead of decoding, so that a 2-core machine can drive many calls. A trailer on every video
frame's last packet carries its capture and send times: frames are counted by capture time
(those captured in the window), and the send time gives the one-hop latency (client -> server
-> client, which includes the receiving client's own delay) and, read by the server as it
forwards the packet, the server's share of it ("srv"). The stock server re-encodes, so there
neither can be read.

Prints, per server kind and K: server CPU per call (% of one core), RSS per call, receiver
frame rate (% of sent, worst route and mean), packet loss, event-loop lag p99, call set-up
time (agent's offer -> first outlet camera frame at the agent) p50/p95, one-hop latency,
and the frames the recorder dropped because its writer fell behind (and still had queued).
The JSON on stderr adds the datagrams the kernel dropped at the server's and the clients'
full receive buffers (``server_rcvbuf_drops``, ``client_rcvbuf_drops``), and names the routes
that fell short.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import multiprocessing as mp
import os
import statistics
import struct
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAGIC = b"CHLT"
STAMP = struct.Struct("!dd")  # before MAGIC on a video frame's last packet: capture time, send time
ROUTES = {  # participant -> (own sources, wanted roles)
    "outlet": (("camera", "screen", "microphone"), ("remote:camera", "remote:microphone")),
    "agent": (("camera", "microphone"), ("remote:camera", "remote:screen", "remote:microphone")),
}
RATES = {"camera": 30, "screen": 10, "microphone": 50}


# --------------------------------------------------------------------------- media loops
def encode_loops() -> dict[str, list[bytes]]:
    """VP8 and Opus loops, encoded once: each loop starts with a keyframe."""
    import av
    import numpy as np

    def vp8(width: int, height: int, frames: int, bitrate: int, fps: int, grain: int) -> list[bytes]:
        """``frames`` of a moving gradient under moving grain (texture // ``grain``): detailed
        enough that libvpx spends its ``bitrate``, as a real camera or a page of text does."""
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate = bitrate
        codec.time_base = fractions.Fraction(1, 90000)
        codec.framerate = fractions.Fraction(fps, 1)
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "kf-max-dist": "100000"}
        texture = np.random.default_rng(1).integers(0, 256, (height, width + 64), dtype=np.uint8)
        out = []
        for i in range(frames):
            img = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
            shift = (i * 3) % 64
            img[:height] = ((np.arange(width)[None, :] + i * 8) % 256) // 2 + texture[:, shift:shift + width] // grain
            img[(i * 7) % height: (i * 7) % height + 16, :] = 30
            frame = av.VideoFrame.from_ndarray(img, format="yuv420p")
            frame.pts = i * (90000 // fps)
            frame.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
            out += [bytes(p) for p in codec.encode(frame)]
        out += [bytes(p) for p in codec.encode(None)]
        return out[:frames]

    def opus() -> list[bytes]:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate, codec.format, codec.layout, codec.bit_rate = 48000, "s16", "stereo", 64000
        out = []
        t = np.arange(960) / 48000
        for i in range(60):
            tone = (np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate, frame.pts = 48000, i * 960
            out += [bytes(p) for p in codec.encode(frame)]
        return out[:50]

    # ~1 Mbit/s each: 3.75 packets per camera frame, 10.7 per screen frame; with Opus at 50/s
    # that is the 432 RTP packets/s into the server per call of the docstring (issue 4).
    return {"camera": vp8(640, 480, 60, 1_000_000, 30, 4), "screen": vp8(1280, 720, 20, 1_000_000, 10, 6),
            "microphone": opus()}


# --------------------------------------------------------------------------- server side
def server_main(mode: str, port_queue: Any, record_dir: str, use_uvloop: bool = False,
                coalesce_ms: float | None = None) -> None:
    """Server process entry: ``mode`` is passthrough (recorder), passthrough-norec (no-op sink) or stock.

    ``-slowrx`` on a passthrough mode: aiortc's own receive path instead of the synchronous one
    (``media.passthrough.install_fast_receive``), to measure what that path saves.
    """
    logging.basicConfig(level=logging.WARNING)
    if mode.endswith("-slowrx"):
        from media import passthrough

        passthrough.install_fast_receive = lambda pc, receive_buffer=0: 0  # type: ignore[assignment]
    if use_uvloop:
        import uvloop

        uvloop.run(_serve(mode, port_queue, record_dir, coalesce_ms))
    else:
        asyncio.run(_serve(mode, port_queue, record_dir, coalesce_ms))


async def _serve(mode: str, port_queue: Any, record_dir: str, coalesce_ms: float | None = None) -> None:
    import psutil
    from aiohttp import web

    lags: deque[float] = deque(maxlen=100_000)
    loop = asyncio.get_running_loop()

    async def probe_lag() -> None:
        while True:
            start = loop.time()
            await asyncio.sleep(0.02)
            lags.append(loop.time() - start - 0.02)

    lag_task = asyncio.ensure_future(probe_lag())
    gc_pauses: list[float] = []  # seconds per collection of the oldest generation (the long ones)
    gc_young_max = [0.0]  # the longest collection of generation 0 or 1
    gc_started = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        elif info.get("generation") == 2:
            gc_pauses.append(time.perf_counter() - gc_started[0])
        else:
            gc_young_max[0] = max(gc_young_max[0], time.perf_counter() - gc_started[0])

    import gc

    gc.callbacks.append(on_gc)
    hops: list[float] = []  # client's send -> the server's send of a frame's last packet, seconds
    if mode.startswith("passthrough"):
        _measure_server_hop(hops)
    backend: Any = (PassthroughBackend(record_dir, record="norec" not in mode, coalesce_ms=coalesce_ms)
                    if mode.startswith("passthrough")
                    else StockBackend(record_dir))
    if mode.startswith("passthrough"):  # what `cloudhall serve` does before serving
        from cloudhall.cli import freeze_startup_heap

        freeze_startup_heap()
    process = psutil.Process()
    stop = asyncio.Event()

    async def offer(request: web.Request) -> web.Response:
        body = await request.json()
        sdp = await backend.negotiate(body["session"], body["participant"], body["sdp"], body["tracks"])
        return web.json_response({"sdp": sdp})

    async def probe(request: web.Request) -> web.Response:
        times = process.cpu_times()
        values = sorted(lags)
        lags.clear()
        gc_pause_max, gc_count, gc_young = max(gc_pauses, default=0.0), len(gc_pauses), gc_young_max[0]
        gc_pauses.clear()
        gc_young_max[0] = 0.0
        p99 = values[int(len(values) * 0.99)] if values else 0.0
        hop = sorted(hops)
        hops.clear()
        with open("/proc/thread-self/schedstat") as f:  # ns on CPU, ns runnable but waiting for a CPU
            on_cpu, waiting = (int(x) for x in f.read().split()[:2])
        return web.json_response({"cpu": times.user + times.system, "sys": times.system,
                                  "rss": process.memory_info().rss,
                                  "loop_on_cpu": on_cpu / 1e9, "loop_waiting": waiting / 1e9,
                                  "lag_p99": p99, "threads": process.num_threads(),
                                  "switches": sum(process.num_ctx_switches()),
                                  "gc2_max": gc_pause_max, "gc2_count": gc_count, "gc_young_max": gc_young,
                                  "gc_tracked": len(gc.get_objects()),
                                  "server_hop_p50": _pct(hop, 0.5) if hop else float("nan"),
                                  "server_hop_p95": _pct(hop, 0.95) if hop else float("nan"),
                                  "states": backend.states()})

    async def shutdown(request: web.Request) -> web.Response:
        stop.set()
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_get("/probe", probe)
    app.router.add_post("/shutdown", shutdown)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_queue.put(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    await stop.wait()
    lag_task.cancel()
    await backend.close()
    await runner.cleanup()


class _NullRecordingEvents:
    def file_finished(self, session_id: str, entry: dict) -> None:
        pass

    def recording_failed(self, session_id: str, reason: str) -> None:
        print(f"recording failed: {session_id}: {reason}", file=sys.stderr)


def _measure_server_hop(samples: list[float]) -> None:
    """Time from a client's send to the server's send of each stamped packet (a video frame's last).

    The one-hop latency the clients measure also holds the receiving client's own delay, and
    at 30 calls the clients' core is as busy as the server's; this is the server's share
    alone (the kernel's loopback and the wait in the server's socket buffer included).
    Costs a wrapper call per forwarded packet (~0.05-0.1 us of the ~30 us each costs).
    """
    from media.passthrough import SenderLink

    send = SenderLink.send

    def measured(self: Any, seq: int, timestamp: int, marker: int, payload: bytes, wall: float,
                 level: int | None = None) -> int:
        sent = send(self, seq, timestamp, marker, payload, wall, level)
        if marker and sent > 0 and payload[-4:] == MAGIC:
            samples.append(time.time() - struct.unpack("!d", payload[-12:-4])[0])
        return sent

    SenderLink.send = measured  # type: ignore[method-assign]


class PassthroughBackend:
    def __init__(self, record_dir: str, record: bool = True, coalesce_ms: float | None = None) -> None:
        from cloudhall.settings import MediaSettings
        from media.server import MediaServer

        self.recorders: list[Any] = []
        self.disk = None
        try:
            if not record:
                raise ImportError("recording disabled (--no-record)")
            from recordings.diskwriter import DiskWriter
            from recordings.writer import SessionRecorder

            self.disk = DiskWriter(name="bench-recorder")

            def sink(session_id: str) -> Any:
                recorder = SessionRecorder(session_id, Path(record_dir), _NullRecordingEvents(), disk_writer=self.disk)
                self.recorders.append(recorder)
                return recorder
        except ImportError as exc:  # the recorder is someone else's package: fall back to a no-op sink
            print(f"recordings.writer unavailable ({exc}); using a no-op sink", file=sys.stderr)
            sink = lambda session_id: _NoopSink()  # noqa: E731
        settings = MediaSettings() if coalesce_ms is None else MediaSettings(wakeup_coalesce_ms=coalesce_ms)
        self.server = MediaServer(settings, sink_factory=sink)

    def states(self) -> dict:
        counts: dict[str, int] = {}
        for session_id in self.server.session_ids:
            stats = self.server.stats(session_id)
            for participant in stats["participants"].values():
                counts[participant["state"]] = counts.get(participant["state"], 0) + 1
            for track in stats["tracks"].values():
                for key in ("frames_in", "frames_out", "gaps", "frames_dropped_for_keyframe", "keyframe_requests"):
                    counts[key] = counts.get(key, 0) + track[key]
                counts["subscriber_drops"] = counts.get("subscriber_drops", 0) + sum(
                    s["drops"] for s in track["subscribers"])
                counts["backlog_drops"] = counts.get("backlog_drops", 0) + sum(
                    s["backlog_drops"] for s in track["subscribers"])
                counts["server_packets_in"] = counts.get("server_packets_in", 0) + track["packets_in"]
                for key in ("frames_in", "frames_out", "packets_in"):  # per source, e.g. screen_frames_in
                    name = f"{track['source']}_{key}"
                    counts[name] = counts.get(name, 0) + track[key]
                counts["server_packets_out"] = counts.get("server_packets_out", 0) + sum(
                    s["packets_out"] for s in track["subscribers"])
        # Recorded calls must be recorded: frames the recorder dropped (its writer fell behind)
        # or still holds in its queue.
        counts["recorder_dropped"] = sum(r.dropped_frames for r in self.recorders)
        counts["recorder_queued"] = sum(r.queued_frames for r in self.recorders)
        return counts

    async def negotiate(self, session: str, participant: str, sdp: str, tracks: dict) -> str:
        from media.server import OfferIn

        answer = await self.server.negotiate(session, participant, OfferIn(sdp=sdp, tracks=tracks))
        return answer.sdp

    async def close(self) -> None:
        await self.server.close()
        for recorder in self.recorders:
            await recorder.close()
        if self.disk is not None:
            self.disk.close()


class _NoopSink:
    def open_track(self, track: Any) -> Any:
        return self

    def write(self, frame: Any) -> None:
        pass

    def close(self) -> None:
        pass


class StockBackend:
    """The baseline: aiortc's MediaRelay forwards decoded frames, MediaRecorder re-encodes."""

    def __init__(self, record_dir: str) -> None:
        from aiortc.contrib.media import MediaRelay

        self.relay = MediaRelay()
        self.record_dir = Path(record_dir)
        self.sources: dict[tuple[str, str, str], asyncio.Future[Any]] = {}
        self.pcs: list[Any] = []
        self.recorders: list[Any] = []

    def _source(self, session: str, owner: str, source: str) -> asyncio.Future[Any]:
        key = (session, owner, source)
        if key not in self.sources:
            self.sources[key] = asyncio.get_running_loop().create_future()
        return self.sources[key]

    async def negotiate(self, session: str, participant: str, sdp: str, tracks: dict) -> str:
        from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaRecorder

        relay = self.relay

        class Proxy(MediaStreamTrack):
            def __init__(self, kind: str, future: asyncio.Future[Any]) -> None:
                super().__init__()
                self.kind, self.future, self.sub = kind, future, None

            async def recv(self) -> Any:
                if self.sub is None:
                    self.sub = relay.subscribe(await self.future, buffered=False)
                return await self.sub.recv()

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.pcs.append(pc)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        other = "agent" if participant == "outlet" else "outlet"
        for t in pc.getTransceivers():
            role = tracks[t.mid]
            if role.startswith("remote:"):
                t.sender.replaceTrack(Proxy(t.kind, self._source(session, other, role[7:])))
                t.direction = "sendonly"
            else:
                t.direction = "recvonly"
                self._source(session, participant, role).set_result(t.receiver.track)
                path = self.record_dir / f"{session}-{participant}-{role}.mkv"
                recorder = MediaRecorder(str(path), format="matroska")
                recorder.addTrack(relay.subscribe(t.receiver.track))
                await recorder.start()
                self.recorders.append(recorder)
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def states(self) -> dict:
        counts: dict[str, int] = {}
        for pc in self.pcs:
            counts[pc.connectionState] = counts.get(pc.connectionState, 0) + 1
        return counts

    async def close(self) -> None:
        for recorder in self.recorders:
            try:
                await asyncio.wait_for(recorder.stop(), 10)
            except Exception:
                pass
        for pc in self.pcs:
            await pc.close()


# --------------------------------------------------------------------------- client side
def client_main(calls: list[str], port: int, loops: dict[str, list[bytes]], results: Any, control: Any,
                paced: bool = True) -> None:
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_clients(calls, port, loops, results, control, paced))


class LoopTrack:
    """Factory for a pre-encoded looping track; jumps back to the keyframe on PLI."""

    @staticmethod
    def make(kind: str, source: str, frames: list[bytes], running: asyncio.Event | None = None) -> Any:
        """``running``: when given, the track sends only while it is set."""
        from aiortc import MediaStreamTrack

        from media import passthrough

        class _Loop(MediaStreamTrack):
            def __init__(self) -> None:
                super().__init__()
                self.kind = kind
                self.index = 0
                self.start: float | None = None
                self.sent = 0
                self.clock = 90000 if kind == "video" else 48000

            def keyframe(self) -> None:
                if kind == "video":
                    self.index = 0

            async def recv(self) -> Any:
                if running is not None:
                    await running.wait()
                if self.start is None:
                    self.start = time.time()
                due = self.start + self.sent / RATES[source]
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = frames[self.index % len(frames)]
                self.index = (self.index + 1) % len(frames)
                if kind == "video":
                    now = time.time()
                    data = data + STAMP.pack(now, now) + MAGIC
                pts = int(self.sent * self.clock / RATES[source])
                self.sent += 1
                return passthrough.make_packet(data, pts, self.clock)

        return _Loop()


class Counter:
    """Frames (arrival times), latency samples and RTP loss of one received route."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.latency: list[float] = []
        self.captured: list[float] = []  # video: when each frame was captured (its loop tick)
        self.received = 0
        self.first_seq: int | None = None
        self.ext_max = 0
        self.cycles = 0
        self.last: int | None = None

    def packet(self, seq: int) -> None:
        self.received += 1
        if self.first_seq is None:
            self.first_seq = self.last = seq
            self.ext_max = seq
            return
        assert self.last is not None
        if ((seq - self.last) & 0xFFFF) < 0x8000:
            if seq < self.last:
                self.cycles += 1 << 16
            self.last = seq
            self.ext_max = self.cycles + seq

    @property
    def loss(self) -> float:
        """Over the whole call (set-up included)."""
        if self.first_seq is None:
            return 0.0
        expected = self.ext_max - self.first_seq + 1
        return max(0.0, 1 - self.received / expected) if expected > 0 else 0.0

    def mark(self) -> tuple[int, int]:
        """(packets received, highest extended sequence number) now, for :meth:`loss_since`."""
        return self.received, self.ext_max

    def loss_since(self, mark: tuple[int, int]) -> float:
        """Share of the packets numbered since ``mark`` that did not arrive."""
        expected = self.ext_max - mark[1]
        return max(0.0, 1 - (self.received - mark[0]) / expected) if expected > 0 else 0.0


def add_loop_senders(pc: Any, participant: str, loops: dict[str, list[bytes]],
                     running: asyncio.Event | None = None) -> list[tuple[Any, str]]:
    """The participant's own sources as pre-encoded loop tracks on sendonly transceivers: (transceiver, source)."""
    from media import passthrough

    roles = []
    for source in ROUTES[participant][0]:
        kind = "audio" if source == "microphone" else "video"
        track = LoopTrack.make(kind, source, loops[source], running)
        t = pc.addTransceiver(track, direction="sendonly")
        passthrough.install_sender_hooks(t.sender, kind, track.keyframe, lambda bitrate: None)
        roles.append((t, source))
    return roles


CLIENT_COALESCE_MS = 1.0
VP8_CHUNK = 1296  # aiortc's packetizer: 1300-byte payloads, 4 of them its payload descriptor
# Chromium's pacer sends video at 2.5 times the encoder's target rate (its pace multiplier)
# and, when it has to wait, wakes again after its 5 ms process interval; audio is not paced.
PACE_MULTIPLIER = 2.5
PACE_INTERVAL = 0.005


class Pacer:
    """One timer for every paced stream of a client process that has packets waiting.

    With a timer per stream, each key frame woke a client process 100-140 times and 30 calls
    kept ~90 streams waking; one timer wakes a process at most 1 / PACE_INTERVAL times a
    second. The clients share one core and must not be what limits K.
    """

    def __init__(self) -> None:
        self.waiting: dict[PacedLoop, None] = {}  # streams with packets left, in the order they queued
        self.handle: asyncio.TimerHandle | None = None

    def wake(self, stream: PacedLoop) -> None:
        self.waiting[stream] = None
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(PACE_INTERVAL, self._tick)

    def forget(self, stream: PacedLoop) -> None:
        self.waiting.pop(stream, None)

    def _tick(self) -> None:
        for stream in list(self.waiting):
            if not stream.pace():
                del self.waiting[stream]
        self.handle = asyncio.get_running_loop().call_later(PACE_INTERVAL, self._tick) if self.waiting else None


PACER = Pacer()


class PacedLoop:
    """A load client's source: pre-encoded, pre-packetized frames sent on time through a SenderLink.

    The load clients must cost far less than the server they load (both share a 2-core
    machine), and aiortc's own sender path (a task per track, packetizing and an RTP packet
    object per packet) cost them more CPU than the server spent forwarding and recording.
    Here each frame's packets are made in one timer callback (its capture), with the RTP a
    browser sends: VP8 payload descriptors with a 15-bit picture id, marker on a frame's last packet,
    abs-send-time for the server's estimator; the server's NACKs are answered from the
    link's history and its PLIs restart the loop at its key frame.

    Video is paced as Chromium paces it (:data:`PACE_MULTIPLIER` times the loop's average
    rate, :data:`PACE_INTERVAL` between wake-ups while packets wait): a browser never puts a
    frame's packets on the wire at once, and these loops' key frames (a loop starts with one,
    every 2 s) are 125-176 packets. ``paced=False`` sends each frame's packets in one go,
    as this benchmark did until 2026-12-03 (``--burst``). The frame's last packet carries the
    capture time and the time it is handed to the socket (:data:`STAMP`), either way.
    """

    def __init__(self, transceiver: Any, source: str, frames: list[bytes], paced: bool = True) -> None:
        import random

        from media import passthrough

        self.source = source
        self.video = source != "microphone"
        self.link = passthrough.SenderLink(transceiver, "video" if self.video else "audio")
        self.link.on_keyframe_request = self.keyframe
        # frames as lists of VP8 chunks (the codec data of each packet); Opus: one per frame
        self.frames = [[f[i:i + VP8_CHUNK] for i in range(0, len(f), VP8_CHUNK)] if self.video else [f]
                       for f in frames]
        self.step = (90000 if self.video else 48000) // RATES[source]
        self.index = 0
        self.sent = 0
        self.seq = random.randint(0, 0xFFFF)
        self.timestamp = random.randint(0, 0xFFFFFFFF)
        self.picture_id = random.randint(0, 0x7FFF)
        self.start: float | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.paced = paced and self.video
        self.pace_rate = PACE_MULTIPLIER * sum(map(len, frames)) * RATES[source] / len(frames)  # bytes/s
        self.waiting: deque[tuple[int, int, int, bytes, float]] = deque()  # seq, timestamp, last, payload, captured
        self.debt = 0.0  # bytes sent ahead of the pace, as of debt_at
        self.debt_at = 0.0

    def keyframe(self) -> None:
        if self.video:
            self.index = 0

    def begin(self) -> None:
        self.handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        PACER.forget(self)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if not self.link.ready:
            self.handle = loop.call_later(0.02, self._tick)
            return
        if self.start is None:
            self.start = loop.time()
        wall = time.time()
        chunks = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        timestamp = (self.timestamp + self.sent * self.step) & 0xFFFFFFFF
        if self.video:
            descriptor = struct.pack("!H", 0x8000 | self.picture_id)
            self.picture_id = (self.picture_id + 1) & 0x7FFF
            last = len(chunks) - 1
            for i, chunk in enumerate(chunks):
                self.waiting.append((self.seq, timestamp, int(i == last),
                                     (b"\x90\x80" if i == 0 else b"\x80\x80") + descriptor + chunk, wall))
                self.seq = (self.seq + 1) & 0xFFFF
            if self.pace():
                PACER.wake(self)
        else:
            self.link.send(self.seq, timestamp, 0, chunks[0], wall)
            self.seq = (self.seq + 1) & 0xFFFF
        self.sent += 1
        self.handle = loop.call_at(self.start + self.sent / RATES[self.source], self._tick)

    def pace(self) -> bool:
        """Send what the pace allows now (everything, unpaced); returns whether packets still wait."""
        now = asyncio.get_running_loop().time()
        self.debt = max(0.0, self.debt - (now - self.debt_at) * self.pace_rate)
        self.debt_at = now
        allowance = self.pace_rate * PACE_INTERVAL if self.paced else float("inf")
        waiting, send = self.waiting, self.link.send
        while waiting and self.debt < allowance:
            seq, timestamp, last, payload, captured = waiting.popleft()
            wall = time.time()
            if last:  # when captured (frames counted per window) and sent (the one-hop latency)
                payload += STAMP.pack(captured, wall) + MAGIC
            send(seq, timestamp, last, payload, wall)
            self.debt += len(payload)
        return bool(waiting)


async def _connect(session: str, participant: str, port: int, loops: dict[str, list[bytes]],
                   counters: dict[str, Counter], paced: bool = True) -> tuple[Any, list[PacedLoop]]:
    import aiohttp
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from media import passthrough

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    roles = []
    sources = []
    for source in ROUTES[participant][0]:
        t = pc.addTransceiver("audio" if source == "microphone" else "video", direction="sendonly")
        sources.append(PacedLoop(t, source, loops[source], paced))
        roles.append((t, source))
    for role in ROUTES[participant][1]:
        kind = "audio" if role.endswith("microphone") else "video"
        t = pc.addTransceiver(kind, direction="recvonly")
        counter = counters.setdefault(role, Counter())

        def on_frame(data: bytes, ts: int, key: bool, now: float, counter: Counter = counter) -> None:
            wall = time.time()
            counter.arrivals.append(wall)
            if data.endswith(MAGIC):
                captured, sent = STAMP.unpack(data[-4 - STAMP.size:-4])
                counter.captured.append(captured)
                counter.latency.append(wall - sent)

        def on_packet(seq: int, *rest: Any, counter: Counter = counter) -> None:
            counter.packet(seq)

        passthrough.ReceiverTap(t.receiver, kind, on_frame, lambda: None, on_packet=on_packet)
        roles.append((t, role))
    await pc.setLocalDescription(await pc.createOffer())
    # The clients' receive path costs what the server's does; a 1 MiB receive buffer as the
    # server's, so that a burst after a stall of the server is not lost at the client.
    passthrough.install_fast_receive(pc, receive_buffer=1 << 20)
    body = {"session": session, "participant": participant, "sdp": pc.localDescription.sdp,
            "tracks": {t.mid: role for t, role in roles}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/offer", json=body,
                             timeout=aiohttp.ClientTimeout(total=60)) as response:
            response.raise_for_status()
            answer = await response.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    for source in sources:
        source.begin()
    return pc, sources


async def _clients(calls: list[str], port: int, loops: dict[str, list[bytes]], results: Any, control: Any,
                   paced: bool = True) -> None:
    from media import passthrough

    # The clients wake up per window of packets too (as the server does): they share one core
    # and must not be what limits K. Their receive adds up to 1 ms to the one-hop latency.
    passthrough.install_wakeup_coalescing(asyncio.get_running_loop(), CLIENT_COALESCE_MS / 1000)
    counters: dict[str, dict[str, dict[str, Counter]]] = {}
    pcs = []
    sending: list[PacedLoop] = []
    setup: list[float] = []
    for session in calls:
        counters[session] = {"outlet": {}, "agent": {}}
        pc, sources = await _connect(session, "outlet", port, loops, counters[session]["outlet"], paced)
        pcs.append(pc)
        sending += sources
        started = time.time()
        pc, sources = await _connect(session, "agent", port, loops, counters[session]["agent"], paced)
        pcs.append(pc)
        sending += sources
        camera = counters[session]["agent"]["remote:camera"]
        deadline = time.time() + 20
        while not camera.arrivals and time.time() < deadline:
            await asyncio.sleep(0.01)
        setup.append(camera.arrivals[0] - started if camera.arrivals else float("nan"))
    results.put(("ready", setup))
    loop = asyncio.get_running_loop()

    def packets() -> int:  # RTP packets these clients sent to the server and got from it, so far
        sent = sum(p.link.packets for p in sending)
        return sent + sum(c.received for parts in counters.values() for routes in parts.values()
                          for c in routes.values())

    window_start, window_end = await loop.run_in_executor(None, control.get)
    await asyncio.sleep(max(0.0, window_start - time.time()))
    packets_start = packets()
    marks = {id(c): c.mark() for parts in counters.values() for routes in parts.values() for c in routes.values()}
    await asyncio.sleep(max(0.0, window_end - time.time()))
    window_packets = packets() - packets_start
    window_loss = {id(c): c.loss_since(marks[id(c)])
                   for parts in counters.values() for routes in parts.values() for c in routes.values()}
    await asyncio.sleep(1.0)  # frames sent at the window's end: a paced key frame takes ~0.7 s
    report = []
    for session, parts in counters.items():
        for participant, routes in parts.items():
            for role, counter in routes.items():
                source = role.split(":")[1]
                stamped = list(zip(counter.arrivals[-len(counter.latency):], counter.latency)) \
                    if counter.latency else []
                if counter.captured:  # video: the frames captured in the window, however late the pacer sent them
                    got = sum(1 for c in counter.captured if window_start <= c < window_end)
                else:
                    got = sum(1 for a in counter.arrivals if window_start <= a < window_end)
                lat = [x for a, x in stamped if window_start <= a < window_end]
                report.append({"route": f"{participant}<-{source}", "got": got, "packets": 0,
                               "expected": RATES[source] * (window_end - window_start),
                               "loss": window_loss[id(counter)], "call_loss": counter.loss, "latency": lat})
    report[0]["packets"] = window_packets
    results.put(("report", report))
    for source in sending:
        source.stop()
    for pc in pcs:
        await pc.close()


# --------------------------------------------------------------------------- orchestration
def _get(port: int, path: str, method: str = "GET") -> dict:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def steal_ms(cpus: list[int]) -> float:
    """Milliseconds the hypervisor ran something else while these CPUs had work (/proc/stat's steal)."""
    total = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus and len(fields) >= 8:
                total += int(fields[7])
    return 1000 * total / os.sysconf("SC_CLK_TCK")


def udp_drops(pids: list[int]) -> int:
    """Datagrams the kernel dropped because these processes' UDP sockets' receive buffers were full."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[9] in inodes:
                        drops += int(fields[-1])
        except OSError:
            continue
    return drops


def _pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * q))]


def run(mode: str, calls: int, seconds: float, loops: dict[str, list[bytes]], processes: int,
        use_uvloop: bool = False, profile: str = "", pin: bool = False, coalesce_ms: float | None = None,
        paced: bool = True) -> dict:
    """One server process of ``mode`` with ``calls`` concurrent calls; returns the figures.

    ``pin``: the server alone on the first CPU, the clients (and this process) on the others,
    so that the server's figures are one core's, not what the scheduler left it.
    """
    ctx = mp.get_context("spawn")
    port_queue = ctx.Queue()
    record_dir = tempfile.mkdtemp(prefix=f"media-load-{mode}-")
    server = ctx.Process(target=server_main, args=(mode, port_queue, record_dir, use_uvloop, coalesce_ms),
                         daemon=True)
    server.start()
    cpus = sorted(os.sched_getaffinity(0))
    if pin and len(cpus) > 1:
        os.sched_setaffinity(server.pid, cpus[:1])
        os.sched_setaffinity(0, cpus[1:])  # the clients inherit it
    port = port_queue.get(timeout=60)
    idle = _get(port, "/probe")
    results = ctx.Queue()
    controls = []
    clients = []
    names = [f"{mode}-{calls}-{i}" for i in range(calls)]
    shares = [names[i::processes] for i in range(processes) if names[i::processes]]
    for share in shares:
        control = ctx.Queue()
        process = ctx.Process(target=client_main, args=(share, port, loops, results, control, paced),
                              daemon=True)
        process.start()
        controls.append(control)
        clients.append(process)
    setup: list[float] = []
    for _ in clients:
        kind, value = results.get(timeout=120 + 10 * calls)
        setup += value
    time.sleep(2.0)  # settle
    import psutil

    client_procs = [psutil.Process(p.pid) for p in clients]
    client_cpu0 = sum(sum(p.cpu_times()[:2]) for p in client_procs)
    before = _get(port, "/probe")
    drops0 = udp_drops([server.pid]), udp_drops([p.pid for p in clients])
    server_cpus = sorted(os.sched_getaffinity(server.pid))
    steal0 = steal_ms(server_cpus)
    spies: list[Any] = []
    if profile:  # py-spy samples the server (and the first client process) for the window (collapsed stacks, flamegraph input)
        import subprocess

        out = f"{profile}-{mode}-{calls}.txt"
        py_spy = Path(sys.executable).with_name("py-spy")  # the virtualenv's (bench extra), not on PATH
        spies = [subprocess.Popen([str(py_spy) if py_spy.exists() else "py-spy", "record", "--pid", str(pid),
                                   "--duration", str(int(seconds)), "--rate", "500", "--gil", "--format", "raw",
                                   "--output", name, "--nonblocking"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for pid, name in ((server.pid, out), (clients[0].pid, out.replace(".txt", "-client.txt")))]
    start = time.time()
    for control in controls:
        control.put((start, start + seconds))
    time.sleep(seconds)
    after = _get(port, "/probe")
    drops1 = udp_drops([server.pid]), udp_drops([p.pid for p in clients])
    steal1 = steal_ms(server_cpus)
    for spy in spies:
        spy.wait(timeout=60)
    client_cpu = sum(sum(p.cpu_times()[:2]) for p in client_procs) - client_cpu0
    reports: list[dict] = []
    for _ in clients:
        kind, value = results.get(timeout=60)
        reports += value
    _get(port, "/shutdown", "POST")
    for process in clients:
        process.join(timeout=30)
    server.join(timeout=60)
    if server.is_alive():
        server.terminate()
    if pin:
        os.sched_setaffinity(0, cpus)
    for r in reports:  # which routes fell short, on stderr
        if r["loss"] > 0.01 or r["got"] < 0.9 * r["expected"]:
            print(f"K={calls} route {r['route']}: {r['got']} of {r['expected']:.0f} frames, loss {100 * r['loss']:.1f} %",
                  file=sys.stderr)
    ratios = [r["got"] / r["expected"] for r in reports]
    latency = [x for r in reports for x in r["latency"]]
    return {
        "mode": mode + ("+uvloop" if use_uvloop else "") + (f"+co{coalesce_ms:g}" if coalesce_ms is not None else "")
        + ("" if paced else "+burst"),
        "calls": calls, "states": after["states"],
        "cpu_per_call_pct": 100 * (after["cpu"] - before["cpu"]) / seconds / calls,
        "cpu_total_pct": 100 * (after["cpu"] - before["cpu"]) / seconds,
        # Kernel share: on loopback a sendto also runs the receiving socket's side in our process.
        "sys_pct": 100 * (after["sys"] - before["sys"]) / max(1e-9, after["cpu"] - before["cpu"]),
        # Server CPU per RTP packet through it (sent to it + received from it, counted by the
        # clients): comparable between server kinds, and when a busy machine makes clients send less.
        "us_per_packet": 1e6 * (after["cpu"] - before["cpu"]) / max(1, sum(r["packets"] for r in reports)),
        # The server's own count of RTP packets in, per second and call (passthrough only).
        "server_in_pps_per_call": (after["states"].get("server_packets_in", 0)
                                   - before["states"].get("server_packets_in", 0)) / seconds / calls,
        "server_out_pps_per_call": (after["states"].get("server_packets_out", 0)
                                    - before["states"].get("server_packets_out", 0)) / seconds / calls,
        "client_cpu_pct": 100 * client_cpu / seconds,
        # Datagrams the kernel dropped in the window because a receive buffer was full.
        "server_rcvbuf_drops": drops1[0] - drops0[0], "client_rcvbuf_drops": drops1[1] - drops0[1],
        "recorder_dropped": after["states"].get("recorder_dropped", 0),
        "recorder_queued": after["states"].get("recorder_queued", 0),
        # Share of the window the event-loop thread was runnable but had no CPU (other load).
        "loop_starved_pct": 100 * (after["loop_waiting"] - before["loop_waiting"]) / seconds,
        "loop_busy_pct": 100 * (after["loop_on_cpu"] - before["loop_on_cpu"]) / seconds,
        # Share of the window the hypervisor took the server's CPU(s) away (a VM's noise, which no
        # figure of the server's own shows: the loop just stalls). Per CPU, averaged.
        "steal_pct": 100 * (steal1 - steal0) / 1000 / seconds / len(server_cpus),
        # Context switches of the server process (all threads) per second: the event loop and
        # the recorder thread handing the GIL to each other show here.
        "switches_per_s": (after["switches"] - before["switches"]) / seconds,
        # Full (generation 2) garbage collections in the window and the longest pause one caused.
        "gc2_collections": after["gc2_count"], "gc2_max_ms": 1000 * after["gc2_max"],
        "gc_young_max_ms": 1000 * after["gc_young_max"],
        "gc_tracked": after["gc_tracked"],  # objects a full collection walks (the frozen start-up heap excluded)
        "rss_per_call_mb": (after["rss"] - idle["rss"]) / calls / 2**20,
        "fps_worst_pct": 100 * min(ratios), "fps_mean_pct": 100 * statistics.mean(ratios),
        # Worst route's RTP loss in the window (and over its whole call, set-up included).
        "loss_pct": 100 * max(r["loss"] for r in reports),
        "call_loss_pct": 100 * max(r["call_loss"] for r in reports),
        "lag_p99_ms": 1000 * after["lag_p99"],
        "setup_p50_s": _pct(setup, 0.5), "setup_p95_s": _pct(setup, 0.95),
        "latency_p50_ms": 1000 * _pct(latency, 0.5), "latency_p95_ms": 1000 * _pct(latency, 0.95),
        "server_hop_p50_ms": 1000 * after.get("server_hop_p50", float("nan")),
        "server_hop_p95_ms": 1000 * after.get("server_hop_p95", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="1,4,8", help="comma-separated K values for the passthrough server")
    parser.add_argument("--baseline-calls", default="1", help="K values for the stock server ('' to skip)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window per run")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--uvloop", action="store_true", help="run the servers on uvloop (pip install uvloop)")
    parser.add_argument("--no-record", action="store_true", help="passthrough with a no-op sink instead of the recorder")
    parser.add_argument("--coalesce-ms", type=float, default=None,
                        help="the passthrough server's CLOUDHALL_MEDIA_WAKEUP_COALESCE_MS (default: the product's; 0: off)")
    parser.add_argument("--aiortc-receive", action="store_true",
                        help="passthrough with aiortc's own receive path (A/B for media.passthrough.install_fast_receive)")
    parser.add_argument("--burst", action="store_true",
                        help="clients send each video frame's packets at once instead of paced as Chromium "
                             "does (this benchmark's load shape before 2026-12-03)")
    parser.add_argument("--pin", action="store_true",
                        help="server alone on the first CPU, clients on the others (steadier per-call figures)")
    parser.add_argument("--profile", default="", metavar="PREFIX",
                        help="sample the server with py-spy during each window into PREFIX-<mode>-<K>.txt "
                             "(collapsed stacks; needs py-spy on PATH)")
    args = parser.parse_args()
    loops = encode_loops()
    rows = []
    kind = ("passthrough-norec" if args.no_record else "passthrough") + ("-slowrx" if args.aiortc_receive else "")
    plan = [(kind, int(k)) for k in args.calls.split(",") if k]
    plan += [("stock", int(k)) for k in args.baseline_calls.split(",") if k]
    header = (f"{'server':<20}{'K':>4}{'cpu/call':>10}{'cpu tot':>9}{'rss/call':>10}{'fps worst':>10}"
              f"{'fps mean':>9}{'loss':>7}{'lag p99':>9}{'setup p50':>10}{'p95':>7}{'hop p50':>9}{'p95':>8}{'srv p50':>9}{'p95':>8}"
              f"{'clients cpu':>12}{'loop busy':>10}{'starved':>8}{'us/pkt':>8}{'sys':>6}{'rec drop':>9}{'queued':>7}{'steal':>7}")
    print(header)
    for mode, calls in plan:
        row = run(mode, calls, args.seconds, loops, min(args.client_processes, calls), args.uvloop, args.profile,
                  args.pin, args.coalesce_ms if mode.startswith("passthrough") else None, not args.burst)
        rows.append(row)
        print(f"{row['mode']:<20}{row['calls']:>4}{row['cpu_per_call_pct']:>9.1f}%{row['cpu_total_pct']:>8.0f}%"
              f"{row['rss_per_call_mb']:>8.1f}MB{row['fps_worst_pct']:>9.0f}%{row['fps_mean_pct']:>8.0f}%"
              f"{row['loss_pct']:>6.2f}%{row['lag_p99_ms']:>7.1f}ms{row['setup_p50_s']:>9.2f}s"
              f"{row['setup_p95_s']:>6.2f}s{row['latency_p50_ms']:>7.1f}ms{row['latency_p95_ms']:>6.1f}ms"
              f"{row['server_hop_p50_ms']:>7.1f}ms{row['server_hop_p95_ms']:>6.1f}ms"
              f"{row['client_cpu_pct']:>11.0f}%{row['loop_busy_pct']:>9.0f}%{row['loop_starved_pct']:>7.0f}%"
              f"{row['us_per_packet']:>8.1f}{row['sys_pct']:>5.0f}%{row['recorder_dropped']:>9}{row['recorder_queued']:>7}"
              f"{row['steal_pct']:>6.1f}%",
              flush=True)
    print(json.dumps(rows, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
