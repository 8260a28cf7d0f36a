"""The weak-link ladder in a real call: the outlet's link turns bad, the page steps down to
audio only and says so on both sides, then steps back up when the link recovers.

A loopback link cannot be made bad from here (netem is missing and Chromium's network
emulation does not touch WebRTC), so the test makes the outlet page *measure* a bad link:
its getStats answers carry a 700 ms round trip and 20 % loss while ``window.__badLink`` is
set. Everything downstream of the measurement is real: the senders' parameters, the frames
that stop reaching the agent, the notices on both pages.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import assert_clean, screenshot
from tests.e2e.test_call_browser import FRAMES_JS, agent_ready, outlet_ready, start_call_and_take, video_playing
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

BAD_LINK_JS = """
() => {
  const native = RTCPeerConnection.prototype.getStats;
  RTCPeerConnection.prototype.getStats = async function (...args) {
    const report = await native.apply(this, args);
    if (!window.__badLink) return report;
    const bad = new Map();
    report.forEach((s, key) => {
      const copy = { ...s };
      if (copy.type === "candidate-pair") copy.currentRoundTripTime = 0.7;
      if (copy.type === "remote-inbound-rtp") copy.fractionLost = 0.2;
      bad.set(key, copy);
    });
    return bad;
  };
  window.__badLink = true;
}
"""
CAMERA_ACTIVE_JS = """
() => {
  const pc = window.__pcs.at(-1);
  const sender = pc.getTransceivers().find((t) => t.sender.track && t.sender.track.kind === "video"
    && !/screen|window|tab/.test(t.sender.track.label)).sender;
  return sender.getParameters().encodings.every((e) => e.active);
}
"""


async def test_ladder_steps_down_and_back_up(browser, live_server):
    agent, agent_log = await agent_ready(browser, live_server)
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await start_call_and_take(outlet, agent)
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera")

    await outlet.evaluate(BAD_LINK_JS)
    await outlet.wait_for_selector("body[data-ladder='1']", state="attached", timeout=15000)
    assert "降低" in await outlet.text_content("#ladder-note")
    await outlet.wait_for_selector("body[data-ladder='2']", state="attached", timeout=15000)
    assert "暂停摄像头" in await outlet.text_content("#ladder-note")
    assert await outlet.evaluate(CAMERA_ACTIVE_JS) is False, "step 2 pauses the camera sender"
    # The agent is told in plain words too: the outlet camera stopped while sound goes on.
    await agent.wait_for_function(
        "() => document.querySelector('#ladder-note').textContent.includes('摄像头已暂停')", timeout=15000
    )
    frames = await agent.evaluate(FRAMES_JS, "#remote-camera")
    await agent.wait_for_timeout(2000)
    assert await agent.evaluate(FRAMES_JS, "#remote-camera") - frames < 5, "the outlet camera is paused"
    await outlet.wait_for_selector("body[data-ladder='3']", state="attached", timeout=15000)
    assert "只保留语音" in await outlet.text_content("#ladder-note")
    await screenshot(outlet, "outlet-11-audio-only")
    await screenshot(agent, "console-3-outlet-weak-link")

    # The link recovers: one step back up after fifteen good seconds.
    await outlet.evaluate("() => { window.__badLink = false; }")
    await outlet.wait_for_selector("body[data-ladder='2']", state="attached", timeout=30000)
    await outlet.wait_for_selector("body[data-ladder='1']", state="attached", timeout=30000)
    assert await outlet.evaluate(CAMERA_ACTIVE_JS) is True, "step 1 sends the camera again"

    async def camera_back() -> bool:
        before = await agent.evaluate(FRAMES_JS, "#remote-camera")
        await agent.wait_for_timeout(1000)
        return await agent.evaluate(FRAMES_JS, "#remote-camera") > before

    await wait_for(camera_back, timeout=20, interval=0.2, what="the outlet camera reaching the agent again")
    await assert_clean(outlet, outlet_log)
    await assert_clean(agent, agent_log)
