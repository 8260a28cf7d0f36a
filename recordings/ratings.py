"""The citizen's 好差评 rating of a finished session, submitted from the outlet page.

``POST /api/sessions/{id}/rating`` with ``{"level": 1-5, "comment": "..."}``: only outlet
staff of the session's own outlet, only once, only after the call has ended. The rating is
also appended to the session's event log, so the timeline and audits see it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cloudhall import appkeys
from cloudhall.errors import Conflict, Forbidden, InvalidInput, NotFound
from cloudhall.http import principal, requires
from cloudhall.identities import Principal, Role
from recordings.eventlog import append_event
from recordings.models import RATING_LABELS, CallSession, Rating

MAX_COMMENT_CHARS = 500
RATEABLE_STATES = frozenset({"ended"})
APPEND_ATTEMPTS = 5


def parse_rating(body: Any) -> tuple[int, str]:
    """Validate a rating payload; return ``(level, comment)`` or raise :class:`InvalidInput`."""
    if not isinstance(body, dict):
        raise InvalidInput('the rating must be a JSON object like {"level": 5, "comment": ""}')
    level = body.get("level")
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
        raise InvalidInput(f"level must be a whole number from 1 to 5, not {level!r}", details={"field": "level"})
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise InvalidInput("comment must be text", details={"field": "comment"})
    comment = comment.strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidInput(
            f"comment is {len(comment)} characters long; at most {MAX_COMMENT_CHARS} are allowed",
            details={"field": "comment", "max": MAX_COMMENT_CHARS},
        )
    return level, comment


async def submit_rating(db: Any, who: Principal, session_id: str, level: int, comment: str) -> Rating:
    """Store the rating of one session and log it.

    Raises :class:`NotFound` (unknown session), :class:`Forbidden` (not this outlet's
    session) and :class:`Conflict` (call not ended yet, or already rated).
    """
    who.require_role(Role.OUTLET_STAFF)
    # Media and recording events are appended to the same log at the end of a call; on SQLite
    # two appends can race for the next sequence number, and the loser's whole transaction
    # rolls back cleanly: try again (the checks run again, so "once" still holds).
    for attempt in range(APPEND_ATTEMPTS):
        try:
            return await _store_rating(db, who, session_id, level, comment)
        except IntegrityError:
            if attempt == APPEND_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


async def _store_rating(db: Any, who: Principal, session_id: str, level: int, comment: str) -> Rating:
    async with db.transaction() as session:
        call = await session.get(CallSession, session_id)
        if call is None:
            raise NotFound(f"session {session_id} does not exist")
        if who.outlet_id is None or call.outlet_id != who.outlet_id:
            raise Forbidden(f"session {session_id} belongs to another outlet")
        if call.state not in RATEABLE_STATES:
            raise Conflict(f"session {session_id} is {call.state}: rate it after the call has ended")
        existing = await session.scalar(select(Rating.id).where(Rating.session_id == session_id))
        if existing is not None:
            raise Conflict(f"session {session_id} has already been rated", code="already_rated")
        rating = Rating(session_id=session_id, level=level, comment=comment, submitted_by=who.user_id)
        session.add(rating)
        await session.flush()
        await append_event(
            session,
            session_id,
            "rating_submitted",
            f"user:{who.user_id}",
            {"level": level, "label": RATING_LABELS[level], "has_comment": bool(comment)},
        )
    return rating


@requires(Role.OUTLET_STAFF)
async def rating_api(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput("the request body is not JSON") from None
    level, comment = parse_rating(body)
    rating = await submit_rating(
        request.app[appkeys.DATABASE], principal(request), request.match_info["session_id"], level, comment
    )
    return web.json_response(
        {"session_id": rating.session_id, "level": rating.level, "label": RATING_LABELS[rating.level],
         "comment": rating.comment},
        status=201,
    )


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/api/sessions/{session_id}/rating", rating_api)
