"""The call lifecycle: states, end reasons, the allowed-transitions table and pure transitions.

No I/O, no clock reads, no Socket.IO: every function takes ``now`` (epoch seconds) and
returns the new :class:`Call` together with the events to record in the session's
hash-chained log. An illegal transition raises :class:`cloudhall.errors.Conflict` naming
the state the call is in.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

from cloudhall.errors import Conflict, Forbidden


class CallState(str, enum.Enum):
    QUEUED = "queued"
    OFFERED = "offered"  # ringing: at an agent (inbound) or at the outlet (outbound callback)
    CONNECTING = "connecting"
    IN_CALL = "in_call"
    TRANSFERRED = "transferred"  # transient: on its way to another department's queue
    ENDED = "ended"


class EndReason(str, enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    NO_AGENT = "no_agent"
    OUTLET_LOST = "outlet_lost"
    AGENT_LOST = "agent_lost"
    FAILED = "failed"


class Priority(str, enum.Enum):
    NORMAL = "normal"
    PRIORITY = "priority"  # elderly or disabled applicant, or a dropped call coming back


ALLOWED: dict[CallState, frozenset[CallState]] = {
    CallState.QUEUED: frozenset({CallState.OFFERED, CallState.ENDED}),
    CallState.OFFERED: frozenset({CallState.CONNECTING, CallState.QUEUED, CallState.ENDED}),
    CallState.CONNECTING: frozenset({CallState.IN_CALL, CallState.QUEUED, CallState.ENDED}),
    CallState.IN_CALL: frozenset({CallState.TRANSFERRED, CallState.QUEUED, CallState.ENDED}),
    CallState.TRANSFERRED: frozenset({CallState.QUEUED}),
    CallState.ENDED: frozenset(),
}
# States in which the call holds its agent (the agent is "busy").
AGENT_HOLDING = frozenset({CallState.OFFERED, CallState.CONNECTING, CallState.IN_CALL})
# Which end reasons each state may end with.
END_REASONS: dict[CallState, frozenset[EndReason]] = {
    CallState.QUEUED: frozenset(
        {EndReason.CANCELLED, EndReason.ABANDONED, EndReason.NO_AGENT, EndReason.OUTLET_LOST, EndReason.FAILED}
    ),
    CallState.OFFERED: frozenset(
        {EndReason.CANCELLED, EndReason.ABANDONED, EndReason.OUTLET_LOST, EndReason.AGENT_LOST, EndReason.FAILED}
    ),
    CallState.CONNECTING: frozenset(
        {EndReason.COMPLETED, EndReason.CANCELLED, EndReason.OUTLET_LOST, EndReason.AGENT_LOST, EndReason.FAILED}
    ),
    CallState.IN_CALL: frozenset(
        {EndReason.COMPLETED, EndReason.OUTLET_LOST, EndReason.AGENT_LOST, EndReason.FAILED}
    ),
    CallState.TRANSFERRED: frozenset(),
    CallState.ENDED: frozenset(),
}
# Queue bands: a call put back at the front, then priority applicants, then everyone else.
_BAND = 1e10  # larger than any epoch-seconds value we will meet


@dataclass(frozen=True)
class CallEvent:
    """One entry to write to the session log."""

    kind: str
    actor: str  # "user:12", "system", "node:a1"
    at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """The live state of one call session (stored in the call queue backend)."""

    id: str
    department_id: int
    outlet_id: int
    staff_user_id: int
    county: str
    queued_at: float
    state: CallState = CallState.QUEUED
    priority: Priority = Priority.NORMAL
    item_id: int | None = None
    item_name: str = ""
    outlet_name: str = ""
    island: str = ""
    department_name: str = ""
    applicant: dict[str, Any] = field(default_factory=dict)
    direction: str = "inbound"  # "outbound": an agent calls an outlet back
    callback_id: int | None = None
    front: bool = False
    agent_id: int | None = None
    agent_name: str = ""
    offered_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    outlet_lost_at: float | None = None
    agent_lost_at: float | None = None
    media_node: str = ""
    step: int = 0  # increments on every state change; names the deadlines of that state
    version: int = 0  # storage version for compare-and-set, managed by the backend

    # -- derived -----------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.state is not CallState.ENDED

    @property
    def holds_agent(self) -> bool:
        return self.state in AGENT_HOLDING and self.agent_id is not None

    def queue_score(self) -> float:
        """Sort key within a department queue: front, then priority, then FIFO by queue time."""
        band = 0 if self.front else (1 if self.priority is Priority.PRIORITY else 2)
        return band * _BAND + self.queued_at

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["priority"] = self.priority.value
        data["end_reason"] = self.end_reason.value if self.end_reason else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Call":
        values = dict(data)
        values["state"] = CallState(values["state"])
        values["priority"] = Priority(values.get("priority", "normal"))
        reason = values.get("end_reason")
        values["end_reason"] = EndReason(reason) if reason else None
        values["applicant"] = dict(values.get("applicant") or {})
        return cls(**values)


def _check(call: Call, target: CallState, action: str) -> None:
    if target not in ALLOWED[call.state]:
        raise Conflict(
            f'cannot {action} call {call.id} in state "{call.state.value}"',
            details={"call_id": call.id, "state": call.state.value},
        )


def _move(call: Call, target: CallState, **changes: Any) -> Call:
    return replace(call, state=target, step=call.step + 1, **changes)


# -- transitions ------------------------------------------------------------------------


def new_call(
    *,
    call_id: str,
    department_id: int,
    outlet_id: int,
    staff_user_id: int,
    county: str,
    now: float,
    priority: Priority = Priority.NORMAL,
    **details: Any,
) -> tuple[Call, list[CallEvent]]:
    """An outlet's call, queued at ``department_id``."""
    call = Call(
        id=call_id,
        department_id=department_id,
        outlet_id=outlet_id,
        staff_user_id=staff_user_id,
        county=county,
        queued_at=now,
        priority=priority,
        **details,
    )
    event = CallEvent(
        "call_queued",
        f"user:{staff_user_id}",
        now,
        {"department_id": department_id, "priority": priority.value, "item_id": call.item_id},
    )
    return call, [event]


