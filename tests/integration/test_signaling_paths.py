"""Every signalling path over real Socket.IO clients against a real server, on both backends."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import socketio
from sqlalchemy import update

from cloudhall.identities import WEEKDAYS, Department, User
from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession
from signaling.models import CallbackRequest
from tests.helpers import wait_for
from tests.integration.signaling_support import (  # noqa: F401
    Env,
    Peer,
    backend,
    env,
    env_factory,
    session_token,
    start_payload,
)


async def kinds(env: Env, call_id: str) -> list[str]:
    """The session's event kinds once its chain verifies.

    Polled: on SQLite two reads outside one snapshot can straddle a disconnect's event
    being written, so a verification in the middle of a write is retried.
    """

    async def verified() -> list[str] | None:
        async with env.db.transaction() as session:
            if not (await verify_chain(session, call_id)).ok:
                return None
            return [e.kind for e in await load_events(session, call_id)]

    return await wait_for(verified, timeout=5, what=f"the chain of {call_id} to verify")


async def test_connect_refused_without_login_or_when_disabled(env: Env) -> None:
    peer = Peer("anonymous")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect(env.url, None)
    assert peer.seen("connect_error")[0]["data"]["code"] == "unauthenticated"
    token = await session_token(env.app, "agent2")
    async with env.db.transaction() as session:
        await session.execute(update(User).where(User.username == "agent2").values(enabled=False))
    disabled = Peer("agent2")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await disabled.connect(env.url, token)
    assert disabled.seen("connect_error")[0]["data"]["code"] == "unauthenticated"


async def test_roles_payloads_and_sizes_are_checked(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent1")
    try:
        error = await agent.error("call:start", start_payload(env.world))
        assert error["code"] == "forbidden"
        assert (await outlet.error("queue:take", {}))["code"] == "forbidden"
        error = await outlet.error("call:start", {"item_id": "x", "applicant": {"name": ""}})
        assert error["code"] == "invalid_input"
        assert {d["field"] for d in error["details"]} == {"item_id", "applicant.name"}
        error = await outlet.error("call:start", {**start_payload(env.world), "extra": 1})
        assert error["code"] == "invalid_input"
        error = await outlet.error("call:cancel", {"call_id": "x" * 100})
        assert error["code"] == "invalid_input"
        assert (await outlet.error("call:cancel", {"call_id": "0000"}))["code"] == "not_found"
        assert (await outlet.error("call:start", "not an object"))["code"] == "invalid_input"
        # A message larger than max_message_bytes closes the socket instead of reaching a handler.
        with pytest.raises(Exception):
            await outlet.call("call:start", {"item_id": 1, "applicant": {"name": "x" * 100_000}}, timeout=3)
    finally:
        await outlet.close()
        await agent.close()


async def test_priority_first_then_fifo_and_positions(env: Env) -> None:
    first, second, agent = await env.peer("staff1"), await env.peer("staff2"), await env.peer("agent2")
    try:
        a = (await first.ok("call:start", start_payload(env.world)))["call"]["id"]
        b = (await second.ok("call:start", start_payload(env.world, priority=True)))["call"]["id"]
        update_ = await agent.wait("queue:update", lambda d: len(d["calls"]) == 2)
        assert [c["id"] for c in update_["calls"]] == [b, a]
        assert update_["calls"][0]["priority"] == "priority"
        position = await first.wait("queue:position", lambda d: d["call_id"] == a and d["position"] == 2)
        assert position["waiting"] == 2 and position["estimated_wait_seconds"] > 0
        taken = await agent.ok("queue:take", {})
        assert taken["call"]["id"] == b
        await first.wait("queue:position", lambda d: d["call_id"] == a and d["position"] == 1)
    finally:
        for p in (first, second, agent):
            await p.close()


async def test_two_agents_take_the_same_call_once(env: Env) -> None:
    outlet, one, two = await env.peer("staff1"), await env.peer("agent1"), await env.peer("agent2")
    try:
        call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
        import asyncio

        results = await asyncio.gather(
            one.call("queue:take", {"call_id": call_id}), two.call("queue:take", {"call_id": call_id})
        )
        oks = [r for r in results if "error" not in r]
        errors = [r["error"]["code"] for r in results if "error" in r]
        assert len(oks) == 1 and errors == ["taken"]
        assert (await two.error("queue:take", {}))["code"] in ("queue_empty", "agent_busy")
    finally:
        for p in (outlet, one, two):
            await p.close()
    assert (await kinds(env, call_id)).count("call_offered") == 1


async def test_ring_timeout_returns_the_call_to_the_front(env: Env) -> None:
    first, second, agent = await env.peer("staff1"), await env.peer("staff2"), await env.peer("agent2")
    try:
        a = (await first.ok("call:start", start_payload(env.world)))["call"]["id"]
        b = (await second.ok("call:start", start_payload(env.world, priority=True)))["call"]["id"]
        assert (await agent.ok("queue:take", {"call_id": a}))["call"]["state"] == "offered"
        back = await first.wait_call("queued", id=a, front=True)
        assert back["agent"] is None
        update_ = await agent.wait("queue:update", lambda d: [c["id"] for c in d["calls"]] == [a, b])
        assert update_["calls"][0]["front"] is True
        # declining also puts it back at the front
        await agent.ok("queue:take", {})
        declined = await agent.ok("call:decline", {"call_id": a})
        assert declined["call"]["state"] == "queued" and declined["call"]["front"]
    finally:
        for p in (first, second, agent):
            await p.close()
    assert (await kinds(env, a))[:5] == [
        "call_queued", "call_offered", "call_requeued", "call_offered", "call_requeued"
    ]


async def test_outlet_cancels_while_waiting(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
        assert (await outlet.error("call:start", start_payload(env.world)))["code"] == "outlet_busy"
        ended = await outlet.ok("call:cancel", {"call_id": call_id})
        assert ended["call"]["end_reason"] == "cancelled"
        await agent.wait("queue:update", lambda d: d["calls"] == [])
        assert (await outlet.error("call:cancel", {"call_id": call_id}))["code"] == "conflict"
        other = await env.peer("staff2")
        try:
            assert (await other.error("call:cancel", {"call_id": call_id}))["code"] == "forbidden"
        finally:
            await other.close()
    finally:
        await outlet.close()
        await agent.close()


async def test_waiting_past_the_limit_is_abandoned_or_no_agent(env_factory) -> None:
    async with env_factory(queue_limit_seconds=1.0) as env:
        outlet = await env.peer("staff1")
        try:
            # nobody of the department online: "no agent"
            first = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
            ended = await outlet.wait_call("ended", id=first)
            assert ended["end_reason"] == "no_agent" and ended["end_message"]
            agent = await env.peer("agent2")
            try:
                second = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
                ended = await outlet.wait_call("ended", id=second)
                assert ended["end_reason"] == "abandoned" and "排队" in ended["end_message"]
            finally:
                await agent.close()
        finally:
            await outlet.close()
        assert (await kinds(env, second))[-1] == "call_ended"


async def test_outside_working_hours_the_outlet_is_told_and_leaves_a_callback(env: Env) -> None:
    soc = env.world.departments["SOC"].id
    tomorrow = WEEKDAYS[(datetime.now(ZoneInfo("Asia/Shanghai")).weekday() + 1) % 7]
    hours = {"tz": "Asia/Shanghai", tomorrow: [["08:30", "12:00"]]}  # closed all of today
    async with env.db.transaction() as session:
        await session.execute(update(Department).where(Department.id == soc).values(working_hours=hours))
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        error = await outlet.error("call:start", start_payload(env.world))
        assert error["code"] == "desk_closed" and error["details"]["department_id"] == soc
        assert error["details"]["callback_allowed"] is True
        opens = datetime.fromisoformat(error["details"]["opens_at"]).astimezone(ZoneInfo("Asia/Shanghai"))
        assert WEEKDAYS[opens.weekday()] == tomorrow and opens.strftime("%H:%M") == "08:30"
        created = await outlet.ok(
            "callback:create",
            {**start_payload(env.world), "preferred_time": "2026-11-24T09:00:00+08:00", "note": "上午"},
        )
        callback_id = created["callback"]["id"]
        pushed = await agent.wait("callback:update", lambda d: any(c["id"] == callback_id for c in d["callbacks"]))
        assert pushed["callbacks"][0]["applicant"]["phone_masked"] == "138****8000"
        listed = await agent.ok("callback:list", {})
        assert [c["id"] for c in listed["callbacks"]] == [callback_id]
        # The agent calls back; it rings at the outlet, which accepts: a normal session.
        call = (await agent.ok("callback:call", {"callback_id": callback_id}))["call"]
        assert call["direction"] == "outbound" and call["state"] == "offered"
        ringing = await outlet.wait_call("offered", id=call["id"])
        assert ringing["agent"]["name"] == "agent2"
        assert (await agent.error("call:accept", {"call_id": call["id"]}))["code"] == "forbidden"
        await outlet.ok("call:accept", {"call_id": call["id"]})
        await agent.wait_call("connecting", id=call["id"])
        await agent.ok("call:connected", {"call_id": call["id"]})
        await outlet.ok("call:end", {"call_id": call["id"]})
        assert (await agent.error("callback:call", {"callback_id": callback_id}))["code"] == "conflict"
    finally:
        await outlet.close()
        await agent.close()
    async with env.db.transaction() as session:
        row = await session.get(CallbackRequest, callback_id)
        assert row.status == "done" and row.session_id == call["id"]
    assert (await kinds(env, call["id"]))[:2] == ["call_outbound", "call_accepted"]


async def test_outlet_drop_keeps_its_place_and_resumes(env: Env) -> None:
    outlet, other, agent = await env.peer("staff1"), await env.peer("staff2"), await env.peer("agent2")
    try:
        a = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
        b = (await other.ok("call:start", start_payload(env.world)))["call"]["id"]
        await outlet.close()
        lost = await agent.wait("queue:update", lambda d: d["calls"] and d["calls"][0]["outlet_present"] is False)
        assert [c["id"] for c in lost["calls"]] == [a, b]
        outlet = await env.peer("staff1")
        snapshot = await outlet.ok("session:resume", {})
        assert snapshot["call"]["id"] == a and snapshot["call"]["state"] == "queued"
        assert snapshot["position"]["position"] == 1
        await agent.wait("queue:update", lambda d: d["calls"] and d["calls"][0]["outlet_present"] is True)
        # dropped again and not back within the grace period: ended as outlet_lost
        await outlet.close()
        await agent.wait("queue:update", lambda d: [c["id"] for c in d["calls"]] == [b])
    finally:
        for p in (outlet, other, agent):
            await p.close()
    assert (await kinds(env, a)) == [
        "call_queued", "participant_lost", "participant_returned", "participant_lost", "call_ended"
    ]
    async with env.db.transaction() as session:
        assert (await session.get(CallSession, a)).end_reason == "outlet_lost"


async def answered_call(env: Env, outlet: Peer, agent: Peer) -> str:
    call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
    await agent.ok("queue:take", {"call_id": call_id})
    await agent.ok("call:accept", {"call_id": call_id})
    await agent.ok("call:connected", {"call_id": call_id})
    return call_id


async def test_agent_drop_in_call_comes_back_or_the_call_returns_to_the_queue(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        call_id = await answered_call(env, outlet, agent)
        await agent.close()
        assert (await outlet.wait("call:state", lambda d: d["call"]["agent_present"] is False))
        agent = await env.peer("agent2")
        snapshot = await agent.ok("session:resume", {})
        assert snapshot["call"]["id"] == call_id and snapshot["call"]["state"] == "in_call"
        assert snapshot["presence"]["state"] == "busy"
        await outlet.wait("call:state", lambda d: d["call"]["agent_present"] is True)
        await agent.close()
        back = await outlet.wait_call("queued", id=call_id, front=True, timeout=10)
        assert back["agent"] is None
        # Read the log before the outlet leaves: its own departure is logged after this.
        assert (await kinds(env, call_id))[-2:] == ["participant_lost", "call_requeued"]
    finally:
        await outlet.close()
        await agent.close()


async def test_outlet_drop_in_call_past_grace_ends_outlet_lost(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        call_id = await answered_call(env, outlet, agent)
        await outlet.close()
        ended = await agent.wait_call("ended", id=call_id)
        assert ended["end_reason"] == "outlet_lost"
        state = await agent.ok("session:resume", {})
        assert state["call"] is None and state["presence"]["state"] == "available"
    finally:
        await outlet.close()
        await agent.close()


async def test_transfer_to_another_department_keeps_the_session(env: Env) -> None:
    outlet, agent2, agent1 = await env.peer("staff1"), await env.peer("agent2"), await env.peer("agent1")
    med = env.world.departments["MED"].id
    try:
        call_id = await answered_call(env, outlet, agent2)
        moved = await agent2.ok("call:transfer", {"call_id": call_id, "department_id": med})
        assert moved["call"]["state"] == "queued" and moved["call"]["department_id"] == med
        await agent1.wait("queue:update", lambda d: d["department_id"] == med and d["calls"])
        wdept = env.world.departments["W-SOC"].id
        taken = await agent1.ok("queue:take", {})
        assert taken["call"]["id"] == call_id
        await agent1.ok("call:accept", {"call_id": call_id})
        await agent1.ok("call:connected", {"call_id": call_id})
        error = await agent1.error("call:transfer", {"call_id": call_id, "department_id": wdept})
        assert error["code"] == "forbidden"
        await agent1.ok("call:end", {"call_id": call_id})
    finally:
        for p in (outlet, agent2, agent1):
            await p.close()
    assert (await kinds(env, call_id))[4:7] == ["call_transferred", "call_queued", "call_offered"]


async def test_presence_is_live_for_supervisors_of_the_county(env: Env) -> None:
    sup, wsup, city = await env.peer("super1"), await env.peer("wsuper"), await env.peer("citysuper")
    agent = await env.peer("agent1")
    outlet = await env.peer("staff1")
    agent1_id = env.world.users["agent1"].id
    try:
        listed = await sup.ok("presence:list", {})
        assert any(a["user_id"] == agent1_id and a["state"] == "available" for a in listed["agents"])
        assert not any(a["user_id"] == agent1_id for a in (await wsup.ok("presence:list", {}))["agents"])
        await agent.ok("presence:set", {"state": "away"})
        await sup.wait("presence:update", lambda d: d["agent"]["user_id"] == agent1_id and d["agent"]["state"] == "away")
        await city.wait("presence:update", lambda d: d["agent"]["state"] == "away")
        await answered_call(env, outlet, agent)
        await sup.wait("presence:update", lambda d: d["agent"]["state"] == "busy")
        assert (await agent.error("presence:set", {"state": "busy"}))["code"] == "invalid_input"
        assert (await agent.error("presence:list", {}))["code"] == "forbidden"
        assert (await sup.ok("queue:list", {}))["queues"]
        assert not any(d[0] == "presence:update" for d in wsup.events)
    finally:
        for p in (sup, wsup, city, agent, outlet):
            await p.close()


async def test_agent_without_heartbeat_goes_offline(env_factory) -> None:
    async with env_factory(presence_timeout_seconds=1.0) as env:
        sup, agent = await env.peer("super1"), await env.peer("agent2")
        try:
            await agent.ok("presence:heartbeat", {})
            offline = await sup.wait("presence:update", lambda d: d["agent"]["state"] == "offline", timeout=5)
            assert offline["agent"]["name"] == "agent2"
            await agent.ok("presence:heartbeat", {})
            await sup.wait("presence:update", lambda d: d["agent"]["state"] == "available")
        finally:
            await sup.close()
            await agent.close()


async def test_media_offer_requires_an_accepted_call(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
        error = await outlet.error("media:offer", {"call_id": call_id, "sdp": "v=0", "tracks": {}})
        assert error["code"] == "conflict"
        error = await agent.error("media:offer", {"call_id": call_id, "sdp": "v=0"})
        assert error["code"] == "forbidden"
    finally:
        await outlet.close()
        await agent.close()


async def test_long_polling_transport_passes_the_access_middleware(env_factory) -> None:
    async with env_factory(heartbeat_interval_seconds=1.0) as env:  # a long poll lasts a ping interval
        await _poll_a_call(env)


async def _poll_a_call(env: Env) -> None:
    outlet = Peer("staff1")
    await outlet.connect(env.url, await session_token(env.app, "staff1"), transports=["polling"])
    try:
        assert outlet.client.transport() == "polling"
        snapshot = await outlet.ok("session:resume", {})
        assert snapshot["user"]["username"] == "staff1" and snapshot["call"] is None
        started = await outlet.ok("call:start", start_payload(env.world))
        assert started["call"]["state"] == "queued"
        await outlet.ok("call:cancel", {"call_id": started["call"]["id"]})
    finally:
        await outlet.close()


async def test_callback_declined_or_unanswered_reopens_and_a_stuck_connect_fails(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        created = await outlet.ok("callback:create", {**start_payload(env.world), "note": ""})
        callback_id = created["callback"]["id"]
        first = (await agent.ok("callback:call", {"callback_id": callback_id}))["call"]["id"]
        await outlet.wait_call("offered", id=first)
        declined = await outlet.ok("call:decline", {"call_id": first})
        assert declined["call"]["end_reason"] == "cancelled"
        await agent.wait("callback:update", lambda d: any(
            c["id"] == callback_id and c["status"] == "open" for c in d["callbacks"]))
        second = (await agent.ok("callback:call", {"callback_id": callback_id}))["call"]["id"]
        unanswered = await agent.wait_call("ended", id=second)  # ring timeout at the outlet
        assert unanswered["end_reason"] == "abandoned"
        # a call accepted but never connected ends as failed after the grace period
        third = (await agent.ok("callback:call", {"callback_id": callback_id}))["call"]["id"]
        await outlet.ok("call:accept", {"call_id": third})
        failed = await agent.wait_call("ended", id=third)
        assert failed["end_reason"] == "failed"
    finally:
        await outlet.close()
        await agent.close()
    assert (await kinds(env, third)) == ["call_outbound", "call_accepted", "call_ended"]
