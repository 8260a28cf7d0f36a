"""Session records service: the call session row and its hash-chained log, one transaction per use case.

Implements the ``SessionLog`` port that signalling declares, structurally: it reads the
attributes it needs from the call it is given and never imports signalling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, Protocol, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudhall.db import Database
from cloudhall.errors import NotFound
from recordings.eventlog import append_event
from recordings.models import CallSession

log = logging.getLogger(__name__)

# Writes committed together at most (group commit).
BATCH_LIMIT = 200


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


async def _take_write_lock(session: AsyncSession) -> None:
    """On SQLite, take the database write lock before anything reads a chain head.

    pysqlite starts a transaction only at the first write, and ``SELECT ... FOR UPDATE`` is a
    no-op there, so two writers could read the same head and fork a chain. A write that
    matches no row makes SQLite take its write lock for the whole transaction (checked:
    a second connection then gets "database is locked"). PostgreSQL needs nothing here:
    ``append_event`` and :meth:`SessionRecords.record` lock the session row.
    """
    await session.execute(
        update(CallSession).where(CallSession.id == "").values(event_count=CallSession.event_count)
    )


class SessionRecords:
    """Creates call sessions, applies their transitions and appends their events."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: asyncio.Queue[tuple[Callable[[AsyncSession], Awaitable[None]], asyncio.Future[None]]]
        self._pending = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def _write(self, work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """Run ``work`` in a transaction shared with other writes queued at the same moment.

        Group commit: one writer task drains what is pending and commits it together, so a
        busy node makes one transaction per batch instead of one per event (SQLite has a
        single writer; PostgreSQL pays a round trip per commit). The caller still returns
        only once its write is committed. A failing batch is retried item by item, so one
        bad write fails only its own caller.
        """
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain(), name="session-records-writer")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pending.put((work, done))
        await done

    async def _drain(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < BATCH_LIMIT:
                batch.append(self._pending.get_nowait())
            try:
                async with self._db.transaction() as session:
                    await self._begin(session)
                    for work, _ in batch:
                        await work(session)
            except Exception:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                for work, done in batch:
                    try:
                        async with self._db.transaction() as session:
                            await self._begin(session)
                            await work(session)
                    except Exception as exc:
                        if not done.done():
                            done.set_exception(exc)
                    else:
                        if not done.done():
                            done.set_result(None)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _begin(self, session: AsyncSession) -> None:
        if self._db.is_sqlite:
            await _take_write_lock(session)

    async def close(self) -> None:
        """Stop the writer (after the writes already queued)."""
        if self._writer is not None:
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None

    async def open(self, call: CallFacts, events: Sequence[EventFacts], node: str) -> None:
        """Create the session row of a new call and write its first events."""

        async def work(session: AsyncSession) -> None:
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

        await self._write(work)
        log.info("session %s: opened (%s)", call.id, ", ".join(e.kind for e in events))

    async def record(self, call: CallFacts, events: Sequence[EventFacts]) -> None:
        """Write the transition's events and the session's new state, agent, times and end reason."""

        async def work(session: AsyncSession) -> None:
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

        await self._write(work)
        if events:
            log.info("session %s: %s -> %s", call.id, ", ".join(e.kind for e in events), _value(call.state))

    async def append(self, session_id: str, kind: str, actor: str, data: dict[str, Any], at: float) -> None:
        """Append one event that changes no state (media and recording events)."""

        async def work(session: AsyncSession) -> None:
            await append_event(session, session_id, kind, actor, data, _dt(at))

        await self._write(work)

    async def answered_among(self, session_ids: Sequence[str]) -> set[str]:
        """Those of ``session_ids`` whose call was answered (unknown ids are left out)."""
        if not session_ids:
            return set()
        async with self._db.transaction() as session:
            rows = await session.scalars(
                select(CallSession.id).where(CallSession.id.in_(list(session_ids)), CallSession.answered_at.is_not(None))
            )
            return set(rows)

    async def end_open(self, reason: str, event: EventFacts, opened_before: float) -> list[str]:
        """End every session opened before ``opened_before`` that has no end time; return their ids.

        Each gets ``reason``, ``event.at`` as its end time and ``event`` in its log. For a
        single node whose live calls died with it (the in-memory call queue): their sessions
        would otherwise show them in progress forever. ``opened_before`` keeps a call started
        after the caller decided this out of it, should the write be delayed.
        Idempotent: the rows are read and locked in the same transaction that ends them
        (SQLite: the write lock of :meth:`_begin`; PostgreSQL: ``FOR UPDATE``, which skips a
        row another start ended meanwhile), so a session is never ended twice.
        """
        ended: list[str] = []

        async def work(session: AsyncSession) -> None:
            ended.clear()  # a failed batch runs this work again on its own
            rows = await session.scalars(
                select(CallSession)
                .where(CallSession.ended_at.is_(None), CallSession.queued_at < _dt(opened_before))
                .order_by(CallSession.queued_at)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            for row in list(rows):
                await append_event(session, row.id, event.kind, event.actor, event.data, _dt(event.at))
                row.state = "ended"
                row.ended_at = _dt(event.at)
                row.end_reason = reason
                ended.append(row.id)

        await self._write(work)
        for session_id in ended:
            log.info("session %s: %s (%s)", session_id, event.kind, reason)
        return ended
