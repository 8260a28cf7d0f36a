"""A participant that drops and comes back with a new peer connection resumes in the same session."""

from __future__ import annotations

import asyncio

from tests.media.peers import SyntheticVideo, ToneAudio, wait_for


async def test_rejoin_resumes_forwarding_and_recording_in_a_new_epoch(media_env, sink, events):
    server = media_env.server(sink=sink, events=events)
    server.media_timeout = 1.5
    agent = media_env.client(server, "rejoin", "agent", {"microphone": ToneAudio()},
                             ["remote:camera", "remote:microphone"])
    first = media_env.client(server, "rejoin", "outlet",
                             {"camera": SyntheticVideo(640, 480, 30), "microphone": ToneAudio()}, [])
    await agent.connect()
    await first.connect()
    camera = agent.received["remote:camera"]
    await wait_for(lambda: len(camera.arrivals) >= 30, 10, lambda: server.stats("rejoin"))

    # The outlet's link dies (its peer connection goes away without a word to signalling).
    await first.close()
    failed = await wait_for(lambda: [e for e in events.of("participant_failed") if e["participant"] == "outlet"],
                            10, lambda: events.events)
    assert failed[0]["epoch"] == 0
    frames_before = len(camera.arrivals)
    last_pts_before = camera.pts[-1]
    loop = asyncio.get_running_loop()
    dropped_at = loop.time()

    second = media_env.client(server, "rejoin", "outlet",
                              {"camera": SyntheticVideo(640, 480, 30), "microphone": ToneAudio()}, [])
    await second.connect()
    await wait_for(lambda: len(camera.arrivals) >= frames_before + 30, 10, lambda: server.stats("rejoin"))
    wall_gap = camera.arrivals[frames_before] - dropped_at

    # Same session, new epoch: the recorder saw epoch 0 closed and epoch 1 starting at a keyframe at 0.
    epochs = sorted((w.info.epoch, w.closed) for w in sink.tracks("outlet-camera"))
    assert epochs == [(0, True), (1, False)], epochs
    epoch1 = [w for w in sink.tracks("outlet-camera") if w.info.epoch == 1][0]
    assert epoch1.frames[0].keyframe and epoch1.frames[0].timestamp == 0
    gaps = events.of("gap")
    assert gaps and gaps[0]["participant"] == "outlet" and gaps[0]["epoch"] == 1 and gaps[0]["gap_seconds"] > 0

    # The agent's picture continues with rebased timestamps: no step back, no jump beyond the gap.
    jump = (camera.pts[frames_before] - last_pts_before) / 90000
    assert 0 < jump < wall_gap + 1.0, f"timestamps jumped {jump:.2f} s over a {wall_gap:.2f} s gap"
    assert camera.pts == sorted(camera.pts)
    assert server.stats("rejoin")["participants"]["outlet"]["epoch"] == 1


async def test_a_subscriber_that_reloads_gets_the_picture_again_and_leave_closes_recordings(media_env, sink, events):
    server = media_env.server(sink=sink, events=events)
    outlet = media_env.client(server, "reload", "outlet",
                              {"camera": SyntheticVideo(320, 240, 30), "microphone": ToneAudio()}, [])
    first = media_env.client(server, "reload", "agent", {}, ["remote:camera"])
    await outlet.connect()
    await first.connect()
    await wait_for(lambda: len(first.received["remote:camera"].arrivals) >= 10, 10, lambda: server.stats("reload"))

    second = media_env.client(server, "reload", "agent", {}, ["remote:camera"])  # page reload: new pc
    await second.connect()
    received = second.received["remote:camera"]
    await wait_for(lambda: len(received.arrivals) >= 10, 10, lambda: server.stats("reload"))
    subscribers = server.stats("reload")["tracks"]["outlet-camera"]["subscribers"]
    assert [s["subscriber"] for s in subscribers] == ["agent"], "the old subscription was not dropped"

    await server.leave("reload", "outlet")
    assert all(w.closed for w in sink.tracks("outlet-camera"))
    assert "outlet" not in server.stats("reload")["participants"]
