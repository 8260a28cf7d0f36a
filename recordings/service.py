"""Session records service: the call session row and its hash-chained log, one transaction per use case.

Implements the ``SessionLog`` port that signalling declares, structurally: it reads the
attributes it needs from the call it is given and never imports signalling.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudhall.db import Database
from cloudhall.errors import NotFound
from recordings.eventlog import append_event
from recordings.models import CallSession

log = logging.getLogger(__name__)


class CallFacts(Protocol):
    """What a session record is made of (signalling's ``Call`` has these)."""

    id: str
    outlet_id: int
    staff_user_id: int
    department_id: int
    item_id: int | None
    applicant: dict[str, Any]
    agent_id: int | None
    queued_at: float
    answered_at: float | None
    ended_at: float | None

    @property
    def state(self) -> Any: ...

    @property
    def priority(self) -> Any: ...

    @property
    def end_reason(self) -> Any: ...


class EventFacts(Protocol):
    kind: str
    actor: str
    at: float
    data: dict[str, Any]


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None


def _value(v: Any) -> Any:
    return getattr(v, "value", v)


async def _lock_session(session: AsyncSession, session_id: str) -> None:
    """Take the write lock on the session row before reading the chain head.

    ``SELECT ... FOR UPDATE`` is a no-op on SQLite, and pysqlite starts a transaction only at
    the first write, so two writers could read the same head and fork the chain. A no-op
    UPDATE first makes SQLite take its write lock (and PostgreSQL its row lock) up front.
    """
    await session.execute(
        update(CallSession).where(CallSession.id == session_id).values(event_count=CallSession.event_count)
    )


class SessionRecords:
    """Creates call sessions, applies their transitions and appends their events."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(self, call: CallFacts, events: Sequence[EventFacts], node: str) -> None:
        """Create the session row of a new call and write its first events."""
        async with self._db.transaction() as session:
            session.add(
                CallSession(
                    id=call.id,
                    outlet_id=call.outlet_id,
                    staff_user_id=call.staff_user_id,
                    department_id=call.department_id,
                    service_item_id=call.item_id,
                    applicant=dict(call.applicant),
                    priority=_value(call.priority),
                    agent_user_id=call.agent_id,
                    state=_value(call.state),
                    queued_at=_dt(call.queued_at),
                    node=node[:64],
                )
            )
            await session.flush()
            for event in events:
                await append_event(session, call.id, event.kind, event.actor, event.data, _dt(event.at))
        log.info("session %s: opened (%s)", call.id, ", ".join(e.kind for e in events))

    async def record(self, call: CallFacts, events: Sequence[EventFacts]) -> None:
        """Write the transition's events and the session's new state, agent, times and end reason."""
        async with self._db.transaction() as session:
            await _lock_session(session, call.id)
            row = await session.get(CallSession, call.id, with_for_update=True)
            if row is None:
                raise NotFound(f"session {call.id} does not exist")
            for event in events:
                await append_event(session, call.id, event.kind, event.actor, event.data, _dt(event.at))
            row.state = _value(call.state)
            row.department_id = call.department_id
            row.priority = _value(call.priority)
            if call.agent_id is not None:
                row.agent_user_id = call.agent_id
            if call.answered_at is not None and row.answered_at is None:
                row.answered_at = _dt(call.answered_at)
            if call.ended_at is not None:
                row.ended_at = _dt(call.ended_at)
                row.end_reason = _value(call.end_reason)
        if events:
            log.info("session %s: %s -> %s", call.id, ", ".join(e.kind for e in events), _value(call.state))

    async def append(self, session_id: str, kind: str, actor: str, data: dict[str, Any], at: float) -> None:
        """Append one event that changes no state (media and recording events)."""
        async with self._db.transaction() as session:
            await _lock_session(session, session_id)
            await append_event(session, session_id, kind, actor, data, _dt(at))
