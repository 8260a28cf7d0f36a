"""Read-only lookups of kernel tables signalling needs (outlets, departments, items, callbacks).

Outlets, departments and items change rarely: they are cached per node for a few seconds
so that a busy queue does not hit the database on every event.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cloudhall.catalog import ServiceItem
from cloudhall.db import Database, utcnow
from cloudhall.errors import Conflict, Forbidden, NotFound
from cloudhall.identities import Department, Outlet, Principal
from signaling.models import CallbackRequest, CallbackStatus

CACHE_SECONDS = 10.0


@dataclass(frozen=True)
class OutletInfo:
    id: int
    name: str
    island: str
    county: str
    enabled: bool


@dataclass(frozen=True)
class DepartmentInfo:
    id: int
    name: str
    county: str
    working_hours: dict[str, Any]
    enabled: bool


@dataclass(frozen=True)
class ItemInfo:
    id: int
    name: str
    department_id: int
    enabled: bool


class Directory:
    """Cached reads of outlets, departments and items; callback request storage."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: dict[tuple[str, int], tuple[float, Any]] = {}

    async def _cached(self, kind: str, key: int, load: Any) -> Any:
        hit = self._cache.get((kind, key))
        if hit and hit[0] > time.monotonic():
            return hit[1]
        value = await load()
        self._cache[(kind, key)] = (time.monotonic() + CACHE_SECONDS, value)
        return value

    async def outlet(self, outlet_id: int) -> OutletInfo:
        async def load() -> OutletInfo:
            async with self._db.transaction() as session:
                row = await session.get(Outlet, outlet_id)
                if row is None:
                    raise NotFound(f"outlet {outlet_id} does not exist")
                return OutletInfo(row.id, row.name, row.island, row.county, row.enabled)

        return await self._cached("outlet", outlet_id, load)

    async def department(self, department_id: int) -> DepartmentInfo:
        async def load() -> DepartmentInfo:
            async with self._db.transaction() as session:
                row = await session.get(Department, department_id)
                if row is None:
                    raise NotFound(f"department {department_id} does not exist")
                return DepartmentInfo(row.id, row.name, row.county, dict(row.working_hours or {}), row.enabled)

        return await self._cached("department", department_id, load)

    async def departments_of_county(self, county: str | None) -> list[DepartmentInfo]:
        async with self._db.transaction() as session:
            query = select(Department)
            if county is not None:
                query = query.where(Department.county == county)
            rows = await session.scalars(query.order_by(Department.id))
            return [DepartmentInfo(r.id, r.name, r.county, dict(r.working_hours or {}), r.enabled) for r in rows]

    async def item(self, item_id: int) -> ItemInfo:
        async def load() -> ItemInfo:
            async with self._db.transaction() as session:
                row = await session.get(ServiceItem, item_id)
                if row is None:
                    raise NotFound(f"service item {item_id} does not exist")
                return ItemInfo(row.id, row.name, row.department_id, row.enabled)

        return await self._cached("item", item_id, load)

    # -- callback requests ----------------------------------------------------------------
    async def add_callback(
        self,
        principal: Principal,
        department_id: int,
        item_id: int | None,
        applicant: dict[str, Any],
        preferred_time: datetime | None,
        note: str,
    ) -> dict[str, Any]:
        async with self._db.transaction() as session:
            row = CallbackRequest(
                outlet_id=principal.outlet_id,
                department_id=department_id,
                service_item_id=item_id,
                staff_user_id=principal.user_id,
                applicant=applicant,
                preferred_time=preferred_time,
                note=note,
            )
            session.add(row)
            await session.flush()
            return row.to_dict()

    async def open_callbacks(self, department_ids: tuple[int, ...]) -> list[dict[str, Any]]:
        """Open and calling requests of the departments by preferred time, with outlet, island and item names."""
        async with self._db.transaction() as session:
            rows = await session.execute(
                select(CallbackRequest, Outlet.name, Outlet.island, ServiceItem.name)
                .join(Outlet, Outlet.id == CallbackRequest.outlet_id)
                .outerjoin(ServiceItem, ServiceItem.id == CallbackRequest.service_item_id)
                .where(
                    CallbackRequest.department_id.in_(department_ids),
                    CallbackRequest.status.in_([CallbackStatus.OPEN.value, CallbackStatus.CALLING.value]),
                )
                .order_by(CallbackRequest.preferred_time.is_(None), CallbackRequest.preferred_time, CallbackRequest.id)
            )
            return [
                {**row.to_dict(), "outlet_name": outlet_name, "island": island, "item_name": item_name or ""}
                for row, outlet_name, island, item_name in rows
            ]

    async def claim_callback(self, principal: Principal, callback_id: int, session_id: str) -> dict[str, Any]:
        """Mark an open callback request as being called by this agent; raise if not open."""
        async with self._db.transaction() as session:
            row = await session.get(CallbackRequest, callback_id, with_for_update=True)
            if row is None:
                raise NotFound(f"callback request {callback_id} does not exist")
            if row.department_id not in principal.department_ids:
                raise Forbidden(f"callback request {callback_id} belongs to another department")
            if row.status != CallbackStatus.OPEN.value:
                raise Conflict(f'callback request {callback_id} is "{row.status}", not open')
            row.status = CallbackStatus.CALLING.value
            row.handled_by = principal.user_id
            row.session_id = session_id
            row.updated_at = utcnow()
            return row.to_dict()

    async def calling_callbacks(self) -> list[dict[str, Any]]:
        """Every request whose outbound call is (still) marked ringing or in progress."""
        async with self._db.transaction() as session:
            rows = await session.scalars(
                select(CallbackRequest).where(CallbackRequest.status == CallbackStatus.CALLING.value)
                .order_by(CallbackRequest.id)
            )
            return [row.to_dict() for row in rows]

    async def settle_callback(self, callback_id: int, answered: bool) -> dict[str, Any] | None:
        """After the outbound call: done when it was answered, open again otherwise."""
        async with self._db.transaction() as session:
            row = await session.get(CallbackRequest, callback_id, with_for_update=True)
            if row is None or row.status != CallbackStatus.CALLING.value:
                return None
            row.status = CallbackStatus.DONE.value if answered else CallbackStatus.OPEN.value
            row.updated_at = utcnow()
            return row.to_dict()
