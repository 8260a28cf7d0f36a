"""A full recorded call through the real MediaServer: frame rates, no codec on the server, recordings."""

from __future__ import annotations

import asyncio

from cloudhall.settings import MediaSettings
from media import passthrough
from media.estimator import RemoteBitrateEstimator
from tests.media.peers import SyntheticVideo, ToneAudio, wait_for

SPAN = 4  # seconds of source time measured


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
    # The media server made the loop gather packets per wake-up (settings' default window).
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    assert isinstance(selector, passthrough._CoalescingSelector)
    assert selector.window == MediaSettings().wakeup_coalesce_ms / 1000
    # No aiortc bandwidth estimator on the server (its rate counter is 1,000 objects that every
    # full garbage collection walks): ours on published streams, none on forwarding transceivers.
    for session_id in server.session_ids:
        for peer in server._sessions[session_id].peers.values():
            for t in peer.pc.getTransceivers():
                estimator = t.receiver._RTCRtpReceiver__remote_bitrate_estimator
                assert estimator is None or type(estimator) is RemoteBitrateEstimator, (t.mid, t.direction, estimator)
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

    # Delivery over a stretch of *source* time: the frames whose timestamps fall in SPAN seconds
    # after the latest one seen now, against the frames the source made in that time. Timestamps
    # (not arrival times) make this immune to a busy test machine delaying frames; the stretch
    # must still arrive within SPAN + 4 s of wall time.
    start_pts = {name: rx.pts[-1] for name, (_, rx) in routes.items()}
    steady = server.stats("call-1")["tracks"]  # every route is flowing: from here on, all goes out
    clock = {name: 48000 if "microphone" in name else 90000 for name in routes}
    rate = {name: 50 if "microphone" in name else src.fps for name, (src, _) in routes.items()}
    end_pts = {name: start_pts[name] + SPAN * clock[name] for name in routes}
    await wait_for(lambda: all(rx.pts[-1] >= end_pts[name] for name, (_, rx) in routes.items()), SPAN + 4,
                   lambda: {name: (rx.pts[-1] - start_pts[name]) / clock[name] for name, (_, rx) in routes.items()})
    got = {name: sum(1 for p in rx.pts if start_pts[name] < p <= end_pts[name]) for name, (_, rx) in routes.items()}
    server_side = {name: (t["frames_in"], t["frames_out"], [s["drops"] for s in t["subscribers"]])
                   for name, t in server.stats("call-1")["tracks"].items()}
    for name in routes:
        expected = SPAN * rate[name]
        assert got[name] >= 0.9 * expected, (
            f"{name}: {got[name]} frames of a {SPAN} s stretch arrived, {expected} were sent ({got}); "
            f"server in/out/drops so far: {server_side}")

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

    # The link's round trip is known and the repair wait follows it (within 0.3-1.5 s).
    stats = server.stats("call-1")
    assert stats["participants"]["agent"]["rtt_seconds"] is not None, stats["participants"]
    agent_peer = server._sessions["call-1"].peers["agent"]
    waits = {tap.assembler.max_wait for tap in agent_peer.taps.values()}
    assert len(waits) == 1 and 0.3 <= waits.pop() <= 1.5

    # RTP-level forwarding: what came in went out, packet for packet, with nothing queued on the
    # way (aiortc's own sender loop pulls nothing), and nothing was dropped for backlog.
    for name, track in server.stats("call-1")["tracks"].items():
        came_in = track["packets_in"] - steady[name]["packets_in"]
        assert came_in > 0, name
        before = {s["subscriber"]: s["packets_out"] for s in steady[name]["subscribers"]}
        for subscriber in track["subscribers"]:
            assert subscriber["backlog_drops"] == 0 and subscriber["send_errors"] == 0, (name, subscriber)
            went_out = subscriber["packets_out"] - before[subscriber["subscriber"]]
            assert went_out >= came_in - 2, f"{name}: {came_in} packets came in, {went_out} went out ({subscriber})"
    for peer in server._sessions["call-1"].peers.values():
        for transceiver in peer.pc.getTransceivers():
            if transceiver.direction == "sendonly":
                assert isinstance(transceiver.sender.track, passthrough._SilentTrack)

    # Recording: one track epoch per source, starting at a keyframe at timestamp 0, dimensions known.
    await media_env.clients[0].close()
    await server.end("call-1")
    assert sink.closed, "end() must close the sink the factory returned"
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
