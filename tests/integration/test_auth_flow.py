"""Login, logout, throttling and CSRF through the real app and its real forms."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestClient

import cloudhall.auth
from cloudhall.app import create_app
from cloudhall.auth import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE
from cloudhall.db import Database, utcnow
from tests.conftest import login, make_settings
from tests.factories import PASSWORD

HOMES = {"staff1": "/outlet", "agent1": "/console", "super1": "/supervisor", "admin": "/admin"}


async def login_token(client: TestClient) -> str:
    html = await (await client.get("/login")).text()
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


async def try_login(client: TestClient, username: str, password: str):  # noqa: ANN201
    token = await login_token(client)
    return await client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token},
        allow_redirects=False,
    )


@pytest.mark.parametrize("username", sorted(HOMES))
async def test_each_role_lands_on_its_home(client: TestClient, username: str) -> None:
    response = await try_login(client, username, PASSWORD)
    assert response.status == 303
    assert response.headers["Location"] == HOMES[username]
    cookie = response.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and not cookie["secure"]
    page = await client.get("/")
    assert page.status == 200 and str(page.url.path) == HOMES[username]
    me = await (await client.get("/api/me")).json()
    assert me["username"] == username and me["home"] == HOMES[username]


async def test_secure_cookies_behind_tls(
    aiohttp_client, sqlite_database: Database, world, tmp_path: Path
) -> None:
    base = make_settings(tmp_path, sqlite_database.url)
    settings = replace(base, http=replace(base.http, cookie_secure=True))
    client = await aiohttp_client(create_app(settings, database=sqlite_database))
    page = await client.get("/login")
    csrf_cookie = page.cookies[CSRF_COOKIE]
    assert csrf_cookie["secure"]
    token = re.search(r'name="csrf_token" value="([^"]+)"', await page.text()).group(1)  # type: ignore[union-attr]
    # The test client speaks plain HTTP and so keeps Secure cookies to itself: hand it over as a TLS proxy would.
    response = await client.post(
        "/login",
        data={"username": "staff1", "password": PASSWORD, "csrf_token": token},
        cookies={CSRF_COOKIE: csrf_cookie.value},
        allow_redirects=False,
    )
    assert response.status == 303 and response.cookies[SESSION_COOKIE]["secure"]


async def test_next_is_followed_only_within_the_site(client: TestClient) -> None:
    page = await client.get("/admin", allow_redirects=False)
    assert page.status == 302 and unquote(page.headers["Location"]) == "/login?next=/admin"
    token = await login_token(client)
    response = await client.post(
        "/login",
        data={"username": "admin", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/admin"


async def test_wrong_password_and_unknown_user_get_the_same_answer(client: TestClient) -> None:
    wrong = await try_login(client, "staff1", "not-the-password")
    unknown = await try_login(client, "nobody", "not-the-password")
    assert wrong.status == unknown.status == 401
    assert "用户名或密码错误" in await wrong.text()
    assert "用户名或密码错误" in await unknown.text()


async def test_logout_ends_the_session(client: TestClient) -> None:
    await login(client, "agent1")
    token = await login_token(client)
    old_cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[SESSION_COOKIE].value
    response = await client.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/login"
    assert (await client.get("/api/me")).status == 401
    # The old cookie is dead on the server too, not just deleted in this browser.
    client.session.cookie_jar.update_cookies({SESSION_COOKIE: old_cookie})
    assert (await client.get("/api/me")).status == 401


async def test_throttle_locks_then_unlocks_after_the_window(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tests.conftest.make_settings: 3 failures lock the account for 60 seconds.
    for _ in range(3):
        assert (await try_login(client, "staff1", "wrong-password")).status == 401
    locked = await try_login(client, "staff1", PASSWORD)  # even the right password is refused now
    assert locked.status == 429
    text = await locked.text()
    seconds = int(re.search(r"请 (\d+) 秒后再试", text).group(1))  # type: ignore[union-attr]
    assert 0 < seconds <= 61
    # Another account from the same address is not locked by staff1's failures.
    assert (await try_login(client, "staff2", PASSWORD)).status == 303

    later = utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(cloudhall.auth, "utcnow", lambda: later)
    assert (await try_login(client, "staff1", PASSWORD)).status == 303


async def test_disabled_accounts_cannot_log_in(client: TestClient, sqlite_database: Database, world) -> None:
    async with sqlite_database.transaction() as session:
        user = await session.get(type(world.users["staff2"]), world.users["staff2"].id)
        user.enabled = False
    response = await try_login(client, "staff2", PASSWORD)
    assert response.status == 401


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_csrf_rejected_on_forms(client: TestClient, token: str | None) -> None:
    await login(client, "admin")
    data = {"code": "X1", "name": "测试", "county": "东岛县", "working_hours": ""}
    if token:
        data["csrf_token"] = token
    response = await client.post("/admin/departments/new", data=data, allow_redirects=False)
    assert response.status == 403
    assert 'data-code="csrf_failed"' in await response.text()
    # The logout form is protected too: the session survives a forged logout.
    forged = await client.post("/logout", data={"csrf_token": token or ""}, allow_redirects=False)
    assert forged.status == 403
    assert (await client.get("/api/me")).status == 200


async def test_csrf_rejected_on_the_anonymous_login_form(client: TestClient) -> None:
    response = await client.post(
        "/login", data={"username": "staff1", "password": PASSWORD}, allow_redirects=False
    )
    assert response.status == 403


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_csrf_rejected_on_json_endpoints(client: TestClient, token: str | None) -> None:
    await login(client, "staff1")
    headers = {CSRF_HEADER: token} if token else {}
    for path in ("/api/sessions/whatever/rating", "/logout"):
        response = await client.post(path, json={"level": 5}, headers=headers)
        assert response.status == 403, path
        body = await response.json()
        assert body["error"]["code"] == "csrf_failed", path


async def test_the_right_csrf_header_passes(client: TestClient) -> None:
    await login(client, "staff1")
    token = await login_token(client)
    response = await client.post("/logout", json={}, headers={CSRF_HEADER: token}, allow_redirects=False)
    assert response.status == 303
