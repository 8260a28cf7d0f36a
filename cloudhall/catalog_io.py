"""Import and export of the service-item catalog (事项) as CSV or JSON.

A file is validated row by row; every problem is reported with its row and column, and a
file with any problem changes nothing (the whole import is one transaction). Items are
upserted by ``code``; their department is referenced by its code.

CSV columns: ``code, name, department, materials, high_frequency, enabled, initials``.
The ``materials`` cell holds a JSON list (what export writes) or the short form
``名称|原件|备注; 名称|复印件`` that is easier to type in a spreadsheet.
JSON: ``{"items": [{...}, ...]}`` (or a bare list) with the same fields.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloudhall.catalog import ServiceItem
from cloudhall.db import Database
from cloudhall.errors import InvalidInput
from cloudhall.identities import CODE_RE, Department

CSV_COLUMNS = ("code", "name", "department", "materials", "high_frequency", "enabled", "initials")
FORM_ALIASES = {"original": "original", "原件": "original", "copy": "copy", "复印件": "copy"}
FORM_LABELS = {"original": "原件", "copy": "复印件"}
TRUE_WORDS = {"1", "true", "yes", "y", "是", "√"}
FALSE_WORDS = {"0", "false", "no", "n", "否", ""}
MAX_ROWS = 5000


class CatalogFileError(InvalidInput):
    """The file cannot be imported; ``details["errors"]`` lists each problem by row and column."""

    code = "catalog_invalid"


class Material(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100)
    form: Literal["original", "copy"] = "original"
    notes: str = Field(default="", max_length=200)

    @field_validator("form", mode="before")
    @classmethod
    def _form_alias(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() in FORM_ALIASES:
            return FORM_ALIASES[value.strip()]
        return value


class CatalogRow(BaseModel):
    """One service item as it appears in an import file."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    code: str = Field(min_length=1, max_length=32)
    name: str = Field(min_length=1, max_length=200)
    department: str = Field(min_length=1, max_length=32)
    materials: list[Material] = Field(default_factory=list, max_length=50)
    high_frequency: bool = False
    enabled: bool = True
    initials: str = Field(default="", max_length=64)

    @field_validator("code", "department")
    @classmethod
    def _code_chars(cls, value: str) -> str:
        if not CODE_RE.match(value):
            raise ValueError("use 1-32 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("high_frequency", "enabled", mode="before")
    @classmethod
    def _bool_words(cls, value: Any) -> Any:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise ValueError("expected true/false (or 是/否)")
        return value

    @field_validator("initials")
    @classmethod
    def _initials_chars(cls, value: str) -> str:
        if value and not value.isascii():
            raise ValueError("pinyin initials are ASCII letters, e.g. cxjmylbx")
        return value.lower()


@dataclass(frozen=True)
class RowError:
    row: int
    column: str
    message: str

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "message": self.message}


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.created)} created, {len(self.updated)} updated, {len(self.unchanged)} unchanged"


@lru_cache(maxsize=1)
def _pinyin_table() -> dict[str, str]:
    text = (Path(__file__).resolve().parent / "data" / "pinyin_initials.json").read_text("utf-8")
    return dict(json.loads(text)["initials"])


def pinyin_initials(name: str) -> str:
    """Lower-case pinyin initials of ``name`` (城乡居民养老保险 -> cxjmylbx).

    Characters missing from ``cloudhall/data/pinyin_initials.json`` are left out; ASCII
    letters and digits are kept as they are.
    """
    table = _pinyin_table()
    out = []
    for char in name:
        if char.isascii():
            if char.isalnum():
                out.append(char.lower())
        elif char in table:
            out.append(table[char])
    return "".join(out)[:64]


