"""A whole server node killed with SIGKILL mid-call keeps playable recordings of everything before the kill.

One real ``cloudhall serve`` process (embedded shape: memory queue, on SQLite and on
PostgreSQL), a real call through the real Socket.IO protocol, real aiortc peers sending
moving VP8 video and Opus audio through the server: outlet camera, screen and microphone,
agent camera and microphone. After a few seconds of media the node is killed with SIGKILL,
then started again on the same database and recordings folder. What a supervisor then finds:
one finalized WebM per track that PyAV opens and decodes to the end, covering the media sent
before the kill, a manifest and session log whose SHA-256 hashes match the files, and the
call's session ended (``failed``, node restarted) instead of shown in progress forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from yarl import URL

from cloudhall.auth import SESSION_COOKIE
from cloudhall.db import Database
from recordings.eventlog import load_events, verify_chain
from recordings.models import CallSession
from tests.factories import PASSWORD, World, build_world
from tests.helpers import wait_for
from tests.integration.signaling_support import Peer, start_payload
from tests.integration.test_multinode import Node, wait_ready
from tests.integration.test_serve import free_port
from tests.media.peers import Received, SyntheticVideo, ToneAudio, consume

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "k" * 48
FLOW_SECONDS = 5.0  # media the agent receives before the kill
# What each side publishes: role -> (kind, frame rate, width, height). The rates are low so
# that two real encoders, three decoders and the server share this 2-core machine calmly.
OUTLET_SOURCES = {
    "camera": ("video", 15, 640, 480),
    "screen": ("video", 5, 1280, 720),
    "microphone": ("audio", 50, 0, 0),
}
AGENT_SOURCES = {"camera": ("video", 15, 320, 240), "microphone": ("audio", 50, 0, 0)}
SIZES = {f"{side}-{role}": (w, h) for side, sources in (("outlet", OUTLET_SOURCES), ("agent", AGENT_SOURCES))
         for role, (kind, _, w, h) in sources.items() if kind == "video"}


# -- the node ---------------------------------------------------------------------------------
def start_node(tmp: Path, db_url: str, port: int, run: int) -> Node:
    """``cloudhall serve`` in a subprocess, embedded shape (no Redis), recordings under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDHALL_")}
    env.update(
        CLOUDHALL_DATABASE_URL=db_url,
        CLOUDHALL_PORT=str(port),
        CLOUDHALL_SECRET_KEY=SECRET,
        CLOUDHALL_DATA_DIR=str(tmp / "var"),
        CLOUDHALL_RECORDINGS_DIR=str(tmp / "recordings"),
        CLOUDHALL_NODE_ID="hall-1",
        CLOUDHALL_LOG_LEVEL="INFO",
    )
    output = open(tmp / f"node-run{run}.log", "w")  # noqa: SIM115 - the child owns it; closed by the OS
    process = subprocess.Popen(
        [sys.executable, "-m", "cloudhall.cli", "serve"],
        cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
    )
    output.close()
    return Node(f"run{run}", f"http://127.0.0.1:{port}", process)


def stop(node: Node) -> None:
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


async def http_login(base: str, username: str) -> str:
    """Log in through the real login form over HTTP; return the session cookie's value."""
    # Unsafe jar: the server is an IP address, whose cookies aiohttp otherwise drops.
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        html = await (await browser.get("/login")).text()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', html)
        assert csrf, f"no CSRF token on {base}/login"
        data = {"username": username, "password": PASSWORD, "csrf_token": csrf.group(1)}
        async with browser.post("/login", data=data) as response:
            assert response.status == 200, f"login of {username}: {response.status}"
        cookie = browser.cookie_jar.filter_cookies(URL(base)).get(SESSION_COOKIE)
        assert cookie is not None, f"login of {username} set no {SESSION_COOKIE} cookie"
        return cookie.value


# -- a browser's media side ---------------------------------------------------------------------
@dataclass
class MediaSide:
    """One side's real aiortc peer connection, negotiated with ``media:offer`` over Socket.IO."""

    peer: Peer
    sources: dict[str, MediaStreamTrack]
    wants: list[str]
    pc: RTCPeerConnection | None = None
    received: dict[str, Received] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self, call_id: str) -> dict[str, Any]:
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.pc = pc = RTCPeerConnection(config)
        roles = [(pc.addTransceiver(t, direction="sendonly"), role) for role, t in self.sources.items()]
        for role in self.wants:
            kind = "audio" if role.endswith("microphone") else "video"
            roles.append((pc.addTransceiver(kind, direction="recvonly"), role))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"call_id": call_id, "sdp": pc.localDescription.sdp, "type": "offer",
                 "tracks": {t.mid: role for t, role in roles}}
        answer = await self.peer.ok("media:offer", offer)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        loop = asyncio.get_running_loop()
        for transceiver, role in roles:
            if role.startswith("remote:"):
                received = self.received.setdefault(role, Received(role))
                self.tasks.append(loop.create_task(self._consume(transceiver.receiver.track, received)))
        return answer

    async def _consume(self, track: MediaStreamTrack, received: Received) -> None:
        await consume(track, received, time.time)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.pc is not None:
            await self.pc.close()


