"""Two server processes (``cloudhall serve``) on real Redis and PostgreSQL serve one county.

Outlet on node A, agent on node B; 50 agents on both nodes race for 20 calls; media offers
reach the node that owns the call's media; a node killed with SIGKILL loses no call: the
other node's timers take over its ring timeouts and its outlets resume on the other node.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from sqlalchemy import func, select

from cloudhall.auth import AuthService, LoginSession, token_digest
from cloudhall.db import Database, utcnow
from cloudhall.identities import Outlet, Role, User
from cloudhall.settings import DatabaseSettings, HttpSettings
from recordings.eventlog import verify_chain
from recordings.models import SessionEvent
from tests.conftest import _truncate_postgres
from tests.factories import _HASH, PASSWORD, World, build_world
from tests.helpers import REDIS_URL, require_postgres, require_redis
from tests.integration.signaling_support import Peer, clear_prefix, new_prefix

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SECRET = "m" * 48
RACE_OUTLETS = 20
RACE_AGENTS = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    url: str
    process: subprocess.Popen


@dataclass
class Cluster:
    db_url: str
    prefix: str
    world: World
    nodes: dict[str, Node]
    race_outlet_staff: list[str]
    race_agents: list[str]
    race_tokens: dict[str, str]

    async def token(self, db: Database, username: str) -> str:
        """A login cookie for ``username``: through the real login for the named users; for the
        seventy race users a login session row is written directly (argon2 verification of
        seventy passwords would dominate the test)."""
        if username in self.race_tokens:
            return self.race_tokens[username]
        token, _ = await AuthService(db, HttpSettings(secret_key=SECRET)).login(username, PASSWORD, "127.0.0.1")
        return token

    async def peer(self, db: Database, username: str, node: str) -> Peer:
        peer = Peer(f"{username}@{node}")
        await peer.connect(self.nodes[node].url, await self.token(db, username))
        return peer


def start_node(name: str, db_url: str, prefix: str, tmp: Path) -> Node:
    port = free_port()
    env = {
        **os.environ,
        "CLOUDHALL_DATABASE_URL": db_url,
        "CLOUDHALL_REDIS_URL": REDIS_URL,
        "CLOUDHALL_REDIS_PREFIX": prefix,
        "CLOUDHALL_PORT": str(port),
        "CLOUDHALL_SECRET_KEY": SECRET,
        "CLOUDHALL_DATA_DIR": str(tmp / name),
        "CLOUDHALL_NODE_ID": name,
        "CLOUDHALL_RING_TIMEOUT_SECONDS": "3",
        "CLOUDHALL_RECONNECT_GRACE_SECONDS": "20",
        "CLOUDHALL_LOG_LEVEL": "WARNING",
    }
    log = open(tmp / f"{name}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "cloudhall.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    return Node(name, f"http://127.0.0.1:{port}", process)


def wait_ready(node: Node, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    host, port = node.url.rsplit(":", 1)
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise AssertionError(f"node {node.name} exited with {node.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)  # a subprocess start, polled: there is no event to wait on
    raise AssertionError(f"node {node.name} did not listen within {timeout}s")


async def populate(db_url: str) -> tuple[World, list[str], list[str], dict[str, str]]:
    db = Database(DatabaseSettings(url=db_url))
    try:
        await _truncate_postgres(db)
        world = await build_world(db)
        soc = world.departments["SOC"]
        staff, agents = [], []
        async with db.transaction() as session:
            soc = await session.get(type(soc), soc.id)
            for i in range(RACE_OUTLETS):
                outlet = Outlet(code=f"R{i}", name=f"竞速{i}号站", island="花鸟岛", town="花鸟乡", county="东岛县")
                session.add(outlet)
                await session.flush()
                session.add(User(username=f"rstaff{i}", display_name=f"rstaff{i}", password_hash=_HASH,
                                 role=Role.OUTLET_STAFF.value, outlet_id=outlet.id, county="东岛县"))
                staff.append(f"rstaff{i}")
            for i in range(RACE_AGENTS):
                session.add(User(username=f"ragent{i}", display_name=f"ragent{i}", password_hash=_HASH,
                                 role=Role.AGENT.value, county="东岛县", departments=[soc]))
                agents.append(f"ragent{i}")
        tokens = {}
        async with db.transaction() as session:
            users = await session.scalars(select(User).where(User.username.in_(staff + agents)))
            for user in users:
                tokens[user.username] = secrets.token_urlsafe(32)
                session.add(LoginSession(token_hash=token_digest(tokens[user.username]), user_id=user.id,
                                         csrf_token=secrets.token_urlsafe(16),
                                         expires_at=utcnow() + timedelta(hours=1)))
        return world, staff, agents, tokens
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def cluster(postgres_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_redis()
    require_postgres()
    tmp = tmp_path_factory.mktemp("multinode")
    prefix = new_prefix()
    world, staff, agents, tokens = asyncio.run(populate(postgres_database))
    nodes = {name: start_node(name, postgres_database, prefix, tmp) for name in ("nodeA", "nodeB")}
    try:
        for node in nodes.values():
            wait_ready(node)
        yield Cluster(postgres_database, prefix, world, nodes, staff, agents, tokens)
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in nodes.values():
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
        asyncio.run(clear_prefix(prefix))


@pytest.fixture
async def pg(cluster: Cluster) -> Database:
    db = Database(DatabaseSettings(url=cluster.db_url))
    yield db
    await db.dispose()


def start(world: World, **extra) -> dict:
    return {"item_id": world.items["SI-001"].id, "applicant": {"name": "李四"}, **extra}


async def test_outlet_on_one_node_and_agent_on_the_other_complete_a_call(cluster: Cluster, pg: Database) -> None:
    outlet = await cluster.peer(pg, "staff1", "nodeA")
    agent = await cluster.peer(pg, "agent2", "nodeB")
    try:
        call_id = (await outlet.ok("call:start", start(cluster.world)))["call"]["id"]
        await agent.wait("queue:update", lambda d: any(c["id"] == call_id for c in d["calls"]))
        await agent.ok("queue:take", {"call_id": call_id})
        await agent.ok("call:accept", {"call_id": call_id})
        await outlet.wait_call("connecting", id=call_id)

        # Media: the first offer places the call's media on its node; the other side's
        # offer, arriving at the other node, is forwarded there and answered by it.
        answers = []
        for peer, role in ((outlet, "remote:camera"), (agent, "remote:camera")):
            pc = RTCPeerConnection()
            try:
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                answers.append(await peer.ok("media:offer", {
                    "call_id": call_id, "sdp": pc.localDescription.sdp, "tracks": {"0": role}
                }))
            finally:
                await pc.close()
        assert [a["node"] for a in answers] == ["nodeA", "nodeA"]
        assert all(a["type"] == "answer" and a["sdp"].startswith("v=0") for a in answers)

        await agent.ok("call:connected", {"call_id": call_id})
        await outlet.wait_call("in_call", id=call_id)
        await outlet.ok("call:end", {"call_id": call_id})
        await agent.wait_call("ended", id=call_id)
    finally:
        await outlet.close()
        await agent.close()
    async with pg.transaction() as session:
        assert (await verify_chain(session, call_id)).ok


async def test_fifty_agents_on_two_nodes_race_for_twenty_calls(cluster: Cluster, pg: Database) -> None:
    nodes = ["nodeA", "nodeB"]
    outlets = await asyncio.gather(
        *(cluster.peer(pg, name, nodes[i % 2]) for i, name in enumerate(cluster.race_outlet_staff))
    )
    agents = await asyncio.gather(
        *(cluster.peer(pg, name, nodes[i % 2]) for i, name in enumerate(cluster.race_agents))
    )
    try:
        started = await asyncio.gather(*(o.ok("call:start", start(cluster.world)) for o in outlets))
        call_ids = {s["call"]["id"] for s in started}
        assert len(call_ids) == RACE_OUTLETS
        # every agent sees all twenty before anyone presses
        for agent in agents:
            await agent.wait("queue:update", lambda d: len(d["calls"]) == RACE_OUTLETS)
        results = await asyncio.gather(*(a.call("queue:take", {}) for a in agents))
        won = [r["call"]["id"] for r in results if "error" not in r]
        lost = [r["error"]["code"] for r in results if "error" in r]
        assert sorted(won) == sorted(call_ids), "each call claimed exactly once, none lost"
        assert len(lost) == RACE_AGENTS - RACE_OUTLETS and set(lost) <= {"queue_empty", "taken"}
        agents_won = [a for a, r in zip(agents, results) if "error" not in r]
        await asyncio.gather(*(a.ok("call:accept", {"call_id": r["call"]["id"]})
                               for a, r in zip(agents, results) if "error" not in r))
        assert len(agents_won) == RACE_OUTLETS
    finally:
        await asyncio.gather(*(p.close() for p in outlets + agents))
    async with pg.transaction() as session:
        for call_id in call_ids:
            offered = await session.scalar(
                select(func.count()).where(SessionEvent.session_id == call_id, SessionEvent.kind == "call_offered")
            )
            assert offered == 1, f"call {call_id} offered {offered} times"
            report = await verify_chain(session, call_id)
            assert report.ok, report.problems


async def test_a_killed_node_loses_no_call(cluster: Cluster, pg: Database) -> None:
    # staff2's call is queued through node A; agent1 (node A) takes staff1's call and it rings there.
    waiting_outlet = await cluster.peer(pg, "staff2", "nodeA")
    ringing_outlet = await cluster.peer(pg, "staff1", "nodeB")
    doomed_agent = await cluster.peer(pg, "agent1", "nodeA")
    agent = await cluster.peer(pg, "agent2", "nodeB")
    try:
        ringing = (await ringing_outlet.ok("call:start", start(cluster.world)))["call"]["id"]
        waiting = (await waiting_outlet.ok("call:start", start(cluster.world)))["call"]["id"]
        await doomed_agent.ok("presence:set", {"state": "away"})
        await doomed_agent.ok("queue:take", {"call_id": ringing})

        cluster.nodes["nodeA"].process.send_signal(signal.SIGKILL)
        cluster.nodes["nodeA"].process.wait(timeout=10)

        # Node B's timers own node A's ring timeout: the call goes back to the front.
        back = await ringing_outlet.wait_call("queued", id=ringing, front=True, timeout=15)
        assert back["agent"] is None
        # The outlet whose node died reconnects to node B and finds its call still waiting.
        resumed = await cluster.peer(pg, "staff2", "nodeB")
        try:
            snapshot = await resumed.ok("session:resume", {})
            assert snapshot["call"]["id"] == waiting and snapshot["call"]["state"] == "queued"
            listed = await agent.ok("queue:list", {})
            soc = cluster.world.departments["SOC"].id
            queue = next(q for q in listed["queues"] if q["department_id"] == soc)
            assert [c["id"] for c in queue["calls"]][:2] == [ringing, waiting]
            await agent.ok("queue:take", {})
            await agent.ok("call:accept", {"call_id": ringing})
        finally:
            await resumed.close()
    finally:
        for peer in (waiting_outlet, ringing_outlet, doomed_agent, agent):
            await peer.close()
