"""Closed desk → callback request → the agent calls the outlet back; the wallboard follows live."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cloudhall.identities import Department
from tests.e2e.conftest import assert_clean, login_page, open_page, screenshot
from tests.e2e.test_call_browser import agent_ready, outlet_ready, video_playing

pytestmark = [pytest.mark.browser, pytest.mark.slow]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


async def test_callback_and_wallboard(browser, live_server):
    # The medical-insurance desk opens only tomorrow (UTC): closed now.
    tomorrow = WEEKDAYS[(datetime.now(timezone.utc) + timedelta(days=1)).weekday()]
    async with live_server.db.transaction() as session:
        dept = await session.get(Department, live_server.world.departments["MED"].id)
        dept.working_hours = {"tz": "UTC", tomorrow: [["08:00", "17:00"]]}

    board, board_log = await open_page(browser, live_server, "wallboard")
    await login_page(board, live_server, "super1", "/supervisor")
    await board.wait_for_selector("#conn-status[data-state=connected]")
    agent, agent_log = await agent_ready(browser, live_server)
    await board.wait_for_function("() => document.querySelector('#tile-available').textContent === '1'")

    # Outside hours: the outlet is told so and leaves a callback request.
    outlet, outlet_log = await outlet_ready(browser, live_server, item="ybcbdj")
    await outlet.click("#call-start")
    await outlet.wait_for_selector("#callback-box:not([hidden])")
    assert "不在办公时间" in await outlet.text_content("#callback-reason")
    await outlet.fill("#callback-when", "明天上午")
    await screenshot(outlet, "outlet-8-callback")
    await outlet.click("#callback-send")
    await outlet.wait_for_function("() => document.querySelector('#wait-position').textContent.includes('回呼')")
    await agent.wait_for_selector("#callback-rows tr")
    row = await agent.text_content("#callback-rows tr")
    assert "花鸟村便民服务站" in row and "医保参保登记" in row and "明天上午" in row

    # The agent calls back: it rings at the outlet, which answers; media flows both ways.
    await outlet.wait_for_selector("#stage-form:not([hidden])", timeout=10000)
    await agent.click("#callback-rows .call-back")
    await outlet.wait_for_selector("#ring-box:not([hidden])")
    await screenshot(outlet, "outlet-9-callback-ringing")
    await board.wait_for_function("() => document.querySelector('#tile-calls').textContent === '1'")
    await screenshot(board, "wallboard-1-live")
    await outlet.click("#ring-accept")
    await outlet.wait_for_selector("#stage-call:not([hidden])")
    await agent.wait_for_selector("#view-call:not([hidden])")
    await video_playing(outlet, "#remote-video", "outlet sees the agent on the callback")
    await video_playing(agent, "#remote-camera", "agent sees the outlet on the callback")
    await agent.click("#btn-end")
    await agent.wait_for_selector("#callbacks-empty:not([hidden])")  # answered: the request is settled
    await outlet.wait_for_selector("#stage-rating:not([hidden])")
    await board.wait_for_function("() => document.querySelector('#tile-calls').textContent === '0'")
    for page, log in ((outlet, outlet_log), (agent, agent_log), (board, board_log)):
        await assert_clean(page, log)


async def test_wallboard_counts_waiting_calls(browser, live_server):
    board, board_log = await open_page(browser, live_server, "wallboard", size="fhd")
    await login_page(board, live_server, "super1", "/supervisor")
    await board.wait_for_selector("#conn-status[data-state=connected]")
    outlet, outlet_log = await outlet_ready(browser, live_server)
    await outlet.click("#call-start")
    await outlet.wait_for_selector("#stage-waiting:not([hidden])")
    # Nobody of the desk is online: the outlet may leave a callback while it waits.
    await outlet.wait_for_selector("#callback-box:not([hidden])")
    await board.wait_for_function("() => document.querySelector('#tile-waiting').textContent === '1'")
    await board.wait_for_selector("#waiting-rows tr.priority")
    assert "城乡居民养老保险参保登记" in await board.text_content("#waiting-rows tr")
    await board.wait_for_function("() => document.querySelector('#tile-oldest').textContent !== '—'")
    await screenshot(board, "wallboard-2-waiting-fhd")
    await outlet.click("#call-cancel")
    await board.wait_for_function("() => document.querySelector('#tile-waiting').textContent === '0'")
    await assert_clean(outlet, outlet_log)
    await assert_clean(board, board_log)
