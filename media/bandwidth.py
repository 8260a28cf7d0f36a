"""Which bandwidth estimates may limit a publisher: only real congestion signals.

Pure (no aiortc, no clock reads: pass ``now``). Used by ``media.passthrough.ReceiverTap``
(the REMB the server sends upstream to a publishing browser) and ``media.relay`` (a
subscriber's REMB, forwarded upstream).

Why not forward estimates as they are: a receive-side estimator (aiortc's, and Chromium's
for REMB) never reports more than ~1.5 × what it currently receives, because it has no
probes to measure more. Fed back as a *cap* on the sender, that bound follows the sender
down: a stream that is application-limited (a still screen) or starts slow gets a low
estimate, Chromium applies each REMB to its whole transport, sends less, and the next
estimate is lower still — on loopback the outlet settled at 60 kbit/s (Chromium's floor,
30 kbit/s per video). So an estimate only caps the sender when it says *less than is
flowing* (the estimator detected overuse and backed off to ~0.85 × incoming); the cap then
recovers by itself (+8 %/s, as GCC does) and is lifted once the sender no longer comes near
it. Real congestion still propagates at once; a quiet estimator never holds a call down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Hashable

CONGESTION_RATIO = 0.9  # an estimate below 90 % of what is flowing is a congestion signal
BACKOFF = 0.85  # our own uplink after overuse: 85 % of what was flowing (GCC's decrease)
RECOVERY_PER_SECOND = 1.08  # a cap then grows 8 %/s (GCC's multiplicative increase)
RELEASE_RATIO = 2.0  # a cap twice what flows limits nothing any more: lifted
UNCAPPED_BPS = 10_000_000  # the REMB sent upstream when nothing is congested (far above a call)
FLOOR_BPS = {"video": 50_000, "audio": 32_000}  # never cap below this per track kind
METER_BUCKET = 0.1  # seconds
METER_WINDOW = 1.0


def floor_for(kinds: Iterable[str]) -> int:
    """The lowest cap for a set of tracks (Chromium needs ~30 kbit/s per video stream anyway)."""
    return sum(FLOOR_BPS.get(kind, 0) for kind in kinds)


class RateMeter:
    """Bits per second flowing over the last second, counted in 100 ms buckets (cheap per packet)."""

    __slots__ = ("_buckets", "_index", "_bytes", "end")

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, int]] = deque()  # closed buckets: (bucket index, bytes)
        self._index = -1  # the open bucket
        self._bytes = 0
        self.end = 0.0  # when the open bucket ends: a packet before it only adds (see StreamFeed.add)

    def add(self, nbytes: int, now: float) -> None:
        if now < self.end:  # the per-packet case: one comparison, one addition
            self._bytes += nbytes  # (a ``now`` read before the last rate() counts as current)
            return
        self._close(int(now / METER_BUCKET))
        self._bytes = nbytes

    def _close(self, index: int) -> None:
        """Move on to bucket ``index``: the open one joins the closed ones, old ones go."""
        if index > self._index:
            if self._bytes:
                self._buckets.append((self._index, self._bytes))
            self._index, self._bytes = index, 0
            self.end = (index + 1) * METER_BUCKET
        self._trim(index)

    def _trim(self, index: int) -> None:
        oldest = index - round(METER_WINDOW / METER_BUCKET)  # the whole last second + the current bucket
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def rate(self, now: float) -> int:
        index = int(now / METER_BUCKET)
        self._close(index)
        seconds = METER_WINDOW + (now - index * METER_BUCKET)
        return int((sum(nbytes for _, nbytes in self._buckets) + self._bytes) * 8 / seconds)


class CongestionCap:
    """A cap that only a congestion signal sets, that recovers by itself and is then lifted."""

    def __init__(self) -> None:
        self.cap: int | None = None
        self.congestions = 0
        self._at = 0.0

    def congested(self, limit: int, floor: int, now: float) -> None:
        """A congestion signal: cap at ``limit`` (never below ``floor``)."""
        self.cap = max(floor, int(limit))
        self._at = now
        self.congestions += 1

    def current(self, flowing: int, floor: int, now: float, estimate: int | None = None) -> int | None:
        """The cap now (None: not capped), grown since the last call.

        Lifted when far above ``flowing`` (it limits nothing) or when the estimate is back
        at or above it (the receiver no longer asks for less; the browser's own estimate
        then ramps up gradually from where the cap held it, so lifting causes no jump).
        """
        if self.cap is not None:
            self.cap = int(self.cap * RECOVERY_PER_SECOND ** max(0.0, now - self._at))
            self._at = now
            if self.cap >= RELEASE_RATIO * max(flowing, floor) or (estimate is not None and estimate >= self.cap):
                self.cap = None
        return self.cap


class DownlinkRate:
    """One subscriber connection: what we forward to it, and the cap its REMB justifies.

    Its REMB covers its whole transport, so every track forwarded to it feeds one meter.
    """

    def __init__(self, kinds: Iterable[str] = ()) -> None:
        self.meter = RateMeter()
        self.cap = CongestionCap()
        self.kinds: list[str] = list(kinds)
        self.estimate: int | None = None

    @property
    def floor(self) -> int:
        return floor_for(self.kinds) or FLOOR_BPS["video"]

    def on_estimate(self, estimate: int, now: float) -> int | None:
        """The subscriber's REMB; returns the cap it justifies upstream (None: no cap)."""
        self.estimate = estimate
        flowing = self.meter.rate(now)
        if flowing and estimate < CONGESTION_RATIO * flowing:
            self.cap.congested(estimate, self.floor, now)
            return self.cap.current(flowing, self.floor, now)
        return self.cap.current(flowing, self.floor, now, estimate)


