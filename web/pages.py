"""Login, logout, the language switch, the outlet page and the outlet's service-item list."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp_jinja2
import jinja2
from aiohttp import web

from cloudhall import appkeys
from cloudhall.auth import SESSION_COOKIE
from cloudhall.catalog import list_items
from cloudhall.errors import CloudHallError, InvalidInput
from cloudhall.http import AUTH_STATE, csrf_token, principal, public, requires
from cloudhall.identities import ROLE_LABELS, Outlet, Role
from web.i18n import LANG_COOKIE, SUPPORTED, N_, gettext_for, js_messages, locale_context, request_locale

STATIC_DIR = Path(__file__).resolve().parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor"

HOME_BY_ROLE = {
    Role.OUTLET_STAFF: "/outlet",
    Role.AGENT: "/console",
    Role.SUPERVISOR: "/supervisor",
    Role.ADMIN: "/admin",
}


def socketio_client_url() -> str:
    """URL of the vendored Socket.IO client (its file name carries the version)."""
    found = sorted(VENDOR_DIR.glob("socket.io-*.min.js"))
    if not found:
        raise RuntimeError(f"no Socket.IO client in {VENDOR_DIR}: run scripts/refresh_socketio_client.sh")
    return "/static/vendor/" + found[-1].name


@jinja2.pass_context
def page_config(context: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Template global: the JSON a page's script reads from ``<script type="application/json">``.

    Feature pages call ``{{ page_config({...})|tojson }}`` (``tojson`` escapes ``<``, ``>``
    and ``&``, so no value can close the script element).
    """
    request: web.Request = context["request"]
    who = principal(request)
    return {
        "user": {"id": who.user_id, "display_name": who.display_name, "role": who.role.value},
        "csrf_token": csrf_token(request),
        "locale": request_locale(request),
        "messages": js_messages(request),
        **(extra or {}),
    }


async def shell_context(request: web.Request) -> dict[str, Any]:
    """Template context for every page: the Socket.IO client URL and the translated role label."""
    auth = request.get(AUTH_STATE)
    return {
        "socketio_src": socketio_client_url(),
        "role_label": gettext_for(request, ROLE_LABELS[auth.principal.role]) if auth else "",
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
            raise InvalidInput(gettext_for(request, "请输入用户名和密码"))
        token, auth = await request.app[appkeys.AUTH].login(username, password, request.remote or "")
    except CloudHallError as exc:
        context["error"] = _login_error_text(request, exc)
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


def _login_error_text(request: web.Request, exc: CloudHallError) -> str:
    if exc.code == "too_many_requests":
        text = gettext_for(request, "登录失败次数过多，请 %(seconds)s 秒后再试")
        return text % {"seconds": (exc.details or {}).get("retry_after", "")}
    if exc.code == "unauthenticated":
        return gettext_for(request, "用户名或密码错误，或账号已停用")
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


@public
async def switch_language(request: web.Request) -> web.StreamResponse:
    """``GET /lang/{locale}?next=/path``: remember the language in a cookie and go back."""
    locale = request.match_info["locale"]
    if locale not in SUPPORTED:
        raise InvalidInput(f"language {locale!r} is not offered (use one of {', '.join(SUPPORTED)})")
    response = web.HTTPFound(_safe_next(request.query.get("next")) or "/")
    settings = request.app[appkeys.SETTINGS].http
    response.set_cookie(
        LANG_COOKIE, locale, max_age=365 * 24 * 3600, samesite="Lax", secure=settings.cookie_secure, path="/"
    )
    raise response


@requires(Role.OUTLET_STAFF)
async def outlet_page(request: web.Request) -> web.Response:
    who = principal(request)
    outlet: dict[str, Any] = {}
    if who.outlet_id is not None:
        async with request.app[appkeys.DATABASE].transaction() as session:
            row = await session.get(Outlet, who.outlet_id)
            if row is not None:
                outlet = {"id": row.id, "name": row.name, "island": row.island, "town": row.town}
    return aiohttp_jinja2.render_template("outlet.html", request, {"outlet": outlet})


@requires()
async def items_api(request: web.Request) -> web.Response:
    """``GET /api/items``: enabled service items, high-frequency first, with pinyin initials."""
    async with request.app[appkeys.DATABASE].transaction() as session:
        items = await list_items(session)
        return web.json_response(
            {
                "items": [
                    {
                        "id": item.id,
                        "code": item.code,
                        "name": item.name,
                        "initials": (item.initials or "").lower(),
                        "department_id": item.department_id,
                        "high_frequency": item.high_frequency,
                        "materials": list(item.materials or []),
                    }
                    for item in items
                ]
            }
        )


@requires()
async def ping(request: web.Request) -> web.Response:
    """``GET /api/ping``: the pre-call network check times a series of these round trips."""
    return web.json_response({"ok": True}, headers={"Cache-Control": "no-store"})


def setup_routes(app: web.Application) -> None:
    processors = list(app.get(aiohttp_jinja2.APP_CONTEXT_PROCESSORS_KEY, []))
    app[aiohttp_jinja2.APP_CONTEXT_PROCESSORS_KEY] = [*processors, locale_context, shell_context]
    aiohttp_jinja2.get_env(app).globals["page_config"] = page_config
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/lang/{locale}", switch_language)
    app.router.add_get("/api/me", whoami)
    app.router.add_get("/api/items", items_api)
    app.router.add_get("/api/ping", ping)
    app.router.add_get("/outlet", outlet_page)
    app.router.add_static("/static/", STATIC_DIR, name="static")


# Role labels come from the kernel (cloudhall.identities.ROLE_LABELS); mark them for extraction.
_ROLE_LABELS_FOR_EXTRACTION = (N_("便民服务站工作人员"), N_("县级窗口坐席"), N_("督查人员"), N_("系统管理员"))
