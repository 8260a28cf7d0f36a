"""Login, logout and each role's landing page."""

from __future__ import annotations

from urllib.parse import urlparse

import aiohttp_jinja2
from aiohttp import web

from cloudhall import appkeys
from cloudhall.auth import SESSION_COOKIE
from cloudhall.errors import CloudHallError, InvalidInput
from cloudhall.http import AUTH_STATE, principal, public, requires
from cloudhall.identities import ROLE_LABELS, Role

STATIC_DIR = __import__("pathlib").Path(__file__).resolve().parent / "static"

HOME_BY_ROLE = {
    Role.OUTLET_STAFF: "/outlet",
    Role.AGENT: "/console",
    Role.SUPERVISOR: "/supervisor",
    Role.ADMIN: "/admin",
}


def _safe_next(value: str | None) -> str | None:
    """Only same-site relative paths may be a redirect target after login."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return None
    parsed = urlparse(value)
    if parsed.scheme or parsed.netloc:
        return None
    return value


@public
async def index(request: web.Request) -> web.StreamResponse:
    auth = request.get(AUTH_STATE)
    if auth is None:
        raise web.HTTPFound("/login")
    raise web.HTTPFound(HOME_BY_ROLE[auth.principal.role])


@public
@aiohttp_jinja2.template("login.html")
async def login_form(request: web.Request) -> dict[str, object]:
    return {"next": _safe_next(request.query.get("next")) or "", "error": None, "username": ""}


@public
async def login_submit(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "")))
    context: dict[str, object] = {"next": target or "", "username": username[:64]}
    try:
        if not username or not password or len(username) > 64 or len(password) > 256:
            raise InvalidInput("请输入用户名和密码")
        token, auth = await request.app[appkeys.AUTH].login(username, password, request.remote or "")
    except CloudHallError as exc:
        context["error"] = _login_error_text(exc)
        return aiohttp_jinja2.render_template("login.html", request, context, status=exc.http_status)
    settings = request.app[appkeys.SETTINGS].http
    response = web.HTTPSeeOther(target or HOME_BY_ROLE[auth.principal.role])
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=settings.cookie_secure,
        max_age=settings.session_ttl_seconds,
        path="/",
    )
    raise response


def _login_error_text(exc: CloudHallError) -> str:
    if exc.code == "too_many_requests":
        return f"登录失败次数过多，请 {exc.details.get('retry_after', '')} 秒后再试"
    if exc.code == "unauthenticated":
        return "用户名或密码错误，或账号已停用"
    return exc.message


@requires()
async def logout(request: web.Request) -> web.StreamResponse:
    await request.app[appkeys.AUTH].logout(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


@requires()
async def whoami(request: web.Request) -> web.Response:
    who = principal(request)
    return web.json_response({**who.to_dict(), "home": HOME_BY_ROLE[who.role]})


def role_home(role: Role, template: str):  # noqa: ANN201 - returns a decorated handler
    @requires(role)
    async def handler(request: web.Request) -> web.StreamResponse:
        return aiohttp_jinja2.render_template(
            template, request, {"role_label": ROLE_LABELS[role]}
        )

    handler.__name__ = f"home_{role.value}"
    return handler


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/me", whoami)
    app.router.add_static("/static/", STATIC_DIR, name="static")
    # Landing pages of the roles whose consoles come with later issues.
    app.router.add_get("/outlet", role_home(Role.OUTLET_STAFF, "outlet_home.html"))
    app.router.add_get("/console", role_home(Role.AGENT, "agent_home.html"))
    app.router.add_get("/supervisor", role_home(Role.SUPERVISOR, "supervisor_home.html"))
