"""Agent presence: available / busy / away / offline, as pure values and transitions."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace
from typing import Any

from cloudhall.errors import Conflict


class PresenceState(str, enum.Enum):
    AVAILABLE = "available"
    BUSY = "busy"  # set automatically while a call holds the agent
    AWAY = "away"
    OFFLINE = "offline"


# States an agent may choose; busy and offline are set by the system.
CHOOSABLE = frozenset({PresenceState.AVAILABLE, PresenceState.AWAY})


@dataclass(frozen=True)
class AgentPresence:
    user_id: int
    name: str
    county: str
    department_ids: tuple[int, ...] = ()
    state: PresenceState = PresenceState.OFFLINE
    since: float = 0.0
    last_seen: float = 0.0
    call_id: str | None = None
    # What the agent chose (available/away); busy ends back in this state.
    chosen: PresenceState = PresenceState.AVAILABLE

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        data["chosen"] = self.chosen.value
        data["department_ids"] = list(self.department_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AgentPresence":
        values = dict(data)
        values["state"] = PresenceState(values["state"])
        values["chosen"] = PresenceState(values.get("chosen", "available"))
        values["department_ids"] = tuple(values.get("department_ids") or ())
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """What supervisors see."""
        return {
            "user_id": self.user_id,
            "name": self.name,
            "county": self.county,
            "department_ids": list(self.department_ids),
            "state": self.state.value,
            "since": self.since,
            "call_id": self.call_id,
        }


def _with_state(p: AgentPresence, state: PresenceState, now: float, **changes: Any) -> AgentPresence:
    since = p.since if state is p.state else now
    return replace(p, state=state, since=since, **changes)


def came_online(p: AgentPresence, now: float, call_id: str | None) -> AgentPresence:
    """A socket of the agent connected (or reconnected)."""
    state = PresenceState.BUSY if call_id else p.chosen
    return _with_state(p, state, now, last_seen=now, call_id=call_id)


def choose(p: AgentPresence, state: PresenceState, now: float) -> AgentPresence:
    """The agent sets available or away; while busy the choice applies after the call."""
    if state not in CHOOSABLE:
        raise Conflict(f'presence "{state.value}" is set by the system, not by the agent')
    if p.state is PresenceState.BUSY:
        return replace(p, chosen=state, last_seen=now)
    return _with_state(p, state, now, chosen=state, last_seen=now)


def busy(p: AgentPresence, call_id: str, now: float) -> AgentPresence:
    return _with_state(p, PresenceState.BUSY, now, call_id=call_id)


def free(p: AgentPresence, now: float) -> AgentPresence:
    """The call let go of the agent: back to what they chose (offline stays offline)."""
    if p.state is PresenceState.OFFLINE:
        return replace(p, call_id=None)
    return _with_state(p, p.chosen, now, call_id=None)


def heartbeat(p: AgentPresence, now: float) -> AgentPresence:
    return replace(p, last_seen=now)


def timed_out(p: AgentPresence, now: float, timeout: float) -> bool:
    return p.state is not PresenceState.OFFLINE and now - p.last_seen >= timeout


def offline(p: AgentPresence, now: float) -> AgentPresence:
    return _with_state(p, PresenceState.OFFLINE, now, call_id=None)

