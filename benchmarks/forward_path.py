"""Server CPU per packet on the forwarding path, replayed in one process: steadier than a load run.

    .venv/bin/python benchmarks/forward_path.py --packets 20000 --repeat 5

``media_load.py`` measures whole calls across processes, and on these shared 2-core VMs its
per-call figure moves by ±15 % from one run to the next with the same code (the clients'
CPU moves with it: the machine's speed varies). That hides a change worth 5 %. This script
measures the server's own work per packet without the noise of other processes:

1. one recorded call (outlet camera + screen + microphone, agent camera + microphone, the
   same pre-encoded loops as ``media_load.py``) is set up through the real ``MediaServer``
   with the recorder, and runs for a few seconds;
2. every RTP packet the two clients send is captured *before* encryption while it runs;
3. the clients' tracks are paused and their sockets stop being read (what the server
   forwards to them is dropped by the kernel, as from a client that went away: the sending
   costs the same);
4. the captured packets are replayed — renumbered to continue where each stream stopped,
   SRTP-protected with the clients' own keys ahead of time — straight into the server's
   receive path (``install_fast_receive``'s handler, as if its socket reader had read them),
   ``--packets`` of them, and the process CPU time (event loop and recorder thread) is
   divided by the packet count. The minimum over ``--repeat`` rounds is printed with the
   median: noise only ever adds time.

What it leaves out: the socket read (``recvfrom``) and the event-loop wake-ups, which
``media_load.py`` includes. What it keeps: decryption, parsing, statistics, the bandwidth
estimator, forwarding (renumbering, header, encryption, ``sendto``), frame assembly and
recording.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.media_load import ROUTES, PassthroughBackend, add_loop_senders, encode_loops  # noqa: E402

SESSION = "replay"


class _Capture:
    """Stands in for a client transport's ``_tx_srtp``: records each RTP plaintext, then protects it."""

    def __init__(self, session: Any, sink: list[bytes]) -> None:
        self.session = session
        self.sink = sink
        self.recording = True

    def protect(self, packet: bytes) -> bytes:
        if self.recording:
            self.sink.append(packet)
        return self.session.protect(packet)

    def __getattr__(self, name: str) -> Any:  # protect_rtcp and the rest
        return getattr(self.session, name)


async def _client(backend: PassthroughBackend, participant: str, loops: dict, running: asyncio.Event) -> Any:
    from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from media.server import OfferIn

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
    roles = add_loop_senders(pc, participant, loops, running)
    for role in ROUTES[participant][1]:
        t = pc.addTransceiver("audio" if role.endswith("microphone") else "video", direction="recvonly")
        roles.append((t, role))
    await pc.setLocalDescription(await pc.createOffer())
    answer = await backend.server.negotiate(SESSION, participant, OfferIn(
        sdp=pc.localDescription.sdp, tracks={t.mid: role for t, role in roles}))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.sdp, type="answer"))
    return pc


def _continue(packets: list[bytes], count: int) -> list[bytes]:
    """``count`` packets cycling through ``packets``, each stream numbered on from its last one."""
    seqs: dict[bytes, int] = {}  # ssrc -> highest sequence number sent (wrap-aware)
    first_ts: dict[bytes, int] = {}
    last_ts: dict[bytes, int] = {}
    for data in packets:
        ssrc = data[8:12]
        seq, ts = struct.unpack_from("!HI", data, 2)
        first_ts.setdefault(ssrc, ts)
        last_ts[ssrc] = ts
        if ssrc not in seqs or (seq - seqs[ssrc]) & 0xFFFF < 0x8000:
            seqs[ssrc] = seq
    span = {ssrc: (last_ts[ssrc] - first_ts[ssrc]) & 0xFFFFFFFF for ssrc in seqs}
    out = []
    cycle = 0
    while len(out) < count:
        cycle += 1
        for data in packets:
            ssrc = data[8:12]
            seqs[ssrc] = (seqs[ssrc] + 1) & 0xFFFF
            ts = (struct.unpack_from("!I", data, 4)[0] + cycle * (span[ssrc] + 3000)) & 0xFFFFFFFF
            out.append(data[:2] + struct.pack("!HI", seqs[ssrc], ts) + data[8:])
            if len(out) == count:
                break
    return out


