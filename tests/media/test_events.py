"""Events the signalling layer relies on: missing media, recording failures, keyframe requests."""

from __future__ import annotations

import asyncio

from tests.media.peers import MemorySink, SyntheticVideo, ToneAudio, wait_for


class StallingVideo(SyntheticVideo):
    """A camera that freezes after ``frames`` frames while its connection stays up."""

    def __init__(self, frames: int) -> None:
        super().__init__(320, 240, 30)
        self._limit = frames
        self._never = asyncio.Event()

    async def recv(self):  # type: ignore[no-untyped-def]
        if self.sent >= self._limit:
            await self._never.wait()
        return await super().recv()


async def test_media_missing_is_reported_although_the_transport_stays_up(media_env, events):
    server = media_env.server(events=events)
    server.media_timeout = 1.0
    outlet = media_env.client(server, "quiet", "outlet", {"camera": StallingVideo(20)}, [])
    await outlet.connect()
    failed = await wait_for(lambda: events.of("participant_failed"), 10, lambda: events.events)
    assert failed[0]["participant"] == "outlet" and failed[0]["reason"] == "media_timeout"
    assert outlet.pc.connectionState == "connected"


async def test_a_failing_recorder_is_reported_and_the_call_goes_on(media_env, events):
    sink = MemorySink(fail_after=10)
    server = media_env.server(sink=sink, events=events)
    outlet = media_env.client(server, "disk", "outlet", {"camera": SyntheticVideo(320, 240, 30)}, [])
    agent = media_env.client(server, "disk", "agent", {}, ["remote:camera"])
    await outlet.connect()
    await agent.connect()
    failed = await wait_for(lambda: events.of("recording_failed"), 10, lambda: events.events)
    assert failed[0]["source"] == "camera" and "No space left" in failed[0]["error"]
    received = agent.received["remote:camera"]
    count = len(received.arrivals)
    await wait_for(lambda: len(received.arrivals) >= count + 20, 10, lambda: server.stats("disk"))
    assert len(events.of("recording_failed")) == 1


async def test_a_sink_factory_that_raises_leaves_the_call_unrecorded_but_up(media_env, events):
    def broken_factory(session_id: str):
        raise PermissionError("read-only file system")

    from cloudhall.settings import MediaSettings
    from media.server import MediaServer

    server = MediaServer(MediaSettings(), sink_factory=broken_factory, events=events)
    media_env.servers.append(server)
    outlet = media_env.client(server, "ro", "outlet", {"microphone": ToneAudio()}, [])
    await outlet.connect()
    await wait_for(lambda: server.stats("ro")["tracks"]["outlet-microphone"]["frames_in"] > 10, 10,
                   lambda: server.stats("ro"))
    assert events.of("recording_failed")[0]["step"] == "sink_factory"


async def test_request_keyframe_reaches_the_sender(media_env):
    server = media_env.server()
    outlet = media_env.client(server, "kf", "outlet", {"camera": SyntheticVideo(320, 240, 30)}, [])
    await outlet.connect()
    stats = lambda: server.stats("kf")["tracks"]["outlet-camera"]  # noqa: E731
    await wait_for(lambda: stats()["frames_in"] >= 20, 10, stats)
    before = stats()["keyframes_in"]
    await server.request_keyframe("kf", "outlet", "camera")
    await wait_for(lambda: stats()["keyframes_in"] > before, 3, stats)
