"""One aiortc peer run inside a network namespace, driven by a test over stdin/stdout.

    ip netns exec NS python -m tests.media.island_peer client
    ip netns exec NS python -m tests.media.island_peer server --consent tuned|stock --address A

Protocol: one JSON object per line. The client prints ``{"offer": sdp}`` and reads
``{"answer": sdp}``; the server reads the offer and prints the answer. Then both print
``{"event": "state", ...}`` on every connection state change and ``{"event": "stats", ...}``
every ``--every`` seconds, timestamped with ``time.monotonic()`` (one clock for every
process on this machine, whatever its namespace). EOF on stdin ends the peer.

The client sends a 440 Hz tone and small synthetic video and stands in for a browser:
its own aioice consent loop is switched off, because a browser's consent check accepts
answers for as long as 30 s (libwebrtc), while stock aioice on the client would close the
call after ~30 s of 800 ms round trips and hide what the server does. So only the server's
consent check (tuned by :func:`media.passthrough.tune_ice`, or stock) decides whether the
call lives. The server receives and decodes, and counts what it got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from media import passthrough
from tests.media.peers import SyntheticVideo, ToneAudio


def emit(**fields: Any) -> None:
    print(json.dumps({"t": time.monotonic(), **fields}), flush=True)


async def read_message(key: str) -> str:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit(f"stdin closed while waiting for {key!r}")
    return json.loads(line)[key]


async def _never_check_consent() -> None:
    await asyncio.Event().wait()


def disable_consent(pc: RTCPeerConnection) -> None:
    """The browser stand-in: aioice's consent loop never runs on this peer."""
    for connection in passthrough.ice_connections(pc):
        connection.query_consent = _never_check_consent


class Counter:
    """Frames received per kind, and when the last one came; a ``gap`` event when media resumes."""

    GAP = 1.0  # seconds without a frame that count as an outage

    def __init__(self) -> None:
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.last: dict[str, float | None] = {"audio": None, "video": None}

    async def consume(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                await track.recv()
                now, last = time.monotonic(), self.last[track.kind]
                if last is not None and now - last > self.GAP:
                    emit(event="gap", kind=track.kind, since=last, resumed=now)
                self.frames[track.kind] += 1
                self.last[track.kind] = now
        except MediaStreamError:
            return


def watch_state(pc: RTCPeerConnection) -> None:
    @pc.on("connectionstatechange")
    def _changed() -> None:
        emit(event="state", state=pc.connectionState, ice=pc.iceConnectionState)


async def client_rtt(pc: RTCPeerConnection) -> float | None:
    """The round trip our senders measured from the server's RTCP receiver reports."""
    report = await pc.getStats()
    rtts = [s.roundTripTime for s in report.values()
            if getattr(s, "type", "") == "remote-inbound-rtp" and s.roundTripTime is not None]
    return max(rtts) if rtts else None


async def run_client(every: float) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    audio, video = ToneAudio(), SyntheticVideo(160, 120, 15)
    pc.addTransceiver(audio, direction="sendonly")
    pc.addTransceiver(video, direction="sendonly")
    watch_state(pc)
    disable_consent(pc)
    await pc.setLocalDescription(await pc.createOffer())
    emit(offer=pc.localDescription.sdp)
    answer = await read_message("answer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    disable_consent(pc)  # bundling may have swapped transports: patch whatever is there now
    await report_until_eof(every, lambda: _client_stats(pc, audio, video), pc)


async def _client_stats(pc: RTCPeerConnection, audio: ToneAudio, video: SyntheticVideo) -> dict[str, Any]:
    return {"state": pc.connectionState, "sent_audio": audio.sent, "sent_video": video.sent,
            "rtcp_rtt": await client_rtt(pc)}


async def run_server(consent: str, address: str, every: float) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    counter = Counter()
    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def _track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(counter.consume(track)))

    watch_state(pc)
    offer = await read_message("offer")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    if consent == "tuned":
        passthrough.tune_ice(pc, [address], "")  # exactly where media/session.py's _answer calls it
    await pc.setLocalDescription(await pc.createAnswer())
    emit(answer=pc.localDescription.sdp,
         candidates=[line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")])

    async def stats() -> dict[str, Any]:
        return {"state": pc.connectionState,
                "audio": counter.frames["audio"], "video": counter.frames["video"],
                "last_audio": counter.last["audio"], "last_video": counter.last["video"],
                "consent_rtt": passthrough.round_trip_time(pc)}

    await report_until_eof(every, stats, pc)
    for task in tasks:
        task.cancel()


async def report_until_eof(every: float, stats: Any, pc: RTCPeerConnection) -> None:
    eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    try:
        while not eof.done():
            emit(event="stats", **(await stats()))
            await asyncio.wait([eof], timeout=every)
    finally:
        await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["client", "server"])
    parser.add_argument("--consent", choices=["tuned", "stock"], default="tuned")
    parser.add_argument("--address", default="")
    parser.add_argument("--every", type=float, default=0.5)
    args = parser.parse_args()
    if args.role == "client":
        asyncio.run(run_client(args.every))
    else:
        asyncio.run(run_server(args.consent, args.address, args.every))


if __name__ == "__main__":
    main()
