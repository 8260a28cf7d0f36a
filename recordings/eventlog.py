"""The append-only, hash-chained event log of a call session.

Each entry's hash is SHA-256 over the previous entry's hash and a canonical JSON of the
entry (session, seq, time, kind, actor, data). The session row keeps the head hash and
the count, so an edited, deleted (even the last), inserted or reordered entry is found by
:func:`verify_chain`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloudhall.db import utcnow
from cloudhall.errors import InvalidInput, NotFound
from recordings.models import GENESIS_HASH, CallSession, SessionEvent

MAX_EVENT_DATA_BYTES = 16 * 1024


def entry_hash(
    prev_hash: str, session_id: str, seq: int, at: datetime, kind: str, actor: str, data: dict[str, Any]
) -> str:
    """SHA-256 (hex) of one entry chained to ``prev_hash``."""
    body = json.dumps(
        {
            "session": session_id,
            "seq": seq,
            "at": at.isoformat(timespec="microseconds"),
            "kind": kind,
            "actor": actor,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


async def append_event(
    session: AsyncSession,
    session_id: str,
    kind: str,
    actor: str,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> SessionEvent:
    """Append one entry to a session's log inside the caller's transaction.

    Raises :class:`NotFound` for an unknown session and :class:`InvalidInput` for data that
    is not JSON or larger than ``MAX_EVENT_DATA_BYTES``.
    """
    data = dict(data or {})
    try:
        encoded = json.dumps(data, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"event {kind!r} data is not JSON: {exc}") from None
    if len(encoded.encode()) > MAX_EVENT_DATA_BYTES:
        raise InvalidInput(f"event {kind!r} data is larger than {MAX_EVENT_DATA_BYTES} bytes")
    # Lock the session row before reading the head, so appends form one chain. A no-op UPDATE
    # takes the lock on both databases: SQLite (pysqlite) opens its transaction only at the
    # first write, so a SELECT first would read a head another writer is about to replace.
    # populate_existing: the row may already sit in this session's identity map, read before the lock.
    await session.execute(
        update(CallSession).where(CallSession.id == session_id).values(event_count=CallSession.event_count)
    )
    call = await session.scalar(
        select(CallSession)
        .where(CallSession.id == session_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if call is None:
        raise NotFound(f"session {session_id} does not exist")
    # Microsecond precision survives both databases unchanged, so hashes recompute exactly.
    at = at or utcnow()
    seq = call.event_count + 1
    digest = entry_hash(call.head_hash, session_id, seq, at, kind, actor, json.loads(encoded))
    event = SessionEvent(
        session_id=session_id,
        seq=seq,
        at=at,
        kind=kind,
        actor=actor,
        data=json.loads(encoded),
        prev_hash=call.head_hash,
        hash=digest,
    )
    session.add(event)
    call.event_count = seq
    call.head_hash = digest
    await session.flush()
    return event


@dataclass
class ChainReport:
    ok: bool
    count: int
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "problems": list(self.problems)}


def verify_entries(
    session_id: str, entries: Sequence[SessionEvent], head_hash: str, event_count: int
) -> ChainReport:
    """Check a chain given its entries in storage order and the session's recorded head."""
    problems: list[str] = []
    prev = GENESIS_HASH
    ordered = sorted(entries, key=lambda e: e.seq)
    for expected_seq, entry in enumerate(ordered, start=1):
        if entry.seq != expected_seq:
            problems.append(f"entry seq {entry.seq} found where {expected_seq} was expected (missing entry)")
        if entry.prev_hash != prev:
            problems.append(f"entry {entry.seq} does not follow the previous entry (deleted or reordered)")
        recomputed = entry_hash(
            entry.prev_hash, session_id, entry.seq, entry.at, entry.kind, entry.actor, entry.data
        )
        if recomputed != entry.hash:
            problems.append(f"entry {entry.seq} ({entry.kind}) was altered: its hash does not match")
        prev = entry.hash
    if len(ordered) != event_count:
        problems.append(f"session records {event_count} entries but {len(ordered)} are stored")
    if prev != head_hash:
        problems.append("the last stored entry is not the session's recorded head (entries removed at the end?)")
    return ChainReport(ok=not problems, count=len(ordered), problems=problems)


async def load_events(session: AsyncSession, session_id: str) -> list[SessionEvent]:
    return list(
        await session.scalars(
            select(SessionEvent).where(SessionEvent.session_id == session_id).order_by(SessionEvent.seq)
        )
    )


async def verify_chain(session: AsyncSession, session_id: str) -> ChainReport:
    """Verify one session's log; raise :class:`NotFound` for an unknown session.

    The head and the entries are read with separate statements, which on SQLite are separate
    snapshots: when an append lands in between, the head is read again and the check repeats,
    so a write in progress is never reported as tampering.
    """
    for _ in range(5):
        head = await _read_head(session, session_id)
        entries = await load_events(session, session_id)
        if await _read_head(session, session_id) == head:
            break
    return verify_entries(session_id, entries, head[0], head[1])


async def _read_head(session: AsyncSession, session_id: str) -> tuple[str, int]:
    row = (
        await session.execute(
            select(CallSession.head_hash, CallSession.event_count).where(CallSession.id == session_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"session {session_id} does not exist")
    return row[0], row[1]
