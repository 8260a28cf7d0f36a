"""The ``cloudhall`` command: serve, migrate, seed, and administer accounts and the catalog.

This module and ``app.py`` form the composition root: the only place that reads
``os.environ`` (once, through :meth:`Settings.from_env`). Exit status: 0 success, 1 a
refused operation (its message printed), 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from cloudhall.errors import CloudHallError
from cloudhall.settings import Settings, SettingsError

T = TypeVar("T")
log = logging.getLogger(__name__)


class UsageError(Exception):
    """The command line is incomplete (e.g. no password given and no terminal to ask on)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudhall",
        description="Cloud Hall (云上大厅): settings come from CLOUDHALL_* environment variables "
        "(see docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the web server (host and port from CLOUDHALL_HOST/PORT)")

    db = commands.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    upgrade = db.add_parser("upgrade", help="apply every migration up to the newest (or --revision)")
    upgrade.add_argument("--revision", default="head")
    db.add_parser("current", help="print the database's migration revision")

    commands.add_parser("seed", help="create the demo county, accounts and catalog (idempotent)")

    user = commands.add_parser("user", help="manage user accounts").add_subparsers(
        dest="user_command", required=True
    )
    add = user.add_parser("add", help="create a user")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=["outlet_staff", "agent", "supervisor", "admin"])
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--outlet", default="", help="outlet code (outlet_staff)")
    add.add_argument("--county", default="", help="county (supervisor; empty: the whole city)")
    add.add_argument("--department", action="append", default=[], help="department code (agent; repeatable)")
    _password_options(add)
    for name, text in (
        ("disable", "disable a user and end their sessions"),
        ("enable", "enable a user again"),
    ):
        cmd = user.add_parser(name, help=text)
        cmd.add_argument("username")
    passwd = user.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("username")
    _password_options(passwd)
    user.add_parser("list", help="list users")

    outlet = commands.add_parser("outlet", help="manage outlets").add_subparsers(
        dest="outlet_command", required=True
    )
    oadd = outlet.add_parser("add", help="create an outlet (village service point)")
    oadd.add_argument("code")
    oadd.add_argument("--name", required=True)
    oadd.add_argument("--island", required=True)
    oadd.add_argument("--town", required=True)
    oadd.add_argument("--county", required=True)
    oadd.add_argument("--contact-name", default="")
    oadd.add_argument("--contact-phone", default="")

    dept = commands.add_parser("department", help="manage departments").add_subparsers(
        dest="department_command", required=True
    )
    dadd = dept.add_parser("add", help="create a department (a county-centre desk)")
    dadd.add_argument("code")
    dadd.add_argument("--name", required=True)
    dadd.add_argument("--county", required=True)
    dadd.add_argument(
        "--hours", default="", help="working hours, e.g. 'tz Asia/Shanghai; mon-fri 08:30-12:00 14:00-17:30'"
    )

    catalog = commands.add_parser("catalog", help="service-item catalog").add_subparsers(
        dest="catalog_command", required=True
    )
    imp = catalog.add_parser("import", help="import a .csv or .json catalog (all or nothing)")
    imp.add_argument("file", type=Path)
    exp = catalog.add_parser("export", help="export the catalog to a .csv or .json file")
    exp.add_argument("file", type=Path)
    return parser


