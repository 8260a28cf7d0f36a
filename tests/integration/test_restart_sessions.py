"""A node restarted on the in-memory queue ends the sessions its previous run left open.

The calls of an embedded node (no Redis) live in its memory only: after the process dies
(or stops) the database still shows them queued or in progress. The next start ends each
such session ``failed`` (why: node restarted), with an end time and a ``call_ended`` entry
that keeps its hash chain valid; sessions that had ended are left as they were. With Redis
the calls outlive a node, so a start ends nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cloudhall.db import Database
from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession
from signaling.models import CallbackRequest
from recordings.service import SessionRecords
from signaling import calls as domain
from tests.factories import World, build_world
from tests.helpers import require_redis
from tests.integration.signaling_support import (
    clear_prefix,
    new_prefix,
    peers,
    running_server,
    signaling_settings,
    start_payload,
)

RESTART_WHY = {"reason": "failed", "why": "node restarted"}


async def session_row(db: Database, call_id: str) -> dict[str, Any]:
    """The session as a supervisor finds it: the row, its log's kinds and last entry, the chain check."""
    async with db.transaction() as session:
        row = await session.get(CallSession, call_id, populate_existing=True)
        assert row is not None, f"no session {call_id}"
        events = await load_events(session, call_id)
        report = await verify_chain(session, call_id)
        return {
            **row.to_dict(),
            "event_count": row.event_count,
            "head_hash": row.head_hash,
            "kinds": [e.kind for e in events],
            "last": (events[-1].actor, events[-1].data, events[-1].at) if events else None,
            "chain_ok": report.ok,
            "problems": report.problems,
        }


async def completed_call(url: str, app: Any, world: World) -> str:
    async with peers(url, app, "staff1", "agent1") as (outlet, agent):
        call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
        await agent.ok("queue:take", {"call_id": call_id})
        await agent.ok("call:accept", {"call_id": call_id})
        await outlet.ok("call:connected", {"call_id": call_id})
        await agent.ok("call:end", {"call_id": call_id})
        await outlet.wait_call("ended", id=call_id)
    return call_id


async def test_memory_node_restart_ends_open_sessions_once_and_leaves_ended_ones(
    sqlite_database: Database, world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = sqlite_database
    # A long grace: the dropped sockets at shutdown must not end the calls in the first run.
    settings = signaling_settings(tmp_path, db.url, reconnect_grace_seconds=120.0)

    # -- first run: one call ends normally, one is in progress, one waits --------------------
    async with running_server(settings, db) as (url, app):
        done_id = await completed_call(url, app, world)
        async with peers(url, app, "staff1", "agent1", "staff2") as (outlet, agent, other_outlet):
            in_call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
            await agent.ok("queue:take", {"call_id": in_call_id})
            await agent.ok("call:accept", {"call_id": in_call_id})
            await outlet.ok("call:connected", {"call_id": in_call_id})
            await agent.wait_call("in_call", id=in_call_id)
            queued_id = (await other_outlet.ok("call:start", start_payload(world)))["call"]["id"]
            # The node goes away with both calls in its memory.

    done_before = await session_row(db, done_id)
    assert done_before["state"] == "ended" and done_before["end_reason"] == "completed"
    assert (await session_row(db, in_call_id))["state"] == "in_call"
    assert (await session_row(db, queued_id))["state"] == "queued"

    # -- second run: what the first left open is ended, once ---------------------------------
    caplog.set_level(logging.WARNING, logger="signaling.service")
    before_start = time.time()
    async with running_server(settings, db) as (url, app):
        after_start = time.time()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                    and r.name == "signaling.service"]
        assert len(warnings) == 1 and "ended 2 session(s)" in warnings[0], warnings
        assert in_call_id in warnings[0] and queued_id in warnings[0]

        for call_id, kinds in (
            (in_call_id, ["call_queued", "call_offered", "call_accepted", "call_connected", "call_ended"]),
            (queued_id, ["call_queued", "call_ended"]),
        ):
            found = await session_row(db, call_id)
            assert found["state"] == "ended" and found["end_reason"] == "failed", found
            assert found["kinds"] == kinds, found["kinds"]
            actor, data, at = found["last"]
            assert data == RESTART_WHY and actor.startswith("node:"), found["last"]
            assert before_start <= at.timestamp() <= after_start
            assert found["ended_at"] == at.isoformat()
            assert found["chain_ok"], found["problems"]
        # The call that had ended is exactly as it was.
        assert await session_row(db, done_id) == done_before

        # The restarted node takes calls again, and a new call is not ended by anything.
        async with peers(url, app, "staff1") as (outlet,):
            new_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
            await outlet.ok("call:cancel", {"call_id": new_id})
        assert (await session_row(db, new_id))["end_reason"] == "cancelled"

    # -- third run: nothing left to end; no session changes ------------------------------------
    rows = {cid: await session_row(db, cid) for cid in (done_id, in_call_id, queued_id, new_id)}
    caplog.clear()
    async with running_server(settings, db):
        pass
    assert not [r for r in caplog.records if r.name == "signaling.service" and r.levelno == logging.WARNING]
    assert {cid: await session_row(db, cid) for cid in rows} == rows


