"""A userspace link emulator for tests: two network namespaces joined by two TUN devices.

The kernel here has no netem (see /work/shared/NETWORK-TESTS.md), so delay, jitter, loss,
rate and silent outages are applied by a forwarding thread in the test process:

    village namespace                test process                    county namespace
    tun (10.77.N.1 peer .2)  ◀──fd──▶  EmulatedLink thread  ◀──fd──▶  tun (10.77.N.2 peer .1)

Both TUN devices are opened (``TUNSETIFF``, ``IFF_TUN|IFF_NO_PI``) in the root namespace and
then moved into their namespaces; the open descriptors keep working after the move. Each
direction has its own :class:`Profile`, changeable while the link runs (:meth:`EmulatedLink.set`,
:meth:`EmulatedLink.blackhole`). A seeded RNG makes the loss pattern repeatable.

Use it as a context manager; the namespaces are deleted on exit whatever happened::

    with EmulatedLink(Profile(delay=0.4, loss=0.01), seed=7) as link:
        subprocess.run(link.village_exec("ping", "-c1", link.county_ip))
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import os
import random
import select
import shutil
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.helpers import require

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 1500


@dataclass(frozen=True)
class Profile:
    """What one direction of the link does to each packet.

    ``delay`` ± ``jitter`` (uniform) in seconds; ``loss`` is the drop probability; ``rate``
    in bit/s (0 = unlimited) is a token bucket of ``burst`` bytes whose queue holds at most
    ``queue_delay`` seconds of traffic (tail drop beyond). With ``reorder`` False a packet
    never overtakes the one before it (jitter then only bunches packets, as on a real path).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    rate: float = 0.0
    burst: int = 16 * 1024
    queue_delay: float = 0.4
    reorder: bool = False


@dataclass
class DirectionStats:
    """Packet counters for one direction."""

    received: int = 0
    delivered: int = 0
    lost: int = 0
    blackholed: int = 0
    overflowed: int = 0