def new_outbound_call(
    *,
    call_id: str,
    department_id: int,
    outlet_id: int,
    staff_user_id: int,
    county: str,
    agent_id: int,
    agent_name: str,
    callback_id: int | None,
    now: float,
    **details: Any,
) -> tuple[Call, list[CallEvent]]:
    """An agent calls an outlet back: the call starts ringing at the outlet."""
    call = Call(
        id=call_id,
        department_id=department_id,
        outlet_id=outlet_id,
        staff_user_id=staff_user_id,
        county=county,
        queued_at=now,
        state=CallState.OFFERED,
        direction="outbound",
        callback_id=callback_id,
        agent_id=agent_id,
        agent_name=agent_name,
        offered_at=now,
        step=1,
        **details,
    )
    event = CallEvent(
        "call_outbound",
        f"user:{agent_id}",
        now,
        {"department_id": department_id, "outlet_id": outlet_id, "callback_id": callback_id},
    )
    return call, [event]


def offer(call: Call, agent_id: int, agent_name: str, now: float) -> tuple[Call, list[CallEvent]]:
    """An agent claimed the call: it rings at that agent until accepted or timed out."""
    _check(call, CallState.OFFERED, "offer")
    new = _move(call, CallState.OFFERED, agent_id=agent_id, agent_name=agent_name, offered_at=now)
    return new, [CallEvent("call_offered", f"user:{agent_id}", now, {"agent_id": agent_id})]


def accept(call: Call, actor_user_id: int, now: float, *, by_outlet: bool = False) -> tuple[Call, list[CallEvent]]:
    """The ringing side picked up: the agent (inbound) or the outlet (outbound)."""
    _check(call, CallState.CONNECTING, "accept")
    if call.state is not CallState.OFFERED:
        raise Conflict(f'cannot accept call {call.id} in state "{call.state.value}"')
    if call.direction == "outbound":
        if not by_outlet:
            raise Forbidden(f"call {call.id} rings at the outlet; only the outlet can accept it")
    elif by_outlet or call.agent_id != actor_user_id:
        raise Forbidden(f"call {call.id} is not offered to you")
    new = _move(call, CallState.CONNECTING, answered_at=now)
    return new, [CallEvent("call_accepted", f"user:{actor_user_id}", now, {"agent_id": call.agent_id})]


def connected(call: Call, actor: str, now: float) -> tuple[Call, list[CallEvent]]:
    """Media flows: the call is in progress. Idempotent for a call already in progress."""
    if call.state is CallState.IN_CALL:
        return call, []
    _check(call, CallState.IN_CALL, "connect")
    if call.state is not CallState.CONNECTING:
        raise Conflict(f'cannot connect call {call.id} in state "{call.state.value}"')
    return _move(call, CallState.IN_CALL), [CallEvent("call_connected", actor, now, {})]


def requeue(call: Call, reason: str, actor: str, now: float) -> tuple[Call, list[CallEvent]]:
    """Back to the FRONT of its department queue (ring timeout, decline, agent lost)."""
    _check(call, CallState.QUEUED, "requeue")
    if call.direction == "outbound":
        raise Conflict(f"outbound call {call.id} cannot go back to a queue")
    new = _move(
        call,
        CallState.QUEUED,
        front=True,
        agent_id=None,
        agent_name="",
        offered_at=None,
        answered_at=None,
        agent_lost_at=None,
        media_node="",
    )
    return new, [CallEvent("call_requeued", actor, now, {"reason": reason, "previous_agent_id": call.agent_id})]


