"""In the call, in Chromium: chat both ways, the agent's snapshot of the outlet camera, the
outlet's link reports reaching the agent's page, and the wallboard naming the call's outlet and item."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import assert_clean, login_page, open_page, screenshot
from tests.e2e.test_call_browser import agent_ready, outlet_ready, start_call_and_take, video_playing

pytestmark = [pytest.mark.browser, pytest.mark.slow]


# After the expected lines are there, how long a duplicate still has to show up.
CHAT_SETTLE_MS = 500


async def chat_lines(page, expected: list[str], side: str) -> None:
    """Wait until the chat log shows ``expected`` lines, then check no duplicate follows.

    A sender draws its own line when its ``chat:send`` ack (or the ``chat:message`` echo,
    deduplicated by id: chat.js) arrives, which may be after the other side already got the
    broadcast; so the count is waited for, not read at once. Then, after a short settle (a
    late echo drawn twice would land in it), the log must hold exactly those lines.
    """
    await page.wait_for_function(
        "(n) => document.querySelectorAll('#chat-log li').length >= n", arg=len(expected), timeout=10000
    )
    await page.wait_for_timeout(CHAT_SETTLE_MS)  # nothing to wait for: checking that nothing more comes
    lines = await page.locator("#chat-log li").all_text_contents()
    assert len(lines) == len(expected), f"{side} chat log: {lines}"
    for line, text in zip(lines, expected):
        assert text in line, f"{side} chat log: {lines}"


async def test_chat_snapshot_and_link_status(browser, live_server):
    board, board_log = await open_page(browser, live_server, "wallboard")
    await login_page(board, live_server, "super1", "/supervisor")
    await board.wait_for_selector("#conn-status[data-state=connected]")
    agent, agent_log = await agent_ready(browser, live_server)
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await start_call_and_take(outlet, agent)
    await video_playing(agent, "#remote-camera", "agent sees the outlet camera")
    # The wallboard's "calls in progress" names the outlet and the item (call:state to supervisors).
    await board.wait_for_function(
        "() => /花鸟村便民服务站/.test(document.querySelector('#call-rows').textContent)"
        " && /城乡居民养老保险参保登记/.test(document.querySelector('#call-rows').textContent)"
    )

    # Chat: what one side types, the other side reads (once, with no duplicate of its own line).
    await outlet.fill("#chat-input", "请问需要带户口本吗？")
    await outlet.press("#chat-input", "Enter")
    await agent.wait_for_function("() => document.querySelector('#chat-log').textContent.includes('需要带户口本')")
    await agent.fill("#chat-input", "需要，请拍一下户口本首页")
    await agent.press("#chat-input", "Enter")
    await outlet.wait_for_function("() => document.querySelector('#chat-log').textContent.includes('户口本首页')")
    await chat_lines(outlet, ["需要带户口本", "户口本首页"], "outlet")
    await chat_lines(agent, ["需要带户口本", "户口本首页"], "agent")

    # Snapshot: the agent's button stores a JPEG and the page shows it (it loads: naturalWidth > 0).
    await agent.click("#btn-snapshot")
    await agent.wait_for_function(
        "() => { const img = document.querySelector('#snapshots img'); return img && img.complete && img.naturalWidth > 0; }",
        timeout=25000,
    )
    src = await agent.get_attribute("#snapshots img", "src")
    assert src.startswith("/api/sessions/") and src.endswith("-camera.jpg")

    # Link reports: the agent's network indicator switches to the outlet's own figures (link:status).
    await agent.wait_for_selector("#quality[data-source=outlet]", timeout=15000)
    assert await agent.text_content("#quality")
    await screenshot(agent, "console-3-chat-snapshot")

    await agent.click("#btn-end")
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    await board.wait_for_function("() => document.querySelector('#tile-calls').textContent === '0'")
    await assert_clean(agent, agent_log)
    await assert_clean(outlet, outlet_log)
    await assert_clean(board, board_log)
