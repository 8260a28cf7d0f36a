"""Small, real database fixtures: a county with departments, outlets and a user of every role."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from cloudhall.auth import hash_password
from cloudhall.catalog import ServiceItem
from cloudhall.db import Database
from cloudhall.identities import Department, Outlet, Role, User

PASSWORD = "correct-horse-42"
# One argon2 hash reused by every test user: hashing is deliberately slow.
_HASH = hash_password(PASSWORD)


@dataclass
class World:
    departments: dict[str, Department] = field(default_factory=dict)
    outlets: dict[str, Outlet] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    items: dict[str, ServiceItem] = field(default_factory=dict)


async def build_world(db: Database) -> World:
    """Two counties, so that scope checks have something to refuse."""
    world = World()
    async with db.transaction() as session:
        await _populate(session, world)
    return world


async def _populate(session: AsyncSession, world: World) -> None:
    for code, name, county in [
        ("SOC", "社保窗口", "东岛县"),
        ("MED", "医保窗口", "东岛县"),
        ("CIV", "民政窗口", "东岛县"),
        ("W-SOC", "社保窗口", "西岛县"),
    ]:
        dept = Department(code=code, name=name, county=county, working_hours={})
        session.add(dept)
        world.departments[code] = dept
    for code, name, island, county in [
        ("O1", "花鸟村便民服务站", "花鸟岛", "东岛县"),
        ("O2", "黄龙村便民服务站", "黄龙岛", "东岛县"),
        ("W1", "西山村便民服务站", "西山岛", "西岛县"),
    ]:
        outlet = Outlet(code=code, name=name, island=island, town=island + "乡", county=county)
        session.add(outlet)
        world.outlets[code] = outlet
    await session.flush()
    for code, name, dept in [("SI-001", "城乡居民养老保险参保登记", "SOC"), ("MI-001", "医保参保登记", "MED")]:
        item = ServiceItem(
            code=code,
            name=name,
            department_id=world.departments[dept].id,
            materials=[{"name": "居民身份证", "form": "original", "notes": ""}],
            high_frequency=True,
        )
        session.add(item)
        world.items[code] = item
    specs = [
        ("staff1", Role.OUTLET_STAFF, "O1", None, []),
        ("staff2", Role.OUTLET_STAFF, "O2", None, []),
        ("wstaff", Role.OUTLET_STAFF, "W1", None, []),
        ("agent1", Role.AGENT, None, "东岛县", ["SOC", "MED"]),
        ("agent2", Role.AGENT, None, "东岛县", ["SOC"]),
        ("wagent", Role.AGENT, None, "西岛县", ["W-SOC"]),
        ("super1", Role.SUPERVISOR, None, "东岛县", []),
        ("wsuper", Role.SUPERVISOR, None, "西岛县", []),
        ("citysuper", Role.SUPERVISOR, None, None, []),
        ("admin", Role.ADMIN, None, None, []),
    ]
    for username, role, outlet, county, depts in specs:
        user = User(
            username=username,
            display_name=username,
            password_hash=_HASH,
            role=role.value,
            outlet_id=world.outlets[outlet].id if outlet else None,
            county=county if county else (world.outlets[outlet].county if outlet else None),
            departments=[world.departments[d] for d in depts],
        )
        session.add(user)
        world.users[username] = user
    await session.flush()
