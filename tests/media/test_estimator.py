"""media.estimator returns exactly what aiortc's RemoteBitrateEstimator returns, call for call."""

from __future__ import annotations

import random
from typing import Any

from aiortc.rate import BandwidthUsage
from aiortc.rate import RemoteBitrateEstimator as AiortcEstimator
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from media.estimator import RemoteBitrateEstimator

ABS_SEND_TIME_PER_SECOND = 1 << 18  # abs-send-time is 6.18 fixed-point seconds
ABS_SEND_TIME_WRAP = 1 << 24  # ... so it wraps every 64 s
SSRCS = (0x1234, 0xBEEF0001, 0xBEEF0002, 7)
NTP_MS = 3_900_000_000_000  # receivers pass NTP-epoch milliseconds

Packet = dict[str, int]


def _outcome(estimator: Any, packet: Packet) -> Any:
    """What add() gave: its value with the bitrate's type, or the exception type it raised.

    aiortc can raise (ZeroDivisionError once its estimate has fallen to 0); ours must then too,
    from the same state, and the two are fed on.
    """
    try:
        result = estimator.add(**packet)
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return "raised", type(exc)
    return result, None if result is None else type(result[0])


def _aiortc_filter_state(estimator: AiortcEstimator) -> tuple:
    kalman, detector, control = estimator.estimator, estimator.detector, estimator.rate_control
    return (kalman._offset, kalman.slope, kalman.avg_noise, kalman.var_noise, *kalman.E[0],
            *kalman.E[1], detector.threshold, control.avg_max_bitrate_kbps,
            control.var_max_bitrate_kbps)


def _our_filter_state(estimator: RemoteBitrateEstimator) -> tuple:
    return (estimator._offset, estimator._slope, estimator._avg_noise, estimator._var_noise,
            estimator._e00, estimator._e01, estimator._e10, estimator._e11,
            estimator._threshold, estimator._avg_max_kbps, estimator._var_max_kbps)


def assert_same(theirs: AiortcEstimator, ours: RemoteBitrateEstimator, index: int,
                packet: Packet) -> Any:
    """Feed one packet to both; fail unless the outcome and the filter state are identical.

    The returned bitrates are ints that change only when a detector decision flips, so a slip
    in the float arithmetic (a history one entry too long, a sum in another order) can leave
    them equal for a long while; the filter's floats show it at once, so they are compared too
    (white-box: private attributes of both implementations).
    """
    expected = _outcome(theirs, packet)
    actual = _outcome(ours, packet)
    assert actual == expected, f"packet {index} {packet}: aiortc {expected}, ours {actual}"
    expected_state, actual_state = _aiortc_filter_state(theirs), _our_filter_state(ours)
    assert actual_state == expected_state, (
        f"packet {index} {packet}: filter state aiortc {expected_state}, ours {actual_state}")
    return expected


def assert_same_results(packets: list[Packet]) -> list[Any]:
    """Feed ``packets`` to aiortc's estimator and ours; fail at the first difference."""
    theirs, ours = AiortcEstimator(), RemoteBitrateEstimator()
    return [assert_same(theirs, ours, index, packet) for index, packet in enumerate(packets)]


