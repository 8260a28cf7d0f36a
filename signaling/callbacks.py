"""Callback requests: outlets leave them, agents see them and call the outlet back."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cloudhall.errors import CloudHallError, Conflict, Forbidden
from cloudhall.identities import Principal, Role
from signaling import calls as domain
from signaling.schemas import Applicant
from signaling.service import CallService, masked_applicant
from signaling.store import AgentBusy
from signaling.views import public_call


class CallbackService:
    """Use cases around callback requests; outbound calls go through :class:`CallService`."""

    def __init__(self, calls: CallService) -> None:
        self.calls = calls

    async def leave_callback(
        self, p: Principal, item_id: int, applicant: Applicant, preferred: datetime | None, note: str
    ) -> dict[str, Any]:
        """An outlet asks to be called back (outside hours or nobody available)."""
        p.require_role(Role.OUTLET_STAFF)
        if p.outlet_id is None:
            raise Forbidden("your account is not attached to an outlet")
        outlet = await self.calls.directory.outlet(p.outlet_id)
        item = await self.calls.directory.item(item_id)
        dept = await self.calls.directory.department(item.department_id)
        if dept.county != outlet.county:
            raise Forbidden(f"department {dept.id} serves another county")
        if preferred is not None and preferred.tzinfo is None:
            raise CloudHallError("preferred_time needs a time zone (e.g. 2026-11-24T09:00:00+08:00)",
                                 code="invalid_input")
        row = await self.calls.directory.add_callback(p, dept.id, item.id, masked_applicant(applicant), preferred, note)
        row.update(outlet_name=outlet.name, island=outlet.island, item_name=item.name)
        await self.calls.board.callbacks_changed(dept.id)
        return {"callback": row}

    async def callbacks_for(self, p: Principal) -> list[dict[str, Any]]:
        p.require_role(Role.AGENT)
        return await self.calls.directory.open_callbacks(p.department_ids)

    async def call_back(self, p: Principal, callback_id: int) -> dict[str, Any]:
        """The agent calls an outlet back: the call rings at the outlet."""
        p.require_role(Role.AGENT)
        held = await self.calls.queue.call_of_agent(p.user_id)
        if held is not None:
            raise AgentBusy(f"you already hold call {held}", details={"call_id": held})
        call_id = str(uuid.uuid4())
        row = await self.calls.directory.claim_callback(p, callback_id, call_id)
        try:
            outlet = await self.calls.directory.outlet(row["outlet_id"])
            dept = await self.calls.directory.department(row["department_id"])
            item = await self.calls.directory.item(row["service_item_id"]) if row["service_item_id"] else None
            if await self.calls.queue.call_of_outlet(outlet.id) is not None:
                raise Conflict(f"outlet {outlet.id} is in another call; try again later", code="outlet_busy")
            now = self.calls.clock()
            call, events = domain.new_outbound_call(
                call_id=call_id,
                department_id=dept.id,
                outlet_id=outlet.id,
                staff_user_id=row_staff(row),
                county=outlet.county,
                agent_id=p.user_id,
                agent_name=p.display_name,
                callback_id=callback_id,
                now=now,
                item_id=item.id if item else None,
                item_name=item.name if item else "",
                outlet_name=outlet.name,
                island=outlet.island,
                department_name=dept.name,
                applicant=dict(row["applicant"]),
            )
            await self.calls.records.open(call, events, self.calls.node_id)
            stored = await self.calls.queue.commit(None, call)
        except CloudHallError:
            await self.calls.directory.settle_callback(callback_id, answered=False)
            raise
        await self.calls.finish_change(None, stored, events)
        await self.calls.board.callbacks_changed(dept.id)
        return {"call": public_call(stored, now)}



def row_staff(row: dict[str, Any]) -> int:
    """The staff member who left a callback request (the session's staff user)."""
    return int(row["staff_user_id"])
