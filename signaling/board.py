"""What agents, supervisors and waiting outlets see of the queues: waiting lists and positions.

Changes mark a department dirty; :meth:`QueueBoard.flush` (run by the node worker, coalescing
bursts) pushes ``queue:update`` to the department's agents and supervisors, and
``queue:position`` to its waiting outlets at most every ``POSITION_INTERVAL`` seconds.
"""

from __future__ import annotations

from typing import Any, Callable

from cloudhall.errors import Forbidden, NotFound
from cloudhall.identities import Principal, Role
from signaling import calls as domain
from signaling.calls import Call
from signaling.directory import Directory
from signaling.ports import Notifier
from signaling.presence import AgentPresence, PresenceState
from signaling.schemas import CALLBACK_UPDATE, QUEUE_POSITION, QUEUE_UPDATE
from signaling.store import CallQueue
from signaling.views import department_room, outlet_room, queue_entry, supervisor_room

# Waiting lists pushed to agents carry at most this many calls (and the total).
QUEUE_LIST_LIMIT = 100
# Positions go to the waiting outlets of a department at most this often.
POSITION_INTERVAL = 1.0


class QueueBoard:
    """Pushes waiting lists, positions and callback lists to the rooms that watch them."""

    def __init__(self, queue: CallQueue, directory: Directory, notifier: Notifier, clock: Callable[[], float]) -> None:
        self.queue = queue
        self.directory = directory
        self.notifier = notifier
        self.clock = clock
        self.dirty_departments: set[int] = set()
        self._positions_pending: set[int] = set()
        self._positions_sent_at: dict[int, float] = {}
        self._waiting_cache: dict[int, list[Call]] = {}
        # Set by the node worker: flush soon (it coalesces bursts of changes).
        self.on_dirty: Callable[[], None] = lambda: None

    def mark_dirty(self, department_id: int) -> None:
        """The department's waiting list changed: push it, then positions."""
        self.dirty_departments.add(department_id)
        self.on_dirty()

    def staffing_changed(self, department_id: int) -> None:
        """Who is online changed: only the estimated waits move, not the list."""
        self._positions_pending.add(department_id)
        self.on_dirty()

    async def flush(self) -> float | None:
        """Send waiting lists to agents and supervisors now, and positions to waiting outlets.

        Waiting lists go out at once (the caller coalesces bursts); positions go to every
        waiting outlet of a department at most every ``POSITION_INTERVAL`` seconds, because
        each change at the head moves every outlet behind it. Returns the seconds until
        positions are due again, or None when nothing is pending.
        """
        dirty, self.dirty_departments = self.dirty_departments, set()
        self._positions_pending |= dirty
        now = self.clock()
        agents = await self.queue.all_presence() if self._positions_pending else []
        for dept_id in sorted(dirty):
            try:
                dept = await self.directory.department(dept_id)
            except NotFound:
                continue
            waiting = await self.queue.waiting(dept_id)
            self._waiting_cache[dept_id] = waiting
            entries = [queue_entry(c, i, now) for i, c in enumerate(waiting[:QUEUE_LIST_LIMIT], start=1)]
            body = {
                "department_id": dept_id,
                "department_name": dept.name,
                "calls": entries,
                "total": len(waiting),
                "server_time": now,
            }
            await self.notifier.emit(QUEUE_UPDATE, body, department_room(dept_id))
            await self.notifier.emit(QUEUE_UPDATE, body, supervisor_room(dept.county))
            await self.notifier.emit(QUEUE_UPDATE, body, supervisor_room(None))
        next_due: float | None = None
        for dept_id in sorted(self._positions_pending):
            due = self._positions_sent_at.get(dept_id, 0.0) + POSITION_INTERVAL
            if due > now:
                next_due = min(next_due or due - now, due - now)
                continue
            self._positions_pending.discard(dept_id)
            self._positions_sent_at[dept_id] = now
            waiting = self._waiting_cache.pop(dept_id, None)
            if waiting is None:
                waiting = await self.queue.waiting(dept_id)
            handling = await self.queue.handling_times(dept_id)
            staffed = self._staffed(agents, dept_id)
            for position, call in enumerate(waiting, start=1):
                await self.notifier.emit(
                    QUEUE_POSITION,
                    {
                        "call_id": call.id,
                        "department_id": dept_id,
                        "position": position,
                        "waiting": len(waiting),
                        "estimated_wait_seconds": domain.estimate_wait(position, handling, staffed),
                        "agents_online": staffed,
                    },
                    outlet_room(call.outlet_id),
                )
        self._waiting_cache.clear()
        return next_due

    @staticmethod
    def _staffed(agents: list[AgentPresence], department_id: int) -> int:
        return sum(
            1
            for a in agents
            if department_id in a.department_ids and a.state in (PresenceState.AVAILABLE, PresenceState.BUSY)
        )

    async def position_of(self, call: Call) -> dict[str, Any]:
        waiting = await self.queue.waiting(call.department_id)
        ids = [c.id for c in waiting]
        position = ids.index(call.id) + 1 if call.id in ids else 0
        staffed = self._staffed(await self.queue.all_presence(), call.department_id)
        handling = await self.queue.handling_times(call.department_id)
        return {
            "call_id": call.id,
            "department_id": call.department_id,
            "position": position,
            "waiting": len(ids),
            "estimated_wait_seconds": domain.estimate_wait(position, handling, staffed) if position else 0,
            "agents_online": staffed,
        }

    async def queues_for(self, p: Principal) -> list[dict[str, Any]]:
        """Waiting lists of the agent's departments, or of every department a supervisor sees."""
        now = self.clock()
        if p.role is Role.AGENT:
            dept_ids = list(p.department_ids)
        elif p.role in (Role.SUPERVISOR, Role.ADMIN):
            county = None if p.role is Role.ADMIN else p.county
            dept_ids = [d.id for d in await self.directory.departments_of_county(county)]
        else:
            raise Forbidden(f"role {p.role.value} has no queue view")
        out = []
        for dept_id in dept_ids:
            waiting = await self.queue.waiting(dept_id)
            out.append(
                {"department_id": dept_id, "calls": [queue_entry(c, i, now) for i, c in enumerate(waiting, 1)]}
            )
        return out

    async def callbacks_changed(self, department_id: int) -> None:
        """Push the department's open callback requests to its agents."""
        rows = await self.directory.open_callbacks((department_id,))
        await self.notifier.emit(
            CALLBACK_UPDATE, {"department_id": department_id, "callbacks": rows}, department_room(department_id)
        )
