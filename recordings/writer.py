"""The session recorder: every track epoch muxed as it arrives, off the event loop.

:class:`SessionRecorder` implements media's ``PacketSink`` port structurally (this package
never imports ``media``). ``write()`` runs on the event loop and only queues the frame
(bounded per session); the muxing thread of a :class:`~recordings.diskwriter.DiskWriter`
(shared by every recorder of the process, or the recorder's own) muxes each track epoch
into its own flushed Matroska ``.mkv.part`` (:mod:`recordings.trackfile`); its finalizing
thread turns each closed part into a seekable, hashed WebM (:mod:`recordings.finalize`)
so a long remux never holds up the live tracks. The manifest (:mod:`recordings.manifest`)
is rewritten as files open, get their first frame and close.

Overload: if the writer falls behind by more than ``max_queued_frames`` frames or
``max_queued_bytes`` bytes, new frames are dropped — for video until the next keyframe,
since a frame after a hole would decode corrupt — and counted per file in the manifest.

A failing disk never raises out of ``write()``: the writer stops, the session's manifest
says ``failed``, ``RecordingEvents.recording_failed`` is called once and the call goes on.
The ``.part`` files written so far are finalized by :func:`~recordings.finalize.finalize_leftovers`
on the next start, like after a crash.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from cloudhall.errors import Conflict, InvalidInput
from recordings import manifest as mf
from recordings.diskwriter import DiskWriter
from recordings.finalize import (
    LOCK_NAME,
    NothingToFinalize,
    finalized_fields,
    public_entry,
    remux_to_webm,
)
from recordings.trackfile import SUPPORTED_CODECS, TrackFile, vp8_keyframe_size

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED_FRAMES = 1500  # ~9 s of one call's 170 frames/s
DEFAULT_MAX_QUEUED_BYTES = 24 * 1024 * 1024

_OPEN, _FRAME, _CLOSE, _STOP = "open", "frame", "close", "stop"


class RecordingEvents(Protocol):
    """What the recorder tells the session (the signalling layer implements it).

    :class:`SessionRecorder` calls these on the event loop thread that opened its first
    track; :func:`~recordings.finalize.finalize_leftovers` calls them in its own thread.
    """

    def file_finished(self, session_id: str, entry: dict[str, Any]) -> None:
        """A track file is finalized: chain ``entry["sha256"]`` into the session's event log.

        ``entry`` is the file's manifest entry: ``file``, ``track``, ``participant``,
        ``source``, ``kind``, ``codec``, ``epoch``, ``start``/``end`` (wall clock),
        ``duration``, ``frames``, ``bytes``, ``sha256``, ``dropped_frames``, ``recovered``...
        """

    def recording_failed(self, session_id: str, reason: str) -> None:
        """Recording of the session stopped (disk full, read-only, gone); the call goes on."""


class _Track(Protocol):
    session_id: str
    participant: str
    source: str
    kind: str
    codec: str
    clock_rate: int
    epoch: int
    started_at: float
    width: int | None
    height: int | None

    @property
    def name(self) -> str: ...


class _Frame(Protocol):
    data: bytes
    timestamp: int
    keyframe: bool
    arrival: float


class SessionRecorder:
    """Records every track of one session under ``root/<session_id>/`` (a media ``PacketSink``).

    Pass the process's shared ``disk_writer`` (see :mod:`recordings.diskwriter`); without
    one the recorder starts its own threads and stops them in :meth:`close`.

    Raises :class:`~cloudhall.errors.InvalidInput` if ``session_id`` is not a safe path name.
    """

    def __init__(
        self,
        session_id: str,
        root: Path,
        events: RecordingEvents,
        *,
        clock: Callable[[], float] = time.time,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        disk_writer: DiskWriter | None = None,
    ) -> None:
        if not mf.is_safe_name(session_id):
            raise InvalidInput(f"session id {session_id!r} cannot name a recording folder")
        self.session_id = session_id
        self.session_dir = Path(root) / session_id
        self._events = events
        self._clock = clock
        self._max_frames = max_queued_frames
        self._max_bytes = max_queued_bytes
        self._own_disk = disk_writer is None
        self._disk = disk_writer or DiskWriter(name=f"recorder-{session_id}")
        self._backlog_lock = threading.Lock()
        self._queued_frames = 0
        self._queued_bytes = 0
        self._writers: list[TrackWriter] = []
        self._stems: set[str] = set()
        self._manifest = mf.ManifestStore(self.session_dir, session_id, clock())
        self._states: dict[TrackWriter, _TrackState] = {}  # the muxing thread's
        self._started = False
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._finalizing: list[concurrent.futures.Future[None]] = []
        self._lock_fd: int | None = None
        self._failed = False
        self._fail_lock = threading.Lock()
        self._closing: asyncio.Future[dict[str, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def failed(self) -> bool:
        """True once the disk failed; later frames are discarded."""
        return self._failed

    @property
    def queued_frames(self) -> int:
        """Frames waiting for the writer thread (the backlog a slow disk builds up)."""
        return self._queued_frames

    @property
    def dropped_frames(self) -> int:
        """Frames dropped because the writer fell behind, over every track so far."""
        return sum(w.dropped_frames for w in self._writers)

    def open_track(self, track: _Track) -> TrackWriter:
        """Start recording one track epoch; returns its writer.

        Raises :class:`~cloudhall.errors.InvalidInput` for a codec other than VP8/Opus or an
        unsafe participant/source name, :class:`~cloudhall.errors.Conflict` after ``close()``.
        """
        if self._closing is not None:
            raise Conflict(f"the recorder of session {self.session_id} is closed")
        codec = track.codec.lower()
        if codec not in SUPPORTED_CODECS:
            raise InvalidInput(
                f"codec {track.codec!r} of track {track.name} cannot be recorded "
                "(VP8 and Opus only)"
            )
        if not (mf.is_safe_label(track.participant) and mf.is_safe_label(track.source)):
            raise InvalidInput(f"track name {track.name!r} cannot name a recording file")
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self._loop = None
        stem = mf.file_stem(track.name, track.epoch)
        duplicate = 0
        while stem in self._stems:
            duplicate += 1
            stem = mf.file_stem(track.name, track.epoch, duplicate)
        if duplicate:
            log.warning(
                "session %s: %s epoch %d opened again; recording it as %s",
                self.session_id,
                track.name,
                track.epoch,
                stem,
            )
        self._stems.add(stem)
        writer = TrackWriter(self, track, stem)
        self._writers.append(writer)
        self._started = True
        self._submit(_OPEN, writer, None)
        log.info(
            "session %s: recording %s epoch %d (%s)",
            self.session_id,
            track.name,
            track.epoch,
            codec,
        )
        return writer

    async def close(self) -> dict[str, Any]:
        """Close every track, finalize every file and write the final manifest; return it.

        Never raises for a disk failure (the manifest then says ``failed``). Idempotent.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        return await asyncio.shield(self._closing)

    async def _close(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        for writer in self._writers:
            writer.close()
        if self._started:
            self._submit(_STOP, None, None)
            await asyncio.wrap_future(self._stopped)
        if self._finalizing:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in self._finalizing))
        manifest = await loop.run_in_executor(None, self._write_final_manifest)
        if self._own_disk:
            await loop.run_in_executor(None, self._disk.close)
        log.info(
            "session %s: recording closed (%s, %d files)",
            self.session_id,
            manifest["state"],
            len(manifest["files"]),
        )
        return manifest

    # -- event loop side ---------------------------------------------------------------

    def _offer(self, writer: TrackWriter, frame: _Frame) -> bool:
        """Queue a frame for the writer thread unless the backlog is full."""
        size = len(frame.data)
        with self._backlog_lock:
            if (
                self._queued_frames >= self._max_frames
                or self._queued_bytes + size > self._max_bytes
            ):
                return False
            self._queued_frames += 1
            self._queued_bytes += size
        self._submit(_FRAME, writer, frame)
        return True

    def _submit(self, op: str, writer: TrackWriter | None, payload: Any) -> None:
        try:
            self._disk.submit(self._handle, op, writer, payload)
        except RuntimeError as exc:  # the shared disk writer was closed under us (shutdown)
            self._fail(str(exc), on_loop=True)
            if op == _STOP and not self._stopped.done():
                self._stopped.set_result(None)

    def _close_writer(self, writer: TrackWriter) -> None:
        self._submit(_CLOSE, writer, None)

    # -- muxing thread -----------------------------------------------------------------------

    def _handle(self, op: str, writer: Any, payload: Any) -> None:
        """Carry out one queued operation (on the disk writer's muxing thread)."""
        states = self._states
        if op == _FRAME:
            with self._backlog_lock:
                self._queued_frames -= 1
                self._queued_bytes -= len(payload.data)
        if self._failed and states:
            for state in states.values():
                if state.file is not None:
                    state.file.abort()
            states.clear()
        if op == _STOP:
            self._stopped.set_result(None)
            return
        if self._failed:
            return
        try:
            if op == _OPEN:
                states[writer] = self._open_file(writer)
            elif op == _FRAME:
                self._write_frame(states[writer], payload)
            elif op == _CLOSE:
                self._close_file(states.pop(writer))
        except Exception as exc:  # noqa: BLE001 - any disk or muxer error stops recording, never the call
            self._fail(f"{type(exc).__name__}: {exc}", exc)

    def _open_file(self, writer: TrackWriter) -> _TrackState:
        if self._lock_fd is None:
            self.session_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.session_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(f"{self.session_dir} is being recorded by another process") from None
        track = writer.track
        entry = mf.new_entry(
            stem=writer.stem,
            participant=track.participant,
            source=track.source,
            kind=track.kind,
            codec=track.codec,
            clock_rate=track.clock_rate,
            epoch=track.epoch,
            started_at=track.started_at,
        )
        entry["width"], entry["height"] = track.width, track.height
        self._manifest.add_entry(entry, self._clock())
        return _TrackState(writer, self.session_dir / entry["part"], entry["part"])

    def _write_frame(self, state: _TrackState, frame: _Frame) -> None:
        if state.file is not None:
            state.file.write(frame.data, frame.timestamp, frame.keyframe)
            return
        track = state.writer.track
        width, height = track.width or 0, track.height or 0
        if track.kind == "video":
            size = vp8_keyframe_size(frame.data)
            if size is None:
                state.writer.skipped_frames += 1  # flagged as a keyframe but is not one
                return
            width, height = size
        state.file = TrackFile(state.path, track.codec, track.clock_rate, width, height)
        state.file.write(frame.data, frame.timestamp, frame.keyframe)
        fields = {
            "start": round(track.started_at + frame.timestamp / track.clock_rate, 6),
            "first_arrival": frame.arrival,
        }
        if track.kind == "video":
            fields.update(width=width, height=height)
        self._manifest.update_entry(state.part, fields, self._clock())

    def _close_file(self, state: _TrackState) -> None:
        writer = state.writer
        counts = {"dropped_frames": writer.dropped_frames, "skipped_frames": writer.skipped_frames}
        if state.file is None:
            counts["status"] = mf.EMPTY
            self._manifest.update_entry(state.part, counts, self._clock())
            log.info("session %s: %s had no frame to record", self.session_id, writer.stem)
            return
        state.file.close()
        counts["frames"] = state.file.frames
        try:
            self._finalizing.append(self._disk.finalize(self._finalize, state.part, counts))
        except RuntimeError as exc:  # shutting down: the .part is finalized on the next start
            self._fail(str(exc))

    # -- finalizer thread ------------------------------------------------------------------

    def _finalize(self, part: str, counts: dict[str, Any]) -> None:
        if self._failed:
            return  # the .part stays for finalize_leftovers
        part_path = self.session_dir / part
        entry = self._manifest.entry(part)
        try:
            result = remux_to_webm(part_path, self.session_dir / entry["file"])
        except NothingToFinalize as exc:
            log.warning("session %s: %s", self.session_id, exc)
            self._manifest.update_entry(part, {**counts, "status": mf.EMPTY}, self._clock())
            part_path.unlink(missing_ok=True)
            return
        except Exception as exc:  # noqa: BLE001 - a disk error while finalizing is a recording failure
            self._fail(f"finalizing {entry['file']}: {type(exc).__name__}: {exc}", exc)
            return
        try:
            fields = {
                **finalized_fields(result, entry, mf.FINISHED),
                **counts,
                "frames": result.frames,
            }
            finished = self._manifest.update_entry(part, fields, self._clock())
            part_path.unlink()
        except Exception as exc:  # noqa: BLE001
            self._fail(f"finalizing {entry['file']}: {type(exc).__name__}: {exc}", exc)
            return
        log.info(
            "session %s: finished %s (%.1f s, %d frames, %d bytes, %d dropped)",
            self.session_id,
            finished["file"],
            result.duration,
            result.frames,
            result.bytes,
            counts["dropped_frames"],
        )
        self._emit(self._events.file_finished, self.session_id, public_entry(finished))

    def _write_final_manifest(self) -> dict[str, Any]:
        try:
            if not self._failed:
                self.session_dir.mkdir(parents=True, exist_ok=True)
                self._manifest.update_session(
                    {"state": "closed", "closed_at": self._clock()}, self._clock()
                )
        except OSError as exc:
            self._fail(f"writing the final manifest: {exc}", exc)
        finally:
            if self._lock_fd is not None:
                if not self._failed:
                    # Clean close: no leftovers to finalize. After a failure the lock file
                    # stays so that the next start's finalize_leftovers looks at the session.
                    (self.session_dir / LOCK_NAME).unlink(missing_ok=True)
                os.close(self._lock_fd)
                self._lock_fd = None
        return self._manifest.snapshot()

    # -- any thread -------------------------------------------------------------------------

    def _fail(
        self, reason: str, exc: BaseException | None = None, *, on_loop: bool = False
    ) -> None:
        with self._fail_lock:
            if self._failed:
                return
            self._failed = True
        log.error(
            "session %s: recording failed, the call goes on without it: %s",
            self.session_id,
            reason,
            exc_info=exc if not isinstance(exc, OSError) else None,
        )
        # On the event loop the manifest is only updated in memory (no disk I/O there);
        # close() returns it and the next start's recovery rewrites it.
        self._manifest.mark_failed(reason, self._clock(), save=not on_loop)
        self._emit(self._events.recording_failed, self.session_id, reason)

    def _emit(self, handler: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._call_handler, handler, *args)
                return
            except RuntimeError:
                pass  # the loop closed meanwhile: call it here rather than lose the event
        self._call_handler(handler, *args)

    def _call_handler(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except Exception:  # noqa: BLE001 - the recording is safe; the handler's bug is logged
            log.exception(
                "session %s: recording event handler %s failed",
                self.session_id,
                getattr(handler, "__name__", handler),
            )


class TrackWriter:
    """The writer of one track epoch (media's ``TrackWriter``), from ``open_track``."""

    def __init__(self, recorder: SessionRecorder, track: _Track, stem: str) -> None:
        self.track = track
        self.stem = stem
        self.dropped_frames = 0  # dropped because the writer fell behind
        self.skipped_frames = 0  # before the first keyframe
        self._recorder = recorder
        self._video = track.kind == "video"
        self._awaiting_keyframe = self._video
        self._overflowing = False
        self._closed = False

    def write(self, frame: _Frame) -> None:
        """Queue one encoded frame; never blocks and never raises for a disk problem."""
        if self._closed or self._recorder._failed:
            return
        if self._awaiting_keyframe and not frame.keyframe:
            if self._overflowing:
                self.dropped_frames += 1
            else:
                self.skipped_frames += 1
            return
        if self._recorder._offer(self, frame):
            self._awaiting_keyframe = False
            if self._overflowing:
                self._overflowing = False
                log.warning(
                    "session %s: %s recording resumed after %d dropped frames",
                    self._recorder.session_id,
                    self.stem,
                    self.dropped_frames,
                )
            return
        self.dropped_frames += 1
        self._awaiting_keyframe = self._video
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "session %s: recorder queue full, dropping %s frames%s",
                self._recorder.session_id,
                self.stem,
                " until the next keyframe" if self._video else "",
            )

    def close(self) -> None:
        """No more frames: the file is closed and finalized in the background."""
        if self._closed:
            return
        self._closed = True
        self._recorder._close_writer(self)


class _TrackState:
    """Writer-thread state of one open track epoch."""

    __slots__ = ("writer", "path", "part", "file")

    def __init__(self, writer: TrackWriter, path: Path, part: str) -> None:
        self.writer = writer
        self.path = path
        self.part = part
        self.file: TrackFile | None = None
