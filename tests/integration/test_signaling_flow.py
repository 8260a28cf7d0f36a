"""A call from an outlet to an agent over real Socket.IO clients, on both backends."""

from __future__ import annotations

from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession
from tests.integration.signaling_support import Env, backend, env, env_factory, peers, start_payload  # noqa: F401


async def test_outlet_calls_agent_answers_and_the_log_verifies(env: Env) -> None:
    async with peers(env.url, env.app, "staff1", "agent1") as (outlet, agent):
        started = await outlet.ok("call:start", start_payload(env.world))
        call_id = started["call"]["id"]
        assert started["call"]["state"] == "queued"
        assert started["position"]["position"] == 1
        update = await agent.wait("queue:update", lambda d: any(c["id"] == call_id for c in d["calls"]))
        entry = update["calls"][0]
        assert entry["outlet_name"] == "花鸟村便民服务站" and entry["island"] == "花鸟岛"
        assert entry["item_name"] == "城乡居民养老保险参保登记" and entry["priority"] == "normal"
        assert entry["applicant_name"] == "张三"

        taken = await agent.ok("queue:take", {})
        assert taken["call"]["id"] == call_id and taken["call"]["state"] == "offered"
        await agent.ok("call:accept", {"call_id": call_id})
        await outlet.wait_call("connecting", id=call_id)
        await outlet.ok("call:connected", {"call_id": call_id})
        await agent.wait_call("in_call", id=call_id)
        ended = await agent.ok("call:end", {"call_id": call_id})
        assert ended["call"]["end_reason"] == "completed"
        final = await outlet.wait_call("ended", id=call_id)
        assert final["end_message"]

    async with env.db.transaction() as session:
        row = await session.get(CallSession, call_id)
        assert row.state == "ended" and row.end_reason == "completed"
        assert row.agent_user_id == env.world.users["agent1"].id
        assert row.applicant == {"name": "张三", "id_masked": "", "phone_masked": "138****8000"}
        kinds = [e.kind for e in await load_events(session, call_id)]
        assert kinds == ["call_queued", "call_offered", "call_accepted", "call_connected", "call_ended"]
        assert (await verify_chain(session, call_id)).ok
