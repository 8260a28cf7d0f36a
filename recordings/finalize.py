"""Finalizing track files: Matroska ``.mkv.part`` → seekable WebM, hashed; crash recovery.

The playable artifact is the ``.webm``: the same VP8/Opus packets copied (never decoded)
into a WebM with duration, cues and a seek head, which Chromium plays and seeks over HTTP
Range requests. The ``.mkv.part`` is deleted once the WebM is renamed into place and the
manifest records its SHA-256: keeping both would double the disk for no playback gain.

Finalizing the same ``.part`` twice gives the same WebM, so a crash in the middle of it is
repaired by doing it again on the next start (:func:`finalize_leftovers`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import av

from recordings import manifest as mf

if TYPE_CHECKING:
    from recordings.writer import RecordingEvents

log = logging.getLogger(__name__)

LOCK_NAME = ".recording.lock"
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RemuxResult:
    """What a finalized WebM holds."""

    frames: int
    duration: float  # seconds, first packet start to last packet end
    bytes: int
    sha256: str
    codec: str
    kind: str
    clock_rate: int
    width: int | None
    height: int | None


class NothingToFinalize(Exception):
    """The ``.part`` holds no readable frame (the process died before the first one)."""


def remux_to_webm(part: Path, dest: Path) -> RemuxResult:
    """Copy every readable packet of ``part`` into a seekable WebM at ``dest``, then hash it.

    Reading stops at the first damaged or truncated packet (the tail a crash leaves). The
    WebM is written as ``dest.part`` and renamed when complete and fsynced.

    Raises :class:`NothingToFinalize` if ``part`` has no readable frame, ``OSError`` (or an
    ``av.FFmpegError`` that is one) if the disk fails.
    """
    tmp = dest.with_name(dest.name + ".part")
    frames = 0
    first = last_end = None
    try:
        source = av.open(str(part), "r", format="matroska")
    except (av.error.InvalidDataError, EOFError) as exc:
        raise NothingToFinalize(f"{part.name}: no readable header ({exc})") from exc
    with source:
        if not source.streams:
            raise NothingToFinalize(f"{part.name}: no stream")
        stream_in = source.streams[0]
        codec = stream_in.codec_context.name
        kind = stream_in.type
        width = getattr(stream_in.codec_context, "width", None) or None
        height = getattr(stream_in.codec_context, "height", None) or None
        clock_rate = 90000 if kind == "video" else 48000
        with av.open(str(tmp), "w", format="webm") as out:
            stream_out = out.add_stream_from_template(stream_in, opaque=True)
            for packet in _readable_packets(source, stream_in):
                packet.stream = stream_out
                out.mux_one(packet)
                frames += 1
                start = packet.pts * packet.time_base
                end = (packet.pts + (packet.duration or 0)) * packet.time_base
                first = start if first is None else min(first, start)
                last_end = end if last_end is None else max(last_end, end)
            if frames == 0:
                out.close()
                tmp.unlink(missing_ok=True)
                raise NothingToFinalize(f"{part.name}: no readable frame")
    _fsync_file(tmp)
    os.replace(tmp, dest)
    mf.fsync_dir(dest.parent)
    return RemuxResult(
        frames=frames,
        duration=float(last_end - first),
        bytes=dest.stat().st_size,
        sha256=sha256_file(dest),
        codec=codec,
        kind=kind,
        clock_rate=clock_rate,
        width=width,
        height=height,
    )


def _readable_packets(source: Any, stream: Any):
    """The packets of ``stream`` up to the first damaged one, each with its duration.

    Matroska keeps no duration for video blocks: each packet gets the time to the next one,
    the last one the interval before it (Opus keeps its own, read from the packet).
    """
    held = None
    interval = 0
    try:
        for packet in source.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue  # the demuxer's end-of-stream marker
            if packet.is_corrupt:
                break
            if held is not None:
                if packet.pts > held.pts:
                    interval = packet.pts - held.pts
                if not held.duration:
                    held.duration = packet.pts - held.pts
                yield held
            held = packet
    except (av.error.InvalidDataError, av.error.EOFError, av.error.UndefinedError) as exc:
        log.info(
            "%s: stopped reading at damaged data (%s): expected after a crash", source.name, exc
        )
    if held is not None:
        if not held.duration:
            held.duration = interval
        yield held


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file. Raises ``OSError``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def finalized_fields(result: RemuxResult, entry: dict[str, Any], status: str) -> dict[str, Any]:
    """The manifest fields a finished (or recovered) file gets."""
    start = entry.get("start")
    return {
        "status": status,
        "kind": entry.get("kind") or result.kind,
        "codec": entry.get("codec") or ("VP8" if result.codec == "vp8" else result.codec),
        "clock_rate": entry.get("clock_rate") or result.clock_rate,
        "duration": round(result.duration, 6),
        "end": None if start is None else round(start + result.duration, 6),
        "frames": result.frames,
        "bytes": result.bytes,
        "sha256": result.sha256,
        "recovered": status == mf.RECOVERED,
        "width": entry.get("width") or result.width,
        "height": entry.get("height") or result.height,
    }


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as reported through ``RecordingEvents.file_finished`` (no temporary name)."""
    return {k: v for k, v in entry.items() if k != "part"}


