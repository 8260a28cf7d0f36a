"""A whole call in Chromium: outlet and agent pages, real server, real media, recordings that play.

Two browser contexts in one Chromium (own cookies each): the outlet passes its pre-call
check and calls; the agent sees the call in the queue, is alerted, takes it; both pages
play the other side's video; the outlet shares its screen; the call ends; the outlet rates
it. Then the session record and the recording files are checked. A second test cuts the
outlet's peer connection mid-call and checks that the page rejoins the same session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
from sqlalchemy import select

from cloudhall import appkeys
from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession, Rating
from tests.e2e.conftest import LiveServer, assert_clean, login_page, open_page, screenshot
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# framesDecoded of the inbound video playing in <video selector>, on the page's newest peer connection.
FRAMES_JS = """
async (selector) => {
  const video = document.querySelector(selector);
  const track = video && video.srcObject && video.srcObject.getVideoTracks()[0];
  const pc = window.__pcs[window.__pcs.length - 1];
  if (!track || !pc) return -1;
  const report = await pc.getStats();
  let frames = -1;
  report.forEach((s) => { if (s.type === "inbound-rtp" && s.trackIdentifier === track.id) frames = s.framesDecoded || 0; });
  return frames;
}
"""


async def video_playing(page: Any, selector: str, what: str, timeout: float = 25.0, frames: int = 10) -> None:
    """videoWidth > 0 and framesDecoded rising (by ``frames`` at least)."""

    async def width() -> int:
        return await page.evaluate("(s) => document.querySelector(s).videoWidth", selector)

    await wait_for(width, timeout=timeout, interval=0.2, what=f"{what}: videoWidth > 0")
    first = await page.evaluate(FRAMES_JS, selector)

    async def rising() -> bool:
        return await page.evaluate(FRAMES_JS, selector) >= max(first, 0) + frames

    await wait_for(rising, timeout=timeout, interval=0.2, what=f"{what}: framesDecoded rising from {first}")


async def outlet_ready(browser: Any, server: LiveServer, item: str = "cxjm", size: str = "hd") -> tuple[Any, Any]:
    page, log = await open_page(browser, server, "outlet", size=size)
    await login_page(page, server, "staff1", "/outlet")
    await page.wait_for_selector("#check-camera[data-result=ok]")
    await page.wait_for_selector("#check-network:is([data-result=ok],[data-result=warn])", timeout=20000)
    await page.click("#check-screen-run")
    await page.wait_for_selector("#check-screen[data-result=ok]")
    await page.click("#check-continue")
    await page.fill("#item-search", item)
    await page.click("#item-list .item-btn")
    await page.fill("#applicant-name", "王阿婆")
    await page.fill("#applicant-id", "11010519491231002X")
    await page.fill("#applicant-phone", "13800138000")
    await page.check("#applicant-priority")
    await page.check("#consent-accept")
    return page, log


async def agent_ready(browser: Any, server: LiveServer, size: str = "hd") -> tuple[Any, Any]:
    page, log = await open_page(browser, server, "agent", size=size)
    await login_page(page, server, "agent1", "/console")
    await page.wait_for_selector("#conn-status[data-state=connected]")
    await page.click(".presence-btn[data-presence=available]")
    await page.wait_for_selector("#presence-state[data-state=available]")
    return page, log


async def start_call_and_take(outlet: Any, agent: Any, button: str = "#queue-rows .take-this") -> None:
    await outlet.click("#call-start")
    await outlet.wait_for_selector("#stage-waiting:not([hidden])")
    await outlet.wait_for_function("() => document.querySelector('#wait-position').textContent.length > 0")
    await screenshot(outlet, "outlet-3-waiting")
    # The agent sees the call in the live queue, with an audible and visible alert.
    await agent.wait_for_selector("#queue-rows tr.priority")
    await agent.wait_for_selector("#incoming:not([hidden])")
    row = await agent.text_content("#queue-rows tr")
    assert "花鸟村便民服务站" in row and "花鸟岛" in row and "城乡居民养老保险参保登记" in row
    await screenshot(agent, "console-1-queue-alert")
    await agent.click(button)
    await agent.wait_for_selector("#view-call:not([hidden])")
    await outlet.wait_for_selector("#stage-call:not([hidden])")


def recording_files(root: Path, session_id: str) -> list[Path]:
    return sorted((root / session_id).glob("*.webm"))


async def test_full_call_outlet_to_agent(browser, live_server):
    agent, agent_log = await agent_ready(browser, live_server)
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await start_call_and_take(outlet, agent)

    # Both sides play the other side's camera.
    await video_playing(outlet, "#remote-video", "outlet sees the agent")
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera")
    await outlet.wait_for_selector("body[data-media=connected]")
    await outlet.wait_for_function("() => /ms/.test(document.querySelector('#quality').textContent)")
    await screenshot(outlet, "outlet-4-in-call")

    # Screen share: no renegotiation, the agent's large view plays it.
    pcs_before = await outlet.evaluate("() => window.__pcs.length")
    await outlet.click("#btn-share")
    await outlet.wait_for_selector("#btn-share[aria-pressed=true]")
    # A shared document moves little: a few new frames prove it plays.
    await video_playing(agent, "#remote-screen", "agent sees the outlet screen", frames=3)
    await agent.wait_for_selector("#screen-empty[hidden]", state="attached")
    assert await outlet.evaluate("() => window.__pcs.length") == pcs_before, "sharing must not renegotiate"
    # Mute and the camera switch (the fake device is the only camera: the page says so).
    await outlet.click("#btn-mute")
    await outlet.wait_for_selector("#btn-mute[aria-pressed=true]")
    assert await outlet.evaluate("() => document.querySelector('#local-video').srcObject.getAudioTracks()[0].enabled") is False
    await outlet.click("#btn-mute")
    await outlet.click("#btn-camera")
    await outlet.wait_for_selector("#banner:not([hidden])")
    assert "摄像头" in await outlet.text_content("#banner")
    await screenshot(agent, "console-2-in-call-screen")
    await screenshot(outlet, "outlet-5-sharing")
    session_id = await _call_id(live_server)

    # Share long enough that the screen recording (which starts at a keyframe) holds a real
    # stretch of it, then the agent ends the call; the outlet rates it.
    await video_playing(agent, "#remote-screen", "the outlet screen keeps playing", frames=15)
    await agent.click("#btn-end")
    await agent.wait_for_selector("#view-queue:not([hidden])")
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    await outlet.click(".rating-btn[data-level='5']")
    await outlet.fill("#rating-comment", "坐席很耐心")
    await screenshot(outlet, "outlet-6-rating")
    await outlet.click("#rating-submit")
    await outlet.wait_for_selector("#rating-done:not([hidden])")
    await assert_clean(outlet, outlet_log)
    await assert_clean(agent, agent_log)

    # The session record: every event, chained; the rating stored.
    async with live_server.db.transaction() as session:
        call = await session.get(CallSession, session_id)
        assert (call.state, call.end_reason) == ("ended", "completed")
        assert call.applicant["id_masked"] == "110105********002X"
        rating = await session.scalar(select(Rating).where(Rating.session_id == session_id))
        assert (rating.level, rating.comment) == (5, "坐席很耐心")
    root = live_server.app[appkeys.SETTINGS].media.recordings_dir

    async def all_logged() -> list[str] | None:
        async with live_server.db.transaction() as session:
            kinds = [e.kind for e in await load_events(session, session_id)]
        # One of each kind at least: media and recording events come several per call.
        wanted = {"call_queued", "call_offered", "call_accepted", "call_connected", "call_ended",
                  "media_participant_connected", "media_track_started", "recording_file", "rating_submitted"}
        assert wanted <= set(kinds), f"missing {sorted(wanted - set(kinds))} in {kinds}"
        return kinds

    kinds = await wait_for(all_logged, timeout=30, interval=0.5, what="every event in the session log")
    assert kinds.index("call_queued") < kinds.index("call_offered") < kinds.index("call_accepted") < kinds.index("call_ended")
    assert kinds.index("call_accepted") < kinds.index("call_connected") < kinds.index("call_ended")
    async with live_server.db.transaction() as session:
        assert (await verify_chain(session, session_id)).ok

    # The recording files exist and play: outlet camera, screen, microphone; agent camera,
    # microphone (one file per track and connection epoch: "<participant>-<source>-e<N>.webm").
    sources = {"outlet-camera", "outlet-screen", "outlet-microphone", "agent-camera", "agent-microphone"}

    def finished() -> list[Path] | None:
        files = recording_files(root, session_id)
        return files if sources <= {f.name.rsplit("-e", 1)[0] for f in files} else None

    files = await wait_for(finished, timeout=30, interval=0.5, what="a finished recording of every track")
    packets: dict[str, int] = {}
    codecs = {}
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams[0]
            track = path.name.rsplit("-e", 1)[0]
            codecs[track] = stream.codec_context.name
            packets[track] = packets.get(track, 0) + sum(1 for p in container.demux(stream) if p.size)
    assert codecs == {"outlet-camera": "vp8", "outlet-screen": "vp8", "outlet-microphone": "opus",
                      "agent-camera": "vp8", "agent-microphone": "opus"}, codecs
    assert all(count > 5 for count in packets.values()), packets


async def _call_id(server: LiveServer) -> str:
    async with server.db.transaction() as session:
        ids = list(await session.scalars(select(CallSession.id)))
    assert len(ids) == 1, ids
    return ids[0]


async def test_outlet_recovers_into_the_same_session(browser, live_server):
    agent, agent_log = await agent_ready(browser, live_server)
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await start_call_and_take(outlet, agent)
    await video_playing(outlet, "#remote-video", "outlet sees the agent")
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera")
    session_id = await _call_id(live_server)

    # Cut the outlet's media connection as a dead link would.
    await outlet.evaluate("() => window.__pcs[window.__pcs.length - 1].close()")
    await outlet.wait_for_selector("body[data-media=reconnecting]", timeout=10000)
    await screenshot(outlet, "outlet-7-reconnecting")
    await outlet.wait_for_function("() => window.__pcs.length >= 2 && window.__pcs.at(-1).connectionState === 'connected'",
                                   timeout=30000)
    await outlet.wait_for_selector("body[data-media=connected]")
    await outlet.wait_for_selector("#call-overlay[hidden]", state="attached")
    await video_playing(outlet, "#remote-video", "outlet sees the agent after rejoining")
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera after its rejoin")
    assert await _call_id(live_server) == session_id, "the rejoin must stay in the same session"

    async def outlet_rejoined() -> bool:
        async with live_server.db.transaction() as session:
            call = await session.get(CallSession, session_id)
            events = await load_events(session, session_id)
        epochs = {e.data.get("epoch") for e in events
                  if e.kind in ("media_participant_connected", "media_track_started") and e.data.get("participant") == "outlet"}
        assert call.state == "in_call" and call.ended_at is None, call.state
        assert len(epochs) >= 2, f"outlet media epochs logged: {epochs}"
        return True

    await wait_for(outlet_rejoined, timeout=15, interval=0.5, what="a second outlet media epoch in the same session")
    assert await outlet.evaluate("() => document.body.dataset.stage") == "call"
    assert await outlet.evaluate("() => document.body.dataset.call") == "in_call"

    # End the call and let its recordings finish (no recorder thread outlives the test).
    await outlet.wait_for_timeout(1000)
    await agent.click("#btn-end")
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    root = live_server.app[appkeys.SETTINGS].media.recordings_dir

    def outlet_camera_epochs() -> int:
        return len([f for f in recording_files(root, session_id) if f.name.startswith("outlet-camera-e")])

    await wait_for(lambda: outlet_camera_epochs() >= 2, timeout=30, interval=0.5,
                   what="the outlet camera recorded in two epochs (before and after the rejoin)")
    await assert_clean(outlet, outlet_log)
    await assert_clean(agent, agent_log)
