"""Demo data: one island county (东岛县) with its centre's desks, outlets, staff and catalog.

Idempotent: what exists (matched by code or username) is left as it is, so running the
seed again never overwrites an admin's edits or a changed password.

The demo passwords are fixed and printed by ``cloudhall seed``: they are for the demo
only. A real deployment creates its accounts with ``cloudhall user add`` instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloudhall import catalog_io
from cloudhall.accounts import UserInput, create_user
from cloudhall.auth import hash_password
from cloudhall.db import Database
from cloudhall.identities import ROLE_LABELS, Department, Outlet, Role, User

DATA_DIR = Path(__file__).resolve().parent / "data"
COUNTY = "东岛县"
HOURS = {
    "tz": "Asia/Shanghai",
    **{day: [["08:30", "12:00"], ["14:00", "17:30"]] for day in ("mon", "tue", "wed", "thu", "fri")},
}
HOURS_WITH_SATURDAY = {**HOURS, "sat": [["08:30", "12:00"]]}

# code, name, working hours
DEPARTMENTS = [
    ("SOC", "社会保险窗口", HOURS_WITH_SATURDAY),
    ("MED", "医疗保障窗口", HOURS_WITH_SATURDAY),
    ("CIV", "民政窗口", HOURS),
    ("DPF", "残联窗口", HOURS),
    ("PSB", "户籍（公安）窗口", HOURS),
]

# code, name, island, town, contact name, contact phone, staff username, staff name
OUTLETS = [
    ("DD-BS", "白沙村便民服务站", "白沙岛", "白沙乡", "陈海燕", "0580-5061101", "baisha", "陈海燕"),
    ("DD-QY", "青屿村便民服务站", "青屿岛", "青屿镇", "林建军", "0580-5061102", "qingyu", "林建军"),
    ("DD-LM", "鹭鸣村便民服务站", "鹭鸣岛", "青屿镇", "王秀英", "0580-5061103", "luming", "王秀英"),
    ("DD-YS", "渔山村便民服务站", "渔山岛", "渔山乡", "张国平", "0580-5061104", "yushan", "张国平"),
    ("DD-TH", "桃花村便民服务站", "桃花屿", "渔山乡", "李丽娟", "0580-5061105", "taohua", "李丽娟"),
    ("DD-DJ", "东礁村便民服务站", "大礁岛", "礁头镇", "吴志强", "0580-5061106", "dongjiao", "吴志强"),
    ("DD-XJ", "西礁村便民服务站", "小礁岛", "礁头镇", "郑美玲", "0580-5061107", "xijiao", "郑美玲"),
]

# username, display name, department codes
AGENTS = [
    ("agent_soc", "周晓梅", ["SOC", "MED"]),
    ("agent_civ", "孙立新", ["CIV", "DPF"]),
    ("agent_psb", "何建华", ["PSB"]),
    ("agent_all", "许文静", ["SOC", "MED", "CIV", "DPF", "PSB"]),
]

# Demo-only passwords, one per role, printed by `cloudhall seed`.
DEMO_PASSWORDS = {
    Role.OUTLET_STAFF: "zhan-2026-demo",
    Role.AGENT: "zuoxi-2026-demo",
    Role.SUPERVISOR: "ducha-2026-demo",
    Role.ADMIN: "admin-2026-demo",
}


@dataclass
class DemoAccount:
    username: str
    display_name: str
    role: Role
    scope: str
    password: str
    created: bool


@dataclass
class SeedReport:
    accounts: list[DemoAccount] = field(default_factory=list)
    departments_created: int = 0
    outlets_created: int = 0
    catalog: catalog_io.ImportResult | None = None


def _user_specs() -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [
        {"username": "admin", "display_name": "系统管理员", "role": Role.ADMIN},
        {"username": "supervisor", "display_name": "赵督查", "role": Role.SUPERVISOR, "county": COUNTY},
    ]
    specs += [
        {"username": username, "display_name": name, "role": Role.AGENT, "departments": depts}
        for username, name, depts in AGENTS
    ]
    specs += [
        {"username": staff, "display_name": staff_name, "role": Role.OUTLET_STAFF, "outlet": code}
        for code, _name, _island, _town, _contact, _phone, staff, staff_name in OUTLETS
    ]
    return specs


async def seed_demo(db: Database) -> SeedReport:
    """Create whatever of the demo county is missing; return what the demo accounts are."""
    report = SeedReport()
    async with db.transaction() as session:
        existing_users = set(await session.scalars(select(User.username)))
    # One hash per role that still needs accounts (hashing is slow on purpose); demo accounts only.
    missing_roles = sorted({s["role"] for s in _user_specs() if s["username"] not in existing_users}, key=str)
    digests = await asyncio.gather(*(asyncio.to_thread(hash_password, DEMO_PASSWORDS[r]) for r in missing_roles))
    hashes = dict(zip(missing_roles, digests, strict=True))
    async with db.transaction() as session:
        existing_depts = set(await session.scalars(select(Department.code)))
        for code, name, hours in DEPARTMENTS:
            if code not in existing_depts:
                session.add(
                    Department(code=code, name=name, county=COUNTY, working_hours=hours, enabled=True)
                )
                report.departments_created += 1
        existing_outlets = set(await session.scalars(select(Outlet.code)))
        for code, name, island, town, contact, phone, _staff, _staff_name in OUTLETS:
            if code not in existing_outlets:
                session.add(
                    Outlet(
                        code=code,
                        name=name,
                        island=island,
                        town=town,
                        county=COUNTY,
                        contact_name=contact,
                        contact_phone=phone,
                        enabled=True,
                    )
                )
                report.outlets_created += 1
        await session.flush()
        outlet_names = {o.code: o.name for o in await session.scalars(select(Outlet))}
        for spec in _user_specs():
            data = UserInput(**spec)
            created = data.username not in existing_users
            if created:
                await create_user(session, data, hashes[data.role])
            report.accounts.append(
                DemoAccount(
                    username=data.username,
                    display_name=data.display_name,
                    role=data.role,
                    scope=_scope_label(data, outlet_names),
                    password=DEMO_PASSWORDS[data.role],
                    created=created,
                )
            )
    demo_catalog = DATA_DIR / "demo_catalog.json"
    raw_rows, _ = catalog_io.parse_json(demo_catalog.read_text("utf-8"))
    report.catalog = await catalog_io.import_rows(db, raw_rows, only_missing=True)
    return report


def _scope_label(data: UserInput, outlet_names: dict[str, str]) -> str:
    if data.role is Role.OUTLET_STAFF:
        return outlet_names.get(data.outlet, data.outlet)
    if data.role is Role.AGENT:
        return f"{COUNTY} " + "、".join(data.departments)
    if data.role is Role.SUPERVISOR:
        return data.county or "全市"
    return "全部"


def format_report(report: SeedReport, url: str) -> str:
    """The demo accounts as a plain-text table for the terminal."""
    lines = [
        f"Demo data for {COUNTY}: {report.departments_created} departments, {report.outlets_created} outlets "
        f"created; catalog {report.catalog.summary() if report.catalog else 'not loaded'}.",
        f"Open {url} and log in with one of these DEMO-ONLY accounts:",
        "",
        f"  {'username':<11} {'password':<16} {'role':<14} scope",
    ]
    for account in report.accounts:
        note = "" if account.created else "  (existed before: password unchanged)"
        lines.append(
            f"  {account.username:<11} {account.password:<16} {account.role.value:<14} "
            f"{ROLE_LABELS[account.role]} · {account.display_name} · {account.scope}{note}"
        )
    return "\n".join(lines)
