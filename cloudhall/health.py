"""Health endpoints: ``/healthz`` (process up) and ``/readyz`` (dependencies reachable)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from cloudhall import appkeys
from cloudhall.errors import Unavailable
from cloudhall.http import public


@public
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@public
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    ok = True
    try:
        await request.app[appkeys.DATABASE].ping()
        checks["database"] = "ok"
    except Unavailable as exc:
        ok = False
        checks["database"] = exc.message
    redis = request.app[appkeys.REDIS]
    if redis is not None:
        try:
            async with asyncio.timeout(3):
                await redis.ping()
            checks["redis"] = "ok"
        except (OSError, TimeoutError, Exception) as exc:  # redis raises its own ConnectionError tree
            if isinstance(exc, asyncio.CancelledError):
                raise
            ok = False
            checks["redis"] = f"not reachable: {type(exc).__name__}"
    return web.json_response({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
