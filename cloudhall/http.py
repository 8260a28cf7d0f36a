"""HTTP edge: access rules per route, CSRF, error mapping and security headers.

Every route handler declares who may call it with :func:`requires` or :func:`public`;
a route that declares nothing is refused (fail closed). Domain errors are mapped to HTTP
here, once: JSON for ``/api/`` paths and JSON requests, an error page otherwise.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web

from cloudhall import appkeys
from cloudhall.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Authenticated,
    anonymous_csrf_token,
    csrf_matches,
)
from cloudhall.errors import CloudHallError, Forbidden, PayloadTooLarge, Unauthenticated
from cloudhall.identities import Principal, Role

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

ROLES_ATTR = "__cloudhall_roles__"
PUBLIC_ATTR = "__cloudhall_public__"
CSRF_EXEMPT_ATTR = "__cloudhall_csrf_exempt__"
ALL_ROLES = frozenset(Role)
# Per-request state set by auth_middleware.
AUTH_STATE = web.RequestKey("auth", "Authenticated | None")  # type: ignore[arg-type]
CSRF_NONCE = web.RequestKey("csrf_nonce", str)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def requires(*roles: Role) -> Callable[[H], H]:
    """Allow a route to logged-in users with one of ``roles`` (none given: any role)."""

    def mark(handler: H) -> H:
        setattr(handler, ROLES_ATTR, frozenset(roles) if roles else ALL_ROLES)
        return handler

    return mark


def public(handler: H) -> H:
    """Allow a route to everyone (login page, health checks, static files)."""
    setattr(handler, PUBLIC_ATTR, True)
    return handler


def csrf_exempt(handler: H) -> H:
    """Exempt a route from CSRF checks (only for endpoints that authenticate otherwise)."""
    setattr(handler, CSRF_EXEMPT_ATTR, True)
    return handler


def route_access(handler: Any) -> frozenset[Role] | None:
    """The roles allowed on a handler; None for a public route. Raises if undeclared."""
    target = getattr(handler, "__func__", handler)
    if getattr(target, PUBLIC_ATTR, False):
        return None
    roles = getattr(target, ROLES_ATTR, None)
    if roles is None:
        raise LookupError(f"route handler {handler!r} declares no access rule")
    return roles


def principal(request: web.Request) -> Principal:
    """The logged-in principal of a request; raise :class:`Unauthenticated` if none."""
    auth: Authenticated | None = request.get(AUTH_STATE)
    if auth is None:
        raise Unauthenticated("log in first")
    return auth.principal


def csrf_token(request: web.Request) -> str:
    """The token a page must send back with every state-changing request."""
    auth: Authenticated | None = request.get(AUTH_STATE)
    if auth is not None:
        return auth.csrf_token
    secret = request.app[appkeys.SETTINGS].http.secret_key
    return anonymous_csrf_token(secret, request[CSRF_NONCE])


def wants_json(request: web.Request) -> bool:
    return (
        request.path.startswith("/api/")
        or request.content_type == "application/json"
        or "application/json" in request.headers.get("Accept", "")
    )


def error_response(request: web.Request, status: int, body: dict[str, Any]) -> web.StreamResponse:
    if wants_json(request):
        return web.json_response({"error": body}, status=status)
    try:
        return aiohttp_jinja2.render_template(
            "error.html", request, {"status": status, "error": body}, status=status
        )
    except Exception:  # the template itself failed: still answer plainly
        log.exception("error page failed to render")
        return web.Response(text=f"{status} {body.get('message', '')}", status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CloudHallError as exc:
        if isinstance(exc, Unauthenticated) and not wants_json(request) and request.method == "GET":
            raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}") from None
        return error_response(request, exc.http_status, exc.to_dict())
    except web.HTTPRequestEntityTooLarge:
        err = PayloadTooLarge("request body is too large")
        return error_response(request, err.http_status, err.to_dict())
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.status != 405 and wants_json(request):
            return web.json_response(
                {"error": {"code": "http_%d" % exc.status, "message": exc.reason}}, status=exc.status
            )
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(request, 500, {"code": "internal", "message": "internal error"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the session cookie, enforce the route's access rule and CSRF."""
    nonce = request.cookies.get(CSRF_COOKIE)
    new_nonce = None
    if not nonce or len(nonce) > 64:
        nonce = new_nonce = secrets.token_urlsafe(24)
    request[CSRF_NONCE] = nonce
    match_info = request.match_info
    resource = match_info.route.resource
    if match_info.http_exception is not None or isinstance(resource, web.StaticResource):
        request[AUTH_STATE] = None
        response = await handler(request)
    else:
        auth = await request.app[appkeys.AUTH].resolve(request.cookies.get(SESSION_COOKIE))
        request[AUTH_STATE] = auth
        route_handler = match_info.handler
        try:
            roles = route_access(route_handler)
        except LookupError:
            log.error("refusing %s %s: its handler declares no access rule", request.method, request.path)
            raise Forbidden(f"{request.path} is not open to anyone") from None
        if roles is not None:
            if auth is None:
                raise Unauthenticated("log in first")
            if auth.principal.role not in roles:
                raise Forbidden(f"role {auth.principal.role.value} may not open {request.path}")
        if request.method in UNSAFE_METHODS and not getattr(route_handler, CSRF_EXEMPT_ATTR, False):
            await _check_csrf(request)
        response = await handler(request)
    if new_nonce and not response.prepared:
        settings = request.app[appkeys.SETTINGS].http
        response.set_cookie(
            CSRF_COOKIE, new_nonce, httponly=True, samesite="Strict", secure=settings.cookie_secure, path="/"
        )
    return response


async def _check_csrf(request: web.Request) -> None:
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not csrf_matches(csrf_token(request), given):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again", code="csrf_failed")


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _set_security_headers(exc)
        raise
    if not response.prepared:
        _set_security_headers(response)
    return response


def _set_security_headers(response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("Permissions-Policy", "camera=(self), microphone=(self), display-capture=(self)")
