"""The send rate of a call on a perfect link: the outlet's camera and screen reach the agent at full quality.

Regression (docs/media.md, "Bandwidth"): the REMB the server sent upstream followed what it
was receiving, per video stream, and Chromium applies each REMB to its whole transport; once
the outlet shared its screen, its ``availableOutgoingBitrate`` settled at 60 kbit/s (30 kbit/s
per video, ``qualityLimitationReason: "bandwidth"``, the screen at 1 fps) for the rest of the
call, on loopback. Here, a few seconds into a call on loopback, while the screen is shared
the camera is sent at its page-set share and the screen plays; once sharing stops the camera
is sent at ≥ 300 kbit/s and ≥ 15 fps, and the agent decodes both at those rates.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import assert_clean
from tests.e2e.test_call_browser import agent_ready, outlet_ready, start_call_and_take, video_playing
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WINDOW_S = 2.0
CAMERA_KBPS = 300  # camera alone (the page allows it 600 kbit/s)
# Sharing: the page caps the camera at 250 kbit/s and Chromium gives the screen the larger share
# while its estimate ramps (camera target 80-100 kbit/s until ~500 kbit/s are available, sent
# 94-130 kbit/s in 2 s windows, 250 once ramped). The spiral held it at 32: twice that is the floor.
CAMERA_SHARING_KBPS = 64
CAMERA_FPS = 15
SCREEN_FPS = 5  # the page sends the screen at up to 10 fps
AVAILABLE_KBPS = 300

# The outlet's sender of one source (outbound-rtp) and the transport's send estimate.
OUTLET_SENT_JS = """
async (screen) => {
  const pc = window.__pcs.at(-1);
  const t = pc.getTransceivers().find((t) => t.sender.track && t.sender.track.kind === "video"
    && /screen|window|tab/.test(t.sender.track.label) === screen);
  const out = { bytes: 0, frames: 0, target: null, reason: null, available: null };
  if (!t) return out;
  (await pc.getStats(t.sender.track)).forEach((s) => {
    if (s.type === "outbound-rtp") {
      out.bytes += s.bytesSent || 0; out.frames += s.framesEncoded || 0;
      out.target = s.targetBitrate; out.reason = s.qualityLimitationReason;
    }
  });
  (await pc.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate !== undefined) out.available = s.availableOutgoingBitrate;
  });
  return out;
}
"""
# What the agent receives and decodes in <video selector>.
AGENT_GOT_JS = """
async (selector) => {
  const video = document.querySelector(selector);
  const track = video && video.srcObject && video.srcObject.getVideoTracks()[0];
  const out = { bytes: 0, frames: 0 };
  if (!track) return out;
  (await window.__pcs.at(-1).getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.trackIdentifier === track.id) { out.bytes = s.bytesReceived || 0; out.frames = s.framesDecoded || 0; }
  });
  return out;
}
"""


async def _sample(outlet: Any, agent: Any) -> dict:
    return {
        "camera": await outlet.evaluate(OUTLET_SENT_JS, False),
        "screen": await outlet.evaluate(OUTLET_SENT_JS, True),
        "agent_camera": await agent.evaluate(AGENT_GOT_JS, "#remote-camera"),
        "agent_screen": await agent.evaluate(AGENT_GOT_JS, "#remote-screen"),
        "at": time.monotonic(),
    }


async def _rates(outlet: Any, agent: Any) -> dict:
    """Over WINDOW_S: kbit/s and fps sent by the outlet and decoded by the agent, per source."""
    a = await _sample(outlet, agent)
    await outlet.wait_for_timeout(WINDOW_S * 1000)
    b = await _sample(outlet, agent)
    seconds = b["at"] - a["at"]
    rates: dict = {}
    for key in ("camera", "screen", "agent_camera", "agent_screen"):
        rates[f"{key}_kbps"] = round((b[key]["bytes"] - a[key]["bytes"]) * 8 / 1000 / seconds)
        rates[f"{key}_fps"] = round((b[key]["frames"] - a[key]["frames"]) / seconds, 1)
    rates["camera_target_kbps"] = round((b["camera"]["target"] or 0) / 1000)
    rates["camera_limited_by"] = b["camera"]["reason"]
    rates["available_kbps"] = round((b["camera"]["available"] or 0) / 1000)
    return rates


async def test_outlet_camera_and_screen_reach_the_agent_at_full_rate_on_a_good_link(browser, live_server):
    agent, agent_log = await agent_ready(browser, live_server)
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await start_call_and_take(outlet, agent)
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera")
    await outlet.click("#btn-share")
    await outlet.wait_for_selector("#btn-share[aria-pressed=true]")
    await video_playing(agent, "#remote-screen", "agent sees the outlet screen", frames=3)
    start = time.monotonic()

    async def sharing_at_full_rate() -> dict:
        rates = await _rates(outlet, agent)
        assert (rates["available_kbps"] >= AVAILABLE_KBPS
                and rates["camera_kbps"] >= CAMERA_SHARING_KBPS and rates["agent_camera_fps"] >= CAMERA_FPS
                and rates["agent_screen_fps"] >= SCREEN_FPS), rates
        return rates

    # A browser starts at ~300 kbit/s and ramps up; before the fix it fell to 60 kbit/s for good.
    rates = await wait_for(sharing_at_full_rate, timeout=25, interval=0,
                           what="camera and screen at full rate while sharing")
    print(f"\nsharing, {time.monotonic() - start:.1f} s: {rates}")
    # It stays there (the old spiral slid down within seconds and never came back).
    await outlet.wait_for_timeout(2000)
    rates = await sharing_at_full_rate()
    print(f"sharing, {time.monotonic() - start:.1f} s: {rates}")

    # Sharing stops: the camera gets the page's full allowance again.
    await outlet.click("#btn-share")
    await outlet.wait_for_selector("#btn-share[aria-pressed=false]")

    async def camera_at_full_rate() -> dict:
        rates = await _rates(outlet, agent)
        assert (rates["camera_kbps"] >= CAMERA_KBPS and rates["camera_fps"] >= CAMERA_FPS
                and rates["agent_camera_kbps"] >= CAMERA_KBPS and rates["agent_camera_fps"] >= CAMERA_FPS), rates
        return rates

    rates = await wait_for(camera_at_full_rate, timeout=25, interval=0, what=f"camera ≥ {CAMERA_KBPS} kbit/s at the agent")
    print(f"camera alone, {time.monotonic() - start:.1f} s: {rates}")

    await agent.click("#btn-end")
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    await assert_clean(outlet, outlet_log)
    await assert_clean(agent, agent_log)
