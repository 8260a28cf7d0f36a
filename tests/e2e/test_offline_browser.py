"""The outlet page loses its network mid-call (socket and all) and comes back into the same call."""

from __future__ import annotations

import pytest

from recordings.eventlog import load_events
from tests.e2e.conftest import assert_clean, screenshot
from tests.e2e.test_call_browser import _call_id, agent_ready, outlet_ready, start_call_and_take, video_playing
from tests.helpers import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def test_outlet_offline_and_back(browser, live_server):
    # On 1920×1080 screens, and with "take next" rather than a row's button.
    agent, agent_log = await agent_ready(browser, live_server, size="fhd")
    outlet, outlet_log = await outlet_ready(browser, live_server, size="fhd")
    await start_call_and_take(outlet, agent, button="#take-next")
    await video_playing(outlet, "#remote-video", "outlet sees the agent")
    await video_playing(agent, "#remote-camera", "agent sees the outlet")
    for page, name in ((outlet, "outlet"), (agent, "console")):
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= 1920
        await screenshot(page, f"{name}-in-call-fhd")
    session_id = await _call_id(live_server)

    await outlet.context.set_offline(True)
    await outlet.wait_for_selector("#conn-status[data-state=disconnected]", timeout=40000)
    await screenshot(outlet, "outlet-10-offline")
    await outlet.context.set_offline(False)
    await outlet.wait_for_selector("#conn-status[data-state=connected]", timeout=30000)
    await outlet.wait_for_selector("body[data-media=connected]", timeout=30000)
    await video_playing(outlet, "#remote-video", "outlet sees the agent after coming back")
    await video_playing(agent, "#remote-camera", "agent sees the outlet after it came back")
    assert await outlet.evaluate("() => document.body.dataset.stage") == "call"
    assert await _call_id(live_server) == session_id

    async def lost_and_back() -> bool:
        async with live_server.db.transaction() as session:
            kinds = [e.kind for e in await load_events(session, session_id)]
        assert "participant_lost" in kinds and "participant_returned" in kinds, kinds
        return True

    await wait_for(lost_and_back, timeout=10, interval=0.5, what="the outlet lost and back in the session log")
    await agent.click("#btn-end")
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    await assert_clean(outlet, outlet_log)
    await assert_clean(agent, agent_log)