def _password_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password", help="the password (visible in the process list: prefer a prompt)")
    group.add_argument("--password-stdin", action="store_true", help="read the password from standard input")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudhall`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"cloudhall: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            return serve(settings)
        return COMMANDS[args.command](settings, args)
    except UsageError as exc:
        print(f"cloudhall: {exc}", file=sys.stderr)
        return 2
    except CloudHallError as exc:
        print(f"cloudhall: {exc.message}", file=sys.stderr)
        for problem in (exc.details or {}).get("errors", []) if isinstance(exc.details, dict) else []:
            print(
                f"  row {problem['row']}, column {problem['column']}: {problem['message']}", file=sys.stderr
            )
        return 1


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # Alembic narrates every step at INFO; its warnings and errors still show.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


def serve(settings: Settings) -> int:
    from aiohttp import web

    from cloudhall.app import create_app

    configure_logging(settings.log_level)
    problem = asyncio.run(_schema_problem(settings.database.url))
    if problem:
        print(f"cloudhall: {problem}", file=sys.stderr)
        return 2
    http = settings.http
    log.info(
        "Cloud Hall listening on http://%s:%d/ (database %s)",
        http.host,
        http.port,
        _redacted(settings.database.url),
    )
    app = create_app(settings)
    freeze_startup_heap()
    web.run_app(app, host=http.host, port=http.port, print=None, access_log=None)
    return 0


def freeze_startup_heap() -> int:
    """Take what start-up allocated out of the garbage collector's sight; returns how many objects.

    A full collection walks every object the collector tracks, and the event loop (the media of
    every call on the node) stands still meanwhile: after start-up alone that is ~110,000
    objects and 115–160 ms here, and under load such pauses were what pushed the loop's lag
    p99 past 50 ms (``benchmarks/media_load.py`` prints them). Imported modules and the
    application live as long as the process, so they never need collecting; what calls
    allocate later is collected as before.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _schema_problem(url: str) -> str | None:
    """None when the database is at the newest migration, else what to do about it."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import create_async_engine

    from cloudhall.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
    except Exception as exc:  # any driver error: report it in one line
        return f"cannot open the database {_redacted(url)}: {type(exc).__name__}: {exc}"
    finally:
        await engine.dispose()
    if current != head:
        return (
            f"the database is at migration {current or 'none'}, not {head}: run `cloudhall db upgrade` first"
        )
    return None


def _with_db(settings: Settings, use: Callable[[Any], Awaitable[T]]) -> T:
    from cloudhall.db import Database

    async def run() -> T:
        db = Database(settings.database)
        try:
            return await use(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall.migrate import upgrade

    if args.db_command == "upgrade":
        upgrade(settings.database.url, args.revision)
        print(f"database {_redacted(settings.database.url)} is at migration {args.revision}")
        return 0
    problem = asyncio.run(_schema_problem(settings.database.url))
    print(problem or "the database is at the newest migration")
    return 0 if problem is None else 1


def cmd_seed(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall.seed import format_report, seed_demo

    report = _with_db(settings, seed_demo)
    print(format_report(report, f"http://{settings.http.host}:{settings.http.port}/"))
    return 0


def read_password(args: argparse.Namespace, stdin: TextIO | None = None) -> str:
    """The password from --password, --password-stdin or a prompt; raise :class:`UsageError`."""
    from cloudhall.accounts import check_password

    stdin = stdin or sys.stdin
    if args.password is not None:
        password = args.password
    elif args.password_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        raise UsageError("give --password or --password-stdin (there is no terminal to ask on)")
    return check_password(password)


def cmd_user(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall import accounts
    from cloudhall.auth import AuthService, hash_password
    from cloudhall.identities import ROLE_LABELS, Role

    async def add(db: Any) -> str:
        data = accounts.parse_input(
            accounts.UserInput,
            {
                "username": args.username,
                "display_name": args.name,
                "role": args.role,
                "outlet": args.outlet,
                "county": args.county,
                "departments": args.department,
            },
        )
        password_hash = await asyncio.to_thread(hash_password, read_password(args))
        async with db.transaction() as session:
            user = await accounts.create_user(session, data, password_hash)
        return f"created user {user.username} ({ROLE_LABELS[Role(user.role)]})"

    async def set_enabled(db: Any, enabled: bool) -> str:
        async with db.transaction() as session:
            user = await accounts.find_user(session, args.username)
            await accounts.set_enabled(session, user.id, enabled)
        if not enabled:
            await AuthService(db, settings.http).logout_user(user.id)
        return f"user {user.username} is {'enabled' if enabled else 'disabled; their sessions are ended'}"

    async def passwd(db: Any) -> str:
        password_hash = await asyncio.to_thread(hash_password, read_password(args))
        async with db.transaction() as session:
            user = await accounts.find_user(session, args.username)
            await accounts.set_password(session, user.id, password_hash)
        await AuthService(db, settings.http).logout_user(user.id)
        return f"password of {user.username} changed; their sessions are ended"

    async def listing(db: Any) -> str:
        from sqlalchemy import select
        from sqlalchemy.orm import selectinload

        from cloudhall.identities import User

        async with db.transaction() as session:
            users = await session.scalars(
                select(User)
                .options(selectinload(User.outlet), selectinload(User.departments))
                .order_by(User.username)
            )
            lines = []
            for u in users:
                scope = u.outlet.code if u.outlet else (u.county or "-")
                depts = ",".join(d.code for d in u.departments)
                state = "enabled" if u.enabled else "DISABLED"
                lines.append(
                    f"{u.username:<16} {u.role:<13} {scope:<10} {depts:<20} {state:<9} {u.display_name}"
                )
        return "\n".join(lines)

    actions: dict[str, Callable[[Any], Awaitable[str]]] = {
        "add": add,
        "disable": lambda db: set_enabled(db, False),
        "enable": lambda db: set_enabled(db, True),
        "passwd": passwd,
        "list": listing,
    }
    print(_with_db(settings, actions[args.user_command]))
    return 0


def cmd_outlet(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall import accounts

    data = accounts.parse_input(
        accounts.OutletInput,
        {
            "code": args.code,
            "name": args.name,
            "island": args.island,
            "town": args.town,
            "county": args.county,
            "contact_name": args.contact_name,
            "contact_phone": args.contact_phone,
        },
    )

    async def add(db: Any) -> str:
        async with db.transaction() as session:
            outlet = await accounts.save_outlet(session, data)
        return f"created outlet {outlet.code} {outlet.name}"

    print(_with_db(settings, add))
    return 0


def cmd_department(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall import accounts

    data = accounts.parse_input(
        accounts.DepartmentInput,
        {"code": args.code, "name": args.name, "county": args.county, "working_hours": args.hours},
    )

    async def add(db: Any) -> str:
        async with db.transaction() as session:
            department = await accounts.save_department(session, data)
        return f"created department {department.code} {department.name} ({department.county})"

    print(_with_db(settings, add))
    return 0


def cmd_catalog(settings: Settings, args: argparse.Namespace) -> int:
    from cloudhall import catalog_io

    if args.catalog_command == "import":
        if not args.file.is_file():
            raise UsageError(f"{args.file} is not a file")
        result = _with_db(settings, lambda db: catalog_io.import_file(db, args.file))
        print(f"imported {args.file}: {result.summary()}")
    else:
        count = _with_db(settings, lambda db: catalog_io.export_file(db, args.file))
        print(f"exported {count} items to {args.file}")
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "db": cmd_db,
    "seed": cmd_seed,
    "user": cmd_user,
    "outlet": cmd_outlet,
    "department": cmd_department,
    "catalog": cmd_catalog,
}


if __name__ == "__main__":
    sys.exit(main())
