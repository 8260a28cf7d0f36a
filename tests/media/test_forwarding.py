"""A full recorded call through the real MediaServer: frame rates, no codec on the server, recordings."""

from __future__ import annotations

import asyncio

from media import passthrough
from tests.media.peers import SyntheticVideo, ToneAudio, wait_for

WINDOW = 4.0
PATH_DELAY = 0.25  # receive window = send window shifted by the path (server hop + client decode)


async def test_call_forwards_every_track_at_full_rate_without_any_codec(media_env, sink, events, codec_constructions):
    server = media_env.server(sink=sink, events=events)
    outlet_sources = {"camera": SyntheticVideo(640, 480, 30), "screen": SyntheticVideo(1280, 720, 10),
                      "microphone": ToneAudio()}
    agent_sources = {"camera": SyntheticVideo(640, 480, 30), "microphone": ToneAudio()}
    outlet = media_env.client(server, "call-1", "outlet", outlet_sources, ["remote:camera", "remote:microphone"])
    agent = media_env.client(server, "call-1", "agent", agent_sources,
                             ["remote:camera", "remote:screen", "remote:microphone"])
    await outlet.connect()
    await agent.connect()
    # far side -> (source track, what the far peer receives)
    routes = {
        "outlet camera -> agent": (outlet_sources["camera"], agent.received["remote:camera"]),
        "outlet screen -> agent": (outlet_sources["screen"], agent.received["remote:screen"]),
        "outlet microphone -> agent": (outlet_sources["microphone"], agent.received["remote:microphone"]),
        "agent camera -> outlet": (agent_sources["camera"], outlet.received["remote:camera"]),
        "agent microphone -> outlet": (agent_sources["microphone"], outlet.received["remote:microphone"]),
    }
    await wait_for(lambda: all(len(rx.arrivals) >= 5 for _, rx in routes.values()), 10,
                   lambda: {name: len(rx.arrivals) for name, (_, rx) in routes.items()})

    loop = asyncio.get_running_loop()
    start = loop.time()
    sent_before = {name: src.sent for name, (src, _) in routes.items()}
    await asyncio.sleep(WINDOW)  # the measurement window itself, not a wait for a condition
    sent = {name: src.sent - sent_before[name] for name, (src, _) in routes.items()}
    await asyncio.sleep(PATH_DELAY)
    got = {name: rx.count_since(start + PATH_DELAY) for name, (_, rx) in routes.items()}
    for name in routes:
        assert got[name] >= 0.9 * sent[name], f"{name}: {got[name]} frames arrived of {sent[name]} sent in {WINDOW} s ({got})"

    assert agent.received["remote:camera"].sizes[-1] == (640, 480)
    assert agent.received["remote:screen"].sizes[-1] == (1280, 720)

    # The server never built a codec: every encoder/decoder constructed belongs to a client peer.
    server_senders = set()
    server_outputs = set()
    for session_id in server.session_ids:
        for peer in server._sessions[session_id].peers.values():
            for transceiver in peer.pc.getTransceivers():
                server_senders.add(id(transceiver.sender))
                if transceiver.receiver.track is not None:
                    server_outputs.add(id(transceiver.receiver.track._queue))
                # at most the end-of-track marker the (immediately finished) decoder thread leaves
                assert passthrough.receiver_backlog(transceiver.receiver) <= 1, "aiortc queued frames nobody reads"
    assert codec_constructions.encoder_owners and codec_constructions.decoder_outputs, "the codec counter saw nothing"
    assert not [o for o in codec_constructions.encoder_owners if id(o) in server_senders], "server built an encoder"
    assert not [o for o in codec_constructions.decoder_outputs if id(o) in server_outputs], "server built a decoder"

    # The link's round trip is known and the repair wait follows it (LAN: the 0.3 s floor).
    stats = server.stats("call-1")
    assert stats["participants"]["agent"]["rtt_seconds"] is not None, stats["participants"]
    agent_peer = server._sessions["call-1"].peers["agent"]
    assert {tap.assembler.max_wait for tap in agent_peer.taps.values()} == {0.3}

    # Bounded queues: no subscriber ever held more than the configured limit.
    for track in server.stats("call-1")["tracks"].values():
        for subscriber in track["subscribers"]:
            assert subscriber["queue_max"] <= subscriber["queue_limit"], track

    # Recording: one track epoch per source, starting at a keyframe at timestamp 0, dimensions known.
    await media_env.clients[0].close()
    await server.end("call-1")
    names = sorted(w.info.name for w in sink.writers)
    assert names == ["agent-camera", "agent-microphone", "outlet-camera", "outlet-microphone", "outlet-screen"]
    for writer in sink.writers:
        assert writer.closed, writer.info.name
        assert writer.frames[0].timestamp == 0
        stamps = [f.timestamp for f in writer.frames]
        assert stamps == sorted(stamps), f"{writer.info.name} timestamps go back"
        if writer.info.kind == "video":
            assert writer.frames[0].keyframe
            assert writer.info.codec == "VP8" and writer.info.clock_rate == 90000
        else:
            assert writer.info.codec == "opus" and writer.info.clock_rate == 48000
    screen = sink.tracks("outlet-screen")[0]
    assert (screen.info.width, screen.info.height) == (1280, 720)
    assert [e["participant"] for e in events.of("participant_connected")] == ["outlet", "agent"]
    assert len(events.of("track_started")) == 5
