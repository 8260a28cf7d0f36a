"""Which estimates cap a sender (media/bandwidth.py): congestion does, a receiver's ~1.5x bound does not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from media.bandwidth import (
    FLOOR_BPS, UNCAPPED_BPS, DownlinkRate, RateMeter, UplinkRate,
)


def flow(meter: RateMeter, bps: int, start: float, seconds: float) -> float:
    """Feed ``bps`` for ``seconds`` in 10 ms packets; returns the end time."""
    t = start
    while t < start + seconds:
        meter.add(bps // 800, t)
        t += 0.01
    return t


def test_the_meter_counts_the_last_second():
    meter = RateMeter()
    end = flow(meter, 800_000, 0.0, 3.0)
    assert 700_000 <= meter.rate(end) <= 900_000
    assert meter.rate(end + 2.0) == 0


def test_a_receiver_bounded_by_what_it_gets_never_spirals_the_sender_down():
    # The old behaviour: cap = estimate = 1.5 x received + 10k, the sender obeys, repeat.
    # Chromium applying it to two streams (one still) settled at its 60 kbit/s floor.
    downlink = DownlinkRate(["video"])
    now, sending = 0.0, 300_000
    for _ in range(20):
        now = flow(downlink.meter, sending, now, 1.0)
        cap = downlink.on_estimate(int(1.5 * sending * 0.5) + 10_000 + sending // 2, now)
        assert cap is None, f"an estimate above what flows capped the sender at {cap}"
        sending = int(sending * 1.08)


def test_congestion_caps_at_once_recovers_and_is_lifted():
    downlink = DownlinkRate(["video", "audio"])
    now = flow(downlink.meter, 1_000_000, 0.0, 2.0)
    assert downlink.on_estimate(400_000, now) == 400_000  # the island's estimate, upstream at once
    now = flow(downlink.meter, 400_000, now, 1.0)
    grown = downlink.on_estimate(340_000, now)  # the sender obeyed: 340k < 0.9 x 400k, still congested
    assert grown == 340_000
    now = flow(downlink.meter, 340_000, now, 2.0)
    grown = downlink.on_estimate(360_000, now)  # not below what flows: the cap recovers (8 %/s)
    assert 390_000 <= grown <= 400_000
    now = flow(downlink.meter, 390_000, now, 1.0)
    assert downlink.on_estimate(500_000, now) is None  # the receiver asks for more than the cap: lifted
    assert DownlinkRate(["video"]).on_estimate(10_000, now) is None  # nothing flows: no signal
    tiny = DownlinkRate(["video", "audio"])
    now = flow(tiny.meter, 200_000, now, 1.0)
    assert tiny.on_estimate(1_000, now) == FLOOR_BPS["video"] + FLOOR_BPS["audio"]


def test_the_uplink_sends_one_value_and_caps_only_on_overuse():
    uplink = UplinkRate()
    camera, screen = object(), object()
    camera_feed, screen_feed = uplink.stream(camera, "video"), uplink.stream(screen, "video")
    now = 0.0
    for _ in range(200):  # camera 500k, a still screen 50k
        camera_feed.add(625, now)
        screen_feed.add(62, now)
        now += 0.01
    # Estimates bounded by each stream's own rate (aiortc's) are not a limit for the connection.
    assert uplink.on_estimate(screen, 85_000, now) == UNCAPPED_BPS
    assert uplink.on_estimate(camera, 760_000, now) == UNCAPPED_BPS
    assert uplink.on_estimate(camera, 400_000, now) == UNCAPPED_BPS  # lower, but not below what flows
    # Overuse: the estimate backs off below what the stream carries -> 85 % of the connection's rate.
    value = uplink.on_estimate(camera, 300_000, now)
    assert 0.85 * 500_000 <= value <= 0.85 * 560_000
    uplink.limits[camera] = 200_000  # a congested subscriber's cap wins when lower
    assert uplink.value(now) == 200_000


def test_our_receivers_estimates_are_paced_but_a_drop_goes_out_at_once():
    from media.passthrough import ReceiverTap

    tap = ReceiverTap.__new__(ReceiverTap)  # only the pacing state is needed
    tap._remb_last, tap._remb_at_ms = None, 0
    assert tap._remb_due(1_000_000, 10_000)
    # aiortc's estimator while "overusing": a value per packet, barely moving.
    assert not any(tap._remb_due(1_000_000 - i * 100, 10_000 + i) for i in range(1, 200))
    assert tap._remb_due(960_000, 10_201)  # -4 %: congestion news goes upstream at once
    assert not tap._remb_due(990_000, 10_300)
    assert tap._remb_due(990_000, 10_451)  # 250 ms later: the next regular one


def test_the_meter_keeps_bytes_counted_with_a_time_read_before_the_last_rate():
    """A caller's ``now`` may be older than a ``rate()`` read in between: its bytes still count."""
    meter = RateMeter()
    meter.add(1000, 10.05)
    meter.add(1000, 10.25)
    meter.rate(10.35)
    meter.add(1000, 10.31)  # read before rate(10.35), in the bucket rate() just opened
    meter.add(1000, 10.15)  # older still
    assert meter.rate(10.36) == int(4000 * 8 / (1.0 + 0.06))


@given(st.lists(st.tuples(st.integers(0, 1500), st.floats(-0.3, 0.5), st.booleans()), max_size=200))
def test_a_stream_feed_counts_what_each_meter_would_count_alone(steps: list[tuple[int, float, bool]]) -> None:
    """StreamFeed.add inlines RateMeter.add's fast path: both meters read as if fed one by one."""
    total = RateMeter()
    feed = UplinkRate().stream("s", "video")
    feed._total = total
    alone, alone_total = RateMeter(), RateMeter()
    now = 100.0
    for nbytes, step, read in steps:
        now = max(0.0, now + step)  # mostly forward, sometimes a time read earlier
        feed.add(nbytes, now)
        alone.add(nbytes, now)
        alone_total.add(nbytes, now)
        if read:
            assert feed.meter.rate(now) == alone.rate(now)
            assert total.rate(now) == alone_total.rate(now)
    assert feed.meter.rate(now + 0.01) == alone.rate(now + 0.01)
    assert total.rate(now + 0.01) == alone_total.rate(now + 0.01)
