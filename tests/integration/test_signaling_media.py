"""Where signalling meets media: offers answered by the real MediaServer, media and recorder
events written to the session log and passed to both sides, on both backends."""

from __future__ import annotations

import threading

from aiortc import RTCPeerConnection

from cloudhall import appkeys
from recordings.eventlog import load_events, verify_chain
from tests.helpers import wait_for
from tests.integration.signaling_support import Env, backend, env, env_factory, start_payload  # noqa: F401


async def logged(env: Env, call_id: str) -> list:
    async def verified():
        async with env.db.transaction() as session:
            if not (await verify_chain(session, call_id)).ok:
                return None
            return list(await load_events(session, call_id))

    return await wait_for(verified, timeout=5, what="the session log to verify")


async def test_offer_answer_media_events_and_recording_hashes(env: Env) -> None:
    outlet, agent = await env.peer("staff1"), await env.peer("agent2")
    signaling = env.app[appkeys.SIGNALING]
    try:
        call_id = (await outlet.ok("call:start", start_payload(env.world)))["call"]["id"]
        await agent.ok("queue:take", {"call_id": call_id})
        await agent.ok("call:accept", {"call_id": call_id})

        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await outlet.ok(
                "media:offer", {"call_id": call_id, "sdp": pc.localDescription.sdp, "tracks": {"0": "remote:camera"}}
            )
        finally:
            await pc.close()
        assert answer["type"] == "answer" and answer["sdp"].startswith("v=0")
        assert answer["node"] == signaling.node_id and answer["ice_servers"] == []
        bad = await agent.error("media:offer", {"call_id": call_id, "sdp": "v=0\r\n", "tracks": {}})
        assert bad["code"] == "invalid_input"

        bridge = signaling.server.media
        bridge.media_event(call_id, "participant_connected", {"participant": "outlet", "epoch": 0})
        await agent.wait("media:event", lambda d: d["kind"] == "participant_connected")
        bridge.media_event(call_id, "participant_connected", {"participant": "agent", "epoch": 0})
        await outlet.wait_call("in_call", id=call_id)
        # the recorder reports finished files from its own thread
        entry = {"file": "outlet-camera-0.webm", "sha256": "ab" * 32, "duration": 1.5}
        thread = threading.Thread(target=bridge.file_finished, args=(call_id, entry))
        thread.start()
        thread.join()
        await wait_for(lambda: _has(env, call_id, "recording_file"), what="recording_file event")
        await agent.ok("call:end", {"call_id": call_id})
    finally:
        await outlet.close()
        await agent.close()
    events = await logged(env, call_id)
    kinds = [e.kind for e in events]
    assert kinds.count("media_participant_connected") == 2
    assert "media_placed" in kinds and "call_connected" in kinds
    (recorded,) = [e for e in events if e.kind == "recording_file"]
    assert recorded.data["sha256"] == "ab" * 32


async def _has(env: Env, call_id: str, kind: str) -> bool:
    return any(e.kind == kind for e in await logged(env, call_id))
