"""Account use cases and the demo seed on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from cloudhall import accounts
from cloudhall.catalog import ServiceItem
from cloudhall.db import Database
from cloudhall.errors import Conflict
from cloudhall.identities import Department, Outlet, Role, User, get_user
from cloudhall.seed import AGENTS, DEPARTMENTS, OUTLETS, seed_demo
from tests.factories import build_world

HASH = "argon2-hash-placeholder"  # use cases store whatever hash they are given


def user_input(**values: object) -> accounts.UserInput:
    base = {"username": "newuser", "display_name": "新用户", "role": "agent", "departments": ["SOC"]}
    return accounts.parse_input(accounts.UserInput, {**base, **values})


@pytest.fixture
async def world_db(database: Database) -> Database:
    await build_world(database)
    return database


async def test_each_role_gets_its_scope(world_db: Database) -> None:
    async with world_db.transaction() as session:
        staff = await accounts.create_user(
            session, user_input(username="s1", role="outlet_staff", outlet="W1", departments=[]), HASH
        )
        agent = await accounts.create_user(
            session, user_input(username="a1", departments=["SOC", "MED"]), HASH
        )
        sup = await accounts.create_user(
            session, user_input(username="c1", role="supervisor", county="西岛县", departments=[]), HASH
        )
        city = await accounts.create_user(
            session, user_input(username="d1", role="supervisor", departments=[]), HASH
        )
    async with world_db.transaction() as session:
        staff, agent = await get_user(session, staff.id), await get_user(session, agent.id)
    assert staff.county == "西岛县" and staff.outlet and staff.outlet.code == "W1"
    assert agent.county == "东岛县" and sorted(d.code for d in agent.departments) == ["MED", "SOC"]
    assert sup.county == "西岛县" and city.county is None


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"username": "a b"}, "username"),
        ({"username": "staff1"}, "username"),  # taken
        ({"role": "outlet_staff", "departments": []}, "outlet"),
        ({"role": "outlet_staff", "outlet": "NOPE", "departments": []}, "outlet"),
        ({"departments": []}, "departments"),
        ({"departments": ["SOC", "W-SOC"]}, "departments"),  # two counties
        ({"departments": ["NOPE"]}, "departments"),
        ({"county": "西岛县"}, "county"),  # departments are in 东岛县
        ({"role": "supervisor", "county": "北岛县", "departments": []}, "county"),
        ({"role": "admin", "county": "东岛县", "departments": []}, "county"),
        ({"role": "admin", "outlet": "O1", "departments": []}, "outlet"),
        ({"role": "pilot"}, "role"),
        ({"display_name": ""}, "display_name"),
    ],
)
async def test_bad_users_are_refused_naming_the_field(world_db: Database, values: dict, field: str) -> None:
    with pytest.raises(accounts.FieldErrors) as caught:
        async with world_db.transaction() as session:
            await accounts.create_user(session, user_input(**values), HASH)
    assert field in caught.value.fields, caught.value.fields


async def test_an_admin_cannot_lock_themselves_out(world_db: Database) -> None:
    async with world_db.transaction() as session:
        admin = await accounts.find_user(session, "admin")
        with pytest.raises(Conflict):
            await accounts.update_user(
                session,
                admin.id,
                user_input(username="admin", role="admin", departments=[], enabled=False),
                actor_id=admin.id,
            )
        with pytest.raises(Conflict):
            await accounts.set_enabled(session, admin.id, False, actor_id=admin.id)


async def test_outlets_and_departments_save_and_codes_stay_unique(world_db: Database) -> None:
    outlet = accounts.parse_input(
        accounts.OutletInput,
        {
            "code": "O9",
            "name": "新站",
            "island": "新岛",
            "town": "新镇",
            "county": "东岛县",
            "contact_phone": "0580-1",
        },
    )
    dept = accounts.parse_input(
        accounts.DepartmentInput,
        {"code": "DPF", "name": "残联窗口", "county": "东岛县", "working_hours": "mon-fri 08:30-17:00"},
    )
    async with world_db.transaction() as session:
        saved = await accounts.save_outlet(session, outlet)
        saved_dept = await accounts.save_department(session, dept)
    assert saved_dept.working_hours["fri"] == [["08:30", "17:00"]]
    with pytest.raises(accounts.FieldErrors, match="code"):
        async with world_db.transaction() as session:
            await accounts.save_outlet(session, outlet.model_copy(update={"code": "O1"}), saved.id)
    with pytest.raises(accounts.FieldErrors, match="county"):
        async with world_db.transaction() as session:
            soc = await session.scalar(select(Department).where(Department.code == "SOC"))
            data = accounts.DepartmentInput(code="SOC", name="社保", county="西岛县")
            await accounts.save_department(session, data, soc.id)


async def test_seed_is_idempotent(database: Database) -> None:
    first = await seed_demo(database)
    assert all(a.created for a in first.accounts)
    assert first.catalog and len(first.catalog.created) >= 15
    second = await seed_demo(database)
    assert not any(a.created for a in second.accounts)
    assert second.catalog and not second.catalog.created and not second.catalog.updated
    async with database.transaction() as session:
        count = lambda model: session.scalar(select(func.count()).select_from(model))  # noqa: E731
        assert await count(Department) == len(DEPARTMENTS) >= 4
        assert await count(Outlet) == len(OUTLETS) >= 6
        assert await count(User) == len(OUTLETS) + len(AGENTS) + 2
        assert await count(ServiceItem) == len(first.catalog.created)
        roles = list(await session.scalars(select(User.role)))
    assert roles.count(Role.AGENT.value) >= 3 and roles.count(Role.SUPERVISOR.value) == 1
    assert roles.count(Role.ADMIN.value) == 1 and roles.count(Role.OUTLET_STAFF.value) == len(OUTLETS)


async def test_a_unique_race_is_a_field_error_not_a_crash(world_db: Database) -> None:
    """Two admins saving the same code at once: the loser's flush hits the constraint."""
    with pytest.raises(accounts.FieldErrors) as caught:
        async with world_db.transaction() as session:
            session.add(Outlet(code="O1", name="重复", island="岛", town="镇", county="东岛县"))
            await accounts._flush_unique(session, "code", "编码已被使用")
    assert caught.value.fields == {"code": "编码已被使用"}
    async with world_db.transaction() as session:
        assert await session.scalar(select(func.count()).select_from(Outlet).where(Outlet.code == "O1")) == 1
