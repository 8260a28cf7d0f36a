"""Helpers for the signalling integration tests: a real server on a real port, real clients."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from cloudhall import appkeys
from cloudhall.app import create_app
from cloudhall.auth import SESSION_COOKIE
from cloudhall.db import Database
from cloudhall.settings import RedisSettings, Settings, SignalingSettings
from tests.conftest import make_settings
from tests.factories import PASSWORD, World
from tests.helpers import REDIS_URL, require_redis, wait_for

FAST = SignalingSettings(
    reconnect_grace_seconds=1.5,
    ring_timeout_seconds=1.0,
    queue_limit_seconds=60.0,
    presence_timeout_seconds=30.0,
    heartbeat_interval_seconds=5.0,
    max_message_bytes=64 * 1024,
)


def signaling_settings(tmp_path: Path, db_url: str, redis_prefix: str | None = None, **fast: Any) -> Settings:
    """Test settings with short timeouts; Redis (real, db 15) when ``redis_prefix`` is given."""
    settings = make_settings(tmp_path, db_url, signaling=replace(FAST, **fast))
    if redis_prefix is not None:
        settings = replace(settings, redis=RedisSettings(url=REDIS_URL, key_prefix=redis_prefix))
    return settings


async def clear_prefix(prefix: str) -> None:
    """Delete every key of one test's Redis prefix."""
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@asynccontextmanager
async def running_server(settings: Settings, db: Database) -> AsyncIterator[tuple[str, web.Application]]:
    """The real application on a real loopback port; yields (base URL, app)."""
    app = create_app(settings, database=db)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), app
    finally:
        try:
            async with asyncio.timeout(15):
                await server.close()
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(limit=8, file=sys.stderr)
            raise


async def session_token(app: web.Application, username: str) -> str:
    """A login cookie token, from the real AuthService (the same service the login form uses)."""
    token, _ = await app[appkeys.AUTH].login(username, PASSWORD, "127.0.0.1")
    return token


class Peer:
    """A python-socketio AsyncClient that records every server event it receives."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.client.on("*", self._record)
        self.client.on("connect_error", self._refused)

    async def _refused(self, data: Any = None) -> None:
        self.events.append(("connect_error", data))

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data))

    async def connect(self, base_url: str, token: str | None, *, transports: list[str] | None = None) -> None:
        headers = {"Cookie": f"{SESSION_COOKIE}={token}"} if token else {}
        await self.client.connect(
            base_url, headers=headers, transports=transports or ["websocket"], wait_timeout=5
        )

    async def call(self, event: str, data: Any = None, timeout: float = 10.0) -> Any:
        return await self.client.call(event, data if data is not None else {}, timeout=timeout)

    async def ok(self, event: str, data: Any = None) -> dict[str, Any]:
        """Send an event and assert the acknowledgement is not an error."""
        result = await self.call(event, data)
        assert isinstance(result, dict) and "error" not in result, f"{self.name} {event}: {result}"
        return result

    async def error(self, event: str, data: Any = None) -> dict[str, Any]:
        result = await self.call(event, data)
        assert isinstance(result, dict) and "error" in result, f"{self.name} {event} should fail: {result}"
        return result["error"]

    def seen(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait(self, event: str, check: Any = lambda data: True, timeout: float = 10.0) -> Any:
        """Wait until an ``event`` whose payload satisfies ``check`` arrived; return that payload."""

        def found() -> Any:
            for data in reversed(self.seen(event)):
                if check(data):
                    return data
            return None

        return await wait_for(found, timeout=timeout, what=f"{self.name} to receive {event}")

    async def wait_call(self, state: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Wait for a ``call:state`` with the given state (and fields); return the call."""

        def check(data: Any) -> bool:
            call = data["call"]
            return call["state"] == state and all(call.get(k) == v for k, v in fields.items())

        return (await self.wait("call:state", check, timeout))["call"]

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()


@asynccontextmanager
async def peers(base_url: str, app: web.Application, *usernames: str) -> AsyncIterator[list[Peer]]:
    """Connected peers for ``usernames`` (closed at the end)."""
    made: list[Peer] = []
    try:
        for username in usernames:
            peer = Peer(username)
            await peer.connect(base_url, await session_token(app, username))
            made.append(peer)
        yield made
    finally:
        for peer in made:
            await peer.close()


@dataclass
class Env:
    url: str
    app: web.Application
    world: World
    db: Database

    async def peer(self, username: str) -> Peer:
        peer = Peer(username)
        await peer.connect(self.url, await session_token(self.app, username))
        return peer


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request) -> str:
    if request.param == "redis":
        require_redis()
    return request.param


@pytest.fixture
async def env_factory(backend: str, tmp_path: Path, sqlite_database: Database, world: World):
    """Start servers with custom signalling settings: ``async with env_factory(ring_timeout_seconds=2) as env``."""
    prefixes: list[str] = []

    @asynccontextmanager
    async def make(**fast: Any) -> AsyncIterator[Env]:
        prefix = None
        if backend == "redis":
            prefix = new_prefix()
            prefixes.append(prefix)
        settings = signaling_settings(tmp_path, sqlite_database.url, prefix, **fast)
        async with running_server(settings, sqlite_database) as (url, app):
            yield Env(url, app, world, sqlite_database)

    try:
        yield make
    finally:
        for prefix in prefixes:
            await clear_prefix(prefix)


@pytest.fixture
async def env(env_factory) -> AsyncIterator[Env]:
    async with env_factory() as made:
        yield made


def start_payload(world: World, item: str = "SI-001", **extra: Any) -> dict[str, Any]:
    return {"item_id": world.items[item].id, "applicant": {"name": "张三", "phone": "13800138000"}, **extra}
