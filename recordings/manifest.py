"""The recording manifest: ``<root>/<session_id>/manifest.json``, one per session.

It lists every track file (one per track and connection epoch) with its wall-clock anchor
for synchronized playback, its status, duration, size and SHA-256, and derives per track
the epochs and the gaps between them (reconnects). It is rewritten atomically (temporary
file, fsync, rename, fsync of the folder) each time a file opens, gets its first frame,
closes or is recovered, so a crash leaves either the previous or the next version.

The schema is documented in ``docs/recording.md``; bump :data:`MANIFEST_VERSION` on any
incompatible change.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
PART_SUFFIX = ".mkv.part"
FINAL_SUFFIX = ".webm"

# Session ids, participants and sources become path components: keep them boring.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_LABEL = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_FILE_STEM = re.compile(
    r"^(?P<participant>[A-Za-z0-9_]+)-(?P<source>[A-Za-z0-9_]+)-e(?P<epoch>\d+)(?:-(?P<n>\d+))?$"
)

# File statuses.
RECORDING = "recording"  # the .mkv.part is being written
FINISHED = "finished"  # closed, remuxed to WebM, hashed
RECOVERED = "recovered"  # finalized from a .part left by a crash or a disk failure
EMPTY = "empty"  # closed (or recovered) without one readable frame: no file
FAILED = "failed"  # the disk failed while this file was open; its .part awaits recovery


def is_safe_name(value: str) -> bool:
    """True if ``value`` can be used as one path component of a recording."""
    return bool(_SAFE_NAME.match(value)) and ".." not in value


def is_safe_label(value: str) -> bool:
    """True if ``value`` can be a participant or source label inside a file name."""
    return bool(_LABEL.match(value))


def file_stem(track_name: str, epoch: int, duplicate: int = 0) -> str:
    """``<participant>-<source>-e<epoch>`` (``-<n>`` for the n-th duplicate open of one epoch)."""
    stem = f"{track_name}-e{epoch}"
    return f"{stem}-{duplicate}" if duplicate else stem


def parse_file_stem(stem: str) -> dict[str, Any] | None:
    """Participant, source and epoch from a file stem, or None if it is not one of ours."""
    match = _FILE_STEM.match(stem)
    if not match:
        return None
    return {
        "participant": match["participant"],
        "source": match["source"],
        "epoch": int(match["epoch"]),
    }


def new_manifest(session_id: str, now: float) -> dict[str, Any]:
    """An empty manifest for a session that starts recording at ``now``."""
    return {
        "version": MANIFEST_VERSION,
        "session_id": session_id,
        "state": "recording",
        "created_at": now,
        "updated_at": now,
        "closed_at": None,
        "failure": None,
        "files": [],
        "tracks": {},
    }


def new_entry(
    *,
    stem: str,
    participant: str,
    source: str,
    kind: str,
    codec: str,
    clock_rate: int,
    epoch: int,
    started_at: float | None,
) -> dict[str, Any]:
    """A file entry for a track epoch that has just opened (status ``recording``)."""
    return {
        "file": stem + FINAL_SUFFIX,
        "part": stem + PART_SUFFIX,
        "status": RECORDING,
        "track": f"{participant}-{source}",
        "participant": participant,
        "source": source,
        "kind": kind,
        "codec": codec,
        "clock_rate": clock_rate,
        "epoch": epoch,
        "width": None,
        "height": None,
        "epoch_started_at": started_at,
        "start": None,
        "first_arrival": None,
        "end": None,
        "duration": None,
        "frames": 0,
        "bytes": None,
        "sha256": None,
        "dropped_frames": 0,
        "skipped_frames": 0,
        "recovered": False,
    }


def derive_tracks(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Per track: its epochs, files and the gaps between consecutive epochs.

    A gap runs from one epoch's ``end`` to the next epoch's ``start`` (both wall-clock); it
    is listed once both are known. Empty epochs are skipped.
    """
    tracks: dict[str, Any] = {}
    by_track: dict[str, list[dict[str, Any]]] = {}
    for entry in files:
        by_track.setdefault(entry["track"], []).append(entry)
    for name, entries in sorted(by_track.items()):
        entries = sorted(entries, key=lambda e: (e["epoch"], e["file"]))
        present = [e for e in entries if e["status"] != EMPTY]
        gaps = []
        for before, after in zip(present, present[1:], strict=False):
            if before.get("end") is None or after.get("start") is None:
                continue
            gaps.append(
                {
                    "after_epoch": before["epoch"],
                    "before_epoch": after["epoch"],
                    "start": before["end"],
                    "end": after["start"],
                    "duration": round(after["start"] - before["end"], 6),
                }
            )
        first = entries[0]
        tracks[name] = {
            "participant": first["participant"],
            "source": first["source"],
            "kind": first["kind"],
            "epochs": sorted({e["epoch"] for e in present}),
            "files": [e["file"] for e in present],
            "gaps": gaps,
        }
    return tracks


