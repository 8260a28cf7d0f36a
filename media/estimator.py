"""Receive-side bandwidth estimation from abs-send-time: aiortc's estimator, rewritten for speed.

``RemoteBitrateEstimator`` is a drop-in replacement for ``aiortc.rate.RemoteBitrateEstimator``
(aiortc 1.16.0, pinned): the same algorithm — WebRTC's abs-send-time remote estimator as aiortc
adapts it (timestamp groups, a Kalman filter for the queueing-delay trend, an overuse detector
with an adaptive threshold, AIMD rate control, a one-second incoming-bitrate window). Only
``add()`` is public, with aiortc's keyword names and return value; aiortc's sub-objects
(``rate_control``, ``detector``, ...) are not exposed because nothing reads them.

Every ``add()`` returns exactly what aiortc's returns for the same sequence of calls: the float
arithmetic is done in the same order on the same values (``round()`` where aiortc rounds, ``**``
where it calls ``pow``), and its quirks are kept (see ``_file_late_packet`` and the
``ZeroDivisionError`` note in ``_update_rate``). ``tests/media/test_estimator.py`` feeds random
and long simulated streams to both and compares every return value and the filter state.

Why: ``add()`` runs once per received video packet, on the server's hot path. On a simulated
1 Mbit/s, 30 fps stream (four packets a frame) aiortc's ``add()`` took 4.8 µs a packet on the
development machine: ``RateCounter._erase_old`` about 30 % (one Python iteration over bucket
objects per elapsed millisecond), ``OveruseEstimator.update_min_frame_period`` about 25 % (a Python
loop over 60 floats per frame), the rest Enum comparisons, two objects allocated per frame, four
layers of method calls and the arithmetic itself. This one took 1.4 µs: the window is a ring of
plain ints whose expired slots are zeroed in batches by C-level slices, the minimum is the builtin
``min`` over a bounded deque, states are ints, and the per-packet path is a single method.
"""

from __future__ import annotations

import math
from collections import deque

# Incoming bitrate: bytes received per millisecond over the last second.
WINDOW_MS = 1000
RING_MS = 2 * WINDOW_MS  # two windows of slots, so expired ones can be zeroed in batches
BITS_PER_BYTE_PER_MS = 8000  # bytes/ms -> bit/s
_ZEROS = [0] * RING_MS

# Timestamp groups. abs-send-time is 6.18 fixed-point seconds; shifted left by 8 it becomes a
# 32-bit timestamp whose unit is 2**-26 s.
INTER_ARRIVAL_SHIFT = 26
TIMESTAMP_TO_MS = 1000.0 / (1 << INTER_ARRIVAL_SHIFT)
GROUP_LENGTH = (5 << INTER_ARRIVAL_SHIFT) // 1000  # 5 ms, in timestamp units
BURST_DELTA_THRESHOLD_MS = 5
UINT32_MASK = 0xFFFFFFFF
UINT32_HALF = 0x80000000

# Overuse estimator (Kalman filter on arrival-time deltas vs. send-time deltas).
DELTA_COUNTER_MAX = 1000
# aiortc's minimum frame period covers the current delta and the 59 before it.
PREVIOUS_FRAME_PERIODS = 59
PROCESS_NOISE_SLOPE = 1e-13
PROCESS_NOISE_OFFSET = 1e-3
PROCESS_NOISE_OFFSET_BOOST = 10 * 1e-3  # computed as aiortc computes it, not the literal 0.01
NOISE_DECAY_EARLY = 1 - 0.01  # (1 - alpha) for the first 300 deltas
NOISE_DECAY_LATE = 1 - 0.002
NOISE_EARLY_DELTAS = 10 * 30

# Overuse detector.
MIN_NUM_DELTAS = 60
MAX_ADAPT_OFFSET_MS = 15
K_UP = 0.0087
K_DOWN = 0.039
OVERUSE_TIME_THRESHOLD_MS = 10
THRESHOLD_MIN = 6
THRESHOLD_MAX = 600

# AIMD rate control.
FEEDBACK_INTERVAL_MS = 500
INITIAL_BITRATE = 30000000
INITIALIZATION_MS = 3000
RESPONSE_TIME_MS = 200 + 100  # aiortc's fixed rtt + 100
MAX_BITRATE_ALPHA = 0.05
MAX_BITRATE_DECAY = 1 - MAX_BITRATE_ALPHA

