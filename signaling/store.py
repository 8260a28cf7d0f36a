"""The port of the call queue backend: calls, department queues, presence, deadlines, nodes.

Two implementations satisfy :class:`CallQueue`: :class:`signaling.memory.MemoryCallQueue`
(one node, embedded default) and :class:`signaling.redis_queue.RedisCallQueue` (several
nodes sharing Redis). ``tests/contracts/test_queue_contract.py`` runs one suite on both.

Every change of a call goes through :meth:`CallQueue.commit`, a compare-and-set on the
call's storage version that also keeps the indexes (department queue, the agent's and the
outlet's current call) in step, atomically. Claiming a call is such a commit: of two agents
pressing at once, exactly one commit succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cloudhall.errors import Conflict
from signaling.calls import Call, CallState
from signaling.presence import AgentPresence

# How long an ended call stays readable (for clients resynchronising after a reconnect).
ENDED_TTL_SECONDS = 3600


class StaleCall(Conflict):
    """The call changed since it was read; re-read and retry."""

    code = "conflict"


class AgentBusy(Conflict):
    """The agent already holds another call."""

    code = "agent_busy"


class OutletBusy(Conflict):
    """The outlet already has an active call."""

    code = "outlet_busy"


@dataclass(frozen=True)
class IndexChanges:
    """What a commit does to the indexes, derived from the old and new call."""

    queue_remove: int | None = None  # department whose queue loses the call
    queue_add: int | None = None  # department whose queue gains it
    agent_claim: int | None = None
    agent_release: int | None = None
    outlet_claim: int | None = None
    outlet_release: int | None = None
    ended: bool = False


def index_changes(old: Call | None, new: Call) -> IndexChanges:
    was_queued = old is not None and old.state is CallState.QUEUED
    is_queued = new.state is CallState.QUEUED
    old_agent = old.agent_id if old is not None and old.holds_agent else None
    new_agent = new.agent_id if new.holds_agent else None
    old_outlet = old.outlet_id if old is not None and old.active else None
    new_outlet = new.outlet_id if new.active else None
    return IndexChanges(
        queue_remove=old.department_id if was_queued and old is not None else None,
        queue_add=new.department_id if is_queued else None,
        agent_claim=new_agent if new_agent is not None and new_agent != old_agent else None,
        agent_release=old_agent if old_agent is not None and old_agent != new_agent else None,
        outlet_claim=new_outlet if new_outlet is not None and new_outlet != old_outlet else None,
        outlet_release=old_outlet if old_outlet is not None and old_outlet != new_outlet else None,
        ended=not new.active,
    )


class CallQueue(Protocol):
    """Shared state of the signalling service (one interface, memory and Redis backends)."""

    # -- calls and queues -----------------------------------------------------------------
    async def get(self, call_id: str) -> Call | None:
        """The call, or None when unknown (or expired after ending)."""

    async def commit(self, old: Call | None, new: Call) -> Call:
        """Store ``new`` if the stored version is still ``old``'s (None: must not exist).

        Returns the stored call (with its new version). Raises :class:`StaleCall` when the
        call changed meanwhile, :class:`AgentBusy` / :class:`OutletBusy` when the agent or
        the outlet already holds another active call.
        """

    async def waiting(self, department_id: int, limit: int | None = None) -> list[Call]:
        """Calls waiting at a department, in service order (the first ``limit`` if given)."""

    async def call_of_agent(self, agent_id: int) -> str | None: ...

    async def call_of_outlet(self, outlet_id: int) -> str | None: ...

    async def record_handling(self, department_id: int, seconds: float) -> None:
        """Remember how long a call took (recent ones feed the estimated wait)."""

    async def handling_times(self, department_id: int) -> list[float]: ...

    # -- deadlines (ring timeouts, grace periods, queue limits, presence) -----------------
    async def schedule(self, name: str, at: float) -> None:
        """Set (or move) the deadline ``name``."""

    async def unschedule(self, name: str) -> None: ...

    async def take_due(self, now: float, lease: float, limit: int = 100) -> list[tuple[str, float]]:
        """Claim due deadlines atomically: each is leased to one caller until ``now + lease``.

        Returns (name, lease token); the caller finishes with :meth:`finish`, or the
        deadline comes due again after the lease (a node that died mid-way).
        """

    async def finish(self, name: str, token: float) -> None:
        """Drop a leased deadline unless it was rescheduled meanwhile."""

    # -- presence -------------------------------------------------------------------------
    async def get_presence(self, user_id: int) -> AgentPresence | None: ...

    async def put_presence(self, presence: AgentPresence) -> None: ...

    async def all_presence(self) -> list[AgentPresence]: ...

    # -- connections and nodes ------------------------------------------------------------
    async def connect(self, side: str, sid: str, node: str) -> int:
        """Register a socket of ``side`` ("outlet:3", "agent:12"); return its socket count."""

    async def disconnect(self, side: str, sid: str, node: str) -> int:
        """Unregister a socket; return how many sockets ``side`` still has."""

    async def connection_count(self, side: str) -> int: ...

    async def node_beat(self, node: str, now: float) -> None: ...

    async def nodes(self) -> dict[str, float]:
        """Live nodes and their last heartbeat."""

    async def reap_node(self, node: str) -> list[str]:
        """Forget a dead node and its sockets; return the sides left with no socket."""

    async def close(self) -> None: ...
