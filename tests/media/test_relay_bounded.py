"""Bounded queues: a slow or absent consumer drops and asks for a keyframe, never grows memory."""

from __future__ import annotations

import asyncio

from media.bandwidth import UplinkRate
from media.relay import GOP_MAX_FRAMES, SourceRelay

KEY = b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" + b"k" * 100
DELTA = b"\x11\x00\x00" + b"d" * 100


class UpstreamFake:
    """Stands in for a receiver tap: counts keyframe requests."""

    def __init__(self) -> None:
        self.plis = 0
        self.rembs_sent = 0
        self.uplink = UplinkRate()
        self.remb_limit = None
        self.upstream_estimate = None
        self.assembler = None

    async def send_pli(self) -> None:
        self.plis += 1

    async def send_remb(self, bitrate: int | None = None) -> None:
        self.rembs_sent += 1


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


async def test_only_a_congested_subscriber_caps_the_sender_and_a_monitor_never_does():
    relay, upstream = make_relay()
    now = asyncio.get_running_loop().time()
    agent = relay.subscribe("agent", 60)
    monitor = relay.subscribe("monitor", 60, caps_upstream=False)
    for track in (agent, monitor):
        track.downlink.meter.add(125_000, now)  # 1 Mbit/s forwarded to each
    # Above what it receives: a receive-side estimator's ~1.5x bound, not congestion. Capping
    # at it is what spiralled a call down to 60 kbit/s.
    relay.set_remb(agent, 1_400_000)
    relay.set_remb(monitor, 100_000)  # congested, but a monitor never slows the call
    assert upstream.remb_limit is None
    island = relay.subscribe("island", 60)
    island.downlink.meter.add(125_000, now)
    relay.set_remb(island, 300_000)  # far below what it receives: congestion, sent upstream at once
    assert upstream.remb_limit == 300_000
    await asyncio.sleep(0)
    assert upstream.rembs_sent == 1
    island.stop()
    assert upstream.remb_limit is None
    relay.set_remb(island, 50_000)  # a late estimate from a closed subscriber is ignored
    assert upstream.remb_limit is None
    relay.close()