def finalize_leftovers(
    root: Path, events: RecordingEvents, *, clock: Callable[[], float] = time.time
) -> list[dict[str, Any]]:
    """Finalize what a crashed process (or a failed disk) left under ``root``.

    A session needs it if its folder still has the recorder's lock file (removed by a clean
    ``close()``) or ``.mkv.part`` files. Each readable part becomes a WebM (everything
    received up to the crash), its manifest entry gets status ``recovered`` and it is
    reported through ``events.file_finished`` with ``recovered: True``, in the calling
    thread; entries that never got a frame become ``empty``. Sessions whose recorder is
    still running (its lock is held, in this process or another) are skipped.

    Blocking: call it in an executor at start. Returns the reported entries, each with its
    ``session_id``. Errors on one session are logged and do not stop the others; nothing
    is raised.
    """
    reported: list[dict[str, Any]] = []
    try:
        session_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return reported
    for session_dir in session_dirs:
        try:
            names = os.listdir(session_dir)
            if LOCK_NAME not in names and not any(n.endswith(mf.PART_SUFFIX) for n in names):
                continue
            reported.extend(_recover_session(session_dir, events, clock))
        except Exception:  # noqa: BLE001 - one bad session must not block the others at start
            log.exception("session %s: recovering leftover recordings failed", session_dir.name)
    return reported


def _recover_session(
    session_dir: Path, events: RecordingEvents, clock: Callable[[], float]
) -> list[dict[str, Any]]:
    session_id = session_dir.name
    lock_path = session_dir / LOCK_NAME
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("session %s: still recording, not recovering it", session_id)
            return []
        reported = _recover_locked(session_dir, events, clock)
        lock_path.unlink()  # while still holding it: the session is clean now
        return reported
    finally:
        os.close(lock_fd)


def _recover_locked(
    session_dir: Path, events: RecordingEvents, clock: Callable[[], float]
) -> list[dict[str, Any]]:
    session_id = session_dir.name
    now = clock()
    try:
        manifest = mf.read_manifest(session_dir)
    except ValueError:
        corrupt = session_dir / (mf.MANIFEST_NAME + ".corrupt")
        log.error(
            "session %s: unreadable manifest kept as %s; rebuilding it from the files",
            session_id,
            corrupt.name,
        )
        os.replace(session_dir / mf.MANIFEST_NAME, corrupt)
        manifest = None
    if manifest is None:
        manifest = mf.new_manifest(session_id, now)
    for stale in session_dir.glob("*" + mf.FINAL_SUFFIX + ".part"):
        stale.unlink()  # a remux interrupted by the crash: redone from its .mkv.part
    reported = []
    for part in sorted(session_dir.glob("*" + mf.PART_SUFFIX)):
        entry = _entry_for(manifest, part)
        if entry is None:
            log.warning("session %s: ignoring unknown file %s", session_id, part.name)
            continue
        try:
            result = remux_to_webm(part, session_dir / entry["file"])
        except NothingToFinalize as exc:
            log.info("session %s: %s; removing it", session_id, exc)
            entry.update(status=mf.EMPTY, frames=0)
            part.unlink()
            continue
        entry.update(finalized_fields(result, entry, mf.RECOVERED))
        manifest["updated_at"] = now
        mf.write_manifest(session_dir, manifest)
        part.unlink()
        public = public_entry(entry)
        log.info(
            "session %s: recovered %s (%.1f s, %d frames)",
            session_id,
            entry["file"],
            result.duration,
            result.frames,
        )
        try:
            events.file_finished(session_id, dict(public))
        except Exception:  # noqa: BLE001 - the file is safe; the handler's bug is logged
            log.exception(
                "session %s: file_finished handler failed for %s", session_id, entry["file"]
            )
        reported.append({"session_id": session_id, **public})
    for entry in manifest["files"]:
        # Opened but the process died (or the disk failed) before its first frame reached disk.
        if (
            entry["status"] in (mf.RECORDING, mf.FAILED)
            and not (session_dir / entry["part"]).exists()
        ):
            entry["status"] = mf.EMPTY
    if manifest.get("state") == "recording":
        manifest["state"] = "recovered"
    manifest["recovered_at"] = now
    manifest["updated_at"] = now
    mf.write_manifest(session_dir, manifest)
    return reported


def _entry_for(manifest: dict[str, Any], part: Path) -> dict[str, Any] | None:
    for entry in manifest["files"]:
        if entry.get("part") == part.name:
            return entry
    stem = part.name[: -len(mf.PART_SUFFIX)]
    parsed = mf.parse_file_stem(stem)
    if parsed is None:
        return None
    # The crash came before the manifest knew this file: no wall-clock anchor survives.
    entry = mf.new_entry(
        stem=stem,
        participant=parsed["participant"],
        source=parsed["source"],
        kind="",
        codec="",
        clock_rate=0,
        epoch=parsed["epoch"],
        started_at=None,
    )
    manifest["files"].append(entry)
    return entry


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
