"""The outlet page, agent console and wallboard in Chromium: checks, search, ID check, rating, CSP."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import assert_clean, login_page, open_page, screenshot

pytestmark = [pytest.mark.browser]


async def test_outlet_precall_check_and_form(browser, live_server):
    page, log = await open_page(browser, live_server, "outlet")
    await login_page(page, live_server, "staff1", "/outlet")
    # Pre-call check: camera and mic preview, network round trips, screen-share permission.
    await page.wait_for_selector("#check-camera[data-result=ok]")
    await page.wait_for_function("() => document.querySelector('#check-video').videoWidth > 0")
    await page.wait_for_selector("#check-network[data-result=ok]", timeout=20000)
    assert "往返" in await page.text_content("#check-network .check-text")
    await page.click("#check-screen-run")
    await page.wait_for_selector("#check-screen[data-result=ok]")
    await screenshot(page, "outlet-1-precall-check-1280")
    await page.click("#check-continue")
    await page.wait_for_selector("#stage-form:not([hidden])")

    # Item search: high-frequency items listed; pinyin initials narrow the list.
    await page.wait_for_selector("#item-list .item-btn")
    await page.fill("#item-search", "ybc")
    await page.wait_for_function("() => document.querySelectorAll('#item-list .item-btn').length === 1")
    assert await page.text_content("#item-list .item-btn") == "医保参保登记"
    await page.fill("#item-search", "养老")
    await page.wait_for_function(
        "() => document.querySelector('#item-list .item-btn')?.textContent === '城乡居民养老保险参保登记'"
    )
    await page.fill("#item-search", "qqqq")
    await page.wait_for_selector("#item-list .item-empty")
    await page.fill("#item-search", "cx")
    await page.click("#item-list .item-btn")
    assert await page.text_content("#item-chosen") == "城乡居民养老保险参保登记"

    # Form validation: consent is required, the ID check digit is verified as you type.
    await page.fill("#applicant-name", "张三")
    await page.fill("#applicant-id", "110101199003074578")
    assert await page.get_attribute("#applicant-id-msg", "data-kind") == "error"
    await page.fill("#applicant-id", "11010519491231002X")
    assert await page.get_attribute("#applicant-id-msg", "data-kind") == "ok"
    await page.fill("#applicant-phone", "1380013")
    assert await page.get_attribute("#applicant-phone-msg", "data-kind") == "error"
    await page.fill("#applicant-phone", "13800138000")
    await page.click("#call-start")
    await page.wait_for_selector("#form-error:not([hidden])")
    assert "录音录像" in await page.text_content("#form-error")
    await screenshot(page, "outlet-2-form-1280")
    await assert_clean(page, log)


async def test_id_check_digit_in_the_browser(browser, live_server):
    page, log = await open_page(browser, live_server, "outlet")
    await login_page(page, live_server, "staff1", "/outlet")
    results = await page.evaluate(
        """async () => {
          const m = await import('/static/js/idcard.js');
          return ['11010519491231002X', '11010519491231002x', '110105194912310021', '110105194913310025',
                  '440524198001010013', '440524188001010010', '1101051949123100', '510102200002301234']
            .map((id) => m.isValidIdNumber(id));
        }"""
    )
    assert results == [True, True, False, False, True, False, False, False]
    await assert_clean(page, log)


@pytest.mark.parametrize("size", ["hd", "fhd"])
async def test_every_page_renders_without_csp_errors(browser, live_server, size):
    for username, path, name, probe in [
        ("staff1", "/outlet", "outlet", "#stage-check"),
        ("agent1", "/console", "console", "#queue-rows"),
        ("super1", "/supervisor", "wallboard", "#tile-waiting"),
    ]:
        page, log = await open_page(browser, live_server, name, size=size)
        await login_page(page, live_server, username, path)
        await page.wait_for_selector(probe, state="attached")
        # Nothing important is cut off: the main controls sit inside the viewport.
        width = await page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= {"hd": 1280, "fhd": 1920}[size], f"{name} scrolls sideways at {size}"
        await screenshot(page, f"{name}-{size}")
        await assert_clean(page, log)
        await page.context.close()


async def test_english_switch(browser, live_server):
    page, log = await open_page(browser, live_server, "outlet")
    await login_page(page, live_server, "staff1", "/outlet")
    await page.click("#lang-switch")
    await page.wait_for_selector("html[lang=en]")
    assert "Device check" in await page.text_content("#steps")
    await page.wait_for_selector("#check-camera[data-result=ok]")
    assert await page.text_content("#check-camera .check-text") == "Camera and microphone work"
    await assert_clean(page, log)


async def test_browser_modules_logic(browser, live_server):
    """Pure logic of the page modules, run in Chromium: ladder, quality, network verdict, search."""
    page, log = await open_page(browser, live_server, "outlet")
    await login_page(page, live_server, "staff1", "/outlet")
    result = await page.evaluate(
        """async () => {
          const { Ladder, qualityLevel } = await import('/static/js/peer.js');
          const { verdict } = await import('/static/js/netcheck.js');
          const { searchItems } = await import('/static/js/items.js');
          const { translator } = await import('/static/js/dom.js');
          let clock = 0;
          const ladder = new Ladder({ now: () => clock });
          const bad = { rtt: 600, lossIn: 20, lossOut: 20, availableOut: 50 };
          const good = { rtt: 20, lossIn: 0, lossOut: 0, availableOut: 2000 };
          const steps = [];
          for (let i = 0; i < 40; i += 1) { clock += 1000; const s = ladder.update(bad); if (s !== null) steps.push(s); }
          for (let i = 0; i < 80; i += 1) { clock += 1000; const s = ladder.update(good); if (s !== null) steps.push(s); }
          const items = [
            { id: 1, name: '城乡居民养老保险参保登记', initials: 'cxjmylbxcbdj', high_frequency: true },
            { id: 2, name: '低保申请', initials: 'dbsq', high_frequency: false },
            { id: 3, name: '医保参保登记', initials: 'ybcbdj', high_frequency: true },
          ];
          const t = translator({ q: '往返 %(rtt)s 毫秒，丢包 %(loss)s%%' });
          return {
            steps,
            levels: [qualityLevel(good), qualityLevel({ rtt: 200, lossIn: 0 }), qualityLevel({ rtt: 350 }), qualityLevel(bad)],
            verdicts: [verdict(30, 0), verdict(200, 0), verdict(500, 0), verdict(null, 1)],
            search: ['cbdj', '参保', 'db', ''].map((q) => searchItems(items, q).map((i) => i.id)),
            text: t('q', { rtt: 12, loss: 3 }),
          };
        }"""
    )
    assert result["steps"] == [1, 2, 3, 2, 1, 0], "down one step at a time to audio only, then back up"
    assert result["levels"] == ["good", "fair", "poor", "bad"]
    assert result["verdicts"] == ["good", "fair", "poor", "fail"]
    assert result["search"] == [[1, 3], [1, 3], [2], [1, 2, 3]]
    assert result["text"] == "往返 12 毫秒，丢包 3%"
    await assert_clean(page, log)
