"""Typed keys for every object shared through the aiohttp application."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from cloudhall.auth import AuthService
from cloudhall.db import Database
from cloudhall.settings import Settings

if TYPE_CHECKING:  # feature types only for annotations: the kernel never imports features at run time
    from redis.asyncio import Redis

SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
AUTH = web.AppKey("auth", AuthService)
REDIS = web.AppKey("redis", "Redis | None")  # type: ignore[arg-type]
# Feature services, set by their setup functions (see cloudhall/app.py).
SIGNALING = web.AppKey("signaling", Any)
MEDIA = web.AppKey("media", Any)
RECORDINGS = web.AppKey("recordings", Any)
