"""What the two sides of a call exchange besides media: chat, the outlet's link reports, snapshots.

``chat:send`` → ``chat:message`` to both sides, each message in the session's hash-chained
log (``chat_message``); ``link:report`` (outlet, ~1/s) → ``link:status`` to the agent, with a
``link_step`` log entry only when the weak-link step changes; ``media:snapshot`` (agent) →
a JPEG of the outlet's camera or screen, taken on the node that owns the call's media
(through the router, so any node can ask) and stored with the session
(:mod:`recordings.snapshots`). Handlers follow the server's ack wrapper: parse → use case →
acknowledgement; errors are :mod:`cloudhall.errors` with stable codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from typing import Any, Callable, Literal, Protocol

from pydantic import Field

from cloudhall.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unavailable
from cloudhall.identities import Principal
from signaling.calls import Call, CallState
from signaling.media_bridge import MediaBridge
from signaling.schemas import CallId, Payload
from signaling.server import AGENT, CALLERS, OUTLET, SignalingServer
from signaling.service import CallService
from signaling.views import outlet_room, user_room

log = logging.getLogger(__name__)

# -- event names ----------------------------------------------------------------------------
CHAT_SEND = "chat:send"
CHAT_MESSAGE = "chat:message"
LINK_REPORT = "link:report"
LINK_STATUS = "link:status"
MEDIA_SNAPSHOT = "media:snapshot"

TALKING = frozenset({CallState.CONNECTING, CallState.IN_CALL})
MAX_CHAT_CHARS = 1000
SNAPSHOT_TIMEOUT = 15.0
# Calls whose last weak-link step this node remembers (oldest forgotten first).
STEP_MEMORY = 10_000


# -- payloads -------------------------------------------------------------------------------
class ChatSend(Payload):
    call_id: CallId
    text: str = Field(min_length=1, max_length=MAX_CHAT_CHARS)


class LinkReport(Payload):
    call_id: CallId
    level: Literal["good", "fair", "poor", "bad"]
    step: int = Field(ge=0, le=3)  # 0 normal … 3 audio only (web/static/js/peer.js LADDER)
    rtt_ms: float | None = Field(default=None, ge=0, le=60_000)
    loss_in: float = Field(default=0, ge=0, le=100)
    loss_out: float = Field(default=0, ge=0, le=100)
    kbps_in: float = Field(default=0, ge=0, le=1_000_000)
    kbps_out: float = Field(default=0, ge=0, le=1_000_000)


class SnapshotRequest(Payload):
    call_id: CallId
    source: Literal["camera", "screen"]


class SnapshotStorage(Protocol):
    """Where snapshots are kept (:class:`recordings.snapshots.SnapshotStore`)."""

    async def save(self, session_id: str, source: str, jpeg: bytes, actor: str) -> Any: ...


class RateLimit:
    """A token bucket per key: ``rate`` events a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.what, self.clock = rate, burst, what, clock
        self._buckets: dict[Any, tuple[float, float]] = {}

    def take(self, key: Any) -> None:
        """Spend one token of ``key``; raise :class:`TooManyRequests` when none is left."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise TooManyRequests(
                f"too many {self.what}: at most {self.rate:g} a second", details={"retry_after": round((1 - tokens) / self.rate, 2)}
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget full buckets of quiet keys
            for stale in [k for k, (t, at) in self._buckets.items() if now - at > self.burst / self.rate]:
                del self._buckets[stale]


class InCall:
    """The in-call events of one node."""

    def __init__(
        self,
        server: SignalingServer,
        bridge: MediaBridge,
        snapshots: SnapshotStorage | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.service: CallService = server.service
        self.bridge = bridge
        self.snapshots = snapshots
        self.clock = clock
        self.chat_limit = RateLimit(5, 5, "chat messages")
        self.link_limit = RateLimit(5, 10, "link reports")
        self.snapshot_limit = RateLimit(1, 3, "snapshots")
        self._steps: OrderedDict[str, int] = OrderedDict()

    def register(self) -> None:
        """Add the events to the Socket.IO server and the snapshot request to the media owner."""
        self.server.on(CHAT_SEND, ChatSend, CALLERS, self.chat)
        self.server.on(LINK_REPORT, LinkReport, OUTLET, self.link_report)
        self.server.on(MEDIA_SNAPSHOT, SnapshotRequest, AGENT, self.snapshot)
        self.bridge.requests["snapshot"] = self._snapshot_here

    async def _talking_call(self, p: Principal, call_id: str) -> tuple[Call, str]:
        call = await self.service.queue.get(call_id)
        if call is None:
            raise NotFound(f"call {call_id} does not exist")
        side = self.service.participant_role(p, call)  # Forbidden for anybody else
        if call.state not in TALKING:
            raise Conflict(f'call {call_id} is "{call.state.value}": not in progress', code="not_in_call")
        return call, side

    async def _to_both(self, event: str, body: dict[str, Any], call: Call) -> None:
        await self.service.notifier.emit(event, body, outlet_room(call.outlet_id))
        if call.agent_id is not None:
            await self.service.notifier.emit(event, body, user_room(call.agent_id))

    # -- chat -------------------------------------------------------------------------------
    async def chat(self, p: Principal, m: ChatSend) -> dict[str, Any]:
        """Log a chat line in the session and pass it to both sides; ack ``{id, at}``."""
        self.chat_limit.take(p.user_id)
        call, side = await self._talking_call(p, m.call_id)
        now = self.clock()
        message_id = uuid.uuid4().hex
        entry = {"id": message_id, "from": side, "name": p.display_name, "text": m.text}
        # Logged before it is shown: what the other side saw, the supervisor can read.
        await self.service.records.append(call.id, "chat_message", f"user:{p.user_id}", entry, now)
        await self._to_both(CHAT_MESSAGE, {"call_id": call.id, **entry, "at": now}, call)
        return {"id": message_id, "at": now}

    # -- link reports -------------------------------------------------------------------------
    async def link_report(self, p: Principal, m: LinkReport) -> dict[str, Any]:
        """Relay the outlet's link figures to the agent; log a ``link_step`` when the step changes."""
        self.link_limit.take(p.user_id)
        try:
            call, _ = await self._talking_call(p, m.call_id)
        except Conflict:
            self._steps.pop(m.call_id, None)
            raise
        figures = m.model_dump(exclude={"call_id"})
        previous = self._steps.get(call.id, 0)
        self._remember_step(call.id, m.step)
        if m.step != previous:
            data = {"from_step": previous, "to_step": m.step, **{k: v for k, v in figures.items() if k != "step"}}
            await self.service.records.append(call.id, "link_step", f"user:{p.user_id}", data, self.clock())
            log.info("call %s: outlet link step %d -> %d (%s)", call.id, previous, m.step, m.level)
        if call.agent_id is not None:
            body = {"call_id": call.id, **figures, "from": "outlet", "at": self.clock()}
            await self.service.notifier.emit(LINK_STATUS, body, user_room(call.agent_id))
        return {}

    def _remember_step(self, call_id: str, step: int) -> None:
        self._steps[call_id] = step
        self._steps.move_to_end(call_id)
        while len(self._steps) > STEP_MEMORY:
            self._steps.popitem(last=False)

    # -- snapshots ------------------------------------------------------------------------------
    async def snapshot(self, p: Principal, m: SnapshotRequest) -> dict[str, Any]:
        """Take a JPEG of the outlet's camera or screen on the media owner; ack ``{url, name, sha256, …}``."""
        self.snapshot_limit.take(p.user_id)
        call, side = await self._talking_call(p, m.call_id)
        if side != "agent":
            raise Forbidden("only the agent of the call takes snapshots")
        if not call.media_node:
            raise Conflict(f"call {call.id} has no media yet", code="no_media")
        request = {"call_id": call.id, "source": m.source, "actor": f"user:{p.user_id}"}
        return await self.bridge.router.request(call.media_node, "snapshot", request)

    async def _snapshot_here(self, payload: dict[str, Any]) -> dict[str, Any]:
        """On the node that owns the call's media: decode, store, log."""
        if self.snapshots is None or self.bridge.media is None:
            raise Unavailable(f"snapshots are not available on node {self.service.node_id}")
        media: Any = self.bridge.media
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                jpeg = await media.snapshot(payload["call_id"], "outlet", payload["source"])
        except TimeoutError:
            raise Unavailable(f"the snapshot of call {payload['call_id']} took too long") from None
        stored = await self.snapshots.save(payload["call_id"], payload["source"], jpeg, payload["actor"])
        result = stored.to_dict()
        return {k: result[k] for k in ("url", "name", "sha256", "source", "size", "width", "height")}

