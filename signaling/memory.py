"""In-process backend of :class:`signaling.store.CallQueue` (the embedded one-node default)."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import defaultdict, deque
from dataclasses import replace

from signaling.calls import Call
from signaling.presence import AgentPresence
from signaling.store import ENDED_TTL_SECONDS, AgentBusy, OutletBusy, StaleCall, index_changes

HANDLING_SAMPLES = 20


class MemoryCallQueue:
    """Dictionaries behind one lock: a commit is atomic because it holds the lock throughout."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._calls: dict[str, Call] = {}
        self._queues: dict[int, list[tuple[float, str]]] = defaultdict(list)
        self._agent_call: dict[int, str] = {}
        self._outlet_call: dict[int, str] = {}
        self._handling: dict[int, deque[float]] = defaultdict(lambda: deque(maxlen=HANDLING_SAMPLES))
        self._deadlines: dict[str, float] = {}
        self._presence: dict[int, AgentPresence] = {}
        self._conns: dict[str, dict[str, str]] = defaultdict(dict)
        self._nodes: dict[str, float] = {}
        # Ended calls stay readable for ENDED_TTL_SECONDS (like the Redis key expiry), then go.
        self._ended: deque[tuple[float, str]] = deque()

    async def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    async def commit(self, old: Call | None, new: Call) -> Call:
        async with self._lock:
            current = self._calls.get(new.id)
            if old is None:
                if current is not None:
                    raise StaleCall(f"call {new.id} already exists")
            elif current is None or current.version != old.version:
                raise StaleCall(f"call {new.id} changed meanwhile")
            changes = index_changes(current, new)
            if changes.agent_claim is not None:
                holder = self._agent_call.get(changes.agent_claim)
                if holder is not None and holder != new.id:
                    raise AgentBusy(f"agent {changes.agent_claim} already holds call {holder}")
            if changes.outlet_claim is not None:
                holder = self._outlet_call.get(changes.outlet_claim)
                if holder is not None and holder != new.id:
                    raise OutletBusy(f"outlet {changes.outlet_claim} already has call {holder}")
            stored = replace(new, version=(current.version if current else 0) + 1)
            self._calls[new.id] = stored
            if changes.queue_remove is not None:
                queue = self._queues[changes.queue_remove]
                queue[:] = [entry for entry in queue if entry[1] != new.id]
            if changes.queue_add is not None:
                bisect.insort(self._queues[changes.queue_add], (stored.queue_score(), new.id))
            if changes.agent_claim is not None:
                self._agent_call[changes.agent_claim] = new.id
            if changes.agent_release is not None and self._agent_call.get(changes.agent_release) == new.id:
                del self._agent_call[changes.agent_release]
            if changes.outlet_claim is not None:
                self._outlet_call[changes.outlet_claim] = new.id
            if changes.outlet_release is not None and self._outlet_call.get(changes.outlet_release) == new.id:
                del self._outlet_call[changes.outlet_release]
            now = time.monotonic()
            if changes.ended:
                self._ended.append((now + ENDED_TTL_SECONDS, new.id))
            while self._ended and self._ended[0][0] <= now:
                _, gone = self._ended.popleft()
                if gone in self._calls and not self._calls[gone].active:
                    del self._calls[gone]
            return stored

    async def waiting(self, department_id: int, limit: int | None = None) -> list[Call]:
        entries = self._queues.get(department_id, [])
        if limit is not None:
            entries = entries[:limit]
        return [self._calls[cid] for _, cid in entries if cid in self._calls]

    async def call_of_agent(self, agent_id: int) -> str | None:
        return self._agent_call.get(agent_id)

    async def call_of_outlet(self, outlet_id: int) -> str | None:
        return self._outlet_call.get(outlet_id)

    async def record_handling(self, department_id: int, seconds: float) -> None:
        self._handling[department_id].append(seconds)

    async def handling_times(self, department_id: int) -> list[float]:
        return list(self._handling.get(department_id, ()))

    async def schedule(self, name: str, at: float) -> None:
        self._deadlines[name] = at

    async def unschedule(self, name: str) -> None:
        self._deadlines.pop(name, None)

    async def take_due(self, now: float, lease: float, limit: int = 100) -> list[tuple[str, float]]:
        async with self._lock:
            due = sorted((at, name) for name, at in self._deadlines.items() if at <= now)[:limit]
            token = now + lease
            for _, name in due:
                self._deadlines[name] = token
            return [(name, token) for _, name in due]

    async def finish(self, name: str, token: float) -> None:
        if self._deadlines.get(name) == token:
            del self._deadlines[name]

    async def get_presence(self, user_id: int) -> AgentPresence | None:
        return self._presence.get(user_id)

    async def put_presence(self, presence: AgentPresence) -> None:
        self._presence[presence.user_id] = presence

    async def all_presence(self) -> list[AgentPresence]:
        return list(self._presence.values())

    async def connect(self, side: str, sid: str, node: str) -> int:
        self._conns[side][sid] = node
        return len(self._conns[side])

    async def disconnect(self, side: str, sid: str, node: str) -> int:
        conns = self._conns.get(side, {})
        conns.pop(sid, None)
        return len(conns)

    async def connection_count(self, side: str) -> int:
        return len(self._conns.get(side, {}))

    async def node_beat(self, node: str, now: float) -> None:
        self._nodes[node] = now

    async def nodes(self) -> dict[str, float]:
        return dict(self._nodes)

    async def reap_node(self, node: str) -> list[str]:
        self._nodes.pop(node, None)
        emptied = []
        for side, conns in self._conns.items():
            dead = [sid for sid, owner in conns.items() if owner == node]
            for sid in dead:
                del conns[sid]
            if dead and not conns:
                emptied.append(side)
        return emptied

    async def close(self) -> None:
        return None
