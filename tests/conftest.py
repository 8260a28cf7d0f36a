"""Fixtures shared by every suite: real databases (SQLite and PostgreSQL), the app, a world."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from cloudhall.app import create_app
from cloudhall.db import Database
from cloudhall.migrate import upgrade
from cloudhall.settings import DatabaseSettings, HttpSettings, MediaSettings, Settings
from tests.factories import PASSWORD, World, build_world
from tests.helpers import POSTGRES_URL, require_postgres

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating every time is slow)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, migrated once, dropped at the end."""
    require_postgres()
    name = f"cloudhall_t_{uuid.uuid4().hex[:10]}"
    admin_url = POSTGRES_URL

    async def run(sql: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    try:
        yield url
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate_postgres(db: Database) -> None:
    from cloudhall.schema import load_all_models

    tables = ", ".join(f'"{t.name}"' for t in load_all_models().sorted_tables)
    async with db.engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated, empty database URL: SQLite and PostgreSQL (contract tests run on both)."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "test.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = Database(DatabaseSettings(url=db_url))
    if db.engine.dialect.name == "postgresql":
        await _truncate_postgres(db)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
async def sqlite_database(sqlite_url: str) -> AsyncIterator[Database]:
    db = Database(DatabaseSettings(url=sqlite_url))
    try:
        yield db
    finally:
        await db.dispose()


def make_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    """Test settings: a fixed secret, a temporary data folder, ``overrides`` per section."""
    settings = Settings(
        http=HttpSettings(secret_key="t" * 48, login_max_failures=3, login_lockout_seconds=60),
        database=DatabaseSettings(url=db_url),
        media=MediaSettings(recordings_dir=tmp_path / "recordings"),
        data_dir=tmp_path,
    )
    return replace(settings, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def world(sqlite_database: Database) -> World:
    return await build_world(sqlite_database)


@pytest.fixture
async def client(aiohttp_client, sqlite_database: Database, world: World, tmp_path: Path) -> TestClient:
    """The real app on SQLite with a populated world."""
    settings = make_settings(tmp_path, sqlite_database.url)
    app = create_app(settings, database=sqlite_database)
    return await aiohttp_client(app)


async def login(client: TestClient, username: str, password: str = PASSWORD) -> None:
    """Log a test client in through the real form (CSRF token read from the login page)."""
    page = await client.get("/login")
    html = await page.text()
    token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = await client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token}, allow_redirects=False
    )
    assert response.status == 303, f"login of {username} failed: {response.status} {await response.text()}"
