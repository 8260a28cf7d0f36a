"""The recorder: real VP8/Opus frames in, WebM files out, re-opened and decoded with PyAV."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest

from recordings.diskwriter import DiskWriter
from recordings.finalize import finalize_leftovers
from recordings.trackfile import TrackFile
from recordings.writer import SessionRecorder
from tests.media.conftest_recording import (
    RecordedEvents,
    encoded_frames,
    opus_track,
    track_info,
    vp8_track,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def probe(path: Path) -> dict:
    """Codec, duration and decoded frames of a one-stream file, as a player would see them."""
    with av.open(str(path)) as container:
        assert len(container.streams) == 1
        stream = container.streams[0]
        info = {
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "duration": container.duration / 1_000_000 if container.duration else None,
            "sizes": set(),
            "decoded": 0,
            "extradata": stream.codec_context.extradata,
        }
        for frame in container.decode(stream):
            info["decoded"] += 1
            if stream.type == "video":
                info["sizes"].add((frame.width, frame.height))
        return info


def feed(writer, encoded, started_at: float) -> None:
    for frame in encoded_frames(encoded, started_at):
        writer.write(frame)


async def test_records_each_track_into_a_playable_hashed_webm(tmp_path: Path) -> None:
    events = RecordedEvents()
    recorder = SessionRecorder("call-1", tmp_path, events)
    camera, screen, mic = (
        vp8_track(640, 480, 30, 4.0),
        vp8_track(1280, 720, 10, 4.0),
        opus_track(4.0),
    )
    tracks = {
        "outlet-camera": camera,
        "outlet-screen": screen,
        "outlet-microphone": mic,
    }
    for name, encoded in tracks.items():
        participant, source = name.split("-")
        writer = recorder.open_track(
            track_info("call-1", participant, source, encoded, started_at=T0)
        )
        feed(writer, encoded, T0)  # faster than real time: nothing may be dropped

    manifest = await recorder.close()

    session_dir = tmp_path / "call-1"
    assert json.loads((session_dir / "manifest.json").read_text()) == manifest
    assert manifest["state"] == "closed"
    assert sorted(p.name for p in session_dir.iterdir() if not p.name.startswith(".")) == [
        "manifest.json",
        "outlet-camera-e0.webm",
        "outlet-microphone-e0.webm",
        "outlet-screen-e0.webm",
    ]
    by_track = {entry["track"]: entry for entry in manifest["files"]}
    for name, encoded in tracks.items():
        entry = by_track[name]
        path = session_dir / entry["file"]
        info = probe(path)
        assert info["format"] == "matroska,webm"
        assert entry["status"] == "finished" and entry["recovered"] is False
        assert entry["dropped_frames"] == 0
        assert entry["frames"] == len(encoded.frames) == info["decoded"]
        assert abs(info["duration"] - encoded.duration) < 0.5, (name, info["duration"])
        assert abs(entry["duration"] - encoded.duration) < 0.05
        assert entry["start"] == T0 and entry["end"] == pytest.approx(T0 + entry["duration"])
        assert entry["sha256"] == sha256(path)
        assert entry["bytes"] == path.stat().st_size
        if encoded.codec == "VP8":
            assert info["codec"] == "vp8"
            assert info["sizes"] == {(encoded.width, encoded.height)}
            assert (entry["width"], entry["height"]) == (encoded.width, encoded.height)
        else:
            assert info["codec"] == "opus"
            assert info["extradata"][:8] == b"OpusHead"  # Chromium refuses Opus without it

    # Each file is reported once, on the event loop's thread, with the manifest's hash.
    assert events.failures == []
    assert sorted(e["file"] for _, e in events.finished) == sorted(
        by_track[n]["file"] for n in tracks
    )
    assert {s for s, _ in events.finished} == {"call-1"}
    assert set(events.threads) == {threading.current_thread().name}
    for _, entry in events.finished:
        assert entry["sha256"] == by_track[entry["track"]]["sha256"]
        assert "part" not in entry


async def test_a_rejoin_makes_a_new_epoch_and_the_gap_is_in_the_manifest(tmp_path: Path) -> None:
    events = RecordedEvents()
    recorder = SessionRecorder("call-2", tmp_path, events)
    camera = vp8_track(640, 480, 30, 2.0)
    first = recorder.open_track(
        track_info("call-2", "outlet", "camera", camera, epoch=0, started_at=T0)
    )
    feed(first, camera, T0)
    first.close()
    rejoined_at = T0 + 2.0 + 1.5  # the participant came back 1.5 s after its last frame
    second = recorder.open_track(
        track_info("call-2", "outlet", "camera", camera, epoch=1, started_at=rejoined_at)
    )
    feed(second, camera, rejoined_at)

    manifest = await recorder.close()

    files = {entry["epoch"]: entry for entry in manifest["files"]}
    assert (
        files[0]["file"] == "outlet-camera-e0.webm" and files[1]["file"] == "outlet-camera-e1.webm"
    )
    assert files[1]["start"] == rejoined_at
    track = manifest["tracks"]["outlet-camera"]
    assert track["epochs"] == [0, 1]
    assert track["files"] == ["outlet-camera-e0.webm", "outlet-camera-e1.webm"]
    [gap] = track["gaps"]
    assert (gap["after_epoch"], gap["before_epoch"]) == (0, 1)
    assert gap["start"] == pytest.approx(T0 + 2.0, abs=0.01)
    assert gap["end"] == rejoined_at
    assert gap["duration"] == pytest.approx(1.5, abs=0.01)
    for entry in files.values():
        assert probe(tmp_path / "call-2" / entry["file"])["decoded"] == len(camera.frames)
    assert len(events.finished) == 2


async def test_video_starts_at_the_first_keyframe_and_the_anchor_follows_it(tmp_path: Path) -> None:
    recorder = SessionRecorder("call-3", tmp_path, RecordedEvents())
    camera = vp8_track(640, 480, 30, 4.0)
    frames = encoded_frames(camera, T0)
    second_keyframe = [i for i, f in enumerate(frames) if f.keyframe][1]
    writer = recorder.open_track(track_info("call-3", "outlet", "camera", camera, started_at=T0))
    for frame in frames[5:]:  # joined mid-GOP: the frames before the next keyframe can't decode
        writer.write(frame)

    manifest = await recorder.close()

    [entry] = manifest["files"]
    assert entry["skipped_frames"] == second_keyframe - 5
    assert entry["frames"] == len(frames) - second_keyframe
    assert entry["start"] == pytest.approx(T0 + frames[second_keyframe].timestamp / 90000)
    info = probe(tmp_path / "call-3" / entry["file"])
    assert info["decoded"] == entry["frames"]


async def test_an_overflowing_queue_drops_video_until_the_next_keyframe(tmp_path: Path) -> None:
    events = RecordedEvents()
    recorder = SessionRecorder("call-4", tmp_path, events, max_queued_frames=10)
    camera = vp8_track(640, 480, 30, 4.0)
    frames = encoded_frames(camera, T0)
    keyframes = [i for i, f in enumerate(frames) if f.keyframe]
    # Stall the writer thread the way a slow disk would: it needs the manifest to open the file.
    with recorder._manifest._lock:
        writer = recorder.open_track(
            track_info("call-4", "outlet", "camera", camera, started_at=T0)
        )
        for frame in frames[: keyframes[1]]:
            writer.write(frame)
        assert recorder.queued_frames == 10
    wait_until(lambda: recorder.queued_frames == 0, what="the backlog to drain")
    for frame in frames[keyframes[1] :]:  # at the disk's pace again: nothing more is dropped
        writer.write(frame)
        wait_until(lambda: recorder.queued_frames == 0, what="the frame to be written")

    manifest = await recorder.close()

    [entry] = manifest["files"]
    expected_dropped = keyframes[1] - 10
    assert entry["dropped_frames"] == expected_dropped == recorder.dropped_frames
    assert entry["frames"] == len(frames) - expected_dropped
    # No frame after the hole is in the file without its keyframe: everything decodes.
    assert probe(tmp_path / "call-4" / entry["file"])["decoded"] == entry["frames"]
    assert events.failures == []


async def test_a_session_folder_that_is_not_a_folder_fails_the_recording_once(
    tmp_path: Path,
) -> None:
    events = RecordedEvents()
    (tmp_path / "call-5").write_text("in the way")
    recorder = SessionRecorder("call-5", tmp_path, events)
    camera, mic = vp8_track(640, 480, 30, 2.0), opus_track(2.0)
    video = recorder.open_track(track_info("call-5", "outlet", "camera", camera, started_at=T0))
    audio = recorder.open_track(track_info("call-5", "outlet", "microphone", mic, started_at=T0))
    feed(video, camera, T0)  # must not raise
    feed(audio, mic, T0)

    manifest = await recorder.close()

    assert len(events.failures) == 1
    session, reason = events.failures[0]
    assert session == "call-5" and "call-5" in reason
    assert manifest["state"] == "failed" and manifest["failure"] == reason
    assert recorder.failed and events.finished == []


async def test_a_session_folder_removed_mid_recording_fails_once_without_raising(
    tmp_path: Path,
) -> None:
    events = RecordedEvents()
    recorder = SessionRecorder("call-6", tmp_path, events)
    camera = vp8_track(640, 480, 30, 4.0)
    frames = encoded_frames(camera, T0)
    writer = recorder.open_track(track_info("call-6", "outlet", "camera", camera, started_at=T0))
    for frame in frames[:60]:
        writer.write(frame)
    wait_until(lambda: recorder.queued_frames == 0, what="the first frames to be written")
    shutil.rmtree(tmp_path / "call-6")
    for frame in frames[60:]:
        writer.write(frame)

    manifest = await recorder.close()

    assert [s for s, _ in events.failures] == ["call-6"]
    assert manifest["state"] == "failed"
    assert events.finished == []


def test_a_full_disk_fails_the_recording_once_and_what_was_written_is_recovered(
    tmp_path: Path,
) -> None:
    vp8_track(640, 480, 30, 4.0)  # encode in this process too, for the comparison below
    limit = 120_000  # bytes: about a third of the 4 s camera track
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.media.conftest_recording",
            "file-limit",
            str(tmp_path),
            "call-7",
            str(limit),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["raised"] is None, report
    assert len(report["failures"]) == 1, report
    assert "File too large" in report["failures"][0][1]
    assert report["state"] == "failed" and report["finished"] == 0

    events = RecordedEvents()
    [recovered] = finalize_leftovers(tmp_path, events)

    path = tmp_path / "call-7" / recovered["file"]
    info = probe(path)
    assert recovered["recovered"] is True and recovered["session_id"] == "call-7"
    assert info["decoded"] == recovered["frames"] > 0
    assert 0.5 < recovered["duration"] < 4.0
    assert recovered["sha256"] == sha256(path)
    assert [e["file"] for _, e in events.finished] == [recovered["file"]]


def test_kill_9_mid_recording_leaves_files_finalized_on_the_next_start(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.media.conftest_recording", "crash", str(tmp_path), "call-8"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("ready"), (
            line,
            child.stderr.read() if child.poll() is not None else "",
        )
        fed = float(line.split()[1])
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    session_dir = tmp_path / "call-8"
    parts = sorted(p.name for p in session_dir.glob("*.mkv.part"))
    assert parts == ["outlet-camera-e0.mkv.part", "outlet-microphone-e0.mkv.part"]
    before = json.loads((session_dir / "manifest.json").read_text())
    assert {e["status"] for e in before["files"]} == {"recording"} and len(before["files"]) == 3
    assert (session_dir / ".recording.lock").exists()

    events = RecordedEvents()
    recovered = finalize_leftovers(tmp_path, events)

    assert sorted(e["file"] for e in recovered) == [
        "outlet-camera-e0.webm",
        "outlet-microphone-e0.webm",
    ]
    assert list(session_dir.glob("*.part")) == []
    assert not (session_dir / ".recording.lock").exists()
    manifest = json.loads((session_dir / "manifest.json").read_text())
    assert manifest["state"] == "recovered"
    empty = [e for e in manifest["files"] if e["track"] == "agent-camera"]
    assert [e["status"] for e in empty] == ["empty"]
    assert manifest["tracks"]["agent-camera"]["files"] == []
    for entry in manifest["files"]:
        if entry["status"] == "empty":
            continue
        path = session_dir / entry["file"]
        info = probe(path)
        assert entry["status"] == "recovered" and entry["recovered"] is True
        assert entry["sha256"] == sha256(path)
        assert entry["start"] == T0  # the anchor survived the crash in the manifest
        assert info["codec"] == ("vp8" if entry["kind"] == "video" else "opus")
        assert info["decoded"] == entry["frames"]
        # Everything fed before the kill plays (at most the last frames still in flight are lost).
        assert fed - 0.1 <= entry["duration"] <= 4.0 + 0.1, entry
        assert abs(info["duration"] - entry["duration"]) < 0.5
    assert len(events.finished) == 2 and all(e["recovered"] for _, e in events.finished)
    # A second start finds nothing left to do.
    assert finalize_leftovers(tmp_path, RecordedEvents()) == []


async def test_leftovers_of_a_session_still_recording_are_not_touched(tmp_path: Path) -> None:
    recorder = SessionRecorder("call-9", tmp_path, RecordedEvents())
    camera = vp8_track(640, 480, 30, 2.0)
    writer = recorder.open_track(track_info("call-9", "outlet", "camera", camera, started_at=T0))
    feed(writer, camera, T0)
    wait_until(lambda: list((tmp_path / "call-9").glob("*.mkv.part")), what="the part file")

    assert finalize_leftovers(tmp_path, RecordedEvents()) == []

    manifest = await recorder.close()
    assert manifest["files"][0]["status"] == "finished"


async def test_recorders_share_one_disk_writer(tmp_path: Path) -> None:
    disk = DiskWriter(name="recorder-test")
    events = RecordedEvents()
    camera, mic = vp8_track(640, 480, 30, 2.0), opus_track(2.0)
    recorders = [SessionRecorder(f"call-{i}", tmp_path, events, disk_writer=disk) for i in (10, 11)]
    for recorder in recorders:
        feed(
            recorder.open_track(track_info(recorder.session_id, "outlet", "camera", camera)),
            camera,
            T0,
        )
        feed(
            recorder.open_track(track_info(recorder.session_id, "agent", "microphone", mic)),
            mic,
            T0,
        )

    manifests = [await recorder.close() for recorder in recorders]

    threads = {t.name for t in threading.enumerate()}
    assert "recorder-test" in threads  # still serving: a recorder's close doesn't stop it
    for manifest in manifests:
        assert [e["status"] for e in manifest["files"]] == ["finished", "finished"]
        for entry in manifest["files"]:
            path = tmp_path / manifest["session_id"] / entry["file"]
            assert probe(path)["decoded"] == entry["frames"] > 0
    assert len(events.finished) == 4

    # Shut down under a live recorder: its frames are refused quietly, the session fails once.
    late = SessionRecorder("call-12", tmp_path, events, disk_writer=disk)
    await asyncio.get_running_loop().run_in_executor(None, disk.close)
    assert "recorder-test" not in {t.name for t in threading.enumerate()}
    writer = late.open_track(track_info("call-12", "outlet", "camera", camera))
    feed(writer, camera, T0)
    manifest = await late.close()
    assert manifest["state"] == "failed"
    assert [s for s, _ in events.failures] == ["call-12"]


def test_recovery_rebuilds_an_unreadable_manifest_from_the_file_names(tmp_path: Path) -> None:
    session_dir = tmp_path / "call-13"
    session_dir.mkdir()
    mic = opus_track(2.0)
    # What a process killed mid-call leaves: a flushed live Matroska part that was never closed.
    part = TrackFile(session_dir / "agent-microphone-e2.mkv.part", "opus", 48000)
    for data, ts, key in mic.frames:
        part.write(data, ts, key)
    torn = '{"version": 1, "files": ['  # written by something else than the atomic rename
    (session_dir / "manifest.json").write_text(torn)
    (session_dir / "agent-microphone-e2.webm.part").write_bytes(b"\x1aE\xdf\xa3")  # remux cut short
    events = RecordedEvents()

    [recovered] = finalize_leftovers(tmp_path, events)
    part.abort()

    assert (recovered["file"], recovered["track"], recovered["epoch"]) == (
        "agent-microphone-e2.webm",
        "agent-microphone",
        2,
    )
    assert (recovered["kind"], recovered["codec"], recovered["start"]) == ("audio", "opus", None)
    assert recovered["duration"] >= 2.0 - 0.05
    assert (session_dir / "manifest.json.corrupt").read_text() == torn
    assert sorted(p.name for p in session_dir.iterdir()) == [
        "agent-microphone-e2.webm",
        "manifest.json",
        "manifest.json.corrupt",
    ]
    manifest = json.loads((session_dir / "manifest.json").read_text())
    assert manifest["files"][0]["sha256"] == sha256(session_dir / "agent-microphone-e2.webm")
    assert probe(session_dir / "agent-microphone-e2.webm")["decoded"] == recovered["frames"]


def test_recording_opens_no_encoder(tmp_path: Path) -> None:
    # An encoder-opened VP8 stream costs ~8 MB; the recorder declares streams from parameters.
    video = TrackFile(tmp_path / "v.mkv.part", "VP8", 90000, 640, 480)
    audio = TrackFile(tmp_path / "a.mkv.part", "opus", 48000)
    camera, mic = vp8_track(640, 480, 30, 2.0), opus_track(2.0)
    for data, ts, key in camera.frames[:10]:
        video.write(data, ts, key)
    for data, ts, key in mic.frames[:10]:
        audio.write(data, ts, key)

    assert video._stream.codec_context is None
    context = audio._stream.codec_context
    assert not context.is_encoder and not context.is_open
    video.close()
    audio.close()
