"""One contract, two routers: LocalRouter (one node) and RedisRouter (request/reply over Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from cloudhall.errors import CloudHallError, Conflict, Unavailable
from signaling.routing import LocalRouter, RedisRouter
from signaling.tasks import stop_task
from tests.helpers import REDIS_URL, require_redis
from tests.integration.signaling_support import new_prefix


async def handler(method: str, payload: dict[str, Any]) -> dict[str, Any]:
    if method == "fail":
        raise Conflict("call x is in state \"ended\"", details={"state": "ended"})
    if method == "crash":
        raise RuntimeError("secret internals")
    return {"method": method, "echo": payload}


@pytest.fixture(params=["local", pytest.param("redis", marks=pytest.mark.redis)])
async def routers(request) -> AsyncIterator[Any]:
    """A factory of routers for named nodes, all served by ``handler``."""
    tasks: list[asyncio.Task] = []
    clients: list[Redis] = []
    prefix = new_prefix()
    if request.param == "redis":
        require_redis()

    @asynccontextmanager
    async def nothing() -> AsyncIterator[None]:
        yield

    def make(node: str) -> Any:
        if request.param == "local":
            router: Any = LocalRouter(node)
        else:
            client = Redis.from_url(REDIS_URL)
            clients.append(client)
            router = RedisRouter(client, prefix, node)
        router.serve(handler)
        tasks.append(asyncio.create_task(router.run()))
        return router

    make.kind = request.param  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for task in tasks:
            await stop_task(task)
        for client in clients:
            await client.aclose()


async def ready(router: Any) -> None:
    if isinstance(router, RedisRouter):
        async with asyncio.timeout(5):
            await router.ready.wait()


async def test_a_request_to_this_node_runs_here(routers) -> None:
    a = routers("A")
    await ready(a)
    assert await a.request("A", "offer", {"x": 1}) == {"method": "offer", "echo": {"x": 1}}


async def test_errors_cross_as_typed_errors_and_crashes_as_internal(routers) -> None:
    a = routers("A")
    await ready(a)
    with pytest.raises(CloudHallError) as failed:
        await a.request("A", "fail", {})
    assert failed.value.code == "conflict" and "ended" in failed.value.message
    with pytest.raises(RuntimeError):  # on its own node it is the caller's unexpected error
        await a.request("A", "crash", {})


async def test_a_node_that_is_not_there_is_unavailable(routers) -> None:
    a = routers("A")
    await ready(a)
    with pytest.raises(Unavailable):
        await a.request("ghost", "offer", {})


async def test_requests_reach_the_other_node(routers) -> None:
    a, b = routers("A"), routers("B")
    if routers.kind == "local":  # one node by design: another node is never reachable
        with pytest.raises(Unavailable):
            await a.request("B", "offer", {})
        return
    await ready(a)
    await ready(b)
    results = await asyncio.gather(*(a.request("B", "offer", {"i": i}) for i in range(20)))
    assert [r["echo"]["i"] for r in results] == list(range(20))
    with pytest.raises(CloudHallError) as failed:
        await b.request("A", "fail", {})
    assert failed.value.code == "conflict"
    with pytest.raises(CloudHallError) as crashed:
        await b.request("A", "crash", {})
    assert crashed.value.code == "internal" and "secret" not in crashed.value.message