def transfer(
    call: Call, department_id: int, department_name: str, actor_user_id: int, now: float
) -> tuple[Call, list[CallEvent]]:
    """The agent hands the call to another department: same session, that department's queue."""
    _check(call, CallState.TRANSFERRED, "transfer")
    if call.agent_id != actor_user_id:
        raise Forbidden(f"call {call.id} is not yours to transfer")
    if department_id == call.department_id:
        raise Conflict(f"call {call.id} is already at department {department_id}")
    actor = f"user:{actor_user_id}"
    moving = _move(call, CallState.TRANSFERRED)
    events = [
        CallEvent(
            "call_transferred",
            actor,
            now,
            {"from_department_id": call.department_id, "to_department_id": department_id},
        )
    ]
    _check(moving, CallState.QUEUED, "queue")
    queued = _move(
        moving,
        CallState.QUEUED,
        department_id=department_id,
        department_name=department_name,
        direction="inbound",  # a transferred callback waits like any call now
        front=True,
        agent_id=None,
        agent_name="",
        offered_at=None,
        answered_at=None,
        media_node="",
    )
    events.append(CallEvent("call_queued", actor, now, {"department_id": department_id, "transfer": True}))
    return queued, events


def end(call: Call, reason: EndReason, actor: str, now: float, **data: Any) -> tuple[Call, list[CallEvent]]:
    """End the call with ``reason``; refused when the state does not allow that reason."""
    _check(call, CallState.ENDED, "end")
    if reason not in END_REASONS[call.state]:
        raise Conflict(
            f'cannot end call {call.id} as "{reason.value}" in state "{call.state.value}"',
            details={"call_id": call.id, "state": call.state.value},
        )
    new = _move(call, CallState.ENDED, ended_at=now, end_reason=reason)
    payload = {"reason": reason.value, **data}
    return new, [CallEvent("call_ended", actor, now, payload)]


def ended_with_node(node: str, now: float) -> tuple[EndReason, CallEvent]:
    """How a call is ended whose live state was lost with its node (the in-memory queue).

    Nothing of the call survives to run :func:`end` on, only its session record; any state
    the record can be in may end ``failed`` (see ``END_REASONS``).
    """
    reason = EndReason.FAILED
    return reason, CallEvent("call_ended", f"node:{node}", now, {"reason": reason.value, "why": "node restarted"})


def participant_lost(call: Call, side: str, now: float) -> tuple[Call, list[CallEvent]]:
    """The outlet's or the agent's connection dropped: the grace period starts."""
    if not call.active:
        return call, []
    if side == "outlet":
        if call.outlet_lost_at is not None:
            return call, []
        new = replace(call, outlet_lost_at=now)
    else:
        if call.agent_lost_at is not None or not call.holds_agent:
            return call, []
        new = replace(call, agent_lost_at=now)
    return new, [CallEvent("participant_lost", "system", now, {"side": side})]


def participant_back(call: Call, side: str, now: float) -> tuple[Call, list[CallEvent]]:
    """The side came back within its grace period; a queued call keeps its place."""
    if not call.active:
        return call, []
    lost = call.outlet_lost_at if side == "outlet" else call.agent_lost_at
    if lost is None:
        return call, []
    if side == "outlet":
        new = replace(call, outlet_lost_at=None)
    else:
        new = replace(call, agent_lost_at=None)
    return new, [CallEvent("participant_returned", "system", now, {"side": side, "away_seconds": round(now - lost, 3)})]


def grace_expired(call: Call, side: str, now: float) -> tuple[Call, list[CallEvent]]:
    """The side did not come back in time: end the call, or requeue a call whose agent vanished."""
    if side == "outlet":
        return end(call, EndReason.OUTLET_LOST, "system", now)
    if call.direction == "inbound" and call.outlet_lost_at is None and call.state in AGENT_HOLDING:
        return requeue(call, EndReason.AGENT_LOST.value, "system", now)
    return end(call, EndReason.AGENT_LOST, "system", now)


# -- queue arithmetic -------------------------------------------------------------------

DEFAULT_HANDLING_SECONDS = 300.0


def estimate_wait(position: int, handling_seconds: Iterable[float], agents: int) -> int:
    """Seconds until the call at 1-based ``position`` is likely answered.

    Calls ahead are served by ``agents`` agents in parallel, each taking the mean of recent
    handling times (a default of five minutes before any call was handled).
    """
    times = [t for t in handling_seconds if t > 0]
    mean = sum(times) / len(times) if times else DEFAULT_HANDLING_SECONDS
    ahead = max(position - 1, 0)
    return int(math.ceil(ahead / max(agents, 1)) * mean) if ahead else 0
