"""Catalog files parsed and validated row by row (no database): CSV, JSON, pinyin initials."""

from __future__ import annotations

import json
from pathlib import Path

from cloudhall import catalog_io
from cloudhall.catalog_io import CatalogRow, RowError, parse_csv, parse_json, pinyin_initials

DEMO = Path(catalog_io.__file__).resolve().parent / "data" / "demo_catalog.json"


def validate(raw_rows: list[tuple[int, dict]]) -> tuple[list[tuple[int, CatalogRow]], list[RowError]]:
    errors: list[RowError] = []
    rows = catalog_io._validate(raw_rows, errors)
    return rows, errors


def test_pinyin_initials() -> None:
    assert pinyin_initials("城乡居民基本养老保险参保登记") == "cxjmjbylbxcbdj"
    assert pinyin_initials("重度残疾人护理补贴申请") == "zdcjrhlbtsq"
    assert pinyin_initials("户籍证明（B类）") == "hjzmb"


def test_demo_catalog_is_complete_and_every_name_has_full_initials() -> None:
    raw_rows, errors = parse_json(DEMO.read_text("utf-8"))
    rows, problems = validate(raw_rows)
    assert errors == [] and problems == []
    assert len(rows) >= 15
    assert len({row.department for _, row in rows}) >= 4
    assert sum(row.high_frequency for _, row in rows) >= 8
    for _, row in rows:
        assert row.materials, row.code
        # every character of every demo name is in the pinyin table
        assert len(pinyin_initials(row.name)) == len(row.name), row.name


def test_csv_short_material_syntax_and_chinese_words() -> None:
    text = (
        "code,name,department,materials,high_frequency,enabled\n"
        "X-1,临时救助申请,CIV,居民身份证|原件|本人到场; 户口簿|复印件,是,\n"
    )
    raw_rows, errors = parse_csv(text)
    rows, problems = validate(raw_rows)
    assert errors == [] and problems == []
    ((number, row),) = rows
    assert number == 2
    assert row.high_frequency is True and row.enabled is True
    assert [m.model_dump() for m in row.materials] == [
        {"name": "居民身份证", "form": "original", "notes": "本人到场"},
        {"name": "户口簿", "form": "copy", "notes": ""},
    ]


def test_errors_name_the_row_and_the_column() -> None:
    text = (
        "code,name,department,materials,high_frequency\n"
        "OK-1,高龄津贴申领,CIV,,false\n"
        "bad code,残疾人证新办,DPF,,false\n"
        "OK-2,,DPF,,perhaps\n"
        'OK-3,医保,MED,"[{""name"": ""身份证"", ""form"": ""scan""}]",true\n'
        "OK-1,重复,CIV,,false\n"
        'OK-4,医保,MED,"[{broken",true\n'
    )
    raw_rows, errors = parse_csv(text)
    rows, problems = validate(raw_rows)
    found = {(e.row, e.column) for e in errors + problems}
    assert found == {
        (3, "code"),
        (4, "name"),
        (4, "high_frequency"),
        (5, "materials[1].form"),
        (6, "code"),
        (7, "materials"),
    }
    assert [n for n, _ in rows] == [2]
    assert "repeats row 2" in next(str(e) for e in problems if e.row == 6)
    assert str(next(e for e in problems if e.row == 3)).startswith("row 3, column code:")


def test_csv_header_problems_are_row_one() -> None:
    raw_rows, errors = parse_csv("code,title,department\nA,b,C\n")
    assert raw_rows == []
    assert {(e.row, e.column) for e in errors} == {(1, "name"), (1, "title")}


def test_json_shapes() -> None:
    assert parse_json("{not json")[1][0].column == "(file)"
    assert parse_json('{"things": []}')[1][0].column == "items"
    raw_rows, errors = parse_json(json.dumps([{"code": "A", "name": "b", "department": "C"}, 3]))
    assert len(raw_rows) == 1 and errors[0].row == 2
