"""Service-item catalog (事项): what an outlet can ask a county desk to handle."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloudhall.db import Base
from cloudhall.errors import NotFound
from cloudhall.identities import Department


class ServiceItem(Base):
    __tablename__ = "service_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Pinyin initials of the name, for the outlet's search box (e.g. 城乡居民养老保险 -> cxjmylbx).
    initials: Mapped[str] = mapped_column(String(64), default="")
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    # [{"name": "...", "form": "original"|"copy", "notes": "..."}]
    materials: Mapped[list[Any]] = mapped_column(default=list)
    high_frequency: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)

    department: Mapped[Department] = relationship(lazy="raise")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "name": self.name,
            "initials": self.initials,
            "department_id": self.department_id,
            "materials": list(self.materials or []),
            "high_frequency": self.high_frequency,
            "enabled": self.enabled,
        }


async def get_item(session: AsyncSession, item_id: int) -> ServiceItem:
    """Return one service item; raise :class:`NotFound`."""
    item = await session.get(ServiceItem, item_id)
    if item is None:
        raise NotFound(f"service item {item_id} does not exist")
    return item


async def list_items(session: AsyncSession, *, enabled_only: bool = True) -> list[ServiceItem]:
    """Items for the outlet's picker: high-frequency first, then by code."""
    query = select(ServiceItem)
    if enabled_only:
        query = query.where(ServiceItem.enabled.is_(True))
    query = query.order_by(ServiceItem.high_frequency.desc(), ServiceItem.code)
    return list(await session.scalars(query))