def abs_send_time_at(abs_start: int, send_us: int) -> int:
    """The 24-bit abs-send-time ``send_us`` microseconds after ``abs_start``."""
    return (abs_start + send_us * ABS_SEND_TIME_PER_SECOND // 1_000_000) % ABS_SEND_TIME_WRAP


def bottleneck_stream(count: int, seed: int) -> list[Packet]:
    """``count`` packets of a 1 Mbit/s, 30 fps video through a bottleneck link, as received.

    Key frames every 3 s; a tenth of the frames on a second SSRC; the link drops to 600 kbit/s
    at 40 s and to 900 kbit/s at 100 s (congestion: delay grows, then drains); the sender pauses
    for 3 s at 70 s (the bitrate window empties); abs-send-time wraps at 20 s, 84 s and 148 s.
    """
    rng = random.Random(seed)
    packets: list[Packet] = []
    abs_start = ABS_SEND_TIME_WRAP - 20 * ABS_SEND_TIME_PER_SECOND
    send_us = 0
    link_free_us = 0.0
    last_arrival_ms = 0
    frame = 0
    while len(packets) < count:
        seconds = send_us / 1e6
        if 70 <= seconds < 73:
            send_us += 3_000_000
            continue
        capacity = 600_000 if 40 <= seconds < 46 else 900_000 if 100 <= seconds < 110 else 5e6
        frame_bytes = 12_000 if frame % 90 == 0 else rng.randint(2_500, 5_500)
        ssrc = SSRCS[1] if frame % 10 == 9 else SSRCS[0]
        abs_send_time = abs_send_time_at(abs_start, send_us)
        offset = 0
        while offset < frame_bytes:
            size = min(1200, frame_bytes - offset)
            at_link_us = send_us + offset // 4  # the pacer spreads a frame a little
            link_free_us = max(at_link_us, link_free_us) + size * 8e6 / capacity
            arrival_ms = NTP_MS + int(link_free_us + 20_000 + rng.randint(0, 1_500)) // 1000
            last_arrival_ms = max(last_arrival_ms, arrival_ms)  # a FIFO link: no reordering
            packets.append({"arrival_time_ms": last_arrival_ms, "abs_send_time": abs_send_time,
                            "payload_size": size, "ssrc": ssrc})
            offset += size
        send_us += 33_333
        frame += 1
    return packets[:count]


def test_a_long_congested_stream_gives_the_same_estimates() -> None:
    packets = bottleneck_stream(20_000, seed=1)
    theirs, ours = AiortcEstimator(), RemoteBitrateEstimator()
    hypotheses = set()
    was_initialized = True
    restarts = 0  # packets that found the bitrate window without a rate and restarted it
    results = []
    for index, packet in enumerate(packets):
        results.append(assert_same(theirs, ours, index, packet)[0])
        hypotheses.add(theirs.detector.hypothesis)
        restarts += was_initialized and not theirs.incoming_bitrate_initialized
        was_initialized = theirs.incoming_bitrate_initialized

    # The stream reaches what the comparison is meant to cover.
    estimates = [result[0] for result in results if result is not None]
    assert len(estimates) > 200
    assert {BandwidthUsage.OVERUSING, BandwidthUsage.UNDERUSING} <= hypotheses
    assert any(later < 0.9 * earlier for earlier, later in zip(estimates, estimates[1:]))
    assert restarts >= 2  # the first packet, and the first one after the pause
    assert any(b["abs_send_time"] < a["abs_send_time"] for a, b in zip(packets, packets[1:]))
    assert [result[1] for result in results if result is not None][-1] == [SSRCS[0], SSRCS[1]]


def test_a_clock_stepping_back_right_after_a_restart_counts_as_in_aiortc() -> None:
    # After the window restarts at 10 s, a packet stamped 9.4 s is filed by aiortc under 10.4 s
    # and counted until that millisecond leaves the window; overuse within that second makes
    # the count show in the estimate.
    start = NTP_MS + 10_000
    late = {"arrival_time_ms": start - 600, "abs_send_time": 0, "payload_size": 1200,
            "ssrc": SSRCS[0]}
    congested = []
    for frame in range(1, 40):
        abs_send_time = frame * 33 * ABS_SEND_TIME_PER_SECOND // 1000
        for part in range(3):
            congested.append({"arrival_time_ms": start + frame * 53 + part,
                              "abs_send_time": abs_send_time, "payload_size": 1000,
                              "ssrc": SSRCS[0]})
    first = [{"arrival_time_ms": start, "abs_send_time": 0, "payload_size": 1000,
              "ssrc": SSRCS[0]}]

    with_late = assert_same_results(first + [late] + congested)
    without_late = assert_same_results(first + congested)

    assert [o for o in with_late if o[0]] != [o for o in without_late if o[0]]


def test_packets_whole_windows_apart_after_a_restart_count_as_in_aiortc() -> None:
    # A second of stream (the estimate's 3 s initialisation starts), a pause that restarts the
    # bitrate window, then single packets 2000, 1000, 2001, 1999 and 1 ms apart: each lands on
    # an edge where the previous packet's bytes have or have not just left the window. The
    # first of them initialises the estimate from the incoming bitrate, which shows the count.
    packets = []
    for frame in range(30):
        packets.append({"arrival_time_ms": NTP_MS + frame * 33,
                        "abs_send_time": abs_send_time_at(0, frame * 33_000),
                        "payload_size": 1000, "ssrc": SSRCS[0]})
    now = NTP_MS + 30 * 33 + 1500
    for step_ms in (0, 2000, 1000, 2001, 1999, 1):
        now += step_ms
        packets.append({"arrival_time_ms": now,
                        "abs_send_time": abs_send_time_at(0, (now - NTP_MS) * 1000),
                        "payload_size": 700 + step_ms % 7, "ssrc": SSRCS[0]})

    outcomes = assert_same_results(packets)

    assert outcomes[-6][0] is None and outcomes[-5][0] is not None  # initialised 2000 ms after


def test_an_estimate_fallen_to_zero_fails_as_in_aiortc() -> None:
    # A 3 kbit/s stream backs off under congestion (maximum ~2.3 kbit/s), then sends empty
    # payloads and backs off to 0; aiortc's next additive increase divides by zero.
    packets = []
    delay_ms = 0
    for frame in range(700):
        if 100 <= frame < 130 or 300 <= frame < 330:
            delay_ms += 15
        elif 130 <= frame < 150 or 330 <= frame < 350:
            delay_ms = max(0, delay_ms - 20)
        packets.append({"arrival_time_ms": NTP_MS + frame * 33 + delay_ms,
                        "abs_send_time": frame * 33 * ABS_SEND_TIME_PER_SECOND // 1000,
                        "payload_size": 12 if frame < 250 else 0, "ssrc": SSRCS[0]})

    outcomes = assert_same_results(packets)

    assert ((0, [SSRCS[0]]), int) in outcomes
    assert ("raised", ZeroDivisionError) in outcomes


# Failures are not shrunk: a stream is hundreds of packets, shrinking one runs for minutes,
# and the failure message already names the first packet that differs.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

# Hypothesis: realistic streams built from episodes (steady, congested, draining, paused).
episode = st.fixed_dictionaries({
    "frames": st.integers(10, 90),
    "spacing_ms": st.sampled_from([33, 33, 34, 100, 16, 5, 0]),
    "gap_before_ms": st.sampled_from([0, 0, 0, 0, 0, 1_100, 2_500, 5_000]),
    "clock_step_ms": st.sampled_from([0] * 12 + [-3, -1_500, 400]),  # receiver clock adjusted
    "delay_trend_ms": st.integers(-12, 15),  # queueing delay change per frame
    "max_packets": st.integers(1, 12),
    "spread_ms": st.integers(0, 3),  # between a frame's packets on arrival
    "jitter_ms": st.integers(0, 6),
    "packet_size": st.integers(0, 1200),
    "ssrcs": st.lists(st.sampled_from(SSRCS), min_size=1, max_size=3, unique=True),
})


def stream_from(episodes: list[dict], rng: random.Random, abs_start: int,
                clock_ms: int) -> list[Packet]:
    """The packets of ``episodes``: frames share an abs-send-time, arrivals lag by the queue."""
    packets: list[Packet] = []
    send_us = 0
    delay_ms = 20
    for spec in episodes:
        send_us += spec["gap_before_ms"] * 1000
        clock_ms += spec["clock_step_ms"]
        for _ in range(spec["frames"]):
            abs_send_time = abs_send_time_at(abs_start, send_us)
            delay_ms = max(0, delay_ms + spec["delay_trend_ms"] + rng.randint(-1, 1))
            arrival_ms = clock_ms + send_us // 1000 + delay_ms
            count = rng.randint(1, spec["max_packets"])
            ssrc = rng.choice(spec["ssrcs"])
            for index in range(count):
                full = spec["packet_size"]
                packets.append({
                    "arrival_time_ms": (arrival_ms + index * spec["spread_ms"]
                                        + rng.randint(0, spec["jitter_ms"])),
                    "abs_send_time": abs_send_time,
                    "payload_size": full if index < count - 1 else rng.randint(0, full),
                    "ssrc": ssrc,
                })
            send_us += spec["spacing_ms"] * 1000 + rng.randint(0, 999)
    return packets


@settings(max_examples=60, deadline=None, phases=NO_SHRINK)
@given(
    episodes=st.lists(episode, min_size=2, max_size=8),
    rng=st.randoms(use_true_random=False),
    abs_start=st.integers(0, ABS_SEND_TIME_WRAP - 1),
    clock_ms=st.integers(0, NTP_MS),
)
def test_realistic_streams_give_the_same_estimates(episodes, rng, abs_start, clock_ms) -> None:
    assert_same_results(stream_from(episodes, rng, abs_start, clock_ms))


# Hypothesis: arbitrary calls — reordered timestamps, clocks jumping both ways, any wrap.
call = st.tuples(
    st.integers(-3, 40) | st.sampled_from([-2_500, -1_001, -1_000, -999, 999, 1_000, 1_001,
                                           1_999, 2_000, 2_001, 4_000]),
    st.integers(-3_000, 12_000) | st.integers(0, ABS_SEND_TIME_WRAP - 1),
    st.integers(0, 1200),
    st.sampled_from(SSRCS),
)


@settings(max_examples=150, deadline=None, phases=NO_SHRINK)
@given(calls=st.lists(call, min_size=30, max_size=400),
       abs_start=st.integers(0, ABS_SEND_TIME_WRAP - 1))
def test_arbitrary_calls_give_the_same_results(calls, abs_start) -> None:
    packets = []
    now, abs_send_time = NTP_MS, abs_start
    for arrival_step, abs_step, size, ssrc in calls:
        now += arrival_step
        abs_send_time = (abs_send_time + abs_step) % ABS_SEND_TIME_WRAP
        packets.append({"arrival_time_ms": now, "abs_send_time": abs_send_time,
                        "payload_size": size, "ssrc": ssrc})
    assert_same_results(packets)
