"""Identities: departments (county desks, the routing skill groups), outlets, users and roles.

Tables here belong to the kernel. ``Principal`` is the immutable view of a logged-in user
that every feature receives; scope checks live on it so every package asks the same way.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Column, ForeignKey, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship, selectinload

from cloudhall.db import Base, utcnow
from cloudhall.errors import Forbidden, InvalidInput, NotFound


class Role(str, enum.Enum):
    OUTLET_STAFF = "outlet_staff"
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


ROLE_LABELS = {
    Role.OUTLET_STAFF: "便民服务站工作人员",
    Role.AGENT: "县级窗口坐席",
    Role.SUPERVISOR: "督查人员",
    Role.ADMIN: "系统管理员",
}

agent_departments = Table(
    "agent_departments",
    Base.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("department_id", ForeignKey("departments.id", ondelete="CASCADE"), primary_key=True),
)

CODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Department(Base):
    """A desk of a county service centre; calls are routed to its queue."""

    __tablename__ = "departments"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    county: Mapped[str] = mapped_column(String(64), index=True)
    # {"tz": "Asia/Shanghai", "mon": [["08:30","12:00"],["14:00","17:30"]], ...}; empty: always open.
    working_hours: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class Outlet(Base):
    """A village service point (便民服务站)."""

    __tablename__ = "outlets"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    island: Mapped[str] = mapped_column(String(64))
    town: Mapped[str] = mapped_column(String(64))
    county: Mapped[str] = mapped_column(String(64), index=True)
    contact_name: Mapped[str] = mapped_column(String(64), default="")
    contact_phone: Mapped[str] = mapped_column(String(32), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    # outlet_staff: their outlet. agent: their county centre. supervisor: county, or None = whole city.
    outlet_id: Mapped[int | None] = mapped_column(ForeignKey("outlets.id"), nullable=True)
    county: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    outlet: Mapped[Outlet | None] = relationship(lazy="raise")
    departments: Mapped[list[Department]] = relationship(secondary=agent_departments, lazy="raise")


@dataclass(frozen=True)
class Principal:
    """Who is calling, with their scope. Built once per request or socket connection."""

    user_id: int
    username: str
    display_name: str
    role: Role
    outlet_id: int | None = None
    county: str | None = None
    department_ids: tuple[int, ...] = ()

    @classmethod
    def from_user(cls, user: User) -> "Principal":
        return cls(
            user_id=user.id,
            username=user.username,
            display_name=user.display_name,
            role=Role(user.role),
            outlet_id=user.outlet_id,
            county=user.county,
            department_ids=tuple(sorted(d.id for d in user.departments)),
        )

    def require_role(self, *roles: Role) -> None:
        """Raise :class:`Forbidden` unless the principal has one of ``roles``."""
        if self.role not in roles:
            allowed = ", ".join(r.value for r in roles)
            raise Forbidden(f"role {self.role.value} may not do this (allowed: {allowed})")

    def can_see_county(self, county: str) -> bool:
        if self.role is Role.ADMIN:
            return True
        if self.role is Role.SUPERVISOR:
            return self.county is None or self.county == county
        return self.county == county

    def can_see_outlet(self, outlet_id: int, outlet_county: str) -> bool:
        """Outlet staff see only their own outlet; others by county scope."""
        if self.role is Role.OUTLET_STAFF:
            return self.outlet_id == outlet_id
        return self.can_see_county(outlet_county)

    def check_outlet(self, outlet_id: int, outlet_county: str) -> None:
        if not self.can_see_outlet(outlet_id, outlet_county):
            raise Forbidden(f"outlet {outlet_id} is outside your scope")

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "role": self.role.value,
            "outlet_id": self.outlet_id,
            "county": self.county,
            "department_ids": list(self.department_ids),
        }


async def get_user(session: AsyncSession, user_id: int) -> User:
    """Load a user with outlet and departments; raise :class:`NotFound`."""
    user = await session.scalar(
        select(User)
        .where(User.id == user_id)
        .options(selectinload(User.departments), selectinload(User.outlet))
    )
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


async def get_user_by_username(session: AsyncSession, username: str) -> User | None:
    return await session.scalar(
        select(User)
        .where(User.username == username)
        .options(selectinload(User.departments), selectinload(User.outlet))
    )


def validate_code(field: str, value: str) -> str:
    value = value.strip()
    if not CODE_RE.match(value):
        raise InvalidInput(
            f"{field} {value!r} must be 1-32 letters, digits, '_', '.' or '-'", details={"field": field}
        )
    return value


def validate_working_hours(value: Any) -> dict[str, Any]:
    """Check a working-hours mapping; raise :class:`InvalidInput` naming the bad day or range."""
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("working_hours must be an object of weekday -> [[HH:MM, HH:MM], ...]")
    out: dict[str, Any] = {}
    for key, ranges in value.items():
        if key == "tz":
            if not isinstance(ranges, str):
                raise InvalidInput("working_hours.tz must be a time-zone name")
            out[key] = ranges
            continue
        if key not in WEEKDAYS:
            raise InvalidInput(f"working_hours has an unknown day {key!r} (use {', '.join(WEEKDAYS)})")
        if not isinstance(ranges, list):
            raise InvalidInput(f"working_hours.{key} must be a list of [start, end] pairs")
        for pair in ranges:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(p, str) and re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", p) for p in pair)
                or pair[0] >= pair[1]
            ):
                raise InvalidInput(f"working_hours.{key} has a bad range {pair!r} (want [\"08:30\", \"12:00\"])")
        out[key] = ranges
    return out
