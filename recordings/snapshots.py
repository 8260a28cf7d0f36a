"""Snapshots stored with their session: JPEG files next to the recordings, hashed into the log.

A snapshot is written under ``<recordings_dir>/<session_id>/snapshots/<n>-<source>.jpg``
atomically (a temporary file, fsynced, then hard-linked to its final name, which never
replaces an existing snapshot), and its SHA-256 is chained into the session's event log as
a ``snapshot_taken`` event. ``GET /api/sessions/{session_id}/snapshots/{name}`` serves it to
the session's agent, its outlet's staff, and supervisors and admins whose scope includes
the outlet's county.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import struct
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from cloudhall import appkeys
from cloudhall.errors import Forbidden, InvalidInput, NotFound
from cloudhall.http import principal, requires
from cloudhall.identities import Outlet, Principal, Role
from recordings.models import CallSession

log = logging.getLogger(__name__)

SOURCES = ("camera", "screen")
SNAPSHOT_NAME = re.compile(r"^(?P<n>[1-9][0-9]{0,5})-(?P<source>camera|screen)\.jpg$")
SESSION_ID = re.compile(r"^[0-9a-f-]{1,36}$")
MAX_SNAPSHOT_BYTES = 20 * 1024 * 1024
NAME_ATTEMPTS = 20


class EventAppender(Protocol):
    """The part of :class:`recordings.service.SessionRecords` the store needs."""

    async def append(self, session_id: str, kind: str, actor: str, data: dict[str, Any], at: float) -> None: ...


@dataclass(frozen=True)
class StoredSnapshot:
    """What was stored; ``url`` is where the session's viewers fetch it."""

    session_id: str
    name: str
    source: str
    size: int
    sha256: str
    width: int
    height: int

    @property
    def url(self) -> str:
        return snapshot_url(self.session_id, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "url": self.url}


def snapshot_url(session_id: str, name: str) -> str:
    return f"/api/sessions/{session_id}/snapshots/{name}"


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame marker; raise :class:`InvalidInput` if it has none."""
    if data[:2] != b"\xff\xd8":
        raise InvalidInput("the snapshot is not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 9 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise InvalidInput("the snapshot JPEG has no start-of-frame marker")


def check_name(name: str) -> str:
    """A snapshot file name as the store makes them (``<n>-camera.jpg``); anything else is refused."""
    if not SNAPSHOT_NAME.match(name):
        raise InvalidInput(f"{name[:64]!r} is not a snapshot name (like 1-camera.jpg)", details={"field": "name"})
    return name


def _check_session_id(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise InvalidInput("not a session id", details={"field": "session_id"})
    return session_id


class SnapshotStore:
    """Stores snapshots of sessions under ``root`` and logs each one; one per node."""

    def __init__(self, root: Path, log_events: EventAppender) -> None:
        self.root = root
        self._events = log_events

    def folder(self, session_id: str) -> Path:
        return self.root / _check_session_id(session_id) / "snapshots"

    def path_of(self, session_id: str, name: str) -> Path:
        return self.folder(session_id) / check_name(name)

    async def save(self, session_id: str, source: str, jpeg: bytes, actor: str) -> StoredSnapshot:
        """Write ``jpeg`` as the session's next snapshot of ``source`` and chain its hash into the log.

        Raises InvalidInput (unknown source, not a JPEG, too large). The file is written and
        hashed in an executor; the event is appended once the file is durable.
        """
        if source not in SOURCES:
            raise InvalidInput(f"unknown snapshot source {source!r} (camera or screen)")
        if len(jpeg) > MAX_SNAPSHOT_BYTES:
            raise InvalidInput(f"snapshot of {len(jpeg)} bytes is larger than {MAX_SNAPSHOT_BYTES}")
        width, height = jpeg_dimensions(jpeg)
        name, digest = await asyncio.to_thread(self._write, self.folder(session_id), source, jpeg)
        stored = StoredSnapshot(session_id, name, source, len(jpeg), digest, width, height)
        data = {"name": name, "source": source, "size": stored.size, "sha256": digest, "width": width, "height": height}
        await self._events.append(session_id, "snapshot_taken", actor, data, time.time())
        log.info("session %s: snapshot %s stored (%d bytes, %dx%d)", session_id, name, stored.size, width, height)
        return stored

    @staticmethod
    def _write(folder: Path, source: str, jpeg: bytes) -> tuple[str, str]:
        """Blocking: temporary file, fsync, hard link to the next free ``<n>-<source>.jpg``."""
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(jpeg).hexdigest()
        temp = folder / f".{uuid.uuid4().hex}.tmp"
        with open(temp, "wb") as f:
            f.write(jpeg)
            f.flush()
            os.fsync(f.fileno())
        try:
            taken = [int(m.group("n")) for p in folder.iterdir() if (m := SNAPSHOT_NAME.match(p.name))]
            n = max(taken, default=0) + 1
            for _ in range(NAME_ATTEMPTS):
                name = f"{n}-{source}.jpg"
                try:
                    # link() never replaces: two writers racing for a number get different ones.
                    os.link(temp, folder / name)
                except FileExistsError:
                    n += 1
                    continue
                _fsync_dir(folder)
                return name, digest
            raise FileExistsError(f"no free snapshot name in {folder} after {NAME_ATTEMPTS} attempts")
        finally:
            temp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def check_session_scope(db: Any, who: Principal, session_id: str) -> None:
    """Allow the session's agent, its outlet's staff, and supervisors/admins of its outlet's county.

    Raises NotFound (unknown session) or Forbidden.
    """
    async with db.transaction() as session:
        call = await session.get(CallSession, session_id)
        if call is None:
            raise NotFound(f"session {session_id} does not exist")
        if who.role is Role.AGENT:
            allowed = call.agent_user_id is not None and call.agent_user_id == who.user_id
        elif who.role is Role.OUTLET_STAFF:
            allowed = who.outlet_id is not None and who.outlet_id == call.outlet_id
        else:
            outlet = await session.get(Outlet, call.outlet_id)
            allowed = outlet is not None and who.can_see_county(outlet.county)
    if not allowed:
        raise Forbidden(f"session {session_id} is outside your scope")


@requires(Role.AGENT, Role.OUTLET_STAFF, Role.SUPERVISOR, Role.ADMIN)
async def snapshot_file(request: web.Request) -> web.Response:
    session_id = _check_session_id(request.match_info["session_id"])
    await check_session_scope(request.app[appkeys.DATABASE], principal(request), session_id)
    name = check_name(request.match_info["name"])
    root = request.app[appkeys.SETTINGS].media.recordings_dir
    path = root / session_id / "snapshots" / name
    try:
        body = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise NotFound(f"session {session_id} has no snapshot {name}") from None
    return web.Response(
        body=body,
        content_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600", "Content-Disposition": f'inline; filename="{name}"'},
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/sessions/{session_id}/snapshots/{name}", snapshot_file)
