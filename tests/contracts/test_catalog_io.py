"""Catalog import and export on both databases: upsert by code, all or nothing, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from cloudhall import catalog_io
from cloudhall.catalog import ServiceItem
from cloudhall.db import Database
from tests.factories import build_world

GOOD_CSV = (
    "code,name,department,materials,high_frequency,enabled\n"
    "SI-001,城乡居民养老保险参保登记（更新）,SOC,居民身份证|原件; 户口簿|复印件|首页及本人页,true,true\n"
    "CA-101,临时救助申请,CIV,居民身份证|复印件,是,\n"
    'MI-009,异地就医备案,MED,"[{""name"": ""居民身份证"", ""form"": ""original""}]",false,false\n'
)


async def snapshot(database: Database) -> list[dict]:
    async with database.transaction() as session:
        items = await session.scalars(select(ServiceItem).order_by(ServiceItem.code))
        return [item.to_dict() for item in items]


@pytest.fixture
async def world_db(database: Database) -> Database:
    await build_world(database)
    return database


async def test_good_csv_upserts_by_code(world_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    result = await catalog_io.import_file(world_db, path)
    assert result.created == ["CA-101", "MI-009"] and result.updated == ["SI-001"]
    items = {item["code"]: item for item in await snapshot(world_db)}
    assert items["SI-001"]["name"] == "城乡居民养老保险参保登记（更新）"
    assert items["SI-001"]["materials"][1] == {"name": "户口簿", "form": "copy", "notes": "首页及本人页"}
    assert items["CA-101"]["initials"] == "lsjzsq"
    assert items["CA-101"]["high_frequency"] is True and items["CA-101"]["enabled"] is True
    assert items["MI-009"]["enabled"] is False
    assert "MI-001" in items  # items not in the file are left alone
    again = await catalog_io.import_file(world_db, path)
    assert again.created == [] and again.updated == [] and len(again.unchanged) == 3


@pytest.mark.parametrize("suffix", [".csv", ".json"])
async def test_a_bad_file_changes_nothing_and_names_row_and_column(
    world_db: Database, tmp_path: Path, suffix: str
) -> None:
    before = await snapshot(world_db)
    rows = [
        {
            "code": "SI-001",
            "name": "改名",
            "department": "SOC",
            "materials": [],
        },  # valid: must not be applied
        {"code": "NEW-1", "name": "新事项", "department": "NOPE", "materials": []},
        {"code": "NEW-2", "name": "", "department": "SOC", "materials": [{"name": "身份证", "form": "scan"}]},
    ]
    path = tmp_path / f"bad{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"items": rows}, ensure_ascii=False), encoding="utf-8")
        expected = {(2, "department"), (3, "name"), (3, "materials[1].form")}
    else:
        path.write_text(
            "code,name,department,materials\nSI-001,改名,SOC,\nNEW-1,新事项,NOPE,\nNEW-2,,SOC,身份证|scan\n",
            encoding="utf-8",
        )
        expected = {(3, "department"), (4, "name"), (4, "materials[1].form")}
    with pytest.raises(catalog_io.CatalogFileError) as caught:
        await catalog_io.import_file(world_db, path)
    errors = caught.value.details["errors"]
    assert {(e["row"], e["column"]) for e in errors} == expected
    assert any("NOPE" in e["message"] for e in errors)
    assert "nothing was imported" in caught.value.message
    assert await snapshot(world_db) == before


async def test_export_round_trip(world_db: Database, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(GOOD_CSV, encoding="utf-8")
    await catalog_io.import_file(world_db, source)
    # The factory's items were made without initials; an import fills them in once.
    await catalog_io.export_file(world_db, tmp_path / "first.json")
    await catalog_io.import_file(world_db, tmp_path / "first.json")
    before = await snapshot(world_db)
    assert all(item["initials"] for item in before)
    for suffix in (".csv", ".json"):
        exported = tmp_path / f"out{suffix}"
        assert await catalog_io.export_file(world_db, exported) == len(before)
        result = await catalog_io.import_file(world_db, exported)
        assert len(result.unchanged) == len(before) and not result.created and not result.updated
        assert await snapshot(world_db) == before


async def test_unknown_format_is_refused(world_db: Database, tmp_path: Path) -> None:
    path = tmp_path / "catalog.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(catalog_io.CatalogFileError, match="unknown catalog format"):
        await catalog_io.import_file(world_db, path)
    with pytest.raises(catalog_io.CatalogFileError, match="unknown catalog format"):
        await catalog_io.export_file(world_db, path)
