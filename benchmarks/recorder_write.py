"""Recorder costs: memory per open track, CPU per frame on the loop and the writer, finalize speed.

Not part of pass/fail. Run:
``.venv/bin/python benchmarks/recorder_write.py [--calls N] [--seconds S]``.

It records N simulated calls (outlet camera 640x480@30 + screen 1280x720@10 + Opus, agent
camera 640x480@30 + Opus: 170 frames/s per call) fed at real-time pace from one event
loop, and prints:
- RSS added per open track, for the recorder's codec-less streams and, for comparison,
  for streams opened through an encoder (what the stock MediaRecorder does);
- CPU per frame spent in ``TrackWriter.write`` on the event loop, and in the whole process
  (writer threads included) per frame recorded, fed in bursts and at real-time pace (the
  real-time figure includes this script's own per-frame ``asyncio.sleep``);
- event-loop lag p99 while recording;
- remux + hash time per minute of media at close.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402

from media.sink import EncodedFrame  # noqa: E402
from recordings.diskwriter import DiskWriter  # noqa: E402
from recordings.trackfile import TrackFile  # noqa: E402
from recordings.writer import SessionRecorder  # noqa: E402
from tests.media.conftest_recording import RecordedEvents, opus_track, track_info, vp8_track  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def thread_cpu() -> dict[int, float]:
    """CPU seconds of each live thread of this process."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory_per_track(tmp: Path, count: int = 40) -> None:
    camera = vp8_track(640, 480, 30, 1.0)
    mic = opus_track(1.0)
    key, _, _ = camera.frames[0]
    gc.collect()
    base = rss_mb()
    files = []
    for i in range(count):
        video = TrackFile(tmp / f"v{i}.mkv.part", "VP8", 90000, 640, 480)
        audio = TrackFile(tmp / f"a{i}.mkv.part", "opus", 48000)
        video.write(key, 0, True)
        audio.write(mic.frames[0][0], 0, True)
        files += [video, audio]
    recorder_mb = (rss_mb() - base) / (2 * count)
    for f in files:
        f.close()
    del files
    gc.collect()

    base = rss_mb()
    containers = []
    for i in range(count // 4):
        out = av.open(str(tmp / f"enc{i}.mkv"), "w", format="matroska")
        stream = out.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.codec_context.open()
        containers.append(out)
    encoder_mb = (rss_mb() - base) / (count // 4)
    for out in containers:
        out.close()
    print(f"RSS per open track (codec-less stream, recorder): {recorder_mb:.2f} MB")
    print(f"RSS per VP8 640x480 stream opened through libvpx (for comparison): {encoder_mb:.1f} MB")


class _NullWriter:
    def write(self, frame: EncodedFrame) -> None:
        pass


async def record_calls(
    tmp: Path, calls: int, seconds: float, *, baseline: bool = False, shared: bool = True
) -> float:
    camera = vp8_track(640, 480, 30, seconds)
    screen = vp8_track(1280, 720, 10, seconds)
    mic = opus_track(seconds)
    layout = [
        ("outlet", "camera", camera),
        ("outlet", "screen", screen),
        ("outlet", "microphone", mic),
        ("agent", "camera", camera),
        ("agent", "microphone", mic),
    ]
    events = RecordedEvents()
    t0 = time.time()
    recorders, schedule = [], []
    disk = DiskWriter() if shared else None
    for c in range(calls):
        recorder = SessionRecorder(f"bench-{c}", tmp, events, disk_writer=disk)
        recorders.append(recorder)
        for participant, source, encoded in layout:
            writer = recorder.open_track(
                track_info(recorder.session_id, participant, source, encoded, started_at=t0)
            )
            if baseline:
                writer = _NullWriter()
            for data, ts, key in encoded.frames:
                schedule.append((ts / encoded.clock_rate + c * 0.003, writer, data, ts, key))
    schedule.sort(key=lambda item: item[0])
    rss_before = rss_mb()
    lags: list[float] = []
    write_time = 0.0
    cpu0, start, threads0 = cpu(), time.perf_counter(), thread_cpu()
    switches0 = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    for due, writer, data, ts, key in schedule:
        delay = start + due - time.perf_counter()
        if delay > 0:
            before = time.perf_counter()
            await asyncio.sleep(delay)
            lags.append(time.perf_counter() - before - delay)
        frame = EncodedFrame(data=data, timestamp=ts, keyframe=key, arrival=time.time())
        t = time.thread_time()
        writer.write(frame)
        write_time += time.thread_time() - t
    while any(r.queued_frames for r in recorders):
        await asyncio.sleep(0.01)
    cpu_record = cpu() - cpu0
    threads1 = thread_cpu()
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - switches0
    loop_cpu = threads1[os.getpid()] - threads0[os.getpid()]
    writer_cpu = sum(v - threads0.get(k, 0.0) for k, v in threads1.items() if k != os.getpid())
    if baseline:
        await asyncio.gather(*(r.close() for r in recorders))
        if disk is not None:
            disk.close()
        return cpu_record
    rss_during = rss_mb()
    close_start, cpu1 = time.perf_counter(), cpu()
    manifests = await asyncio.gather(*(r.close() for r in recorders))
    if disk is not None:
        disk.close()
    close_wall, close_cpu = time.perf_counter() - close_start, cpu() - cpu1
    frames = len(schedule)
    dropped = sum(e["dropped_frames"] for m in manifests for e in m["files"])
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)] * 1000 if lags else 0.0
    media_minutes = calls * len(layout) * seconds / 60
    print(f"{'one shared disk writer' if shared else 'a disk writer per recorder'}:")
    print(
        f"{calls} calls x {seconds:.0f} s ({frames} frames, {frames / seconds:.0f} frames/s): "
        f"dropped {dropped}"
    )
    print(
        f"  TrackWriter.write on the event loop: {write_time / frames * 1e6:.1f} us CPU per frame"
    )
    base = await record_calls(tmp / "baseline", calls, seconds, baseline=True, shared=shared)
    extra = cpu_record - base
    print(
        f"  whole process while recording: {cpu_record / frames * 1e6:.1f} us CPU per frame; "
        f"the same schedule without recording: {base / frames * 1e6:.1f} us"
    )
    print(
        f"  of which the event-loop thread {loop_cpu / frames * 1e6:.1f} us, writer threads "
        f"{writer_cpu / frames * 1e6:.1f} us per frame; "
        f"{switches / seconds:.0f} voluntary context switches/s"
    )
    print(
        f"  recording's own cost: {extra / frames * 1e6:.1f} us CPU per frame, "
        f"{extra / seconds / calls * 100:.2f} % of a core per call"
    )
    print(
        f"  RSS while recording: +{(rss_during - rss_before) / calls:.2f} MB per call "
        "(after the schedule was built)"
    )
    print(f"  event-loop lag p99: {p99:.2f} ms")
    print(
        f"  close (remux to WebM + SHA-256): {close_wall:.2f} s wall, "
        f"{close_cpu / media_minutes:.3f} s CPU per minute of track media; "
        f"{len(events.finished)} files reported, {len(events.failures)} failures"
    )
    return cpu_record


