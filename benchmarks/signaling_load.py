"""Signalling load on one node: N outlets and M agents over real Socket.IO sockets on loopback.

Not part of CI. Starts ``cloudhall serve`` (embedded mode, SQLite in a temporary folder)
and, for comparison in the same run, a bare python-socketio echo server, each in its own
process; the clients run in child processes (``--client-processes`` for the agents and as
many for the outlets), so that one client process's CPU does not cap the figures. Prints connected clients, calls queued and
answered per second, and queue-update latency p50/p99 (from an outlet's ``call:start``
until the first agent sees that call in a ``queue:update``), next to the echo server's
connect rate and round-trip p50/p99 with the same number of clients.

    .venv/bin/python benchmarks/signaling_load.py --outlets 1000 --agents 100
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import socketio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloudhall.auth import SESSION_COOKIE, LoginSession, token_digest  # noqa: E402
from cloudhall.catalog import ServiceItem  # noqa: E402
from cloudhall.db import Database, utcnow  # noqa: E402
from cloudhall.identities import Department, Outlet, Role, User  # noqa: E402
from cloudhall.migrate import upgrade  # noqa: E402
from cloudhall.settings import DatabaseSettings  # noqa: E402

SECRET = "b" * 48
CONNECT_BATCH = 50


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the echo baseline ---------------------------------------------------------------------


def run_echo_server(port: int) -> None:
    from aiohttp import web

    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=None)
    app = web.Application()
    sio.attach(app)

    @sio.on("echo")
    async def echo(sid: str, data: Any) -> Any:
        return data

    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not start")


async def connect_all(url: str, headers: list[dict[str, str]]) -> tuple[list[socketio.AsyncClient], float]:
    clients: list[socketio.AsyncClient] = []
    started = time.perf_counter()
    for i in range(0, len(headers), CONNECT_BATCH):
        batch = [socketio.AsyncClient(reconnection=False) for _ in headers[i : i + CONNECT_BATCH]]
        await asyncio.gather(
            *(c.connect(url, headers=h, transports=["websocket"], wait_timeout=30)
              for c, h in zip(batch, headers[i : i + CONNECT_BATCH]))
        )
        clients.extend(batch)
    return clients, time.perf_counter() - started


async def echo_benchmark(count: int, rounds: int, processes: int) -> dict[str, float]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--echo-server", str(port)])
    try:
        wait_listening(port, process)
        url = f"http://127.0.0.1:{port}"
        shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
        workers = [Worker("echo", url, [{}] * share, 0) for share in shares]
        connected = [w.result("connected") for w in workers]
        for w in workers:
            w.send("echo", rounds)
        echoed = [w.result("echo") for w in workers]
        for w in workers:
            w.stop()
        rtts = [r for _, rs, _ in echoed for r in rs]
        return {
            "clients": sum(c[1] for c in connected),
            "connect_per_s": sum(c[1] for c in connected) / max(c[2] for c in connected),
            "messages_per_s": len(rtts) / max(e[2] for e in echoed),
            "rtt_p50_ms": pct(rtts, 0.5) * 1000,
            "rtt_p99_ms": pct(rtts, 0.99) * 1000,
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


# -- client processes ----------------------------------------------------------------------


class Worker:
    """A child process holding a share of the clients, driven by commands (one client core each)."""

    def __init__(self, kind: str, url: str, headers: list[dict[str, str]], item_id: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.commands = ctx.Queue()
        self.results = ctx.Queue()
        self.process = ctx.Process(
            target=worker_main, args=(kind, url, headers, item_id, self.commands, self.results), daemon=True
        )
        self.process.start()

    def send(self, *command: Any) -> None:
        self.commands.put(command)

    def result(self, name: str, timeout: float = 600) -> Any:
        value = self.results.get(timeout=timeout)
        if value[0] != name:
            raise SystemExit(f"client worker answered {value[0]} ({value[1:]}) instead of {name}")
        return value

    def stop(self) -> None:
        self.send("stop")
        self.result("stopped")
        self.process.join(timeout=30)


def worker_main(kind: str, url: str, headers: list[dict[str, str]], item_id: int, commands: Any, results: Any) -> None:
    raise_fd_limit()
    try:
        asyncio.run(_worker(kind, url, headers, item_id, commands, results))
    except BaseException as exc:  # report, so the parent does not wait forever
        results.put(("failed", repr(exc)))
        raise


async def _worker(kind: str, url: str, headers: list[dict[str, str]], item_id: int, commands: Any, results: Any) -> None:
    clients, elapsed = await connect_all(url, headers)
    results.put(("connected", len(clients), elapsed))
    seen_at: dict[str, float] = {}

    def on_update(data: dict[str, Any]) -> None:
        now = time.time()
        for entry in data["calls"]:
            seen_at.setdefault(entry["id"], now)

    if kind == "agents":
        for client in clients:
            client.on("queue:update", on_update)
    sent_at: dict[str, float] = {}

    async def start(client: socketio.AsyncClient, i: int) -> None:
        t = time.time()
        ack = await client.call("call:start", {"item_id": item_id, "applicant": {"name": f"申请人{i}"}}, timeout=300)
        if "error" in ack:
            raise SystemExit(f"call:start failed: {ack}")
        sent_at[ack["call"]["id"]] = t

    answered = 0

    async def agent_loop(client: socketio.AsyncClient) -> None:
        nonlocal answered
        while True:
            ack = await client.call("queue:take", {}, timeout=300)
            if "error" in ack:
                if ack["error"]["code"] == "queue_empty":
                    return
                continue
            call_id = ack["call"]["id"]
            for event in ("call:accept", "call:connected", "call:end"):
                result = await client.call(event, {"call_id": call_id}, timeout=300)
                if "error" in result:
                    raise SystemExit(f"{event} failed: {result}")
            answered += 1

    loop = asyncio.get_running_loop()
    while True:
        command, *args = await loop.run_in_executor(None, commands.get)
        if command == "paced":  # the first calls at a steady pace (latency sample)
            count, pace = args
            tasks = []
            for i in range(count):
                tasks.append(asyncio.create_task(start(clients[i], i)))
                await asyncio.sleep(1 / pace)
            await asyncio.gather(*tasks)
            results.put(("paced", dict(sent_at)))
        elif command == "burst":  # the rest all at once (throughput)
            first = args[0]
            t = time.time()
            await asyncio.gather(*(start(c, i) for i, c in enumerate(clients) if i >= first))
            results.put(("burst", len(clients) - first, time.time() - t))
        elif command == "seen":
            results.put(("seen", dict(seen_at)))
        elif command == "answer":
            t = time.time()
            await asyncio.gather(*(agent_loop(c) for c in clients))
            results.put(("answered", answered, time.time() - t))
        elif command == "echo":
            rtts: list[float] = []

            async def one(client: socketio.AsyncClient) -> None:
                for _ in range(args[0]):
                    t0 = time.perf_counter()
                    await client.call("echo", {"x": 1}, timeout=60)
                    rtts.append(time.perf_counter() - t0)

            t = time.time()
            await asyncio.gather(*(one(c) for c in clients))
            results.put(("echo", rtts, time.time() - t))
        elif command == "stop":
            await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)
            results.put(("stopped",))
            return


# -- the signalling benchmark --------------------------------------------------------------


async def populate(db_url: str, outlets: int, agents: int) -> tuple[int, dict[str, str], list[str], list[str]]:
    db = Database(DatabaseSettings(url=db_url))
    tokens: dict[str, str] = {}
    try:
        async with db.transaction() as session:
            dept = Department(code="SOC", name="社保窗口", county="东岛县", working_hours={})
            session.add(dept)
            await session.flush()
            item = ServiceItem(code="SI-001", name="城乡居民养老保险参保登记", department_id=dept.id, materials=[])
            session.add(item)
            staff_names, agent_names = [], []
            for i in range(outlets):
                outlet = Outlet(code=f"O{i}", name=f"{i}号便民服务站", island=f"岛{i % 30}", town="乡", county="东岛县")
                session.add(outlet)
                await session.flush()
                session.add(User(username=f"s{i}", display_name=f"s{i}", password_hash="x", role=Role.OUTLET_STAFF.value,
                                 outlet_id=outlet.id, county="东岛县"))
                staff_names.append(f"s{i}")
            for i in range(agents):
                session.add(User(username=f"a{i}", display_name=f"a{i}", password_hash="x", role=Role.AGENT.value,
                                 county="东岛县", departments=[dept]))
                agent_names.append(f"a{i}")
            await session.flush()
            from sqlalchemy import select

            for user in await session.scalars(select(User)):
                token = secrets.token_urlsafe(24)
                tokens[user.username] = token
                session.add(LoginSession(token_hash=token_digest(token), user_id=user.id, csrf_token="x",
                                         expires_at=utcnow() + timedelta(hours=2)))
            await session.flush()
            return item.id, tokens, staff_names, agent_names
    finally:
        await db.dispose()


async def signaling_benchmark(outlets: int, agents: int, work: Path, pace: float, processes: int) -> dict[str, float]:
    db_url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    await asyncio.to_thread(upgrade, db_url)
    item_id, tokens, staff_names, agent_names = await populate(db_url, outlets, agents)
    port = free_port()
    env = {
        **os.environ,
        "CLOUDHALL_DATABASE_URL": db_url,
        "CLOUDHALL_PORT": str(port),
        "CLOUDHALL_SECRET_KEY": SECRET,
        "CLOUDHALL_DATA_DIR": str(work / "data"),
        "CLOUDHALL_LOG_LEVEL": "WARNING",
        "CLOUDHALL_RING_TIMEOUT_SECONDS": "60",
        "CLOUDHALL_QUEUE_LIMIT_SECONDS": "3600",
    }
    process = subprocess.Popen([sys.executable, "-m", "cloudhall.cli", "serve"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    server = psutil.Process(process.pid)
    cpu: dict[str, float] = {}

    def cpu_mark() -> tuple[float, float]:
        times = server.cpu_times()
        return times.user + times.system, time.perf_counter()

    def cpu_since(name: str, mark: tuple[float, float]) -> None:
        used, wall = cpu_mark()
        cpu[name] = (used - mark[0]) / max(wall - mark[1], 1e-9) * 100

    try:
        wait_listening(port, process)
        header = lambda name: {"Cookie": f"{SESSION_COOKIE}={tokens[name]}"}  # noqa: E731
        agent_ws = [
            Worker("agents", url, [header(n) for n in agent_names[i::processes]], item_id) for i in range(processes)
        ]
        agent_connected = [w.result("connected") for w in agent_ws]
        agent_count = sum(c[1] for c in agent_connected)
        agent_connect = max(c[2] for c in agent_connected)
        agents_w = agent_ws[0]  # every agent sees every update: one process's view gives the latency
        outlet_ws = [
            Worker("outlets", url, [header(n) for n in staff_names[i::processes]], item_id) for i in range(processes)
        ]
        outlet_connected = [w.result("connected") for w in outlet_ws]
        connected = agent_count + sum(c[1] for c in outlet_connected)
        connect_rate = connected / (agent_connect + max(c[2] for c in outlet_connected))

        # Phase 1a: the first calls arrive at a steady pace; their queue-update latency is
        # measured (waiting lists carry the first 100 calls, so at most 100 samples).
        paced = min(100, len(staff_names[0::processes]))
        outlet_ws[0].send("paced", paced, pace)
        _, sent_at = outlet_ws[0].result("paced")
        deadline = time.time() + 30
        seen_at: dict[str, float] = {}
        while time.time() < deadline:
            agents_w.send("seen")
            _, seen_at = agents_w.result("seen")
            if all(c in seen_at for c in sent_at):
                break
            time.sleep(0.2)
        latencies = [seen_at[c] - sent_at[c] for c in sent_at if c in seen_at]
        # Phase 1b: every other outlet calls at once: queueing throughput.
        mark = cpu_mark()
        for i, w in enumerate(outlet_ws):
            w.send("burst", paced if i == 0 else 0)
        bursts = [w.result("burst") for w in outlet_ws]
        cpu_since("queue", mark)
        queued_rate = sum(b[1] for b in bursts) / max(b[2] for b in bursts)

        # Phase 2: agents answer every call (take next, accept, connected, end) as fast as they can.
        mark = cpu_mark()
        for w in agent_ws:
            w.send("answer")
        done = [w.result("answered") for w in agent_ws]
        cpu_since("answer", mark)
        answered = sum(d[1] for d in done)
        answer_rate = answered / max(d[2] for d in done)
        for w in [*agent_ws, *outlet_ws]:
            w.stop()
        return {
            "clients": connected,
            "connect_per_s": connect_rate,
            "queued_per_s": queued_rate,
            "answered": answered,
            "answered_per_s": answer_rate,
            "update_p50_ms": pct(latencies, 0.5) * 1000,
            "update_p99_ms": pct(latencies, 0.99) * 1000,
            "update_samples": len(latencies),
            "cpu_queue": cpu.get("queue", float("nan")),
            "cpu_answer": cpu.get("answer", float("nan")),
        }
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp:
        sig = await signaling_benchmark(args.outlets, args.agents, Path(tmp), args.pace, args.client_processes)
    echo = await echo_benchmark(args.outlets + args.agents, args.echo_rounds, 2 * args.client_processes)
    print(f"signalling, one node, {args.outlets} outlets + {args.agents} agents (clients in {2 * args.client_processes} processes):")
    print(f"  connected clients          {sig['clients']}  ({sig['connect_per_s']:.0f} connects/s)")
    print(f"  calls queued               {sig['queued_per_s']:.0f} /s  (the outlets after the first 100, all at once;"
          f" server CPU {sig['cpu_queue']:.0f} %)")
    print(f"  calls answered             {sig['answered_per_s']:.0f} /s  ({sig['answered']} take+accept+connected+end;"
          f" server CPU {sig['cpu_answer']:.0f} %)")
    print(f"  queue-update latency       p50 {sig['update_p50_ms']:.1f} ms, p99 {sig['update_p99_ms']:.1f} ms "
          f"({sig['update_samples']} calls arriving at {args.pace:.0f}/s)")
    print(f"bare python-socketio echo server, {echo['clients']} clients in {2 * args.client_processes} processes:")
    print(f"  connected clients          {echo['clients']}  ({echo['connect_per_s']:.0f} connects/s)")
    print(f"  echo round trips           {echo['messages_per_s']:.0f} /s, p50 {echo['rtt_p50_ms']:.1f} ms, "
          f"p99 {echo['rtt_p99_ms']:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outlets", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--echo-rounds", type=int, default=5)
    parser.add_argument("--client-processes", type=int, default=2, help="processes for the outlets' clients")
    parser.add_argument("--pace", type=float, default=20.0, help="calls/s for the latency sample")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.echo_server:
        run_echo_server(ns.echo_server)
    else:
        asyncio.run(main(ns))