def synthetic(sources: dict[str, tuple[str, int, int, int]]) -> dict[str, MediaStreamTrack]:
    return {
        role: SyntheticVideo(width, height, fps) if kind == "video" else ToneAudio()
        for role, (kind, fps, width, height) in sources.items()
    }


def seconds_sent(track: MediaStreamTrack) -> float:
    """Media time a synthetic track has handed to its encoder so far."""
    return track.sent / track.fps if isinstance(track, SyntheticVideo) else track.sent * 0.02


# -- what a supervisor finds on disk ------------------------------------------------------------
def probe(path: Path) -> dict[str, Any]:
    """Open a recording with PyAV and decode every packet; any decoding error fails."""
    with av.open(str(path)) as container:
        (stream,) = container.streams
        frames: list[Any] = []
        packets = 0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the demuxer's end-of-stream marker
            packets += 1
            frames += stream.codec_context.decode(packet)
        frames += stream.codec_context.decode(None)
        sizes = {(f.width, f.height) for f in frames if isinstance(f, av.VideoFrame)}
        return {
            "codec": stream.codec_context.name,
            "format": container.format.name,
            "duration": container.duration / av.time_base if container.duration else None,
            "packets": packets,
            "decoded": len(frames),
            "sizes": sizes,
        }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_manifest(session_dir: Path) -> dict[str, Any]:
    return json.loads((session_dir / "manifest.json").read_text())


# -- the test ------------------------------------------------------------------------------------
@pytest.fixture
async def node_db(database: Database) -> AsyncIterator[tuple[Database, World]]:
    """A migrated, empty database (SQLite file and PostgreSQL) with the test world."""
    yield database, await build_world(database)


