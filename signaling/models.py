"""Tables owned by signalling: callback requests left by outlets."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cloudhall.db import Base, utcnow


class CallbackStatus(str, enum.Enum):
    OPEN = "open"
    CALLING = "calling"  # an agent's outbound call is ringing or in progress
    DONE = "done"
    CANCELLED = "cancelled"


class CallbackRequest(Base):
    """An outlet asks a department to call back (outside hours or nobody available)."""

    __tablename__ = "callback_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    outlet_id: Mapped[int] = mapped_column(ForeignKey("outlets.id"), index=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    service_item_id: Mapped[int | None] = mapped_column(ForeignKey("service_items.id"), nullable=True)
    staff_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    # Masked applicant summary, as on call sessions: {"name", "id_masked", "phone_masked"}.
    applicant: Mapped[dict[str, Any]] = mapped_column(default=dict)
    preferred_time: Mapped[datetime | None] = mapped_column(nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=CallbackStatus.OPEN.value, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    handled_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "outlet_id": self.outlet_id,
            "department_id": self.department_id,
            "service_item_id": self.service_item_id,
            "staff_user_id": self.staff_user_id,
            "applicant": dict(self.applicant or {}),
            "preferred_time": self.preferred_time.isoformat() if self.preferred_time else None,
            "note": self.note,
            "status": self.status,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "handled_by": self.handled_by,
            "session_id": self.session_id,
        }
