"""Real aiortc client peers, synthetic media and small fakes for the media tests."""

from __future__ import annotations

import asyncio
import fractions
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from media.server import MediaServer, OfferIn
from media.sink import EncodedFrame, TrackInfo

VIDEO_CLOCK = 90000


async def wait_for(predicate: Callable[[], Any], timeout: float, describe: Callable[[], str], interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy; fail with the last state ``describe`` reports."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s; last state: {describe()}")
        await asyncio.sleep(interval)


class SyntheticVideo(MediaStreamTrack):
    """Moving bars at a fixed size and frame rate (yuv420p, so the client encoder does no conversion)."""

    kind = "video"

    def __init__(self, width: int, height: int, fps: int) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.sent = 0
        self._start: float | None = None
        base = np.zeros((height * 3 // 2, width), dtype=np.uint8)
        base[height:] = 128
        self._frames = []
        for i in range(16):
            frame = base.copy()
            x = (i * width // 16)
            frame[: height, x: x + width // 8] = 235
            frame[(i * height // 16) % height: (i * height // 16) % height + 8, : width] = 60
            self._frames.append(frame)

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.time()
        due = self._start + self.sent / self.fps
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self._frames[self.sent % 16], format="yuv420p")
        frame.pts = int(self.sent * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


class ToneAudio(MediaStreamTrack):
    """A 440 Hz tone, 20 ms stereo s16 frames at 48 kHz."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._start: float | None = None
        t = np.arange(960 * 50) / 48000
        tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
        self._samples = np.repeat(tone, 2).reshape(1, -1)

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.time()
        due = self._start + self.sent * 0.02
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        offset = (self.sent % 50) * 960 * 2
        frame = av.AudioFrame.from_ndarray(self._samples[:, offset: offset + 1920], format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self.sent * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.sent += 1
        return frame


@dataclass
class Received:
    """What a client got on one receiving transceiver."""

    role: str
    arrivals: list[float] = field(default_factory=list)
    pts: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    ended: bool = False

    def count_since(self, since: float) -> int:
        return sum(1 for a in self.arrivals if a >= since)


async def consume(track: MediaStreamTrack, received: Received, clock: Callable[[], float]) -> None:
    """Decode ``track`` until it ends, noting each frame's arrival (``clock()``), pts and size."""
    try:
        while True:
            frame = await track.recv()
            received.arrivals.append(clock())
            received.pts.append(frame.pts)
            if isinstance(frame, av.VideoFrame):
                received.sizes.append((frame.width, frame.height))
    except MediaStreamError:
        received.ended = True


class Client:
    """A browser stand-in: one real aiortc peer connection negotiating through a MediaServer."""

    def __init__(self, server: MediaServer, session_id: str, participant: str,
                 sources: dict[str, MediaStreamTrack], wants: list[str]) -> None:
        self.server, self.session_id, self.participant = server, session_id, participant
        self.sources, self.wants = sources, wants
        self.pc: RTCPeerConnection | None = None
        self.received: dict[str, Received] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> None:
        """Offer, get the answer, start counting received frames (does not wait for ICE)."""
        self.pc = pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        roles = []
        for role, track in self.sources.items():
            roles.append((pc.addTransceiver(track, direction="sendonly"), role))
        for role in self.wants:
            kind = "audio" if role.endswith("microphone") else "video"
            roles.append((pc.addTransceiver(kind, direction="recvonly"), role))
        await pc.setLocalDescription(await pc.createOffer())
        tracks = {t.mid: role for t, role in roles}
        answer = await self.server.negotiate(
            self.session_id, self.participant, OfferIn(sdp=pc.localDescription.sdp, tracks=tracks)
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type=answer.type))
        for transceiver, role in roles:
            if role.startswith("remote:"):
                received = self.received.setdefault(role, Received(role))
                self._tasks.append(asyncio.ensure_future(self._consume(transceiver.receiver.track, received)))

    async def _consume(self, track: MediaStreamTrack, received: Received) -> None:
        await consume(track, received, asyncio.get_running_loop().time)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.pc is not None:
            await self.pc.close()


class MemoryWriter:
    def __init__(self, info: TrackInfo, fail_after: int | None) -> None:
        self.info = info
        self.frames: list[EncodedFrame] = []
        self.closed = False
        self._fail_after = fail_after

    def write(self, frame: EncodedFrame) -> None:
        if self._fail_after is not None and len(self.frames) >= self._fail_after:
            raise OSError(28, "No space left on device")
        self.frames.append(frame)

    def close(self) -> None:
        self.closed = True


class MemorySink:
    """A PacketSink that keeps every frame in memory (``fail_after``: raise like a full disk)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.writers: list[MemoryWriter] = []
        self._fail_after = fail_after
        self.closed = False

    def open_track(self, track: TrackInfo) -> MemoryWriter:
        writer = MemoryWriter(track, self._fail_after)
        self.writers.append(writer)
        return writer

    async def close(self) -> None:
        self.closed = True

    def tracks(self, name: str) -> list[MemoryWriter]:
        return [w for w in self.writers if w.info.name == name]


class EventLog:
    """A MediaEvents consumer that records everything."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict]] = []

    def media_event(self, session_id: str, kind: str, data: dict) -> None:
        self.events.append((session_id, kind, data))

    def of(self, kind: str) -> list[dict]:
        return [data for _, k, data in self.events if k == kind]