def _parse_materials_cell(cell: str) -> Any:
    cell = cell.strip()
    if not cell:
        return []
    if cell.startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list: {exc.msg} at character {exc.pos}") from None
    materials = []
    for part in cell.replace("；", ";").split(";"):
        if not part.strip():
            continue
        pieces = [p.strip() for p in part.split("|")]
        if len(pieces) > 3:
            raise ValueError(f"{part.strip()!r} has more than name|form|notes")
        entry: dict[str, str] = {"name": pieces[0]}
        if len(pieces) > 1:
            entry["form"] = pieces[1]
        if len(pieces) > 2:
            entry["notes"] = pieces[2]
        materials.append(entry)
    return materials


def _error_column(loc: tuple[Any, ...]) -> str:
    """``('materials', 1, 'form')`` -> ``materials[2].form`` (1-based, as a reader counts)."""
    parts: list[str] = []
    for piece in loc:
        if isinstance(piece, int) and parts:
            parts[-1] += f"[{piece + 1}]"
        else:
            parts.append(str(piece))
    return ".".join(parts) or "(row)"


def _validate(
    raw_rows: list[tuple[int, dict[str, Any]]], errors: list[RowError]
) -> list[tuple[int, CatalogRow]]:
    rows: list[tuple[int, CatalogRow]] = []
    seen: dict[str, int] = {}
    for number, raw in raw_rows:
        try:
            row = CatalogRow.model_validate(raw)
        except ValidationError as exc:
            for problem in exc.errors():
                message = problem["msg"].removeprefix("Value error, ")
                if problem["type"] == "extra_forbidden":
                    message = "unknown column"
                errors.append(RowError(number, _error_column(tuple(problem["loc"])), message))
            continue
        if row.code in seen:
            errors.append(RowError(number, "code", f"{row.code!r} repeats row {seen[row.code]}"))
            continue
        seen[row.code] = number
        rows.append((number, row))
    return rows


def parse_csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    """Rows of a CSV file as (line number, fields); header problems are errors of row 1."""
    errors: list[RowError] = []
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    for required in ("code", "name", "department"):
        if required not in header:
            errors.append(RowError(1, required, "missing from the header row"))
    for column in header:
        if column not in CSV_COLUMNS:
            errors.append(
                RowError(1, column or "(empty)", f"unknown column (expected {', '.join(CSV_COLUMNS)})")
            )
    if errors:
        return [], errors
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, Any]]] = []
    for record in reader:
        number = reader.line_num
        if None in record:
            errors.append(RowError(number, "(row)", "more cells than header columns"))
            continue
        if not any((v or "").strip() for v in record.values()):
            continue
        fields: dict[str, Any] = {k: (v or "") for k, v in record.items() if v is not None}
        try:
            fields["materials"] = _parse_materials_cell(fields.get("materials", ""))
        except ValueError as exc:
            errors.append(RowError(number, "materials", str(exc)))
            continue
        if not str(fields.get("enabled", "x")).strip():
            del fields["enabled"]  # an empty cell keeps the default: enabled
        rows.append((number, fields))
    return rows, errors