class StreamFeed:
    """One received stream's bytes: counted in its own meter and in its connection's total.

    Held by the receiver so that a packet costs no lookup of its stream (the per-packet path).
    """

    __slots__ = ("meter", "_total")

    def __init__(self, total: RateMeter) -> None:
        self.meter = RateMeter()
        self._total = total

    def add(self, nbytes: int, now: float) -> None:
        # RateMeter.add's per-packet case inlined for both meters: two calls fewer per packet.
        meter, total = self.meter, self._total
        if now < meter.end:
            meter._bytes += nbytes
        else:
            meter.add(nbytes, now)
        if now < total.end:
            total._bytes += nbytes
        else:
            total.add(nbytes, now)


class UplinkRate:
    """One publisher connection: the single REMB value the server sends its browser.

    The browser applies any REMB to its whole transport, so each receiver's estimate
    (aiortc keeps one per video stream) is only read as an overuse signal for its own
    stream — it backed off (a lower value than its last) to below what that stream
    carries; a value that merely lags a rising stream is not one — and the value sent is one per connection: min(our own congestion cap, the caps
    forwarded from congested subscribers), else :data:`UNCAPPED_BPS`.
    """

    def __init__(self) -> None:
        self.total = RateMeter()
        self.cap = CongestionCap()
        self._streams: dict[Hashable, tuple[str, RateMeter]] = {}
        self.ssrcs: dict[Hashable, int] = {}
        self.estimates: dict[Hashable, int] = {}  # per stream: aiortc's latest estimate
        self.limits: dict[Hashable, int | None] = {}  # per stream: the subscribers' cap
        self.sent: int | None = None

    def stream(self, key: Hashable, kind: str) -> "StreamFeed":
        """Register one received stream; returns what its packets feed (call ``add`` per packet)."""
        feed = StreamFeed(self.total)
        self._streams[key] = (kind, feed.meter)
        return feed

    @property
    def floor(self) -> int:
        return floor_for(kind for kind, _ in self._streams.values())

    def on_estimate(self, key: Hashable, estimate: int, now: float) -> int:
        """Our receiver's estimate of one stream; returns the REMB to send for the connection."""
        flowing = self._streams[key][1].rate(now)
        previous = self.estimates.get(key)
        self.estimates[key] = estimate
        if previous is not None and estimate < previous and flowing and estimate < CONGESTION_RATIO * flowing:
            self.cap.congested(BACKOFF * self.total.rate(now), self.floor, now)
        return self.value(now)

    def value(self, now: float) -> int:
        """The REMB for the whole connection now."""
        caps = [c for c in self.limits.values() if c is not None]
        own = self.cap.current(self.total.rate(now), self.floor, now,
                               sum(self.estimates.values()) if self.estimates else None)
        if own is not None:
            caps.append(own)
        self.sent = max(self.floor, min(caps)) if caps else UNCAPPED_BPS
        return self.sent
