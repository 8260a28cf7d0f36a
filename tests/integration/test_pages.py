"""The pages and the REST endpoints they use: access, CSP-safe markup, language, items, ratings."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from sqlalchemy import select

from cloudhall.db import utcnow
from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession, Rating
from tests.conftest import login

PAGES = [("staff1", "/outlet", "outlet.js"), ("agent1", "/console", "console.js"), ("super1", "/supervisor", "wallboard.js")]


def page_config(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="page-config">(.*?)</script>', html, re.S)
    assert match, "the page has no JSON configuration"
    return json.loads(match.group(1))


@pytest.mark.parametrize("username, path, script", PAGES)
async def test_each_role_gets_its_page_with_module_script_and_config(client, username, path, script):
    await login(client, username)
    response = await client.get(path)
    assert response.status == 200
    html = await response.text()
    assert f'<script type="module" src="/static/js/{script}"></script>' in html
    assert re.search(r'<script src="/static/vendor/socket\.io-4\.\d+\.\d+\.min\.js"></script>', html)
    config = page_config(html)
    assert config["user"]["display_name"] == username
    assert config["messages"]["connected"] == "已连接"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    # Strict CSP: no inline script, no inline style, no event-handler attributes.
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)


@pytest.mark.parametrize("username, path", [("agent1", "/outlet"), ("staff1", "/console"), ("agent1", "/supervisor")])
async def test_other_roles_are_refused(client, username, path):
    await login(client, username)
    response = await client.get(path)
    assert response.status == 403


async def test_anonymous_is_sent_to_login(client):
    response = await client.get("/outlet", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"].startswith("/login?next=")


async def test_static_modules_are_served(client):
    for name in ("socket.js", "peer.js", "devices.js", "outlet.js", "console.js", "wallboard.js", "idcard.js"):
        response = await client.get(f"/static/js/{name}")
        assert response.status == 200, name
        assert "javascript" in response.headers["Content-Type"], name


async def test_page_config_cannot_be_broken_out_of(client, world, sqlite_database):
    from cloudhall.identities import Outlet

    async with sqlite_database.transaction() as session:
        outlet = await session.get(Outlet, world.outlets["O1"].id)
        outlet.name = "</script><script>alert(1)</script>"
    await login(client, "staff1")
    html = await (await client.get("/outlet")).text()
    assert "<script>alert(1)" not in html
    assert page_config(html)["outlet"]["name"] == "</script><script>alert(1)</script>"


async def test_items_high_frequency_first_with_initials(client, world, sqlite_database):
    from cloudhall.catalog import ServiceItem

    async with sqlite_database.transaction() as session:
        session.add(ServiceItem(code="AA-001", name="低保申请", initials="DBSQ", department_id=world.departments["CIV"].id))
        session.add(ServiceItem(code="ZZ-9", name="停用事项", department_id=world.departments["CIV"].id, enabled=False))
        item = await session.get(ServiceItem, world.items["SI-001"].id)
        item.initials = "cxjmylbxcbdj"
    await login(client, "staff1")
    body = await (await client.get("/api/items")).json()
    names = [item["name"] for item in body["items"]]
    assert names[-1] == "低保申请", "rare items come after the high-frequency ones"
    assert "停用事项" not in names
    by_name = {item["name"]: item for item in body["items"]}
    assert by_name["低保申请"]["initials"] == "dbsq"
    assert by_name["城乡居民养老保险参保登记"]["initials"] == "cxjmylbxcbdj"
    assert by_name["城乡居民养老保险参保登记"]["high_frequency"] is True


async def test_ping_for_the_network_check(client):
    await login(client, "staff1")
    response = await client.get("/api/ping")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"


async def test_language_switch_and_accept_language(client):
    await login(client, "staff1")
    assert "设备检测" in await (await client.get("/outlet")).text()
    english = await client.get("/outlet", headers={"Accept-Language": "en-GB,en;q=0.9,zh;q=0.5"})
    html = await english.text()
    assert 'lang="en"' in html and "Device check" in html
    assert page_config(html)["messages"]["connected"] == "Connected"
    switch = await client.get("/lang/zh_CN?next=/outlet", allow_redirects=False, headers={"Accept-Language": "en"})
    assert switch.status == 302 and switch.headers["Location"] == "/outlet"
    html = await (await client.get("/outlet", headers={"Accept-Language": "en"})).text()
    assert 'lang="zh-CN"' in html and "设备检测" in html, "the cookie beats Accept-Language"
    await client.get("/lang/en?next=//evil.example/", allow_redirects=False)
    bad = await client.get("/lang/fr", allow_redirects=False)
    assert bad.status == 400


async def test_login_page_in_english(client):
    html = await (await client.get("/login", headers={"Accept-Language": "en"})).text()
    assert "Log in" in html


# ---- ratings ---------------------------------------------------------------------------


async def make_session(db, world, *, outlet="O1", state="ended") -> str:
    session_id = str(uuid.uuid4())
    async with db.transaction() as session:
        session.add(
            CallSession(
                id=session_id,
                outlet_id=world.outlets[outlet].id,
                staff_user_id=world.users["staff1"].id,
                department_id=world.departments["SOC"].id,
                state=state,
                queued_at=utcnow(),
                ended_at=utcnow() if state == "ended" else None,
                end_reason="completed" if state == "ended" else None,
            )
        )
    return session_id


async def csrf_of(client) -> str:
    return page_config(await (await client.get("/outlet")).text())["csrf_token"]


async def post_rating(client, session_id, body, token):
    return await client.post(
        f"/api/sessions/{session_id}/rating", data=json.dumps(body),
        headers={"Content-Type": "application/json", "X-CSRF-Token": token},
    )


async def test_rating_once_by_the_outlet(client, world, sqlite_database):
    session_id = await make_session(sqlite_database, world)
    await login(client, "staff1")
    token = await csrf_of(client)
    response = await post_rating(client, session_id, {"level": 5, "comment": "  办得很快  "}, token)
    assert response.status == 201, await response.text()
    assert (await response.json())["label"] == "非常满意"
    again = await post_rating(client, session_id, {"level": 1}, token)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "already_rated"
    async with sqlite_database.transaction() as session:
        rating = await session.scalar(select(Rating).where(Rating.session_id == session_id))
        assert (rating.level, rating.comment, rating.submitted_by) == (5, "办得很快", world.users["staff1"].id)
        events = await load_events(session, session_id)
        assert [e.kind for e in events] == ["rating_submitted"]
        assert events[0].data["level"] == 5
        assert (await verify_chain(session, session_id)).ok


@pytest.mark.parametrize(
    "body, field",
    [({"level": 0}, "level"), ({"level": 6}, "level"), ({"level": "5"}, "level"), ({"level": True}, "level"),
     ({}, "level"), ({"level": 3, "comment": "长" * 501}, "comment"), ({"level": 3, "comment": 7}, "comment")],
)
async def test_rating_refuses_bad_input_clearly(client, world, sqlite_database, body, field):
    session_id = await make_session(sqlite_database, world)
    await login(client, "staff1")
    response = await post_rating(client, session_id, body, await csrf_of(client))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_input" and error["details"]["field"] == field
    assert field in error["message"]


async def test_rating_scope_state_and_csrf(client, world, sqlite_database):
    other = await make_session(sqlite_database, world, outlet="O2")
    live = await make_session(sqlite_database, world, state="in_call")
    mine = await make_session(sqlite_database, world)
    await login(client, "staff1")
    token = await csrf_of(client)
    assert (await post_rating(client, other, {"level": 4}, token)).status == 403
    response = await post_rating(client, live, {"level": 4}, token)
    assert response.status == 409 and "in_call" in (await response.json())["error"]["message"]
    assert (await post_rating(client, str(uuid.uuid4()), {"level": 4}, token)).status == 404
    assert (await post_rating(client, mine, {"level": 4}, "wrong")).status == 403
    bad_json = await client.post(f"/api/sessions/{mine}/rating", data="{", headers={"Content-Type": "application/json", "X-CSRF-Token": token})
    assert bad_json.status == 400


async def test_agents_cannot_rate(client, world, sqlite_database):
    session_id = await make_session(sqlite_database, world)
    await login(client, "agent1")
    html = await (await client.get("/console")).text()
    token = page_config(html)["csrf_token"]
    assert (await post_rating(client, session_id, {"level": 5}, token)).status == 403