def parse_json(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    """Items of a JSON file as (1-based item number, fields)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [RowError(exc.lineno, "(file)", f"not valid JSON: {exc.msg}")]
    items = data.get("items") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return [], [RowError(0, "items", 'expected {"items": [...]} or a list of items')]
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[RowError] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            errors.append(RowError(number, "(row)", "expected an object"))
            continue
        rows.append((number, item))
    return rows, errors


def parse_file(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[RowError]]:
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogFileError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    if suffix == ".csv":
        return parse_csv(text)
    if suffix == ".json":
        return parse_json(text)
    raise CatalogFileError(f"{path}: unknown catalog format {suffix!r} (use .csv or .json)")


async def apply_rows(
    session: AsyncSession, rows: list[tuple[int, CatalogRow]], *, only_missing: bool = False
) -> tuple[ImportResult, list[RowError]]:
    """Upsert validated rows inside the caller's transaction; unknown departments are errors.

    With ``only_missing`` existing items are left as they are (used by the idempotent seed).
    """
    departments = {d.code: d for d in await session.scalars(select(Department))}
    existing = {i.code: i for i in await session.scalars(select(ServiceItem))}
    result = ImportResult()
    errors: list[RowError] = []
    for number, row in rows:
        department = departments.get(row.department)
        if department is None:
            errors.append(RowError(number, "department", f"no department has code {row.department!r}"))
            continue
        values = {
            "name": row.name,
            "initials": row.initials or pinyin_initials(row.name),
            "department_id": department.id,
            "materials": [m.model_dump() for m in row.materials],
            "high_frequency": row.high_frequency,
            "enabled": row.enabled,
        }
        item = existing.get(row.code)
        if item is None:
            session.add(ServiceItem(code=row.code, **values))
            result.created.append(row.code)
        elif only_missing:
            result.unchanged.append(row.code)
        elif all(getattr(item, k) == v for k, v in values.items()):
            result.unchanged.append(row.code)
        else:
            for key, value in values.items():
                setattr(item, key, value)
            result.updated.append(row.code)
    await session.flush()
    return result, errors


async def import_rows(
    db: Database, raw_rows: list[tuple[int, dict[str, Any]]], *, only_missing: bool = False
) -> ImportResult:
    """Validate and upsert rows in one transaction; raise :class:`CatalogFileError` listing every problem."""
    errors: list[RowError] = []
    if len(raw_rows) > MAX_ROWS:
        raise CatalogFileError(f"the file has {len(raw_rows)} rows; at most {MAX_ROWS} are accepted")
    rows = _validate(raw_rows, errors)
    async with db.transaction() as session:
        result, db_errors = await apply_rows(session, rows, only_missing=only_missing)
        errors.extend(db_errors)
        if errors:
            errors.sort(key=lambda e: (e.row, e.column))
            # Raising inside the transaction rolls back everything this file did.
            raise CatalogFileError(
                f"{len(errors)} problem(s) in the catalog; nothing was imported",
                details={"errors": [e.to_dict() for e in errors]},
            )
    return result


async def import_file(db: Database, path: Path, *, only_missing: bool = False) -> ImportResult:
    """Import a ``.csv`` or ``.json`` catalog file; raise :class:`CatalogFileError` on any problem."""
    raw_rows, errors = parse_file(path)
    if errors:
        raise CatalogFileError(
            f"{len(errors)} problem(s) in {path.name}; nothing was imported",
            details={"errors": [e.to_dict() for e in errors]},
        )
    return await import_rows(db, raw_rows, only_missing=only_missing)


async def export_rows(db: Database) -> list[dict[str, Any]]:
    """Every item (enabled or not) as an import row, ordered by code."""
    async with db.transaction() as session:
        departments = {d.id: d.code for d in await session.scalars(select(Department))}
        items = list(await session.scalars(select(ServiceItem).order_by(ServiceItem.code)))
    return [
        {
            "code": item.code,
            "name": item.name,
            "department": departments[item.department_id],
            "materials": list(item.materials or []),
            "high_frequency": item.high_frequency,
            "enabled": item.enabled,
            "initials": item.initials,
        }
        for item in items
    ]


def render_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                **row,
                "materials": json.dumps(row["materials"], ensure_ascii=False),
                "high_frequency": "true" if row["high_frequency"] else "false",
                "enabled": "true" if row["enabled"] else "false",
            }
        )
    return out.getvalue()


def render_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps({"format": "cloudhall-catalog/1", "items": rows}, ensure_ascii=False, indent=2) + "\n"


async def export_file(db: Database, path: Path) -> int:
    """Write the catalog to ``path`` (format by extension); return the number of items."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise CatalogFileError(f"{path}: unknown catalog format {suffix!r} (use .csv or .json)")
    rows = await export_rows(db)
    # utf-8-sig for CSV so that spreadsheet programs recognise the Chinese text.
    if suffix == ".csv":
        path.write_text(render_csv(rows), encoding="utf-8-sig")
    else:
        path.write_text(render_json(rows), encoding="utf-8")
    return len(rows)
