"""One contract, two backends: MemoryCallQueue and RedisCallQueue (real Redis, db 15)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis

from cloudhall.errors import Conflict
from signaling import calls as c
from signaling.calls import Call, CallState, EndReason, Priority
from signaling.memory import MemoryCallQueue
from signaling.presence import AgentPresence, PresenceState
from signaling.redis_queue import RedisCallQueue
from signaling.store import AgentBusy, CallQueue, OutletBusy, StaleCall
from tests.helpers import REDIS_URL, require_redis
from tests.integration.signaling_support import clear_prefix, new_prefix

T0 = 1_800_000_000.0


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def queue(request) -> AsyncIterator[CallQueue]:
    if request.param == "memory":
        yield MemoryCallQueue()
        return
    require_redis()
    prefix = new_prefix()
    client = Redis.from_url(REDIS_URL)
    try:
        yield RedisCallQueue(client, prefix)
    finally:
        await client.aclose()
        await clear_prefix(prefix)


def make(call_id: str, outlet: int, now: float = T0, dept: int = 1, **kw) -> Call:
    call, _ = c.new_call(call_id=call_id, department_id=dept, outlet_id=outlet, staff_user_id=1, county="x",
                         now=now, **kw)
    return call


async def test_commit_creates_then_compare_and_sets(queue: CallQueue) -> None:
    stored = await queue.commit(None, make("a", 1))
    assert stored.version == 1 and (await queue.get("a")) == stored
    with pytest.raises(StaleCall):
        await queue.commit(None, make("a", 1))
    offered, _ = c.offer(stored, 9, "agent", T0 + 1)
    again = await queue.commit(stored, offered)
    assert again.version == 2 and again.state is CallState.OFFERED
    with pytest.raises(StaleCall):  # a second writer that read version 1
        await queue.commit(stored, replace(offered, agent_id=10))
    assert (await queue.get("a")).agent_id == 9


async def test_waiting_is_ordered_front_priority_fifo(queue: CallQueue) -> None:
    await queue.commit(None, make("n1", 1, T0))
    await queue.commit(None, make("n2", 2, T0 + 1))
    await queue.commit(None, make("p1", 3, T0 + 2, priority=Priority.PRIORITY))
    stored = await queue.commit(None, make("f1", 4, T0 + 3))
    offered = await queue.commit(stored, c.offer(stored, 9, "a", T0 + 4)[0])
    assert [x.id for x in await queue.waiting(1)] == ["p1", "n1", "n2"]
    await queue.commit(offered, c.requeue(offered, "ring_timeout", "system", T0 + 5)[0])
    assert [x.id for x in await queue.waiting(1)] == ["f1", "p1", "n1", "n2"]
    assert [x.id for x in await queue.waiting(1, limit=2)] == ["f1", "p1"]
    assert await queue.waiting(2) == []


async def test_agent_and_outlet_hold_one_call_each(queue: CallQueue) -> None:
    a = await queue.commit(None, make("a", 1))
    b = await queue.commit(None, make("b", 2))
    with pytest.raises(OutletBusy):
        await queue.commit(None, make("a2", 1))
    a2 = await queue.commit(a, c.offer(a, 9, "x", T0)[0])
    assert await queue.call_of_agent(9) == "a" and await queue.call_of_outlet(1) == "a"
    with pytest.raises(AgentBusy):
        await queue.commit(b, c.offer(b, 9, "x", T0)[0])
    assert [x.id for x in await queue.waiting(1)] == ["b"]
    ended = await queue.commit(a2, c.end(a2, EndReason.CANCELLED, "u", T0)[0])
    assert ended.state is CallState.ENDED
    assert await queue.call_of_agent(9) is None and await queue.call_of_outlet(1) is None
    assert (await queue.get("a")).end_reason is EndReason.CANCELLED
    await queue.commit(b, c.offer(b, 9, "x", T0)[0])
    assert await queue.call_of_agent(9) == "b"


async def test_concurrent_claims_one_winner(queue: CallQueue) -> None:
    stored = await queue.commit(None, make("race", 1))

    async def claim(agent: int) -> int | None:
        try:
            await queue.commit(stored, c.offer(stored, agent, "a", T0)[0])
            return agent
        except Conflict:
            return None

    winners = [w for w in await asyncio.gather(*(claim(a) for a in range(100, 120))) if w is not None]
    assert len(winners) == 1
    assert (await queue.get("race")).agent_id == winners[0]
    assert await queue.waiting(1) == []


async def test_deadlines_are_leased_to_one_taker(queue: CallQueue) -> None:
    await queue.schedule("ring:a:1", T0 + 1)
    await queue.schedule("ring:b:1", T0 + 5)
    assert await queue.take_due(T0, 10) == []
    first, second = await asyncio.gather(queue.take_due(T0 + 2, 10), queue.take_due(T0 + 2, 10))
    assert sorted(first + second) == [("ring:a:1", T0 + 12)]
    assert await queue.take_due(T0 + 3, 10) == []  # leased
    again = await queue.take_due(T0 + 13, 10)  # lease ran out (the taker died): due again
    assert ("ring:a:1", T0 + 23) in again
    await queue.finish("ring:a:1", T0 + 23)
    await queue.schedule("ring:b:1", T0 + 100)  # moved while leased: finish must not drop it
    await queue.finish("ring:b:1", T0 + 23)
    assert await queue.take_due(T0 + 50, 10) == []
    assert [n for n, _ in await queue.take_due(T0 + 100, 10)] == ["ring:b:1"]
    await queue.unschedule("ring:b:1")
    assert await queue.take_due(T0 + 1000, 10) == []


async def test_presence_round_trip(queue: CallQueue) -> None:
    p = AgentPresence(user_id=9, name="a", county="x", department_ids=(1, 2), state=PresenceState.AVAILABLE)
    await queue.put_presence(p)
    assert await queue.get_presence(9) == p
    assert await queue.all_presence() == [p]
    assert await queue.get_presence(10) is None


async def test_connections_and_reaping_a_dead_node(queue: CallQueue) -> None:
    assert await queue.connect("outlet:1", "s1", "A") == 1
    assert await queue.connect("outlet:1", "s2", "B") == 2
    assert await queue.connect("agent:9", "s3", "B") == 1
    assert await queue.disconnect("outlet:1", "s1", "A") == 1
    await queue.node_beat("A", T0)
    await queue.node_beat("B", T0 + 1)
    assert await queue.nodes() == {"A": T0, "B": T0 + 1}
    assert sorted(await queue.reap_node("B")) == ["agent:9", "outlet:1"]
    assert await queue.connection_count("outlet:1") == 0
    assert await queue.nodes() == {"A": T0}


async def test_handling_times_keep_the_recent_ones(queue: CallQueue) -> None:
    for seconds in range(30):
        await queue.record_handling(1, float(seconds))
    times = await queue.handling_times(1)
    assert len(times) == 20 and sorted(times) == [float(s) for s in range(10, 30)]
