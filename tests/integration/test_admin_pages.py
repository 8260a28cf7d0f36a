"""Admin pages through the real app: lists, forms with CSRF, validation shown on the form, effects."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from cloudhall.db import Database
from cloudhall.identities import Department, Outlet, get_user
from tests.conftest import login
from tests.factories import PASSWORD, World


async def admin_client(client: TestClient) -> str:
    await login(client, "admin")
    return await form_token(client, "/admin")


async def form_token(client: TestClient, path: str) -> str:
    html = await (await client.get(path)).text()
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


def field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'class="field-error" id="err-([\w_]+)" role="alert">([^<]*)<', html))


async def test_overview_lists_everything_with_edit_links(client: TestClient, world: World) -> None:
    await admin_client(client)
    html = await (await client.get("/admin")).text()
    for user in world.users.values():
        assert f'href="/admin/users/{user.id}"' in html and user.username in html
    for outlet in world.outlets.values():
        assert f'href="/admin/outlets/{outlet.id}"' in html and outlet.name in html
    for dept in world.departments.values():
        assert f'href="/admin/departments/{dept.id}"' in html
    for path in ("/admin/users/new", "/admin/outlets/new", "/admin/departments/new", "/admin/catalog"):
        page = await client.get(path)
        assert page.status == 200, path
    assert "城乡居民养老保险参保登记" in await (await client.get("/admin/catalog")).text()


async def test_every_admin_form_carries_the_csrf_token(client: TestClient, world: World) -> None:
    token = await admin_client(client)
    for path in (
        "/admin/users/new",
        f"/admin/users/{world.users['agent1'].id}",
        "/admin/outlets/new",
        f"/admin/outlets/{world.outlets['O1'].id}",
        "/admin/departments/new",
        f"/admin/departments/{world.departments['SOC'].id}",
    ):
        html = await (await client.get(path)).text()
        forms = re.findall(r'<form method="post".*?</form>', html, re.S)
        assert forms, path
        for form in forms:
            assert f'name="csrf_token" value="{token}"' in form, path


async def test_create_user_then_log_in_as_them(client: TestClient, world: World) -> None:
    token = await admin_client(client)
    response = await client.post(
        "/admin/users/new",
        data=[
            ("csrf_token", token),
            ("username", "agent9"),
            ("display_name", "新坐席"),
            ("role", "agent"),
            ("departments", "SOC"),
            ("departments", "CIV"),
            ("outlet", "O1"),  # outlet ignored for agents
            ("password", "a-long-password"),
            ("password_confirm", "a-long-password"),
            ("enabled", "on"),
        ],
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    assert "saved=user" in response.headers["Location"]
    client.session.cookie_jar.clear()
    await login(client, "agent9", "a-long-password")
    me = await (await client.get("/api/me")).json()
    assert me["role"] == "agent" and me["county"] == "东岛县" and len(me["department_ids"]) == 2


async def test_validation_errors_are_shown_on_the_form(client: TestClient, world: World) -> None:
    token = await admin_client(client)
    response = await client.post(
        "/admin/users/new",
        data={
            "csrf_token": token,
            "username": "bad name",
            "display_name": "",
            "role": "agent",
            "password": "short",
            "password_confirm": "other",
        },
    )
    assert response.status == 400
    html = await response.text()
    errors = field_errors(html)
    assert {"username", "display_name", "password"} <= set(errors), errors
    assert 'value="bad name"' in html  # what was typed is kept

    response = await client.post(
        f"/admin/departments/{world.departments['SOC'].id}",
        data={
            "csrf_token": token,
            "code": "SOC",
            "name": "社保窗口",
            "county": "东岛县",
            "working_hours": "mon-fri 8:30-12:00",
            "enabled": "on",
        },
    )
    assert response.status == 400
    assert "8:30-12:00" in field_errors(await response.text())["working_hours"]


async def test_disabling_a_user_ends_their_sessions(
    client: TestClient, aiohttp_client, world: World, sqlite_database: Database
) -> None:
    victim = await aiohttp_client(client.app)
    await login(victim, "agent2")
    assert (await victim.get("/api/me")).status == 200

    token = await admin_client(client)
    agent2 = world.users["agent2"]
    response = await client.post(
        f"/admin/users/{agent2.id}",
        data={"csrf_token": token, "display_name": "停用的坐席", "role": "agent", "departments": "SOC"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert (await victim.get("/api/me")).status == 401
    async with sqlite_database.transaction() as session:
        user = await get_user(session, agent2.id)
    assert user.enabled is False and user.display_name == "停用的坐席"
    html = await (await client.get("/admin")).text()
    assert "停用的坐席" in html


async def test_reset_password_ends_sessions_and_sets_the_new_one(
    client: TestClient, aiohttp_client, world: World
) -> None:
    victim = await aiohttp_client(client.app)
    await login(victim, "staff2")
    token = await admin_client(client)
    staff2 = world.users["staff2"]
    mismatch = await client.post(
        f"/admin/users/{staff2.id}/password",
        data={"csrf_token": token, "password": "new-password-1", "password_confirm": "typo"},
    )
    assert mismatch.status == 400 and "password_confirm" in field_errors(await mismatch.text())
    response = await client.post(
        f"/admin/users/{staff2.id}/password",
        data={"csrf_token": token, "password": "new-password-1", "password_confirm": "new-password-1"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert (await victim.get("/api/me")).status == 401
    victim.session.cookie_jar.clear()
    await login(victim, "staff2", "new-password-1")
    victim.session.cookie_jar.clear()
    page = await victim.get("/login")
    token2 = re.search(r'name="csrf_token" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
    old = await victim.post(
        "/login",
        data={"username": "staff2", "password": PASSWORD, "csrf_token": token2},
        allow_redirects=False,
    )
    assert old.status == 401


async def test_admin_cannot_disable_themselves(client: TestClient, world: World) -> None:
    token = await admin_client(client)
    response = await client.post(
        f"/admin/users/{world.users['admin'].id}",
        data={"csrf_token": token, "display_name": "admin", "role": "admin"},
    )
    assert response.status == 400
    assert (await client.get("/api/me")).status == 200


async def test_create_and_edit_outlets_and_departments(
    client: TestClient, world: World, sqlite_database: Database
) -> None:
    token = await admin_client(client)
    created = await client.post(
        "/admin/outlets/new",
        data={
            "csrf_token": token,
            "code": "O7",
            "name": "南湾村便民服务站",
            "island": "南湾岛",
            "town": "南湾乡",
            "county": "东岛县",
            "contact_name": "钱",
            "contact_phone": "0580-123",
            "enabled": "on",
        },
        allow_redirects=False,
    )
    assert created.status == 303
    duplicate = await client.post(
        f"/admin/outlets/{world.outlets['O2'].id}",
        data={"csrf_token": token, "code": "O7", "name": "x", "island": "x", "town": "x", "county": "东岛县"},
    )
    assert duplicate.status == 400 and "code" in field_errors(await duplicate.text())
    dept = await client.post(
        "/admin/departments/new",
        data={
            "csrf_token": token,
            "code": "DPF",
            "name": "残联窗口",
            "county": "东岛县",
            "working_hours": "tz Asia/Shanghai\nmon-fri 08:30-12:00 14:00-17:30\nsat 09:00-11:30",
            "enabled": "on",
        },
        allow_redirects=False,
    )
    assert dept.status == 303
    page = await (await client.get(dept.headers["Location"])).text()
    assert "mon-fri 08:30-12:00 14:00-17:30" in page and "已保存" in page
    async with sqlite_database.transaction() as session:
        outlet = await session.scalar(select(Outlet).where(Outlet.code == "O7"))
        saved = await session.scalar(select(Department).where(Department.code == "DPF"))
    assert outlet is not None and outlet.contact_phone == "0580-123"
    assert saved is not None and saved.working_hours["sat"] == [["09:00", "11:30"]]
    assert (await client.get("/admin/outlets/99999")).status == 404


async def test_names_are_escaped_on_the_pages(client: TestClient, world: World) -> None:
    token = await admin_client(client)
    evil = '<script>alert("x")</script>'
    created = await client.post(
        "/admin/outlets/new",
        data={
            "csrf_token": token,
            "code": "O8",
            "name": evil,
            "island": "岛",
            "town": "镇",
            "county": "东岛县",
            "enabled": "on",
        },
        allow_redirects=False,
    )
    assert created.status == 303
    for path in ("/admin", created.headers["Location"]):
        html = await (await client.get(path)).text()
        assert evil not in html and "&lt;script&gt;" in html, path
    assert (
        "不能为空"
        in field_errors(
            await (
                await client.post(
                    "/admin/outlets/new",
                    data={
                        "csrf_token": token,
                        "code": "O9",
                        "name": "",
                        "island": "岛",
                        "town": "镇",
                        "county": "东岛县",
                    },
                )
            ).text()
        )["name"]
    )


async def test_pages_render_in_every_language(client: TestClient, world: World) -> None:
    await admin_client(client)
    for language in ("zh-CN", "en"):
        for path in (
            "/admin",
            "/admin/users/new",
            f"/admin/users/{world.users['agent1'].id}",
            f"/admin/outlets/{world.outlets['O1'].id}",
            f"/admin/departments/{world.departments['SOC'].id}",
            "/admin/catalog",
        ):
            page = await client.get(path, headers={"Accept-Language": language})
            assert page.status == 200, (language, path)
