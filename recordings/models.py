"""Session records: call sessions, their append-only hash-chained event log, and ratings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudhall.db import Base, utcnow

GENESIS_HASH = "0" * 64

RATING_LABELS = {5: "非常满意", 4: "满意", 3: "基本满意", 2: "不满意", 1: "非常不满意"}


class CallSession(Base):
    """One remote-service call from its queueing to its end (kept across transfers)."""

    __tablename__ = "call_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    outlet_id: Mapped[int] = mapped_column(ForeignKey("outlets.id"), index=True)
    staff_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    service_item_id: Mapped[int | None] = mapped_column(ForeignKey("service_items.id"), nullable=True)
    # Applicant summary shown to agents and supervisors: {"name": ..., "id_masked": ..., "phone_masked": ...}
    applicant: Mapped[dict[str, Any]] = mapped_column(default=dict)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    agent_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    answered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    node: Mapped[str] = mapped_column(String(64), default="")
    # Head of the event chain, so that deleting the last entries is detectable too.
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    head_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "outlet_id": self.outlet_id,
            "staff_user_id": self.staff_user_id,
            "department_id": self.department_id,
            "service_item_id": self.service_item_id,
            "applicant": dict(self.applicant or {}),
            "priority": self.priority,
            "agent_user_id": self.agent_user_id,
            "state": self.state,
            "queued_at": self.queued_at.isoformat() if self.queued_at else None,
            "answered_at": self.answered_at.isoformat() if self.answered_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "end_reason": self.end_reason,
            "node": self.node,
        }


class SessionEvent(Base):
    """One entry of a session's append-only log; ``hash`` chains it to the previous entry."""

    __tablename__ = "session_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("call_sessions.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(48))
    actor: Mapped[str] = mapped_column(String(64))  # "user:12", "system", "node:a1"
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_session_events_session_seq"),)


class Rating(Base):
    """The citizen's 好差评 rating of one session (5 = 非常满意 … 1 = 非常不满意)."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("call_sessions.id", ondelete="CASCADE"), unique=True)
    level: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)

    __table_args__ = (CheckConstraint("level BETWEEN 1 AND 5", name="level_range"),)
