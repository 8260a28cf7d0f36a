"""The hash-chained session log on both databases: a clean chain verifies; tampering is found."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

from cloudhall.db import Database, utcnow
from cloudhall.errors import InvalidInput, NotFound
from recordings.eventlog import append_event, verify_chain
from recordings.models import CallSession, SessionEvent
from tests.factories import build_world

KINDS = ["call:queued", "call:offered", "call:answered", "chat:message", "call:ended"]


@pytest.fixture
async def chain(database: Database) -> str:
    """A session with five logged events; returns its id."""
    world = await build_world(database)
    session_id = str(uuid.uuid4())
    start = utcnow()
    async with database.transaction() as session:
        session.add(
            CallSession(
                id=session_id,
                outlet_id=world.outlets["O1"].id,
                staff_user_id=world.users["staff1"].id,
                department_id=world.departments["SOC"].id,
                applicant={"name": "张*"},
                queued_at=start,
            )
        )
        await session.flush()
        for n, kind in enumerate(KINDS):
            await append_event(
                session,
                session_id,
                kind,
                "user:1",
                {"n": n, "text": "您好，材料已收到"},
                at=start + timedelta(seconds=n),
            )
    return session_id


async def report(database: Database, session_id: str):  # noqa: ANN201
    async with database.transaction() as session:
        return await verify_chain(session, session_id)


async def test_an_untouched_chain_verifies(database: Database, chain: str) -> None:
    result = await report(database, chain)
    assert result.ok, result.problems
    assert result.count == len(KINDS)


async def test_an_edited_entry_is_found(database: Database, chain: str) -> None:
    async with database.transaction() as session:
        await session.execute(
            update(SessionEvent)
            .where(SessionEvent.session_id == chain, SessionEvent.seq == 4)
            .values(data={"n": 3, "text": "改过的内容"})
        )
    result = await report(database, chain)
    assert not result.ok
    assert any("entry 4" in p and "altered" in p for p in result.problems), result.problems


async def test_an_edited_time_or_actor_is_found(database: Database, chain: str) -> None:
    async with database.transaction() as session:
        await session.execute(
            update(SessionEvent)
            .where(SessionEvent.session_id == chain, SessionEvent.seq == 2)
            .values(actor="user:99")
        )
    assert not (await report(database, chain)).ok


@pytest.mark.parametrize("seq", [3, 5], ids=["middle", "last"])
async def test_a_deleted_entry_is_found(database: Database, chain: str, seq: int) -> None:
    async with database.transaction() as session:
        await session.execute(
            delete(SessionEvent).where(SessionEvent.session_id == chain, SessionEvent.seq == seq)
        )
    result = await report(database, chain)
    assert not result.ok
    assert result.count == len(KINDS) - 1


async def test_deleting_the_last_entry_and_fixing_the_count_is_found(database: Database, chain: str) -> None:
    async with database.transaction() as session:
        await session.execute(
            delete(SessionEvent).where(SessionEvent.session_id == chain, SessionEvent.seq == 5)
        )
        await session.execute(update(CallSession).where(CallSession.id == chain).values(event_count=4))
    result = await report(database, chain)
    assert not result.ok
    assert any("head" in p for p in result.problems), result.problems


async def test_an_inserted_entry_is_found(database: Database, chain: str) -> None:
    """A forged entry slipped in after entry 2 (later entries renumbered) breaks the chain."""
    async with database.transaction() as session:
        events = list(
            await session.scalars(
                select(SessionEvent).where(SessionEvent.session_id == chain).order_by(SessionEvent.seq.desc())
            )
        )
        for event in events:  # renumber from the end so (session, seq) stays unique
            if event.seq > 2:
                event.seq += 1
                await session.flush()
        second = next(e for e in events if e.seq == 2)
        session.add(
            SessionEvent(
                session_id=chain,
                seq=3,
                at=second.at,
                kind="call:note",
                actor="user:1",
                data={"forged": True},
                prev_hash=second.hash,
                hash="f" * 64,
            )
        )
        await session.execute(update(CallSession).where(CallSession.id == chain).values(event_count=6))
    result = await report(database, chain)
    assert not result.ok
    assert any("entry 3" in p for p in result.problems), result.problems
    assert any("entry 4 does not follow" in p for p in result.problems), result.problems


async def test_reordered_entries_are_found(database: Database, chain: str) -> None:
    async with database.transaction() as session:
        await session.execute(
            update(SessionEvent).where(SessionEvent.session_id == chain, SessionEvent.seq == 2).values(seq=-2)
        )
        await session.execute(
            update(SessionEvent).where(SessionEvent.session_id == chain, SessionEvent.seq == 3).values(seq=2)
        )
        await session.execute(
            update(SessionEvent).where(SessionEvent.session_id == chain, SessionEvent.seq == -2).values(seq=3)
        )
    result = await report(database, chain)
    assert not result.ok
    assert any("does not follow" in p or "altered" in p for p in result.problems)


async def test_appends_continue_the_chain_and_bad_input_is_refused(database: Database, chain: str) -> None:
    async with database.transaction() as session:
        event = await append_event(session, chain, "rating:submitted", "system", {"level": 5})
        assert event.seq == len(KINDS) + 1
        with pytest.raises(InvalidInput, match="larger than"):
            await append_event(session, chain, "big", "system", {"blob": "x" * 20000})
        with pytest.raises(InvalidInput, match="not JSON"):
            await append_event(session, chain, "bad", "system", {"obj": object()})
        with pytest.raises(NotFound):
            await append_event(session, "no-such-session", "x", "system")
    assert (await report(database, chain)).ok


async def test_concurrent_appends_form_one_chain(database: Database, chain: str) -> None:
    """Writers in separate transactions (two nodes, two tasks) never fork or collide."""

    async def writer(n: int) -> None:
        for i in range(5):
            async with database.transaction() as session:
                await append_event(session, chain, "chat:message", f"user:{n}", {"i": i})

    await asyncio.gather(*(writer(n) for n in range(4)))
    result = await report(database, chain)
    assert result.ok, result.problems
    assert result.count == len(KINDS) + 20