@pytest.mark.redis
async def test_redis_node_restart_leaves_open_sessions_to_the_cluster(
    sqlite_database: Database, world: World, tmp_path: Path
) -> None:
    """With Redis the call outlives the node: a start must not end it in the database."""
    require_redis()
    prefix = new_prefix()
    settings = signaling_settings(tmp_path, sqlite_database.url, prefix, reconnect_grace_seconds=120.0)
    try:
        async with running_server(settings, sqlite_database) as (url, app):
            async with peers(url, app, "staff1", "agent1") as (outlet, agent):
                call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
                await agent.ok("queue:take", {"call_id": call_id})
                await agent.ok("call:accept", {"call_id": call_id})
                await outlet.ok("call:connected", {"call_id": call_id})
                await agent.wait_call("in_call", id=call_id)
        before = await session_row(sqlite_database, call_id)
        async with running_server(settings, sqlite_database) as (url, app):
            after = await session_row(sqlite_database, call_id)
            assert after == before and after["state"] == "in_call" and after["ended_at"] is None
            # The call is still live in Redis: its agent finds it on reconnecting.
            async with peers(url, app, "agent1") as (agent,):
                resumed = await agent.ok("session:resume", {})
                assert resumed["call"]["id"] == call_id and resumed["call"]["state"] == "in_call"
    finally:
        await clear_prefix(prefix)


def queued_call(world: World, outlet: str, staff: str, now: float) -> tuple[Any, list[Any]]:
    """A new call to the social-security desk, as the domain makes it (not yet stored)."""
    return domain.new_call(
        call_id=str(uuid.uuid4()),
        department_id=world.departments["SOC"].id,
        outlet_id=world.outlets[outlet].id,
        staff_user_id=world.users[staff].id,
        county="东岛县",
        now=now,
    )


async def test_two_starts_at_once_end_each_session_once(database: Database) -> None:
    """Two nodes ending the same open sessions at the same moment: each gets one call_ended."""
    world = await build_world(database)
    first, second = SessionRecords(database), SessionRecords(database)
    try:
        opened: list[str] = []
        for n in range(3):
            call, events = queued_call(world, "O1", "staff1", time.time() - 10 + n)
            await first.open(call, events, "old-node")
            opened.append(call.id)
        now = time.time()
        ends = [domain.ended_with_node(node, now) for node in ("a", "b")]
        results = await asyncio.gather(
            *(records.end_open(reason.value, event, opened_before=now)
              for records, (reason, event) in zip((first, second), ends))
        )
        assert sorted(results[0] + results[1]) == sorted(opened), results
        for call_id in opened:
            found = await session_row(database, call_id)
            assert found["kinds"] == ["call_queued", "call_ended"], found["kinds"]
            assert found["end_reason"] == "failed" and found["chain_ok"], found
        # A session opened after the cut-off is not touched.
        late, events = queued_call(world, "O2", "staff2", now + 1)
        await first.open(late, events, "new-node")
        reason, event = domain.ended_with_node("c", now + 2)
        assert await first.end_open(reason.value, event, opened_before=now) == []
        assert (await session_row(database, late.id))["state"] == "queued"
    finally:
        await first.close()
        await second.close()


async def callback_status(db: Database, callback_id: int) -> str:
    async with db.transaction() as session:
        row = await session.get(CallbackRequest, callback_id, populate_existing=True)
        assert row is not None
        return row.status


async def test_memory_node_restart_settles_the_callbacks_whose_call_was_lost(
    sqlite_database: Database, world: World, tmp_path: Path
) -> None:
    """A callback's call lost with the node: answered → done, still ringing → open, and it can be called again."""
    db = sqlite_database
    settings = signaling_settings(tmp_path, db.url, reconnect_grace_seconds=120.0)
    async with running_server(settings, db) as (url, app):
        async with peers(url, app, "staff1", "staff2", "agent1", "agent2") as (first, second, agent, other_agent):
            answered_cb = (await first.ok("callback:create", start_payload(world)))["callback"]["id"]
            ringing_cb = (await second.ok("callback:create", start_payload(world)))["callback"]["id"]
            call = (await agent.ok("callback:call", {"callback_id": answered_cb}))["call"]
            await first.wait_call("offered", id=call["id"])
            await first.ok("call:accept", {"call_id": call["id"]})
            await agent.wait_call("connecting", id=call["id"])
            await agent.ok("call:connected", {"call_id": call["id"]})
            await other_agent.ok("callback:call", {"callback_id": ringing_cb})
            await second.wait_call("offered")
            # The node goes away while one callback is in progress and the other rings.
    assert [await callback_status(db, cb) for cb in (answered_cb, ringing_cb)] == ["calling", "calling"]

    async with running_server(settings, db) as (url, app):
        assert await callback_status(db, answered_cb) == "done"
        assert await callback_status(db, ringing_cb) == "open"
        async with peers(url, app, "staff2", "agent2") as (second, other_agent):
            listed = [c["id"] for c in (await other_agent.ok("callback:list", {}))["callbacks"]]
            assert ringing_cb in listed and answered_cb not in listed
            again = (await other_agent.ok("callback:call", {"callback_id": ringing_cb}))["call"]
            await second.wait_call("offered", id=again["id"])