async def test_kill_9_mid_call_leaves_playable_hashed_recordings_after_restart(
    node_db: tuple[Database, World], tmp_path: Path
) -> None:
    db, world = node_db
    port = free_port()
    node = start_node(tmp_path, db.url, port, run=0)
    restarted: Node | None = None
    sides: list[MediaSide] = []
    peers: list[Peer] = []
    try:
        wait_ready(node)
        # -- a real call through the real protocol ------------------------------------------
        outlet, agent = Peer("staff1"), Peer("agent2")
        peers += [outlet, agent]
        await outlet.connect(node.url, await http_login(node.url, "staff1"))
        await agent.connect(node.url, await http_login(node.url, "agent2"))
        call_id = (await outlet.ok("call:start", start_payload(world)))["call"]["id"]
        await agent.ok("queue:take", {"call_id": call_id})
        await agent.ok("call:accept", {"call_id": call_id})
        await outlet.wait_call("connecting", id=call_id)

        outlet_media = MediaSide(outlet, synthetic(OUTLET_SOURCES), [])
        agent_media = MediaSide(agent, synthetic(AGENT_SOURCES), [f"remote:{s}" for s in OUTLET_SOURCES])
        sides += [outlet_media, agent_media]
        await outlet_media.join(call_id)
        await agent_media.join(call_id)
        await outlet.wait_call("in_call", id=call_id, timeout=20)

        # -- media flows; the agent sees the outlet's camera, screen and microphone -----------
        camera = agent_media.received["remote:camera"]

        def flowing() -> bool:
            now = time.time()
            got = {role: r.count_since(now - 1.0) for role, r in agent_media.received.items()}
            assert all(got.values()), f"frames at the agent in the last second: {got}"
            return bool(camera.arrivals) and now - camera.arrivals[0] >= FLOW_SECONDS

        await wait_for(flowing, timeout=FLOW_SECONDS + 15, interval=0.1,
                       what=f"{FLOW_SECONDS} s of media at the agent")
        session_dir = tmp_path / "recordings" / call_id
        live = read_manifest(session_dir)
        recording = sorted(e["track"] for e in live["files"] if e["status"] == "recording")
        assert recording == ["agent-camera", "agent-microphone", "outlet-camera", "outlet-microphone",
                             "outlet-screen"], live["files"]
        parts = sorted(p.name for p in session_dir.glob("*.mkv.part"))
        assert parts == sorted(e["part"] for e in live["files"])

        # -- SIGKILL the node mid-call ----------------------------------------------------------
        sent = {f"{side}-{role}": track for side, media in (("outlet", outlet_media), ("agent", agent_media))
                for role, track in media.sources.items()}
        killed_at = time.time()
        os.kill(node.process.pid, signal.SIGKILL)
        sent_seconds = {name: seconds_sent(track) for name, track in sent.items()}
        assert node.process.wait(timeout=10) == -signal.SIGKILL
        for side in sides:
            await side.close()
        for peer in peers:
            await peer.close()
        assert (session_dir / ".recording.lock").exists()

        # -- restart on the same database and recordings folder --------------------------------
        restarted = start_node(tmp_path, db.url, port, run=1)
        wait_ready(restarted)

        def finalized() -> dict[str, Any] | None:
            manifest = read_manifest(session_dir)
            leftovers = sorted(p.name for p in session_dir.iterdir()
                               if p.name.endswith(".part") or p.name == ".recording.lock")
            assert not leftovers, f"still left: {leftovers}; state {manifest['state']}"
            return manifest if manifest["state"] == "recovered" else None

        manifest = await wait_for(finalized, timeout=20, interval=0.1,
                                  what="the restarted node to finalize the recordings")

        async def logged() -> list[Any] | None:
            async with db.transaction() as session:
                report = await verify_chain(session, call_id)
                assert report.ok, report.problems
                files = [e for e in await load_events(session, call_id) if e.kind == "recording_file"]
                return files if len(files) >= len(manifest["files"]) else None

        file_events = await wait_for(logged, timeout=15, interval=0.1,
                                     what="recording_file entries in the session log")

        # -- the killed call's session is ended, not "in call" forever ---------------------------
        # Its live state died with the in-memory queue: the restart ends it as failed.
        async with db.transaction() as session:
            row = await session.get(CallSession, call_id)
            assert row is not None and row.state == "ended" and row.end_reason == "failed", row.to_dict()
            assert row.ended_at is not None and killed_at < row.ended_at.timestamp() < time.time(), row.to_dict()
            entries = await load_events(session, call_id)
        ended = [e for e in entries if e.kind == "call_ended"]
        assert [(e.data, e.at) for e in ended] == [({"reason": "failed", "why": "node restarted"}, row.ended_at)]
        assert ended[0].actor == "node:hall-1", ended[0].actor
        # Written at start, before the recordings were finalized: it comes before their entries.
        assert ended[0].seq < min(e.seq for e in file_events), [(e.seq, e.kind) for e in entries]

        # -- what a supervisor finds --------------------------------------------------------------
        by_track = {e["track"]: e for e in manifest["files"]}
        assert sorted(by_track) == sorted(sent), manifest["files"]
        logged_hashes = {(e.data["file"], e.data["sha256"]) for e in file_events}
        assert len(file_events) == len(logged_hashes) == len(by_track), [e.data for e in file_events]
        assert all(e.data["recovered"] is True for e in file_events), [e.data for e in file_events]
        figures = {}
        for track, entry in sorted(by_track.items()):
            path = session_dir / entry["file"]
            assert entry["status"] == "recovered" and entry["recovered"] is True, entry
            info = probe(path)
            kind = "video" if track.endswith(("camera", "screen")) else "audio"
            assert info["format"].startswith("matroska"), info  # the WebM demuxer is matroska,webm
            assert info["codec"] == ("vp8" if kind == "video" else "opus"), (track, info)
            assert info["decoded"] == entry["frames"] == info["packets"] > 0, (track, info, entry)
            if kind == "video":
                assert info["sizes"] == {SIZES[track]}, (track, info["sizes"])
                assert (entry["width"], entry["height"]) == SIZES[track], entry
            # The duration a player shows (the container's) is the manifest's.
            assert abs(info["duration"] - entry["duration"]) < 0.05, (track, info, entry)
            # Hashes: the manifest's and the session log's are both the file's.
            assert entry["sha256"] == sha256(path), track
            assert (entry["file"], entry["sha256"]) in logged_hashes, track
            # Coverage: everything sent before the kill plays, give or take ~1 s (the first
            # keyframe the recorder waits for, the frames in flight at the kill).
            assert entry["start"] is not None and entry["end"] is not None, entry
            # On the call's timeline the file starts when the track's first frame was sent
            # and ends at the kill.
            # (The last video frame lasts one frame interval: 0.2 s for the 5 fps screen.)
            assert killed_at - 1.0 <= entry["end"] <= killed_at + 0.4, (track, entry["end"] - killed_at)
            assert sent_seconds[track] - 1.0 <= entry["duration"] <= sent_seconds[track] + 0.2, (
                track, entry["duration"], sent_seconds[track])
            assert abs(entry["start"] - (killed_at - sent_seconds[track])) < 1.0, track
            figures[track] = (round(sent_seconds[track], 2), round(entry["duration"], 2),
                              round(killed_at - entry["end"], 2))
        print(f"\nseconds sent before the kill, recorded, lost at the end: {figures}")
    finally:
        for side in sides:
            await side.close()
        for peer in peers:
            await peer.close()
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()
        if restarted is not None:
            stop(restarted)
    for run in (0, 1):
        output = (tmp_path / f"node-run{run}.log").read_text()
        assert "Traceback" not in output, output
    assert "ended 1 session(s) left open by the previous run" in (tmp_path / "node-run1.log").read_text()
