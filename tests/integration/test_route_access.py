"""Every route × every role, read from the router, so a new route is covered the day it is added.

Anonymous: pages redirect to /login, APIs and form posts answer 401. A role the route does
not allow: 403. A role it allows: neither 401 nor 403. Then the scope grid: every route
that takes a session id refuses outlets and counties that do not own that session.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from cloudhall.auth import CSRF_HEADER
from cloudhall.db import Database
from cloudhall.http import route_access
from cloudhall.identities import Role
from recordings.models import CallSession
from tests.conftest import login
from tests.factories import World

# One user of each role, all in 东岛县; the session below belongs to their outlet O1.
USER_OF_ROLE = {
    Role.OUTLET_STAFF: "staff1",
    Role.AGENT: "agent1",
    Role.SUPERVISOR: "super1",
    Role.ADMIN: "admin",
}
# Who must NOT reach O1's session: another outlet of the same county, and the other county.
OUT_OF_SCOPE = {
    Role.OUTLET_STAFF: ["staff2", "wstaff"],
    Role.AGENT: ["agent2", "wagent"],  # agent2 serves the county but did not take this call
    Role.SUPERVISOR: ["wsuper"],
}
IN_SCOPE = {
    Role.OUTLET_STAFF: ["staff1"],
    Role.AGENT: ["agent1"],
    Role.SUPERVISOR: ["super1", "citysuper"],
    Role.ADMIN: ["admin"],
}
# A body that passes a route's payload validation, for handlers that validate before the
# scope check (so the scope grid really reaches the scope check). Default: {}.
SAMPLE_BODIES: dict[str, dict[str, object]] = {
    "/api/sessions/{session_id}/rating": {"level": 5, "comment": ""}
}
SESSION_ID = str(uuid.UUID(int=0x0123456789ABCDEF))
SNAPSHOT_NAME = "1-camera.jpg"


@dataclass(frozen=True)
class RouteCase:
    method: str
    template: str
    roles: frozenset[Role] | None  # None: public
    params: tuple[str, ...]

    def url(self, values: dict[str, str]) -> str:
        path = self.template
        for name in self.params:
            path = re.sub(r"\{" + name + r"(:[^}]*)?\}", values.get(name, "1"), path)
        return path

    @property
    def is_api(self) -> bool:
        return self.template.startswith("/api/")


def route_cases(app: web.Application) -> list[RouteCase]:
    cases = []
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or resource is None or isinstance(resource, web.StaticResource):
            continue
        info = resource.get_info()
        template = info.get("formatter") or info.get("path") or resource.canonical
        params = tuple(re.findall(r"\{(\w+)", template))
        cases.append(RouteCase(route.method, template, route_access(route.handler), params))
    return cases


@pytest.fixture
async def owned_session(sqlite_database: Database, world: World, tmp_path: Path) -> str:
    async with sqlite_database.transaction() as session:
        session.add(
            CallSession(
                id=SESSION_ID,
                outlet_id=world.outlets["O1"].id,
                staff_user_id=world.users["staff1"].id,
                department_id=world.departments["SOC"].id,
                agent_user_id=world.users["agent1"].id,  # the agent who took the call
            )
        )
    # A stored snapshot, so the routes that serve a session's files have one to serve.
    snapshots = tmp_path / "recordings" / SESSION_ID / "snapshots"
    snapshots.mkdir(parents=True)
    (snapshots / SNAPSHOT_NAME).write_bytes(b"\xff\xd8\xff\xd9")
    return SESSION_ID


def param_values(world: World) -> dict[str, str]:
    return {
        "id": "1",
        "session_id": SESSION_ID,
        "user_id": str(world.users["staff1"].id),
        "outlet_id": str(world.outlets["O1"].id),
        "department_id": str(world.departments["SOC"].id),
        "locale": "en",
        "name": SNAPSHOT_NAME,
    }


async def csrf_of(client: TestClient) -> str:
    html = await (await client.get("/login")).text()
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


async def call(client: TestClient, case: RouteCase, url: str, token: str | None = None) -> tuple[int, str]:
    headers = {CSRF_HEADER: token} if token else {}
    if case.method == "GET":
        response = await client.get(url, allow_redirects=False, headers=headers)
    else:
        body = SAMPLE_BODIES.get(case.template, {})
        response = await client.request(case.method, url, json=body, headers=headers, allow_redirects=False)
    return response.status, response.headers.get("Location", "")


def test_every_route_declares_who_may_call_it(client: TestClient) -> None:
    undeclared = []
    for route in client.app.router.routes():
        if isinstance(route.resource, web.StaticResource):
            continue
        try:
            route_access(route.handler)
        except LookupError:
            undeclared.append(f"{route.method} {route.resource.canonical if route.resource else '?'}")
    assert undeclared == []


async def test_anonymous(client: TestClient, world: World, owned_session: str) -> None:
    failures = []
    cases = route_cases(client.app)
    assert len(cases) >= 20
    token = await csrf_of(client)  # the anonymous token, so that public forms get past CSRF
    for case in cases:
        url = case.url(param_values(world))
        status, location = await call(client, case, url, token)
        if case.roles is None:
            if status in (401, 403) or status >= 500:
                failures.append(f"{case.method} {url}: public route answered {status}")
        elif case.method == "GET" and not case.is_api:
            if status != 302 or not unquote(location).startswith("/login?next=" + url):
                failures.append(
                    f"{case.method} {url}: expected a redirect to /login, got {status} {location}"
                )
        elif status != 401:
            failures.append(f"{case.method} {url}: expected 401, got {status}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
async def test_role(client: TestClient, world: World, owned_session: str, role: Role) -> None:
    username = USER_OF_ROLE[role]
    await login(client, username)
    token = await csrf_of(client)
    failures = []
    checked = 0
    # Posts after gets; /logout last, since it ends the session the others use.
    cases = sorted(route_cases(client.app), key=lambda c: (c.method != "GET", c.template == "/logout"))
    for case in cases:
        if case.roles is None:
            continue
        url = case.url(param_values(world))
        status, _ = await call(client, case, url, token)
        checked += 1
        if role in case.roles:
            if status in (401, 403) or status >= 500:
                failures.append(f"{case.method} {url}: {role.value} may call it but got {status}")
        elif status != 403:
            failures.append(f"{case.method} {url}: {role.value} may not call it but got {status}")
        if (await client.get("/api/me")).status == 401:  # a post ended the session: log in again
            await login(client, username)
            token = await csrf_of(client)
    assert checked >= 15
    assert not failures, "\n".join(failures)


def scoped_cases(app: web.Application) -> list[RouteCase]:
    return [c for c in route_cases(app) if c.roles is not None and "session_id" in c.params]


async def test_session_routes_keep_to_their_outlet_and_county(
    client: TestClient, world: World, owned_session: str
) -> None:
    """O1's session: other outlets' staff, other counties' agents and supervisors are refused."""
    failures = []
    cases = scoped_cases(client.app)
    assert cases, "no route takes a session id any more: point this grid at the routes that take ids"
    for case in cases:
        url = case.url(param_values(world))
        for role in sorted(case.roles or (), key=lambda r: r.value):
            for username in OUT_OF_SCOPE.get(role, []) + IN_SCOPE.get(role, []):
                client.session.cookie_jar.clear()
                await login(client, username)
                status, _ = await call(client, case, url, await csrf_of(client))
                outside = username in OUT_OF_SCOPE.get(role, [])
                if outside and status not in (403, 404):
                    failures.append(f"{case.method} {url}: {username} is outside the scope but got {status}")
                if not outside and status in (401, 403, 404):
                    failures.append(f"{case.method} {url}: {username} owns the session but got {status}")
    assert not failures, "\n".join(failures)
