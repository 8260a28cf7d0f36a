"""In-call events through the real server with real Socket.IO clients: chat, link reports,
snapshots of a real aiortc outlet camera, and ICE servers before the first offer."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from cloudhall import appkeys
from cloudhall.auth import SESSION_COOKIE
from cloudhall.db import Database
from cloudhall.settings import TurnSettings
from recordings.eventlog import load_events, verify_chain
from tests.factories import World
from tests.helpers import require_redis, wait_for
from tests.integration.signaling_support import (  # noqa: F401
    Env,
    Peer,
    clear_prefix,
    env,
    env_factory,
    new_prefix,
    running_server,
    session_token,
    signaling_settings,
    start_payload,
)
from tests.media.peers import SyntheticVideo


@pytest.fixture
def backend() -> str:
    """These tests run on the memory backend; the Redis relay has its own two-node test below."""
    return "memory"


async def in_call(env: Env, outlet_user: str = "staff1", agent_user: str = "agent2") -> tuple[Peer, Peer, str]:
    outlet, agent = await env.peer(outlet_user), await env.peer(agent_user)
    call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
    await agent.ok("queue:take", {"call_id": call_id})
    await agent.ok("call:accept", {"call_id": call_id})
    await outlet.wait_call("connecting", id=call_id)
    # In progress (as when media flows), so the connect deadline of the fast test settings does not end it.
    await outlet.ok("call:connected", {"call_id": call_id})
    return outlet, agent, call_id


async def session_events(db: Database, call_id: str, kind: str, count: int = 1) -> list:
    async def found():
        async with db.transaction() as session:
            if not (await verify_chain(session, call_id)).ok:
                return None
            events = [e for e in await load_events(session, call_id) if e.kind == kind]
            return events if len(events) >= count else None

    return await wait_for(found, timeout=5, what=f"{count} {kind} event(s) in a verified log")


# -- chat -----------------------------------------------------------------------------------
async def test_chat_reaches_both_sides_and_the_session_log(env: Env) -> None:
    outlet, agent, call_id = await in_call(env)
    try:
        ack = await outlet.ok("chat:send", {"call_id": call_id, "text": "  您好，请出示身份证  "})
        assert set(ack) == {"id", "at"}
        for peer in (outlet, agent):
            message = await peer.wait("chat:message", lambda d: d["id"] == ack["id"])
            assert message == {
                "call_id": call_id, "id": ack["id"], "from": "outlet", "name": message["name"],
                "text": "您好，请出示身份证", "at": ack["at"],
            }
            assert message["name"]
        reply = await agent.ok("chat:send", {"call_id": call_id, "text": "好的"})
        got = await outlet.wait("chat:message", lambda d: d["id"] == reply["id"])
        assert got["from"] == "agent" and got["text"] == "好的"

        logged = await session_events(env.db, call_id, "chat_message", 2)
        assert [(e.data["from"], e.data["text"]) for e in logged] == [("outlet", "您好，请出示身份证"), ("agent", "好的")]
        assert logged[0].data["id"] == ack["id"]
    finally:
        await outlet.close()
        await agent.close()


async def test_chat_is_refused_outside_the_call_and_for_bad_text(env: Env) -> None:
    outlet, agent, call_id = await in_call(env)
    stranger = await env.peer("agent1")
    other_outlet = await env.peer("staff2")
    supervisor = await env.peer("super1")
    try:
        assert (await stranger.error("chat:send", {"call_id": call_id, "text": "hi"}))["code"] == "forbidden"
        assert (await other_outlet.error("chat:send", {"call_id": call_id, "text": "hi"}))["code"] == "forbidden"
        assert (await supervisor.error("chat:send", {"call_id": call_id, "text": "hi"}))["code"] == "forbidden"
        for text in ("", "   ", "字" * 1001):
            error = await outlet.error("chat:send", {"call_id": call_id, "text": text})
            assert error["code"] == "invalid_input" and error["details"][0]["field"] == "text"
        assert (await outlet.ok("chat:send", {"call_id": call_id, "text": "字" * 1000}))["id"]
        unknown = await outlet.error("chat:send", {"call_id": "0123-abcd", "text": "hi"})
        assert unknown["code"] == "not_found"
        await agent.ok("call:end", {"call_id": call_id})
        ended = await outlet.error("chat:send", {"call_id": call_id, "text": "还在吗"})
        assert ended["code"] == "not_in_call"
    finally:
        for peer in (outlet, agent, stranger, other_outlet, supervisor):
            await peer.close()


async def test_chat_is_rate_limited(env: Env) -> None:
    outlet, agent, call_id = await in_call(env)
    try:
        results = await asyncio.gather(
            *(outlet.call("chat:send", {"call_id": call_id, "text": f"第{i}条"}) for i in range(12))
        )
        refused = [r["error"] for r in results if "error" in r]
        assert refused and all(e["code"] == "too_many_requests" for e in refused)
        assert len(results) - len(refused) >= 5
        await asyncio.sleep(1.1)
        await outlet.ok("chat:send", {"call_id": call_id, "text": "过一会儿又可以了"})
    finally:
        await outlet.close()
        await agent.close()


@pytest.mark.redis
async def test_chat_link_and_snapshot_cross_nodes_on_redis(
    tmp_path: Path, sqlite_database: Database, world: World
) -> None:
    """Outlet on node A, agent on node B, one Redis: each side sees the other's messages and
    link figures, and the agent's snapshot is taken on A, which owns the call's media."""
    require_redis()
    prefix = new_prefix()
    settings = signaling_settings(tmp_path, sqlite_database.url, prefix)
    try:
        async with running_server(settings, sqlite_database) as (url_a, app_a), running_server(
            settings, sqlite_database
        ) as (url_b, app_b):
            outlet, agent = Peer("staff1@A"), Peer("agent2@B")
            await outlet.connect(url_a, await session_token(app_a, "staff1"))
            await agent.connect(url_b, await session_token(app_b, "agent2"))
            try:
                call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
                await agent.ok("queue:take", {"call_id": call_id})
                await agent.ok("call:accept", {"call_id": call_id})
                await outlet.wait_call("connecting", id=call_id)
                sent = await outlet.ok("chat:send", {"call_id": call_id, "text": "A 到 B"})
                assert (await agent.wait("chat:message", lambda d: d["id"] == sent["id"]))["from"] == "outlet"
                back = await agent.ok("chat:send", {"call_id": call_id, "text": "B 到 A"})
                assert (await outlet.wait("chat:message", lambda d: d["id"] == back["id"]))["text"] == "B 到 A"
                await outlet.ok("link:report", link(call_id, step=1, level="poor"))
                status = await agent.wait("link:status", lambda d: d["call_id"] == call_id)
                assert status["from"] == "outlet" and status["step"] == 1
                await session_events(sqlite_database, call_id, "chat_message", 2)
                async with outlet_camera(outlet, call_id):
                    async def taken():
                        result = await agent.call("media:snapshot", {"call_id": call_id, "source": "camera"}, timeout=20)
                        return result if "error" not in result else None

                    shot = await wait_for(taken, timeout=20, what="a snapshot taken on node A for node B")
                (event,) = await session_events(sqlite_database, call_id, "snapshot_taken")
                assert event.actor.startswith("user:") and event.data["sha256"] == shot["sha256"]
                assert app_a[appkeys.SIGNALING].node_id != app_b[appkeys.SIGNALING].node_id
                status, _, body = await fetch(url_b + shot["url"], await session_token(app_b, "agent2"))
                assert status == 200 and hashlib.sha256(body).hexdigest() == shot["sha256"]
            finally:
                await outlet.close()
                await agent.close()
    finally:
        await clear_prefix(prefix)


# -- link reports ---------------------------------------------------------------------------
def link(call_id: str, step: int = 0, level: str = "good", **extra: object) -> dict[str, object]:
    return {"call_id": call_id, "level": level, "step": step, "rtt_ms": 80, "loss_in": 0.5, "loss_out": 1.2,
            "kbps_in": 900, "kbps_out": 1200, **extra}


async def test_link_reports_reach_the_agent_and_step_changes_are_logged(env: Env) -> None:
    outlet, agent, call_id = await in_call(env)
    try:
        steps = [0, 0, 1, 1, 1, 2, 2, 0]
        for step in steps:
            assert await outlet.ok("link:report", link(call_id, step, "poor" if step else "good")) == {}
            await asyncio.sleep(0.21)  # the browser reports once a second; stay under the limit
        await wait_for(lambda: len(agent.seen("link:status")) == len(steps), what="every link:status")
        statuses = agent.seen("link:status")
        assert [s["step"] for s in statuses] == steps
        assert statuses[2] | {"at": 0} == {
            "call_id": call_id, "from": "outlet", "level": "poor", "step": 1, "rtt_ms": 80, "loss_in": 0.5,
            "loss_out": 1.2, "kbps_in": 900, "kbps_out": 1200, "at": 0,
        }
        assert outlet.seen("link:status") == []  # the outlet knows its own link
        logged = await session_events(env.db, call_id, "link_step", 3)
        assert [(e.data["from_step"], e.data["to_step"]) for e in logged] == [(0, 1), (1, 2), (2, 0)]
        assert logged[0].data["level"] == "poor"
        # A null round trip (no candidate pair yet) is fine; out-of-range figures are not.
        await outlet.ok("link:report", link(call_id, rtt_ms=None))
        for bad in ({"step": 4}, {"loss_in": 101}, {"level": "great"}, {"kbps_out": -1}, {"extra": 1}):
            error = await outlet.error("link:report", {**link(call_id), **bad})
            assert error["code"] == "invalid_input"
        assert (await agent.error("link:report", link(call_id)))["code"] == "forbidden"
    finally:
        await outlet.close()
        await agent.close()


# -- snapshots ------------------------------------------------------------------------------
@asynccontextmanager
async def outlet_camera(outlet: Peer, call_id: str) -> AsyncIterator[RTCPeerConnection]:
    """A real aiortc outlet sending a 640x480 camera through media:offer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    try:
        transceiver = pc.addTransceiver(SyntheticVideo(640, 480, 15), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        answer = await outlet.ok(
            "media:offer", {"call_id": call_id, "sdp": pc.localDescription.sdp, "tracks": {transceiver.mid: "camera"}}
        )
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        yield pc
    finally:
        await pc.close()


async def fetch(url: str, token: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(cookies={SESSION_COOKIE: token}) as http:
        async with http.get(url, allow_redirects=False) as response:
            return response.status, dict(response.headers), await response.read()


async def test_agent_snapshot_of_the_outlet_camera_is_stored_logged_and_served(env: Env, tmp_path: Path) -> None:
    outlet, agent, call_id = await in_call(env)
    try:
        assert (await agent.error("media:snapshot", {"call_id": call_id, "source": "camera"}))["code"] == "no_media"
        async with outlet_camera(outlet, call_id):
            async def taken():
                result = await agent.call("media:snapshot", {"call_id": call_id, "source": "camera"}, timeout=20)
                return result if "error" not in result else None

            shot = await wait_for(taken, timeout=20, what="a snapshot of the outlet camera")
            assert shot["name"] == "1-camera.jpg" and shot["url"] == f"/api/sessions/{call_id}/snapshots/1-camera.jpg"
            assert (shot["width"], shot["height"]) == (640, 480)
            missing = await agent.error("media:snapshot", {"call_id": call_id, "source": "screen"})
            assert missing["code"] == "not_found"
            assert (await outlet.error("media:snapshot", {"call_id": call_id, "source": "camera"}))["code"] == "forbidden"
            bad = await agent.error("media:snapshot", {"call_id": call_id, "source": "desk"})
            assert bad["code"] == "invalid_input"

        stored = tmp_path / "recordings" / call_id / "snapshots" / "1-camera.jpg"
        data = stored.read_bytes()
        assert data[:2] == b"\xff\xd8" and hashlib.sha256(data).hexdigest() == shot["sha256"]
        (event,) = await session_events(env.db, call_id, "snapshot_taken")
        assert event.data == {"name": "1-camera.jpg", "source": "camera", "size": len(data),
                              "sha256": shot["sha256"], "width": 640, "height": 480}

        status, headers, body = await fetch(env.url + shot["url"], await session_token(env.app, "agent2"))
        assert status == 200 and body == data
        assert headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"].startswith("private")
        assert (await fetch(env.url + shot["url"], await session_token(env.app, "staff1")))[0] == 200
        assert (await fetch(env.url + shot["url"], await session_token(env.app, "super1")))[0] == 200
        for outsider in ("agent1", "staff2", "wsuper"):
            assert (await fetch(env.url + shot["url"], await session_token(env.app, outsider)))[0] == 403, outsider
        token = await session_token(env.app, "agent2")
        base = f"{env.url}/api/sessions/{call_id}/snapshots/"
        for name in ("..%2F..%2Fcloudhall.db", "1-camera.png", "0-camera.jpg", "1-camera.jpg.tmp", "%2Eprofile"):
            assert (await fetch(base + name, token))[0] in (400, 404), name
        assert (await fetch(base + "2-camera.jpg", token))[0] == 404
    finally:
        await outlet.close()
        await agent.close()


# -- ICE servers before the first offer -----------------------------------------------------
async def test_ice_servers_come_with_connecting(tmp_path: Path, sqlite_database: Database, world: World) -> None:
    turn = TurnSettings(secret="s" * 32, urls=("turn:127.0.0.1:3478?transport=udp",), ttl_seconds=600)
    settings = signaling_settings(tmp_path, sqlite_database.url)
    settings = replace(settings, media=replace(settings.media, turn=turn))
    async with running_server(settings, sqlite_database) as (url, app):
        env = Env(url, app, world, sqlite_database)
        outlet, agent = await env.peer("staff1"), await env.peer("agent2")
        try:
            call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
            taken = await agent.ok("queue:take", {"call_id": call_id})
            assert "ice_servers" not in taken
            accepted = await agent.ok("call:accept", {"call_id": call_id})
            (server,) = accepted["ice_servers"]
            assert server["urls"] == list(turn.urls) and server["username"].endswith(":agent:" + str(
                world.users["agent2"].id)) and server["credential"]
            expiry = int(server["username"].split(":", 1)[0])
            assert time.time() < expiry <= time.time() + 601
            for peer in (outlet, agent):
                body = await peer.wait("call:state", lambda d: d["call"]["state"] == "connecting")
                assert body["ice_servers"][0]["urls"] == list(turn.urls)
            assert all("ice_servers" not in d for d in outlet.seen("call:state") if d["call"]["state"] != "connecting")
            resumed = await outlet.ok("session:resume")
            assert resumed["call"]["id"] == call_id and resumed["ice_servers"][0]["username"]
        finally:
            await outlet.close()
            await agent.close()


# -- supervisors and callback rows (docs/ui.md "Waiting on others" 5 and 6) ------------------
async def test_supervisors_follow_every_call_of_their_county(env: Env) -> None:
    sup, wsup, city = await env.peer("super1"), await env.peer("wsuper"), await env.peer("citysuper")
    outlet, agent, call_id = await in_call(env)
    try:
        for watcher in (sup, city):
            for state in ("queued", "offered", "connecting", "in_call"):
                call = await watcher.wait_call(state, id=call_id)
            assert call["outlet_name"] == "花鸟村便民服务站" and call["item_name"] == "城乡居民养老保险参保登记"
            assert call["agent"]["id"] == env.world.users["agent2"].id
            assert all("ice_servers" not in body for body in watcher.seen("call:state"))
        await agent.ok("call:end", {"call_id": call_id})
        await sup.wait_call("ended", id=call_id)
        await city.wait_call("ended", id=call_id)
        assert wsup.seen("call:state") == []
    finally:
        for peer in (sup, wsup, city, outlet, agent):
            await peer.close()


async def test_callback_rows_carry_outlet_and_item_names(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    try:
        created = await outlet.ok("callback:create", {**start_payload(env.world), "note": "下午再打"})
        callback_id = created["callback"]["id"]
        names = {"outlet_name": "花鸟村便民服务站", "island": "花鸟岛", "item_name": "城乡居民养老保险参保登记"}
        pushed = await agent.wait("callback:update", lambda d: any(c["id"] == callback_id for c in d["callbacks"]))
        listed = (await agent.ok("callback:list", {}))["callbacks"]
        resumed = (await agent.ok("session:resume", {}))["callbacks"]
        for rows in (pushed["callbacks"], listed, resumed):
            (row,) = [c for c in rows if c["id"] == callback_id]
            assert {k: row[k] for k in names} == names
    finally:
        await outlet.close()
        await agent.close()