@dataclass
class _Direction:
    name: str
    source: int
    sink: int
    profile: Profile
    stats: DirectionStats = field(default_factory=DirectionStats)
    queue: list[tuple[float, int, bytes]] = field(default_factory=list)
    last_due: float = 0.0
    link_free_at: float = 0.0


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise LinkUnavailable(f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")


class LinkUnavailable(RuntimeError):
    """Namespaces or TUN devices cannot be created on this machine."""


def link_emulation_missing() -> str | None:
    """Why an EmulatedLink cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "root (for ip netns and TUN devices)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun"
    return None


def require_link_emulation() -> None:
    """Skip locally / fail under CI=true when namespaces or TUN devices are unavailable."""
    missing = link_emulation_missing()
    require(missing is None, f"link emulation: {missing}")


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class EmulatedLink:
    """Two fresh namespaces (village ``ch-v-*``, county ``ch-c-*``) joined by an impaired link.

    ``to_county`` and ``to_village`` are the per-direction profiles. Raises
    :class:`LinkUnavailable` (from ``__enter__``) if namespaces or TUN devices cannot be made.
    """

    def __init__(self, to_county: Profile | None = None, to_village: Profile | None = None,
                 *, seed: int = 0, subnet: int | None = None) -> None:
        tag = uuid.uuid4().hex[:8]
        self.village_ns, self.county_ns = f"ch-v-{tag}", f"ch-c-{tag}"
        self._village_dev, self._county_dev = f"chv{tag}", f"chc{tag}"
        n = subnet if subnet is not None else random.randrange(256)
        self.village_ip, self.county_ip = f"10.77.{n}.1", f"10.77.{n}.2"
        self._profiles = (to_county or Profile(), to_village or to_county or Profile())
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._blackhole = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: list[int] = []
        self._namespaces: list[str] = []
        self._directions: dict[str, _Direction] = {}
        self._seq = 0

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> EmulatedLink:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        try:
            village_fd = _open_tun(self._village_dev)
            self._fds.append(village_fd)
            county_fd = _open_tun(self._county_dev)
            self._fds.append(county_fd)
        except OSError as exc:
            raise LinkUnavailable(f"cannot open a TUN device: {exc}") from None
        for ns, dev, local, peer in (
            (self.village_ns, self._village_dev, self.village_ip, self.county_ip),
            (self.county_ns, self._county_dev, self.county_ip, self.village_ip),
        ):
            _run("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", local, "peer", peer, "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "mtu", str(MTU), "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        self._directions = {
            "to_county": _Direction("to_county", village_fd, county_fd, self._profiles[0]),
            "to_village": _Direction("to_village", county_fd, village_fd, self._profiles[1]),
        }
        self._thread = threading.Thread(target=self._forward, name=f"netem-{self.village_ns}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop forwarding, close the TUN devices and delete both namespaces (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        for ns in self._namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._namespaces.clear()

    # -- control while running -------------------------------------------------------------

    def set(self, direction: str = "both", **changes: object) -> None:
        """Change fields of one direction's profile (``to_county``, ``to_village`` or ``both``)."""
        names = ("to_county", "to_village") if direction == "both" else (direction,)
        with self._lock:
            for name in names:
                d = self._directions[name]
                d.profile = dataclasses.replace(d.profile, **changes)  # type: ignore[arg-type]

    def blackhole(self, on: bool) -> None:
        """Silently drop everything both ways, including packets already in flight."""
        with self._lock:
            self._blackhole = on

    def profile(self, direction: str) -> Profile:
        return self._directions[direction].profile

    def stats(self, direction: str) -> DirectionStats:
        """A copy of the counters of ``to_county`` or ``to_village``."""
        with self._lock:
            return dataclasses.replace(self._directions[direction].stats)

    def village_exec(self, *argv: str) -> list[str]:
        """The argv that runs ``argv`` inside the village namespace."""
        return ["ip", "netns", "exec", self.village_ns, *argv]

    def county_exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.county_ns, *argv]

    # -- the forwarding loop ---------------------------------------------------------------

    def _admit(self, d: _Direction, packet: bytes, now: float) -> None:
        """Decide a packet's fate; if it survives, queue it for delivery at its due time."""
        d.stats.received += 1
        p = d.profile
        if self._blackhole:
            d.stats.blackholed += 1
            return
        if p.loss and self._rng.random() < p.loss:
            d.stats.lost += 1
            return
        departure = now
        if p.rate:
            # Token bucket as a virtual clock: the link may run up to `burst` ahead of now.
            credit = p.burst * 8 / p.rate
            start = max(d.link_free_at, now - credit)
            d.link_free_at = start + len(packet) * 8 / p.rate
            departure = max(now, d.link_free_at - credit)
            if departure - now > p.queue_delay:
                d.link_free_at -= len(packet) * 8 / p.rate
                d.stats.overflowed += 1
                return
        due = departure + p.delay
        if p.jitter:
            due += self._rng.uniform(-p.jitter, p.jitter)
        if not p.reorder:
            due = max(due, d.last_due)
        d.last_due = due
        self._seq += 1
        heapq.heappush(d.queue, (due, self._seq, packet))

    def _deliver(self, d: _Direction, now: float) -> None:
        while d.queue and d.queue[0][0] <= now:
            _, _, packet = heapq.heappop(d.queue)
            if self._blackhole:
                d.stats.blackholed += 1
                continue
            try:
                os.write(d.sink, packet)
                d.stats.delivered += 1
            except OSError:
                d.stats.overflowed += 1  # the receiving side's queue is full or the link is down

    def _forward(self) -> None:
        directions: Sequence[_Direction] = list(self._directions.values())
        by_fd = {d.source: d for d in directions}
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                dues = [d.queue[0][0] for d in directions if d.queue]
            timeout = min([0.05] + [max(0.0, due - now) for due in dues])
            try:
                readable, _, _ = select.select(list(by_fd), [], [], timeout)
            except (OSError, ValueError):
                return  # descriptors closed under us: we are shutting down
            now = time.monotonic()
            with self._lock:
                for fd in readable:
                    d = by_fd[fd]
                    for _ in range(64):
                        try:
                            packet = os.read(fd, MTU + 64)
                        except BlockingIOError:
                            break
                        except OSError:
                            return
                        self._admit(d, packet, now)
                for d in directions:
                    self._deliver(d, now)