# Detector hypotheses and rate-control states (aiortc's Enums, as ints).
NORMAL, UNDERUSING, OVERUSING = 0, 1, 2
HOLD, INCREASE, DECREASE = 0, 1, 2


class RemoteBitrateEstimator:
    """The bitrate a sender may use, estimated from the arrival of its abs-send-time packets.

    Same interface and results as ``aiortc.rate.RemoteBitrateEstimator``: call ``add()`` for each
    received video packet; it returns ``(bitrate, ssrcs)`` when an estimate is due (a REMB to
    send), else None. Arrival times are integer milliseconds.
    """

    __slots__ = (
        "_ssrcs",
        "_slots", "_origin", "_cleared", "_newest", "_stored_bytes", "_rate_valid",
        "_group_first", "_group_last", "_group_size", "_group_arrival",
        "_previous_last", "_previous_size", "_previous_arrival",
        "_e00", "_e01", "_e10", "_e11", "_slope", "_offset", "_previous_offset",
        "_num_deltas", "_avg_noise", "_var_noise", "_frame_periods",
        "_hypothesis", "_threshold", "_threshold_updated_ms", "_overuse_counter",
        "_overuse_time", "_detector_offset",
        "_bitrate", "_bitrate_initialized", "_first_throughput_ms", "_last_change_ms",
        "_latest_throughput", "_near_max", "_avg_max_kbps", "_var_max_kbps", "_rate_state",
        "_last_update_ms",
    )

    def __init__(self) -> None:
        self._ssrcs: dict[int, None] = {}  # insertion-ordered set of the SSRCs seen

        # Incoming bitrate (aiortc's RateCounter). The window is [_origin, _origin + 999] ms
        # (_origin is None until the first packet after a reset); bytes are kept per millisecond
        # in a ring indexed by ms % RING_MS. Invariants:
        # - a packet leaves the window exactly when _origin passes its millisecond, so the window
        #   holds a packet iff _newest (the latest millisecond one was filed under) >= _origin;
        #   this replaces aiortc's per-bucket packet counts;
        # - slots of milliseconds before _cleared (<= _origin) are 0; those of [_cleared, _origin)
        #   still hold expired bytes, zeroed in one batch when the rate is needed or when a slot
        #   is about to be reused, instead of millisecond by millisecond as aiortc does;
        # - _stored_bytes is the sum of all slots: the window's bytes once _cleared == _origin.
        self._slots = [0] * RING_MS
        self._origin: int | None = None
        self._cleared = 0
        self._newest = 0
        self._stored_bytes = 0
        self._rate_valid = True  # aiortc's incoming_bitrate_initialized

        # Inter-arrival (aiortc's InterArrival): the current and the previous timestamp group.
        self._group_first: int | None = None  # None: no packet yet
        self._group_last = 0
        self._group_size = 0
        self._group_arrival = 0
        self._previous_last: int | None = None  # None: no previous group yet
        self._previous_size = 0
        self._previous_arrival = 0

        # Overuse estimator: covariance E, state (slope, offset), measurement noise.
        self._e00 = 100.0
        self._e01 = 0.0
        self._e10 = 0.0
        self._e11 = 0.1
        self._slope = 1 / 64
        self._offset = 0.0
        self._previous_offset = 0.0
        self._num_deltas = 0
        self._avg_noise = 0.0
        self._var_noise = 50.0
        self._frame_periods: deque[float] = deque(maxlen=PREVIOUS_FRAME_PERIODS)

        # Overuse detector.
        self._hypothesis = NORMAL
        self._threshold: float = 12.5
        self._threshold_updated_ms: int | None = None
        self._overuse_counter = 0
        self._overuse_time: float | None = None
        self._detector_offset = 0.0  # the offset seen by the previous detection

        # AIMD rate control.
        self._bitrate = INITIAL_BITRATE
        self._bitrate_initialized = False
        self._first_throughput_ms: int | None = None
        self._last_change_ms: int | None = None
        self._latest_throughput = INITIAL_BITRATE
        self._near_max = False
        self._avg_max_kbps: float | None = None
        self._var_max_kbps = 0.4
        self._rate_state = HOLD
        self._last_update_ms: int | None = None

    def add(self, arrival_time_ms: int, abs_send_time: int, payload_size: int,
            ssrc: int) -> tuple[int, list[int]] | None:
        """Account one received packet; return (bitrate, SSRCs seen) when an estimate is due."""
        now = arrival_time_ms
        self._ssrcs[ssrc] = None

        # Incoming bitrate. Like aiortc, first ask whether the window has a rate now; if it has
        # none (first packet, a second without packets, or the clock at or before the window's
        # start), start the window afresh, unless the previous packet already did. Then file
        # the packet's bytes.
        origin = self._origin
        if origin is None:
            self._rate_valid = False  # resetting an unstarted window changes nothing else
        else:
            if origin < now - (WINDOW_MS - 1):
                origin = now - (WINDOW_MS - 1)
            if now > origin and self._newest >= origin:
                self._rate_valid = True
            elif self._rate_valid:
                self._rate_valid = False
                self._slots = [0] * RING_MS
                self._stored_bytes = 0
                origin = None
        if origin is None:
            origin = self._cleared = self._newest = filed_ms = now
        elif now < origin:
            filed_ms = self._file_late_packet(now, origin)
        else:
            filed_ms = now
            if now > self._newest:
                self._newest = now
        self._origin = origin
        if filed_ms - RING_MS >= self._cleared:  # the slot may hold a millisecond 2 s old
            self._clear_expired(origin)
        self._slots[filed_ms % RING_MS] += payload_size
        self._stored_bytes += payload_size

        # Timestamp groups: packets sent within 5 ms of a group's first one (or arriving in a
        # burst) form one group; each completed group yields a delta for the filter.
        timestamp = abs_send_time << 8
        first = self._group_first
        if first is None:
            self._group_first = self._group_last = timestamp
            self._group_size = payload_size
            self._group_arrival = now
        elif timestamp == self._group_last:  # another packet of the same frame: the common case
            self._group_size += payload_size
            self._group_arrival = now
        elif (timestamp - first) & UINT32_MASK < UINT32_HALF:  # else sent before the group: ignored
            last = self._group_last
            timestamp_delta_ms = TIMESTAMP_TO_MS * ((timestamp - last) & UINT32_MASK)
            arrival_delta = now - self._group_arrival
            if (
                timestamp_delta_ms <= 0.5  # rounds to 0 ms
                or (arrival_delta <= BURST_DELTA_THRESHOLD_MS
                    and arrival_delta < round(timestamp_delta_ms))
                or (timestamp - first) & UINT32_MASK <= GROUP_LENGTH
            ):
                later = timestamp - last
                if (0 < later < UINT32_HALF) or (later < 0 and -later > UINT32_HALF):
                    self._group_last = timestamp
                self._group_size += payload_size
                self._group_arrival = now
            else:  # the packet starts a new group: the current one is complete
                previous_last = self._previous_last
                previous_size = self._previous_size
                previous_arrival = self._previous_arrival
                size = self._group_size
                arrival = self._group_arrival
                self._previous_last = last
                self._previous_size = size
                self._previous_arrival = arrival
                self._group_first = self._group_last = timestamp
                self._group_size = payload_size
                self._group_arrival = now
                if previous_last is not None:
                    self._update_filter(
                        arrival - previous_arrival,
                        ((last - previous_last) & UINT32_MASK) * TIMESTAMP_TO_MS,
                        size - previous_size,
                        now,
                    )

        if (
            self._last_update_ms is None
            or now - self._last_update_ms > FEEDBACK_INTERVAL_MS
            or self._hypothesis == OVERUSING
        ):
            return self._update_rate(now)
        return None

    def _clear_expired(self, origin: int) -> None:
        """Zero the slots of the expired milliseconds [_cleared, origin), minding the wrap.

        No slot of the window is touched: a packet is filed at ``ms`` only once ``ms - RING_MS``
        has been cleared, so the ring never holds two milliseconds with the same slot.
        """
        cleared = self._cleared
        self._cleared = origin
        if self._newest < cleared:
            return  # nothing stored since: every slot is already 0
        elapsed = origin - cleared
        if elapsed >= RING_MS:  # every slot is expired
            self._slots = [0] * RING_MS
            self._stored_bytes = 0
            return
        slots = self._slots
        begin = cleared % RING_MS
        end = begin + elapsed
        if end <= RING_MS:
            self._stored_bytes -= sum(slots[begin:end])
            slots[begin:end] = _ZEROS[:elapsed]
        else:
            end -= RING_MS
            self._stored_bytes -= sum(slots[begin:]) + sum(slots[:end])
            slots[begin:] = _ZEROS[begin:]
            slots[:end] = _ZEROS[:end]

    def _file_late_packet(self, now: int, origin: int) -> int:
        """Account a packet that arrived before the window's start, as aiortc does.

        This happens only when the clock steps back past the window's start while the previous
        packet found no rate (typically: it had just restarted the window). aiortc
        indexes its ring with the negative offset, which files the packet under a later
        millisecond of the window (``now`` plus a multiple of 1000); the packet then counts
        toward the rate until that millisecond expires. Kept so that results stay identical.
        """
        filed_ms = origin + (now - origin) % WINDOW_MS  # aiortc's slot, as a millisecond
        if filed_ms > self._newest:
            self._newest = filed_ms
        return filed_ms

    def _update_filter(self, arrival_delta: int, timestamp_delta_ms: float, size_delta: int,
                       now: int) -> None:
        """Feed one group delta to the Kalman filter, then to the overuse detector."""
        hypothesis = self._hypothesis

        # Minimum frame period: over this delta and the previous ones the deque holds.
        periods = self._frame_periods
        min_frame_period = timestamp_delta_ms
        if periods:
            previous_min = min(periods)
            if previous_min < min_frame_period:
                min_frame_period = previous_min
        periods.append(timestamp_delta_ms)

        num_deltas = self._num_deltas + 1
        if num_deltas > DELTA_COUNTER_MAX:
            num_deltas = DELTA_COUNTER_MAX
        self._num_deltas = num_deltas

        # Kalman filter with measurement h = (size_delta, 1.0); products with h[1] are dropped
        # since x * 1.0 == x exactly.
        e00 = self._e00 + PROCESS_NOISE_SLOPE
        e01 = self._e01
        e10 = self._e10
        e11 = self._e11 + PROCESS_NOISE_OFFSET
        offset = self._offset
        if (
            (hypothesis == OVERUSING and offset < self._previous_offset)
            or (hypothesis == UNDERUSING and offset > self._previous_offset)
        ):
            e11 += PROCESS_NOISE_OFFSET_BOOST
        eh0 = e00 * size_delta + e01
        eh1 = e10 * size_delta + e11
        residual = arrival_delta - timestamp_delta_ms - self._slope * size_delta - offset

        if hypothesis == NORMAL:  # measurement noise is only learnt while not over/underusing
            max_residual = 3.0 * math.sqrt(self._var_noise)
            if abs(residual) < max_residual:
                clamped = residual
            else:
                clamped = -max_residual if residual < 0 else max_residual
            decay = NOISE_DECAY_LATE if num_deltas > NOISE_EARLY_DELTAS else NOISE_DECAY_EARLY
            beta = decay ** (min_frame_period * 30.0 / 1000.0)
            avg_noise = beta * self._avg_noise + (1 - beta) * clamped
            var_noise = beta * self._var_noise + (1 - beta) * (avg_noise - clamped) ** 2
            self._avg_noise = avg_noise
            self._var_noise = 1.0 if var_noise < 1 else var_noise

        denom = self._var_noise + size_delta * eh0 + eh1
        k0 = eh0 / denom
        k1 = eh1 / denom
        ikh00 = 1.0 - k0 * size_delta
        ikh01 = -k0
        ikh10 = -k1 * size_delta
        ikh11 = 1.0 - k1
        self._e00 = e00 * ikh00 + e10 * ikh01
        self._e01 = e01 * ikh00 + e11 * ikh01
        self._e10 = e00 * ikh10 + e10 * ikh11
        self._e11 = e01 * ikh10 + e11 * ikh11
        self._previous_offset = offset
        self._slope += k0 * residual
        offset += k1 * residual
        self._offset = offset

        # Overuse detector: compare the scaled offset with the adaptive threshold.
        if num_deltas < 2:
            return
        modified_offset = (num_deltas if num_deltas < MIN_NUM_DELTAS else MIN_NUM_DELTAS) * offset
        threshold = self._threshold
        if modified_offset > threshold:
            overuse_time = self._overuse_time
            if overuse_time is None:
                overuse_time = timestamp_delta_ms / 2
            else:
                overuse_time += timestamp_delta_ms
            self._overuse_counter += 1
            if (
                overuse_time > OVERUSE_TIME_THRESHOLD_MS
                and self._overuse_counter > 1
                and offset >= self._detector_offset
            ):
                self._overuse_counter = 0
                overuse_time = 0
                self._hypothesis = OVERUSING
            self._overuse_time = overuse_time
        else:
            self._overuse_counter = 0
            self._overuse_time = None
            self._hypothesis = UNDERUSING if modified_offset < -threshold else NORMAL
        self._detector_offset = offset

        # Threshold adaptation (not on outliers), at most 100 ms worth at a time.
        if self._threshold_updated_ms is None:
            self._threshold_updated_ms = now
        magnitude = abs(modified_offset)
        if magnitude > threshold + MAX_ADAPT_OFFSET_MS:
            self._threshold_updated_ms = now
            return
        k = K_DOWN if magnitude < threshold else K_UP
        elapsed_ms = min(now - self._threshold_updated_ms, 100)
        threshold += k * (magnitude - threshold) * elapsed_ms
        self._threshold = max(THRESHOLD_MIN, min(threshold, THRESHOLD_MAX))
        self._threshold_updated_ms = now

    def _update_rate(self, now: int) -> tuple[int, list[int]] | None:
        """Run AIMD rate control on the detector's state; return the estimate if there is one.

        State is changed in aiortc's order, so that aiortc's one failure mode is reproduced too:
        when overuse during a second of empty payloads has set the estimate to 0 while the
        remembered maximum is a few kbit/s, the next additive increase divides by zero; both
        raise ZeroDivisionError, from the same state.
        """
        origin: int = self._origin  # type: ignore[assignment]  # add() has just set it
        throughput: int | None = None
        if now > origin and self._newest >= origin:
            if self._cleared < origin:
                self._clear_expired(origin)
            throughput = round(BITS_PER_BYTE_PER_MS * self._stored_bytes / (now - origin + 1))
        usage = self._hypothesis

        if not self._bitrate_initialized:
            if throughput is not None:
                if self._first_throughput_ms is None:
                    self._first_throughput_ms = now
                elif now - self._first_throughput_ms > INITIALIZATION_MS:
                    self._bitrate = throughput
                    self._bitrate_initialized = True
            if not self._bitrate_initialized and usage != OVERUSING:
                return None

        state = self._rate_state
        if usage == NORMAL:
            if state == HOLD:
                self._last_change_ms = now
                state = INCREASE
        elif usage == OVERUSING:
            state = DECREASE
        else:
            state = HOLD
        self._rate_state = state

        if throughput is not None:
            self._latest_throughput = throughput
        else:
            throughput = self._latest_throughput
        throughput_kbps = throughput / 1000
        bitrate = self._bitrate

        if state == INCREASE:
            avg_max = self._avg_max_kbps
            if avg_max is not None:
                sigma = math.sqrt(self._var_max_kbps * avg_max)
                if throughput_kbps >= avg_max + 3 * sigma:  # far above the old maximum: forget it
                    self._near_max = False
                    self._avg_max_kbps = None
            # _last_change_ms is set: INCREASE is only entered from HOLD, which sets it.
            elapsed_ms = now - self._last_change_ms  # type: ignore[operator]
            if self._near_max:  # additive: about one packet per response time
                bits_per_frame = self._bitrate / 30
                packets_per_frame = math.ceil(bits_per_frame / (8 * 1200))
                packet_bits = bits_per_frame / packets_per_frame
                per_second = max(4000, int((packet_bits * 1000) / RESPONSE_TIME_MS))
                bitrate += int(elapsed_ms * per_second / 1000)
            else:  # multiplicative: 8 % per second
                alpha = 1.08 ** (min(elapsed_ms, 1000) / 1000)
                bitrate += int(max((alpha - 1) * bitrate, 1000))
            self._last_change_ms = now
        elif state == DECREASE:
            avg_max = self._avg_max_kbps
            if avg_max is not None:
                sigma = math.sqrt(self._var_max_kbps * avg_max)
                if throughput_kbps < avg_max - 3 * sigma:  # far below the old maximum: forget it
                    avg_max = None
            if avg_max is None:
                avg_max = throughput_kbps
            else:
                avg_max = MAX_BITRATE_DECAY * avg_max + MAX_BITRATE_ALPHA * throughput_kbps
            norm = max(1, avg_max)
            var_max = (MAX_BITRATE_DECAY * self._var_max_kbps
                       + MAX_BITRATE_ALPHA * (avg_max - throughput_kbps) ** 2 / norm)
            self._avg_max_kbps = avg_max
            self._var_max_kbps = max(0.4, min(var_max, 2.5))
            self._near_max = True
            bitrate = round(0.85 * throughput)
            self._last_change_ms = now
            self._rate_state = HOLD

        self._bitrate = min(bitrate, max(int(1.5 * throughput) + 10000, self._bitrate))
        self._last_update_ms = now
        return self._bitrate, list(self._ssrcs)
