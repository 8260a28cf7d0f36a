"""Composition root: ``create_app(settings)`` builds every backend and wires the features.

This module and ``cli.py`` are the only kernel modules that import feature packages.
Every resource is owned by a ``cleanup_ctx`` generator (create, yield, close).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from cloudhall import appkeys
from cloudhall.auth import AuthService
from cloudhall.db import Database
from cloudhall.http import auth_middleware, error_middleware, security_headers_middleware
from cloudhall.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIRS = [
    ROOT / "web" / "templates",
    ROOT / "agent_console" / "templates",
    ROOT / "recordings" / "templates",
    ROOT / "cloudhall" / "templates",
]


def create_app(settings: Settings, *, database: Database | None = None) -> web.Application:
    """Build the application for ``settings`` (pass ``database`` to share an engine in tests)."""
    app = web.Application(
        middlewares=[security_headers_middleware, error_middleware, auth_middleware],
        client_max_size=settings.http.max_body_bytes,
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.DATABASE] = database or Database(settings.database)
    app[appkeys.AUTH] = AuthService(app[appkeys.DATABASE], settings.http)
    app[appkeys.REDIS] = None

    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader([str(d) for d in TEMPLATE_DIRS if d.is_dir()]),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        context_processors=[aiohttp_jinja2.request_processor, _page_context],
    )
    from web.i18n import install_translations

    install_translations(env)

    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_redis_ctx)

    import agent_console.pages
    import recordings.pages
    import recordings.ratings
    import recordings.snapshots
    from cloudhall import admin, health
    from web import pages

    health.setup_routes(app)
    pages.setup_routes(app)
    agent_console.pages.setup_routes(app)
    recordings.pages.setup_routes(app)
    recordings.ratings.setup_routes(app)
    recordings.snapshots.setup_routes(app)
    admin.setup_routes(app)
    _setup_features(app, settings)
    return app


def _setup_features(app: web.Application, settings: Settings) -> None:
    """Signalling builds the node's media server and recorder (it owns their lifecycle)."""
    from signaling import setup as setup_signaling

    setup_signaling(app, settings)


async def _page_context(request: web.Request) -> dict[str, object]:
    from cloudhall.http import AUTH_STATE, CSRF_NONCE, csrf_token

    auth = request.get(AUTH_STATE)
    return {
        "principal": auth.principal if auth else None,
        "csrf_token": csrf_token(request) if CSRF_NONCE in request else "",
    }


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    db = app[appkeys.DATABASE]
    yield
    await db.dispose()


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS].redis
    if not settings.url:
        yield
        return
    from redis.asyncio import Redis

    client = Redis.from_url(settings.url, decode_responses=False, socket_timeout=5, socket_connect_timeout=5)
    app[appkeys.REDIS] = client
    try:
        yield
    finally:
        await client.aclose()