def read_manifest(session_dir: Path) -> dict[str, Any] | None:
    """The session's manifest, or None if there is none.

    Raises ``ValueError`` if the file is not a manifest (the rename is atomic, so this
    means someone else wrote it) and ``OSError`` if it cannot be read.
    """
    path = session_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ValueError(f"{path} is not a recording manifest")
    return data


def write_manifest(session_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` atomically (temp file, fsync, rename, fsync the folder).

    Raises ``OSError`` if the disk refuses.
    """
    manifest["tracks"] = derive_tracks(manifest["files"])
    path = session_dir / MANIFEST_NAME
    tmp = session_dir / (MANIFEST_NAME + ".tmp")
    data = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk: don't leave a torn temporary behind
        raise
    fsync_dir(session_dir)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ManifestStore:
    """The in-memory manifest of one live session, shared by its writer and finalizer threads.

    Every mutation goes through :meth:`update` under one lock and is written to disk before
    the lock is released, so two threads never write interleaved versions.
    """

    def __init__(self, session_dir: Path, session_id: str, now: float) -> None:
        self.session_dir = session_dir
        self._lock = threading.Lock()
        self._data = new_manifest(session_id, now)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the current manifest."""
        with self._lock:
            self._data["tracks"] = derive_tracks(self._data["files"])
            return copy.deepcopy(self._data)

    def add_entry(self, entry: dict[str, Any], now: float, *, save: bool = True) -> None:
        """Append a file entry and (by default) write the manifest. Raises ``OSError``."""
        with self._lock:
            self._data["files"].append(entry)
            self._data["updated_at"] = now
            if save:
                write_manifest(self.session_dir, self._data)

    def update_entry(self, part: str, fields: dict[str, Any], now: float) -> dict[str, Any]:
        """Update the entry whose ``part`` name matches, write, return a copy.

        Raises ``OSError`` from the disk, ``KeyError`` for an unknown part.
        """
        with self._lock:
            for entry in self._data["files"]:
                if entry["part"] == part:
                    entry.update(fields)
                    break
            else:
                raise KeyError(f"no manifest entry for {part!r}")
            self._data["updated_at"] = now
            write_manifest(self.session_dir, self._data)
            return copy.deepcopy(entry)

    def entry(self, part: str) -> dict[str, Any]:
        """A copy of the entry whose ``part`` name matches. Raises ``KeyError``."""
        with self._lock:
            for entry in self._data["files"]:
                if entry["part"] == part:
                    return copy.deepcopy(entry)
        raise KeyError(f"no manifest entry for {part!r}")

    def mark_failed(self, reason: str, now: float, *, save: bool = True) -> None:
        """Record a disk failure: session state ``failed``, open files ``failed``; try to write.

        Never raises: the disk is the thing that failed, so the write is best effort.
        """
        with self._lock:
            self._data.update(state="failed", failure=reason, updated_at=now)
            for entry in self._data["files"]:
                if entry["status"] == RECORDING:
                    entry["status"] = FAILED
            if not save:
                return
            try:
                write_manifest(self.session_dir, self._data)
            except OSError as exc:
                log.warning(
                    "session %s: could not write the manifest after the failure: %s",
                    self._data["session_id"],
                    exc,
                )

    def update_session(self, fields: dict[str, Any], now: float) -> dict[str, Any]:
        """Update top-level fields (state, closed_at), write, return a copy. Raises ``OSError``."""
        with self._lock:
            self._data.update(fields)
            self._data["updated_at"] = now
            write_manifest(self.session_dir, self._data)
            return copy.deepcopy(self._data)
