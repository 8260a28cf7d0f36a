"""Health endpoints: /healthz always, /readyz checks the database and, in scaled mode, Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

from cloudhall.app import create_app
from cloudhall.db import Database
from cloudhall.settings import RedisSettings
from tests.conftest import make_settings
from tests.helpers import REDIS_URL, require_redis


async def test_embedded_mode_checks_only_the_database(client) -> None:
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/readyz")
    assert response.status == 200
    assert (await response.json())["checks"] == {"database": "ok"}


async def test_scaled_mode_checks_redis_too(aiohttp_client, sqlite_database: Database, tmp_path: Path) -> None:
    require_redis()
    prefix = f"cloudhall-test-{uuid.uuid4().hex[:8]}:"
    settings = make_settings(tmp_path, sqlite_database.url, redis=RedisSettings(url=REDIS_URL, key_prefix=prefix))
    client = await aiohttp_client(create_app(settings, database=sqlite_database))
    body = await (await client.get("/readyz")).json()
    assert body == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_unreachable_dependencies_make_readyz_fail(aiohttp_client, tmp_path: Path) -> None:
    # Nothing listens on port 9 (discard) here: both checks fail fast with a reason.
    db = Database(make_settings(tmp_path, "postgresql+asyncpg://nobody@127.0.0.1:9/none").database)
    settings = make_settings(tmp_path, db.url)
    client = await aiohttp_client(create_app(settings, database=db))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unavailable" and body["checks"]["database"].startswith("database not reachable")
    assert (await client.get("/healthz")).status == 200
