"""Subscribers that join late get a keyframe at once; the monitor receives silently; snapshots."""

from __future__ import annotations

import asyncio
import io

import av

from tests.media.peers import SyntheticVideo, ToneAudio, wait_for


async def test_late_subscriber_gets_a_keyframe_and_decodes_within_a_second(media_env, events):
    server = media_env.server(events=events)
    camera = SyntheticVideo(640, 480, 30)
    outlet = media_env.client(server, "late", "outlet", {"camera": camera, "microphone": ToneAudio()}, [])
    await outlet.connect()
    stats = lambda: server.stats("late")["tracks"]["outlet-camera"]  # noqa: E731
    # Well past the outlet's first keyframe (aiortc's encoder sends no periodic keyframes).
    await wait_for(lambda: stats()["frames_in"] >= 45, 10, stats)
    keyframes_before = stats()["keyframes_in"]

    monitor = media_env.client(server, "late", "monitor", {}, ["remote:outlet-camera", "remote:outlet-microphone"])
    await monitor.connect()
    loop = asyncio.get_running_loop()
    await wait_for(lambda: monitor.pc.connectionState == "connected", 10, lambda: monitor.pc.connectionState)
    connected_at = loop.time()
    received = monitor.received["remote:outlet-camera"]
    await wait_for(lambda: received.arrivals, 5, lambda: stats())
    assert received.arrivals[0] - connected_at < 1.0, f"first picture {received.arrivals[0] - connected_at:.2f} s after connecting"
    assert received.sizes[0] == (640, 480)
    assert stats()["keyframes_in"] > keyframes_before, "no keyframe was requested for the new subscriber"
    await wait_for(lambda: len(monitor.received["remote:outlet-microphone"].arrivals) > 10, 5,
                   lambda: server.stats("late"))
    assert "monitor" in [e["participant"] for e in events.of("participant_connected")]


async def test_snapshot_is_a_full_resolution_jpeg_of_the_latest_picture(media_env):
    server = media_env.server()
    outlet = media_env.client(server, "snap", "outlet", {"screen": SyntheticVideo(1280, 720, 10)}, [])
    await outlet.connect()
    await wait_for(lambda: server.stats("snap")["tracks"]["outlet-screen"]["frames_in"] >= 15, 10,
                   lambda: server.stats("snap"))
    jpeg = await server.snapshot("snap", "outlet", "screen")
    assert jpeg[:2] == b"\xff\xd8"
    with av.open(io.BytesIO(jpeg)) as container:
        picture = next(container.decode(video=0))
    assert (picture.width, picture.height) == (1280, 720)