async def burst_cost(tmp: Path, calls: int) -> None:
    """Frames fed as fast as the loop can: cost per write on the loop, and for the whole process."""
    camera = vp8_track(640, 480, 30, 10.0)
    mic = opus_track(10.0)
    events = RecordedEvents()
    recorders, frames = [], []
    for c in range(calls):
        recorder = SessionRecorder(
            f"burst-{c}", tmp, events, max_queued_frames=100_000, max_queued_bytes=1 << 31
        )
        recorders.append(recorder)
        video = recorder.open_track(track_info(recorder.session_id, "outlet", "camera", camera))
        audio = recorder.open_track(track_info(recorder.session_id, "outlet", "microphone", mic))
        frames += [(video, EncodedFrame(d, ts, k, 0.0)) for d, ts, k in camera.frames]
        frames += [(audio, EncodedFrame(d, ts, k, 0.0)) for d, ts, k in mic.frames]
    await asyncio.sleep(0.1)
    cpu0 = cpu()
    loop_time = 0.0
    for i in range(0, len(frames), 200):
        t = time.perf_counter()
        for writer, frame in frames[i : i + 200]:
            writer.write(frame)
        loop_time += time.perf_counter() - t
        await asyncio.sleep(0)
    while any(r.queued_frames for r in recorders):
        await asyncio.sleep(0.005)
    total = cpu() - cpu0
    await asyncio.gather(*(r.close() for r in recorders))
    print(
        f"burst of {len(frames)} frames: TrackWriter.write "
        f"{loop_time / len(frames) * 1e6:.1f} us wall per frame "
        f"on the loop; {total / len(frames) * 1e6:.1f} us CPU per frame for the whole process "
        f"(write + queue + mux + flush)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="recorder-bench-"))
    try:
        memory_per_track(tmp)
        asyncio.run(burst_cost(tmp, 4))
        asyncio.run(record_calls(tmp / "shared", args.calls, args.seconds, shared=True))
        asyncio.run(record_calls(tmp / "private", args.calls, args.seconds, shared=False))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
