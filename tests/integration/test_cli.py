"""The ``cloudhall`` command in-process: settings errors, migrations, seed, users, outlets, catalog."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path

import pytest

from cloudhall.cli import main


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh data folder and SQLite file, configured the way an operator would: by environment."""
    for name in list(__import__("os").environ):
        if name.startswith("CLOUDHALL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLOUDHALL_DATA_DIR", str(tmp_path / "var"))
    return tmp_path


def run(
    capsys: pytest.CaptureFixture[str],
    *argv: str,
    stdin: str | None = None,
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> tuple[int, str, str]:
    if stdin is not None and monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bad_setting_is_one_line_and_exit_2(cli_env: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CLOUDHALL_PORT", "eighty")
    code, out, err = run(capsys, "db", "upgrade")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "CLOUDHALL_PORT" in err


def test_serve_refuses_an_unmigrated_database(cli_env: Path, capsys) -> None:
    code, _, err = run(capsys, "serve")
    assert code == 2 and "cloudhall db upgrade" in err


def test_serve_takes_the_start_up_heap_out_of_the_collectors_sight(cli_env: Path, monkeypatch, capsys) -> None:
    """Full collections pause the event loop in proportion to the objects they walk: start-up's are frozen."""
    from aiohttp import web

    assert run(capsys, "db", "upgrade")[0] == 0
    frozen: list[int] = []
    monkeypatch.setattr(web, "run_app", lambda app, **kwargs: frozen.append(gc.get_freeze_count()))
    try:
        code, _, _ = run(capsys, "serve")
    finally:
        gc.unfreeze()
    assert code == 0 and frozen and frozen[0] > 10_000, frozen


def test_accounts_and_catalog_from_the_command_line(cli_env: Path, monkeypatch, capsys) -> None:
    assert run(capsys, "db", "upgrade")[0] == 0
    code, out, _ = run(capsys, "db", "current")
    assert code == 0 and "newest" in out

    code, out, _ = run(capsys, "seed")
    assert code == 0
    for username in ("admin", "supervisor", "agent_soc", "baisha"):
        assert username in out
    assert "admin-2026-demo" in out and "DEMO-ONLY" in out
    code, out, _ = run(capsys, "seed")
    assert code == 0 and "password unchanged" in out

    assert (
        run(
            capsys,
            "outlet",
            "add",
            "DD-NW",
            "--name",
            "南湾村便民服务站",
            "--island",
            "南湾岛",
            "--town",
            "南湾乡",
            "--county",
            "东岛县",
            "--contact-phone",
            "0580-1",
        )[0]
        == 0
    )
    code, _, err = run(
        capsys,
        "department",
        "add",
        "TAX",
        "--name",
        "税务窗口",
        "--county",
        "东岛县",
        "--hours",
        "mon-fri 8-12",
    )
    assert code == 1 and "working_hours" in err
    assert (
        run(
            capsys,
            "department",
            "add",
            "TAX",
            "--name",
            "税务窗口",
            "--county",
            "东岛县",
            "--hours",
            "tz Asia/Shanghai; mon-fri 08:30-17:00",
        )[0]
        == 0
    )

    code, out, _ = run(
        capsys,
        "user",
        "add",
        "nw_staff",
        "--role",
        "outlet_staff",
        "--name",
        "钱",
        "--outlet",
        "DD-NW",
        "--password-stdin",
        stdin="first-password\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0 and "nw_staff" in out
    code, _, err = run(
        capsys,
        "user",
        "add",
        "tax_agent",
        "--role",
        "agent",
        "--name",
        "孙",
        "--department",
        "TAX",
        "--department",
        "NOPE",
        "--password",
        "x-long-password",
    )
    assert code == 1 and "NOPE" in err
    code, _, err = run(
        capsys,
        "user",
        "add",
        "tax_agent",
        "--role",
        "agent",
        "--name",
        "孙",
        "--department",
        "TAX",
        "--password",
        "short",
    )
    assert code == 1 and "password" in err
    code, _, err = run(
        capsys,
        "user",
        "add",
        "tax_agent",
        "--role",
        "agent",
        "--name",
        "孙",
        "--department",
        "TAX",
        stdin="",
        monkeypatch=monkeypatch,
    )
    assert code == 2 and "--password-stdin" in err
    assert (
        run(
            capsys,
            "user",
            "add",
            "tax_agent",
            "--role",
            "agent",
            "--name",
            "孙",
            "--department",
            "TAX",
            "--department",
            "SOC",
            "--password",
            "x-long-password",
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "user",
            "passwd",
            "nw_staff",
            "--password-stdin",
            stdin="second-password\n",
            monkeypatch=monkeypatch,
        )[0]
        == 0
    )
    assert run(capsys, "user", "disable", "tax_agent")[0] == 0
    code, _, err = run(capsys, "user", "disable", "nobody")
    assert code == 1 and "nobody" in err
    code, out, _ = run(capsys, "user", "list")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "DISABLED" in lines["tax_agent"] and "SOC,TAX" in lines["tax_agent"]
    assert "DD-NW" in lines["nw_staff"]

    exported = cli_env / "catalog.json"
    code, out, _ = run(capsys, "catalog", "export", str(exported))
    assert code == 0
    items = json.loads(exported.read_text("utf-8"))["items"]
    assert len(items) >= 15
    items[0]["department"] = "NOPE"
    items[1]["materials"] = [{"name": "", "form": "original"}]
    bad = cli_env / "bad.json"
    bad.write_text(json.dumps({"items": items}, ensure_ascii=False), encoding="utf-8")
    code, _, err = run(capsys, "catalog", "import", str(bad))
    assert code == 1
    assert "row 1, column department" in err and "row 2, column materials[1].name" in err
    code, out, _ = run(capsys, "catalog", "import", str(exported))
    assert code == 0 and f"{len(items)} unchanged" in out
    code, _, err = run(capsys, "catalog", "import", str(cli_env / "missing.csv"))
    assert code == 2 and "not a file" in err
