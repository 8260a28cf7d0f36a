"""``cloudhall serve`` for real: the console script in a subprocess, as ``make run`` starts it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from cloudhall.identities import Role
from cloudhall.seed import DEMO_PASSWORDS
from tests.helpers import wait_for

HOMES = {"baisha": "/outlet", "agent_soc": "/console", "supervisor": "/supervisor", "admin": "/admin"}
ROLES = {
    "baisha": Role.OUTLET_STAFF,
    "agent_soc": Role.AGENT,
    "supervisor": Role.SUPERVISOR,
    "admin": Role.ADMIN,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script() -> str:
    found = Path(sys.executable).parent / "cloudhall"
    return str(found) if found.exists() else shutil.which("cloudhall") or "cloudhall"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDHALL_")}
    port = free_port()
    env.update(CLOUDHALL_DATA_DIR=str(tmp_path / "var"), CLOUDHALL_PORT=str(port), CLOUDHALL_LOG_LEVEL="INFO")
    script = console_script()
    for command in (["db", "upgrade"], ["seed"]):
        done = subprocess.run(
            [script, *command], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    log = open(tmp_path / "serve.log", "w+")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [script, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        assert "Traceback" not in output, output


async def test_serve_health_and_every_demo_role_lands_home(server: tuple[str, subprocess.Popen[str]]) -> None:
    base, process = server
    async with aiohttp.ClientSession(base) as http:

        async def healthy() -> bool:
            if process.poll() is not None:  # not an AssertionError: wait_for must stop at once
                raise RuntimeError(f"cloudhall serve exited with status {process.returncode}")
            try:
                async with http.get("/healthz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(healthy, timeout=30, what="GET /healthz")
        async with http.get("/readyz") as response:
            body = await response.json()
            assert response.status == 200 and body["checks"]["database"] == "ok"

    for username, home in HOMES.items():
        # Unsafe jar: the server is an IP address, whose cookies aiohttp otherwise drops.
        async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            html = await (await browser.get("/login")).text()
            token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
            password = DEMO_PASSWORDS[ROLES[username]]
            async with browser.post(
                "/login", data={"username": username, "password": password, "csrf_token": token}
            ) as response:
                assert response.status == 200, f"{username}: {response.status}"
                assert response.url.path == home, f"{username} landed on {response.url.path}"
            async with browser.get("/api/me") as me:
                assert (await me.json())["role"] == ROLES[username].value
