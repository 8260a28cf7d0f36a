"""Bounded queues: a slow or absent consumer drops and asks for a keyframe, never grows memory."""

from __future__ import annotations

import asyncio

from media.relay import GOP_MAX_FRAMES, SourceRelay

KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" + b"k" * 100
DELTA = b"\x11\x00\x00" + b"d" * 100


class UpstreamFake:
    """Stands in for a receiver tap: counts keyframe requests."""

    def __init__(self) -> None:
        self.plis = 0
        self.remb_limit = None
        self.upstream_estimate = None
        self.assembler = None

    async def send_pli(self) -> None:
        self.plis += 1

    async def send_remb(self, bitrate: int) -> None:
        pass


def make_relay(events: list | None = None) -> tuple[SourceRelay, UpstreamFake]:
    relay = SourceRelay("s", "outlet", "camera", sink=None,
                        emit=lambda kind, data: (events or []).append((kind, data)),
                        on_first_frame=lambda relay, epoch: None)
    upstream = UpstreamFake()
    relay.attach(0, upstream)  # type: ignore[arg-type]
    return relay, upstream


def feed(relay: SourceRelay, count: int, start_ts: int = 0, t0: float = 0.0) -> None:
    for i in range(count):
        relay.on_frame(0, KEY if i == 0 else DELTA, (start_ts + i * 3000) & 0xFFFFFFFF, i == 0, t0 + i / 30)


async def test_a_subscriber_that_never_starts_queues_nothing():
    relay, _ = make_relay()
    track = relay.subscribe("agent", 60)
    feed(relay, 1000)
    assert track.queued == 0


async def test_a_subscriber_that_stops_reading_is_bounded_and_asks_for_a_keyframe():
    relay, upstream = make_relay()
    track = relay.subscribe("agent", 60)
    first = asyncio.ensure_future(track.recv())  # the sender starts pulling, then stalls forever
    await asyncio.sleep(0)
    feed(relay, 1)
    await asyncio.wait_for(first, 2)
    feed(relay, 1000, start_ts=3000)
    stats = relay.stats()["subscribers"][0]
    assert stats["queue_max"] <= 60 and track.queued <= 60
    assert stats["drops"] >= 1000 - 61
    assert upstream.plis >= 1 and track.need_keyframe
    # When it reads again it resumes at a keyframe, not in the middle of a picture.
    while track.queued:
        await asyncio.wait_for(track.recv(), 2)
    relay.on_frame(0, DELTA, 10**6, False, 100.0)
    assert track.queued == 0
    relay.on_frame(0, KEY, 10**6 + 3000, True, 100.1)
    assert track.queued == 1
    relay.close()


async def test_the_snapshot_cache_is_bounded():
    relay, _ = make_relay()
    feed(relay, GOP_MAX_FRAMES * 3)
    assert len(relay.gop) == GOP_MAX_FRAMES and relay.gop_overflow


async def test_timestamps_continue_across_a_rejoin():
    relay, _ = make_relay()
    track = relay.subscribe("agent", 500)
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0)
    feed(relay, 30, start_ts=4_000_000_000)  # near the 32-bit wrap
    feed(relay, 30, start_ts=4_000_000_000 + 30 * 3000, t0=1.0)  # wraps past 2**32
    relay.attach(1, UpstreamFake())  # type: ignore[arg-type]
    relay.on_frame(1, KEY, 123, True, 2.5)  # new epoch 0.53 s later: unrelated RTP timestamps
    relay.on_frame(1, DELTA, 3123, False, 2.53)
    out = [(await asyncio.wait_for(pending, 2)).pts]
    out += [(await asyncio.wait_for(track.recv(), 2)).pts for _ in range(track.queued)]
    steps = [b - a for a, b in zip(out, out[1:])]
    assert all(step > 0 for step in steps), steps
    assert max(steps) == int((2.5 - (1.0 + 29 / 30)) * 90000), "the rejoin step is not the wall-clock gap"
    relay.close()


async def test_the_weakest_subscriber_caps_the_sender_but_a_monitor_does_not():
    relay, upstream = make_relay()
    agent = relay.subscribe("agent", 60)
    monitor = relay.subscribe("monitor", 60, caps_upstream=False)
    relay.set_remb(agent, 900_000)
    relay.set_remb(monitor, 100_000)
    assert upstream.remb_limit == 900_000
    slow = relay.subscribe("agent", 60)
    relay.set_remb(slow, 300_000)
    assert upstream.remb_limit == 300_000
    slow.stop()
    assert upstream.remb_limit == 900_000
    relay.set_remb(slow, 50_000)  # a late estimate from a closed subscriber is ignored
    assert upstream.remb_limit == 900_000
    relay.close()
