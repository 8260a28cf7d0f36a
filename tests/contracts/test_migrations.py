"""Migrations on SQLite and PostgreSQL: head, back to base, head again; the schema matches the models."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from cloudhall.migrate import downgrade, upgrade
from cloudhall.schema import load_all_models
from tests.helpers import POSTGRES_URL, require_postgres


async def _inspect(url: str) -> tuple[set[str], list[Any], str | None]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: Any) -> tuple[set[str], list[Any], str | None]:
                context = MigrationContext.configure(sync_conn)
                tables = set(inspect(sync_conn).get_table_names())
                return tables, compare_metadata(context, load_all_models()), context.get_current_revision()

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def _admin(sql: str) -> None:
    engine = create_async_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (not migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrations.db'}"
        return
    require_postgres()
    name = f"cloudhall_m_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    model_tables = {t.name for t in load_all_models().sorted_tables}

    upgrade(empty_url)
    tables, diff, head = asyncio.run(_inspect(empty_url))
    assert model_tables <= tables, f"tables without a migration: {sorted(model_tables - tables)}"
    assert diff == [], f"the migrations differ from the models: {diff}"
    assert head is not None

    downgrade(empty_url, "base")
    tables, _, revision = asyncio.run(_inspect(empty_url))
    assert tables - {"alembic_version"} == set(), f"left after downgrade: {sorted(tables)}"
    assert revision is None

    upgrade(empty_url)
    tables, diff, again = asyncio.run(_inspect(empty_url))
    assert model_tables <= tables and diff == [] and again == head
