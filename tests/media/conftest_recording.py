"""Shared helpers of the recorder and snapshot tests: real VP8/Opus frames and a fake event sink.

Not a conftest (``tests/media/conftest.py`` belongs to the forwarding tests): import it.
Frames are encoded once per process with PyAV's libvpx/libopus from synthetic moving
content, then fed to the recorder as a browser would send them.
"""

from __future__ import annotations

import fractions
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import numpy as np

from media.sink import EncodedFrame, TrackInfo


@dataclass(frozen=True)
class EncodedTrack:
    """Encoded frames of one synthetic track: (data, timestamp in clock units, keyframe)."""

    codec: str
    clock_rate: int
    frames: tuple[tuple[bytes, int, bool], ...]
    frame_interval: int  # clock units
    width: int | None = None
    height: int | None = None

    @property
    def duration(self) -> float:
        return len(self.frames) * self.frame_interval / self.clock_rate


@functools.lru_cache(maxsize=8)
def vp8_track(
    width: int, height: int, fps: int, seconds: float, gop_seconds: float = 1.0
) -> EncodedTrack:
    """VP8 frames of a moving gradient with a sliding white box (keyframe every ``gop_seconds``)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fps
    codec.bit_rate = 800_000
    codec.gop_size = max(1, int(fps * gop_seconds))
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "keyint_min": str(codec.gop_size),
    }
    count = int(round(fps * seconds))
    interval = 90000 // fps
    out: list[tuple[bytes, int, bool]] = []
    xs = np.arange(width, dtype=np.uint16)[None, :]
    ys = np.arange(height, dtype=np.uint16)[:, None]
    for i in range(count):
        img = np.empty((height, width, 3), np.uint8)
        img[:, :, 0] = (xs + i * 8) % 256
        img[:, :, 1] = (ys + i * 4) % 256
        img[:, :, 2] = 64
        box = (i * 12) % max(1, width - 64)
        img[height // 3 : height // 3 + 64, box : box + 64] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = codec.time_base
        for packet in codec.encode(frame):
            out.append((bytes(packet), packet.pts * interval, packet.is_keyframe))
    for packet in codec.encode(None):
        out.append((bytes(packet), packet.pts * interval, packet.is_keyframe))
    return EncodedTrack("VP8", 90000, tuple(out), interval, width, height)


@functools.lru_cache(maxsize=4)
def opus_track(seconds: float) -> EncodedTrack:
    """Opus frames (48 kHz stereo, 20 ms) of a 440 Hz tone."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 48000
    codec.time_base = fractions.Fraction(1, 48000)
    out: list[tuple[bytes, int, bool]] = []
    count = int(round(seconds * 50))
    for i in range(count + 1):
        t = np.arange(960) + i * 960
        tone = (np.sin(2 * np.pi * 440 * t / 48000) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2)[None, :], format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = codec.time_base
        for packet in codec.encode(frame):
            out.append(bytes(packet))
    out = out[:count]
    return EncodedTrack("opus", 48000, tuple((d, i * 960, True) for i, d in enumerate(out)), 960)


def track_info(
    session_id: str,
    participant: str,
    source: str,
    encoded: EncodedTrack,
    *,
    epoch: int = 0,
    started_at: float = 1_700_000_000.0,
) -> TrackInfo:
    kind = "video" if encoded.codec == "VP8" else "audio"
    return TrackInfo(
        session_id=session_id,
        participant=participant,
        source=source,
        kind=kind,
        codec=encoded.codec,
        clock_rate=encoded.clock_rate,
        epoch=epoch,
        started_at=started_at,
        width=encoded.width,
        height=encoded.height,
    )


def encoded_frames(
    encoded: EncodedTrack, started_at: float, *, offset: int = 0
) -> list[EncodedFrame]:
    """The track's frames as media would hand them over (``offset`` shifts the timestamps)."""
    return [
        EncodedFrame(
            data=data,
            timestamp=ts + offset,
            keyframe=key,
            arrival=started_at + ts / encoded.clock_rate,
        )
        for data, ts, key in encoded.frames
    ]


@dataclass
class RecordedEvents:
    """A real, small ``RecordingEvents``: keeps what it was told (thread-safe)."""

    finished: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def file_finished(self, session_id: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self.finished.append((session_id, entry))
            self.threads.append(threading.current_thread().name)

    def recording_failed(self, session_id: str, reason: str) -> None:
        with self._lock:
            self.failures.append((session_id, reason))
            self.threads.append(threading.current_thread().name)


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it is truthy; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


# -- child processes (crash and disk-limit tests) ------------------------------------------
#
# Run as ``python -m tests.media.conftest_recording MODE ROOT SESSION``; the tests start it
# with subprocess so a SIGKILL or a file-size limit hits a real recorder process.


def _child_crash(root: str, session: str) -> None:
    """Record camera + microphone, report when 3 s of media are on disk, then keep going."""
    import asyncio
    import sys
    from pathlib import Path

    from recordings.writer import SessionRecorder

    async def main() -> None:
        events = RecordedEvents()
        recorder = SessionRecorder(session, Path(root), events)
        camera, mic = vp8_track(640, 480, 30, 4.0), opus_track(4.0)
        t0 = 1_700_000_000.0
        writers = [
            (
                recorder.open_track(track_info(session, "outlet", "camera", camera, started_at=t0)),
                camera,
            ),
            (
                recorder.open_track(
                    track_info(session, "outlet", "microphone", mic, started_at=t0)
                ),
                mic,
            ),
        ]
        # The agent's camera opened but no frame came before the crash.
        recorder.open_track(track_info(session, "agent", "camera", camera, started_at=t0))
        streams = [(w, encoded_frames(t, t0), t.clock_rate) for w, t in writers]
        for writer, frames, rate in streams:
            for frame in frames:
                if frame.timestamp < 3 * rate:
                    writer.write(frame)
        while recorder.queued_frames:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        print("ready 3.0", flush=True)
        for writer, frames, rate in streams:  # mid-recording when the kill comes
            for frame in frames:
                if frame.timestamp >= 3 * rate:
                    writer.write(frame)
                    await asyncio.sleep(0.02)
        await asyncio.sleep(60)
        sys.exit("not killed")

    asyncio.run(main())


def _child_file_limit(root: str, session: str, limit: str) -> None:
    """Record with RLIMIT_FSIZE set (writes past it fail with EFBIG); print what happened."""
    import asyncio
    import json
    import resource
    import signal
    from pathlib import Path

    from recordings.writer import SessionRecorder

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    camera = vp8_track(640, 480, 30, 4.0)

    async def main() -> None:
        events = RecordedEvents()
        recorder = SessionRecorder(session, Path(root), events)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
        raised = None
        try:
            writer = recorder.open_track(track_info(session, "outlet", "camera", camera))
            for frame in encoded_frames(camera, 1_700_000_000.0):
                writer.write(frame)
                await asyncio.sleep(0)
            writer.close()
            manifest = await recorder.close()
        except Exception as exc:  # noqa: BLE001 - reported to the test
            raised, manifest = repr(exc), {}
        print(
            json.dumps(
                {
                    "raised": raised,
                    "failures": events.failures,
                    "finished": len(events.finished),
                    "state": manifest.get("state"),
                    "failure": manifest.get("failure"),
                }
            ),
            flush=True,
        )

    asyncio.run(main())


if __name__ == "__main__":
    import sys

    mode, *rest = sys.argv[1:]
    {"crash": _child_crash, "file-limit": _child_file_limit}[mode](*rest)
