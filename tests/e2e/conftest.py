"""Browser end-to-end fixtures: the real app on 127.0.0.1:<free port>, Debian's Chromium via Playwright.

Chromium runs headless with a fake camera and microphone; getDisplayMedia returns a fake
screen with no picker (BROWSER-TESTS.md). Every page records Content-Security-Policy
violations and uncaught errors; :func:`assert_clean` fails a test on any of them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cloudhall.app import create_app
from cloudhall.catalog import ServiceItem
from cloudhall.db import Database
from tests.conftest import ARTIFACTS, make_settings
from tests.factories import PASSWORD, World
from tests.helpers import CHROMIUM, require_chromium

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
]
# Test instrumentation only (the app defines no globals): record CSP violations, and keep
# every RTCPeerConnection the page creates so a test can read its stats or cut it.
INIT_SCRIPT = """
(() => {
  const seen = [];
  Object.defineProperty(window, "__cspViolations", { value: seen });
  document.addEventListener("securitypolicyviolation", (e) => {
    seen.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`);
  });
  const pcs = [];
  Object.defineProperty(window, "__pcs", { value: pcs });
  const Native = window.RTCPeerConnection;
  if (Native) {
    window.RTCPeerConnection = function (...args) { const pc = new Native(...args); pcs.push(pc); return pc; };
    window.RTCPeerConnection.prototype = Native.prototype;
    Object.setPrototypeOf(window.RTCPeerConnection, Native);
  }
})();
"""
SIZES = {"hd": {"width": 1280, "height": 720}, "fhd": {"width": 1920, "height": 1080}}
E2E_ARTIFACTS = ARTIFACTS / "e2e"


@dataclass
class LiveServer:
    url: str
    app: web.Application
    db: Database
    world: World


@dataclass
class PageLog:
    """What a page said that a test must not ignore."""

    name: str
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


@pytest.fixture
async def live_server(sqlite_database: Database, world: World, tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with sqlite_database.transaction() as session:
        for code, initials in (("SI-001", "cxjmylbxcbdj"), ("MI-001", "ybcbdj")):
            item = await session.get(ServiceItem, world.items[code].id)
            item.initials = initials
    settings = make_settings(tmp_path, sqlite_database.url)
    app = create_app(settings, database=sqlite_database)
    runner = web.AppRunner(app, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", app, sqlite_database, world)
    finally:
        await runner.cleanup()


@pytest.fixture
async def browser(live_server: LiveServer) -> AsyncIterator[Any]:
    """Chromium, closed before the server stops (so no open connection delays the shutdown)."""
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        instance = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30000)
        try:
            yield instance
        finally:
            await instance.close()


async def open_page(browser: Any, server: LiveServer, name: str, size: str = "hd", locale: str = "zh-CN") -> tuple[Any, PageLog]:
    """A fresh context (its own cookies: one user) with a page that records errors."""
    context = await browser.new_context(viewport=SIZES[size], locale=locale, permissions=["camera", "microphone"])
    context.set_default_timeout(15000)
    await context.add_init_script(INIT_SCRIPT)
    page = await context.new_page()
    log = PageLog(name)
    page.on("pageerror", lambda exc: log.errors.append(f"uncaught: {exc}"))

    def on_console(message: Any) -> None:
        text = message.text
        log.console.append(f"{message.type}: {text}")
        if message.type == "error" and re.search(r"Content.Security.Policy|Refused to", text):
            log.errors.append(f"CSP: {text}")

    page.on("console", on_console)
    return page, log


async def login_page(page: Any, server: LiveServer, username: str, expect_path: str) -> None:
    await page.goto(server.url + "/login")
    await page.fill("input[name=username]", username)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**{expect_path}", timeout=15000)


async def assert_clean(page: Any, log: PageLog) -> None:
    """Fail on CSP violations or uncaught errors the page reported."""
    violations = await page.evaluate("() => Array.from(window.__cspViolations || [])")
    problems = log.errors + [f"CSP: {v}" for v in violations]
    assert not problems, f"{log.name} reported: {problems}"


async def screenshot(page: Any, name: str) -> Path:
    E2E_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = E2E_ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path))
    return path
