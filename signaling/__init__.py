"""Signalling: the Socket.IO server, call queue and presence, call state machine, media routing.

:func:`setup` plugs it into the application; the backends (memory or Redis) are chosen
once, at start, from ``settings.redis.url``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiohttp import web

from cloudhall import appkeys
from cloudhall.settings import Settings
from media.server import MediaServer
from recordings.diskwriter import DiskWriter
from recordings.finalize import finalize_leftovers
from recordings.writer import SessionRecorder

log = logging.getLogger(__name__)

# Start-up waits at most this long for the sessions a previous run left open to be ended.
LOST_SESSIONS_TIMEOUT = 30.0


@dataclass
class Signaling:
    """What the application holds under ``appkeys.SIGNALING``; filled in at start."""

    server: Any = None  # signaling.server.SignalingServer
    service: Any = None  # signaling.service.CallService
    node_id: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def setup(app: web.Application, settings: Settings) -> None:
    """Add the Engine.IO route and the signalling lifecycle to ``app``."""
    from signaling.server import add_routes

    app[appkeys.SIGNALING] = Signaling(node_id=settings.signaling.node_id or _node_name())
    add_routes(app)
    app.cleanup_ctx.append(_signaling_ctx)


def _node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _media_server(settings: Settings, bridge: Any, disk: DiskWriter) -> MediaServer:
    """The node's MediaServer, recording every session through the shared disk writer."""
    root = settings.media.recordings_dir

    def sink_factory(session_id: str) -> SessionRecorder:
        return SessionRecorder(session_id, root, bridge, disk_writer=disk)

    return MediaServer(settings.media, sink_factory=sink_factory, events=bridge)


async def _finalize_leftovers(settings: Settings, bridge: Any) -> None:
    """Finalize recordings a crashed process left behind; their hashes go to their sessions' logs."""
    root = settings.media.recordings_dir
    if not root.is_dir():
        return
    try:
        recovered = await asyncio.to_thread(finalize_leftovers, root, bridge)
    except Exception:
        log.exception("finalizing leftover recordings under %s failed", root)
        return
    if recovered:
        log.warning("finalized %d recording file(s) left by a crash", len(recovered))


async def _end_lost_sessions(service: Any) -> None:
    """End the sessions the previous run of this single node left open; a failure only logs.

    Like leftover recordings, this is repair work: a database that fails it here fails the
    node's requests too (``/readyz`` reports it), and the next start tries again.
    """
    try:
        async with asyncio.timeout(LOST_SESSIONS_TIMEOUT):
            await service.end_lost_sessions()
    except Exception:
        log.exception("ending the sessions left open by the previous run failed; they stay open until the next start")


async def _signaling_ctx(app: web.Application) -> AsyncIterator[None]:
    from recordings.service import SessionRecords
    from recordings.snapshots import SnapshotStore
    from signaling.directory import Directory
    from signaling.ice_servers import IceServersNotifier
    from signaling.incall import InCall
    from signaling.media_bridge import MediaBridge
    from signaling.memory import MemoryCallQueue
    from signaling.redis_queue import RedisCallQueue
    from signaling.routing import LocalRouter, RedisRouter
    from signaling.server import SignalingServer, SocketNotifier
    from signaling.service import CallService
    from signaling.tasks import stop_task
    from signaling.timers import NodeWorker

    settings = app[appkeys.SETTINGS]
    state = app[appkeys.SIGNALING]
    redis = app[appkeys.REDIS]
    sig = settings.signaling
    node_id = state.node_id
    manager: Any = None
    if redis is not None:
        prefix = settings.redis.key_prefix
        queue: Any = RedisCallQueue(redis, prefix)
        router: Any = RedisRouter(redis, prefix, node_id)
        manager = socketio.AsyncRedisManager(settings.redis.url, channel=f"{prefix}socketio")
    else:
        queue = MemoryCallQueue()
        router = LocalRouter(node_id)
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        max_http_buffer_size=sig.max_message_bytes,
        ping_interval=sig.heartbeat_interval_seconds,
        ping_timeout=min(sig.heartbeat_interval_seconds, 20.0),
        cors_allowed_origins=None,  # same origin only
        logger=False,
        engineio_logger=False,
    )
    db = app[appkeys.DATABASE]
    records = SessionRecords(db)
    notifier = IceServersNotifier(SocketNotifier(sio))
    service = CallService(sig, queue, records, Directory(db), notifier, node_id)
    bridge = MediaBridge(service, router, None, records)
    disk = DiskWriter(name="recorder")
    # Media and the bridge refer to each other: media reports its events to the bridge.
    bridge.media = _media_server(settings, bridge, disk)
    server = SignalingServer(sio, app[appkeys.AUTH], service, bridge)
    notifier.ice_servers = bridge.ice_servers
    InCall(server, bridge, SnapshotStore(settings.media.recordings_dir, records)).register()
    worker = NodeWorker(service)
    if redis is None:
        # One node, calls in memory: whatever the database still shows open died with the
        # previous run. (With Redis, calls outlive a node; the surviving nodes' deadlines
        # and node reaping end them.) Before the recordings are finalized below, so their
        # entries follow call_ended in the log as they do after a normal end.
        await _end_lost_sessions(service)
    # A node restarted under the same id: the sockets its previous run held are gone.
    for side in await queue.reap_node(node_id):
        await service.side_gone(side, None)
    await queue.node_beat(node_id, service.clock())
    tasks = [
        asyncio.create_task(worker.run(), name="signaling-worker"),
        asyncio.create_task(router.run(), name="signaling-router"),
        asyncio.create_task(_finalize_leftovers(settings, bridge), name="finalize-recordings"),
    ]
    state.server, state.service = server, service
    log.info("signalling on node %s (%s backend)", node_id, "redis" if redis else "memory")
    try:
        yield
    finally:
        state.server = None
        for task in tasks:
            await stop_task(task)
        await server.close()
        await bridge.close()
        await bridge.media.close()
        await asyncio.to_thread(disk.close)
        await sio.shutdown()
        await records.close()
        if manager is not None:
            thread = getattr(manager, "thread", None)
            if thread is not None:
                await stop_task(thread)
            if getattr(manager, "redis", None) is not None:
                await manager.redis.aclose()
        await queue.close()
