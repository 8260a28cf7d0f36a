"""Login throttling on both databases: concurrent failures all count, none crashes."""

from __future__ import annotations

import asyncio

import pytest

from cloudhall.auth import AuthService
from cloudhall.errors import TooManyRequests, Unauthenticated
from cloudhall.settings import HttpSettings
from tests.factories import PASSWORD, build_world


async def test_concurrent_failures_all_count_then_lock(database):
    await build_world(database)
    auth = AuthService(database, HttpSettings(secret_key="k" * 48, login_max_failures=4))

    async def wrong() -> BaseException | None:
        try:
            await auth.login("agent1", "wrong-password", "10.0.0.9")
        except (Unauthenticated, TooManyRequests) as exc:
            return exc
        return None

    results = await asyncio.gather(*(wrong() for _ in range(4)), return_exceptions=True)
    assert all(isinstance(r, Unauthenticated) for r in results), results
    with pytest.raises(TooManyRequests) as locked:
        await auth.login("agent1", PASSWORD, "10.0.0.9")
    assert locked.value.details["retry_after"] > 0


async def test_success_clears_the_username_count(database):
    await build_world(database)
    auth = AuthService(database, HttpSettings(secret_key="k" * 48, login_max_failures=3))
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await auth.login("agent1", "nope", "10.0.0.9")
    await auth.login("agent1", PASSWORD, "10.0.0.9")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await auth.login("agent1", "nope", "10.0.0.9")
    # Two failures after a success: still below the limit of three.
    await auth.login("agent1", PASSWORD, "10.0.0.9")