async def main(count: int, repeat: int, record: bool) -> None:
    loops = encode_loops()
    backend = PassthroughBackend(tempfile.mkdtemp(prefix="forward-path-"), record=record)
    running = asyncio.Event()
    running.set()
    clients = {p: await _client(backend, p, loops, running) for p in ("outlet", "agent")}
    captured: dict[str, list[bytes]] = {p: [] for p in clients}
    await asyncio.sleep(3.0)  # connected, keyframes through, recorders open
    captures = {}
    for participant, pc in clients.items():
        dtls = pc.getTransceivers()[0].sender.transport
        captures[participant] = dtls._tx_srtp = _Capture(dtls._tx_srtp, captured[participant])
    await asyncio.sleep(2.0)
    running.clear()  # the clients' tracks stop
    await asyncio.sleep(0.5)
    loop = asyncio.get_running_loop()
    for pc in clients.values():  # forwarded packets now go unread (the kernel drops them)
        for protocol in pc.getTransceivers()[0].receiver.transport.transport.iceGatherer._connection._protocols:
            loop._remove_reader(protocol.transport._sock_fd)
    session = backend.server._sessions[SESSION]
    handlers = {p: session.peers[p].pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
                ._connection.data_received for p in clients}
    for capture in captures.values():  # (kept on until now: a late retransmission moves the index too)
        capture.recording = False
    # The media streams only (not RTX, whose sequence numbers are the originals' once more).
    media_ssrcs = {struct.pack("!I", t.sender._ssrc) for pc in clients.values() for t in pc.getTransceivers()
                   if t.direction == "sendonly"}
    rtp = {p: [d for d in captured[p] if not 192 <= d[1] <= 208 and d[8:12] in media_ssrcs] for p in clients}
    # Each client's share of the round as in the call; at least one pass over what it sent.
    per_round = {p: max(len(rtp[p]), count * len(rtp[p]) // sum(len(v) for v in rtp.values())) for p in clients}
    print(f"captured {sum(len(v) for v in rtp.values())} RTP packets "
          f"({', '.join(f'{p}: {len(v)}' for p, v in rtp.items())}); {count} per round")
    results = []
    for _ in range(repeat):
        # Encrypt ahead with the clients' own sessions (their SRTP index moves on each round).
        feed = []
        for participant in clients:
            protect = captures[participant].session.protect
            stream = _continue(rtp[participant], per_round[participant])
            rtp[participant] = stream[-len(rtp[participant]):]  # the next round numbers on from here
            feed.append([(handlers[participant], protect(d)) for d in stream])
        mixed = [item for pair in zip(*feed) for item in pair] + [x for f in feed for x in f[min(map(len, feed)):]]
        before = backend.states()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = time.process_time()
        for index, (handler, datagram) in enumerate(mixed):
            handler(datagram, 1)
            if index % 64 == 63:
                await asyncio.sleep(0)  # what a socket reader's burst allows: RTCP tasks run
        await asyncio.sleep(0.1)  # the recorder thread catches up
        used = time.process_time() - cpu
        system = resource.getrusage(resource.RUSAGE_SELF).ru_stime - usage.ru_stime
        after = backend.states()
        forwarded = after.get("server_packets_out", 0) - before.get("server_packets_out", 0)
        results.append(used / len(mixed))
        print(f"  {1e6 * used / len(mixed):6.1f} µs per packet in ({len(mixed)} in, {forwarded} forwarded, "
              f"{after.get('frames_in', 0) - before.get('frames_in', 0)} frames; kernel {100 * system / used:.0f} %)", flush=True)
    print(f"server CPU per packet in (forwarded once{', recorded' if record else ''}): "
          f"min {1e6 * min(results):.1f} µs, median {1e6 * statistics.median(results):.1f} µs")
    running.set()
    for pc in clients.values():
        await pc.close()
    await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=20000, help="packets replayed per round")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-record", action="store_true", help="a no-op sink instead of the recorder")
    args = parser.parse_args()
    asyncio.run(main(args.packets, args.repeat, not args.no_record))
