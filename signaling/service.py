"""The signalling service: call use cases over the queue backend, the session log and a notifier.

Transport-free: Socket.IO handlers (:mod:`signaling.server`) parse payloads and call these
methods; deadlines (:mod:`signaling.timers`) call :meth:`CallService.on_deadline`. Every
change of a call is: read → pure transition (:mod:`signaling.calls`) → compare-and-set
commit in the backend → write the events to the session log → notify rooms → (re)arm
deadlines. The backend's commit decides races; the loser re-reads or is told ``conflict``.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

from cloudhall.errors import Conflict, Forbidden, NotFound
from cloudhall.identities import Principal, Role
from cloudhall.settings import SignalingSettings
from signaling import calls as domain
from signaling import presence as pres
from signaling.calls import Call, CallEvent, CallState, EndReason, Priority
from signaling.board import QueueBoard
from signaling.directory import Directory
from signaling.hours import desk_status
from signaling.ports import Notifier, SessionLog
from signaling.presence import AgentPresence, PresenceState
from signaling.schemas import CALL_STATE, PRESENCE_UPDATE, Applicant
from signaling.store import AgentBusy, CallQueue, StaleCall
from signaling.tasks import reraise_if_cancelling
from signaling.views import mask, outlet_room, public_call, supervisor_room, user_room

log = logging.getLogger(__name__)

RETRIES = 8
# How many calls at the head of each queue "take next" looks at per attempt.
TAKE_CANDIDATES = 25
# Waiting lists pushed to agents carry at most this many calls (and the total).
QUEUE_LIST_LIMIT = 100
# Positions go to the waiting outlets of a department at most this often.
POSITION_INTERVAL = 1.0


def outlet_side(outlet_id: int) -> str:
    return f"outlet:{outlet_id}"


def agent_side(user_id: int) -> str:
    return f"agent:{user_id}"


def masked_applicant(applicant: Applicant) -> dict[str, Any]:
    """What is stored and shown: the name, and masked ID number and phone (no full numbers)."""
    return {
        "name": applicant.name,
        "id_masked": mask(applicant.id_number, 6, 4) if applicant.id_number else "",
        "phone_masked": mask(applicant.phone, 3, 4) if applicant.phone else "",
    }


class CallService:
    """Use cases of outlets, agents and supervisors; one per node."""

    def __init__(
        self,
        settings: SignalingSettings,
        queue: CallQueue,
        records: SessionLog,
        directory: Directory,
        notifier: Notifier,
        node_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.records = records
        self.directory = directory
        self.notifier = notifier
        self.node_id = node_id
        self.clock = clock
        self.board = QueueBoard(queue, directory, notifier, clock)
        # Set by setup: tell the node that owns a call's media that the call ended.
        self.on_ended: Callable[[Call], Any] | None = None

    # -- the commit pipeline ------------------------------------------------------------------
    async def change(self, call_id: str, step: Callable[[Call], tuple[Call, list[CallEvent]]]) -> Call:
        """Apply a pure transition with compare-and-set, retrying on concurrent changes."""
        for _ in range(RETRIES):
            call = await self.queue.get(call_id)
            if call is None:
                raise NotFound(f"call {call_id} does not exist")
            new, events = step(call)
            if not events and new == call:
                return call
            try:
                stored = await self.queue.commit(call, new)
            except StaleCall:
                continue
            await self.finish_change(call, stored, events)
            return stored
        raise Conflict(f"call {call_id} kept changing; try again")

    async def finish_change(self, old: Call | None, new: Call, events: list[CallEvent]) -> None:
        """Everything that follows a committed transition: log, deadlines, presence, notify."""
        if events and old is not None:
            try:
                await self.records.record(new, events)
            except Exception:
                # The change is committed in the queue backend; its timers and notifications
                # must still follow, so a failing log write is logged, not raised.
                reraise_if_cancelling()
                log.exception("session %s: could not record %s", new.id, [e.kind for e in events])
        await self._arm_deadlines(old, new)
        await self._sync_presence(old, new)
        if old is not None and old.state is CallState.QUEUED:
            self.board.mark_dirty(old.department_id)
        if new.state is CallState.QUEUED:
            self.board.mark_dirty(new.department_id)
        await self._notify_call(old, new, events)
        if not new.active and old is not None and old.active:
            if old.answered_at is not None and new.ended_at is not None and old.state is CallState.IN_CALL:
                await self.queue.record_handling(new.department_id, new.ended_at - old.answered_at)
            if new.callback_id is not None:
                updated = await self.directory.settle_callback(new.callback_id, answered=new.answered_at is not None)
                if updated is not None:
                    await self.board.callbacks_changed(new.department_id)
            if self.on_ended is not None:
                await self.on_ended(new)
            log.info("call %s: ended (%s)", new.id, new.end_reason.value if new.end_reason else "")

    async def _arm_deadlines(self, old: Call | None, new: Call) -> None:
        s = self.settings
        now = self.clock()
        q = self.queue
        state_changed = old is None or old.state is not new.state or old.step != new.step
        if old is not None and state_changed:
            await q.unschedule(f"ring:{old.id}:{old.step}")
            await q.unschedule(f"qlimit:{old.id}:{old.step}")
            await q.unschedule(f"connect:{old.id}:{old.step}")
        if state_changed:
            if new.state is CallState.OFFERED:
                await q.schedule(f"ring:{new.id}:{new.step}", now + s.ring_timeout_seconds)
            elif new.state is CallState.QUEUED:
                await q.schedule(f"qlimit:{new.id}:{new.step}", new.queued_at + s.queue_limit_seconds)
            elif new.state is CallState.CONNECTING:
                await q.schedule(f"connect:{new.id}:{new.step}", now + s.reconnect_grace_seconds)
        for side in ("outlet", "agent"):
            before = getattr(old, f"{side}_lost_at") if old is not None else None
            after = getattr(new, f"{side}_lost_at") if new.active else None
            if before is not None and before != after:
                await q.unschedule(f"grace:{side}:{new.id}:{before!r}")
            if after is not None and after != before:
                await q.schedule(f"grace:{side}:{new.id}:{after!r}", after + s.reconnect_grace_seconds)

    async def _sync_presence(self, old: Call | None, new: Call) -> None:
        now = self.clock()
        old_agent = old.agent_id if old is not None and old.holds_agent else None
        new_agent = new.agent_id if new.holds_agent else None
        if old_agent is not None and old_agent != new_agent:
            p = await self.queue.get_presence(old_agent)
            if p is not None and p.call_id == new.id:
                await self._put_presence(pres.free(p, now))
        if new_agent is not None and new_agent != old_agent:
            p = await self.queue.get_presence(new_agent)
            if p is not None:
                await self._put_presence(pres.busy(p, new.id, now))

    async def _notify_call(self, old: Call | None, new: Call, events: list[CallEvent]) -> None:
        now = self.clock()
        body = {"call": public_call(new, now), "events": [e.kind for e in events]}
        rooms = {outlet_room(new.outlet_id)}
        if new.agent_id is not None:
            rooms.add(user_room(new.agent_id))
        if old is not None and old.agent_id is not None:
            rooms.add(user_room(old.agent_id))  # a requeued call leaves its agent's screen too
        for room in rooms:
            await self.notifier.emit(CALL_STATE, body, room)
        # Supervisors of the county and city-wide ones follow every call live (wallboard).
        for room in {supervisor_room(new.county), supervisor_room(None)}:
            await self.notifier.emit(CALL_STATE, body, room)

    # -- outlet use cases ---------------------------------------------------------------------
    async def start_call(self, p: Principal, item_id: int, applicant: Applicant, priority: bool) -> dict[str, Any]:
        """Queue a call from the principal's outlet for the item's department.

        Raises Forbidden (not outlet staff), NotFound (item), Conflict ``desk_closed`` outside
        working hours (details.opens_at), ``outlet_busy`` when the outlet already has a call.
        """
        p.require_role(Role.OUTLET_STAFF)
        if p.outlet_id is None:
            raise Forbidden("your account is not attached to an outlet")
        outlet = await self.directory.outlet(p.outlet_id)
        item = await self.directory.item(item_id)
        dept = await self.directory.department(item.department_id)
        if not item.enabled or not dept.enabled:
            raise Conflict(f"service item {item_id} is not offered right now", code="unavailable_item")
        if dept.county != outlet.county:
            raise Forbidden(f"department {dept.id} serves another county")
        await self._check_open(dept.id)
        existing = await self.queue.call_of_outlet(outlet.id)
        if existing is not None:
            raise Conflict(f"outlet {outlet.id} already has call {existing}", code="outlet_busy",
                           details={"call_id": existing})
        now = self.clock()
        call, events = domain.new_call(
            call_id=str(uuid.uuid4()),
            department_id=dept.id,
            outlet_id=outlet.id,
            staff_user_id=p.user_id,
            county=outlet.county,
            now=now,
            priority=Priority.PRIORITY if priority else Priority.NORMAL,
            item_id=item.id,
            item_name=item.name,
            outlet_name=outlet.name,
            island=outlet.island,
            department_name=dept.name,
            applicant=masked_applicant(applicant),
        )
        await self.records.open(call, events, self.node_id)
        try:
            stored = await self.queue.commit(None, call)
        except Conflict as exc:
            failed, more = domain.end(call, EndReason.FAILED, "system", now, why=exc.message)
            await self.records.record(failed, more)
            raise
        await self.finish_change(None, stored, events)
        log.info("call %s: queued at department %s by outlet %s", stored.id, dept.id, outlet.id)
        return {"call": public_call(stored, now), "position": await self.board.position_of(stored)}

    async def _check_open(self, department_id: int) -> None:
        dept = await self.directory.department(department_id)
        status = desk_status(dept.working_hours, datetime.fromtimestamp(self.clock(), timezone.utc))
        if not status.open:
            opens = status.opens_at.isoformat() if status.opens_at else None
            raise Conflict(
                f"department {dept.id} ({dept.name}) is closed now"
                + (f"; it opens at {opens}" if opens else ""),
                code="desk_closed",
                details={"department_id": dept.id, "opens_at": opens, "callback_allowed": True},
            )

    def _own_outlet_call(self, p: Principal, call: Call) -> None:
        if p.role is not Role.OUTLET_STAFF or p.outlet_id != call.outlet_id:
            raise Forbidden(f"call {call.id} is not your outlet's call")

    def _own_agent_call(self, p: Principal, call: Call) -> None:
        if p.role is not Role.AGENT or call.agent_id != p.user_id:
            raise Forbidden(f"call {call.id} is not yours")

    async def cancel(self, p: Principal, call_id: str) -> dict[str, Any]:
        """The outlet gives up a call that is waiting or ringing."""

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            self._own_outlet_call(p, call)
            return domain.end(call, EndReason.CANCELLED, f"user:{p.user_id}", self.clock())

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    # -- agent use cases ----------------------------------------------------------------------
    async def take(self, p: Principal, call_id: str | None) -> dict[str, Any]:
        """Claim a waiting call (``call_id``) or the next one of the agent's departments.

        Atomic across nodes: exactly one agent gets a call. Raises NotFound ``queue_empty``,
        Conflict ``taken`` (somebody else got it), ``agent_busy`` (you already hold a call).
        """
        p.require_role(Role.AGENT)
        held = await self.queue.call_of_agent(p.user_id)
        if held is not None:
            raise AgentBusy(f"you already hold call {held}", details={"call_id": held})
        if call_id is not None:
            claimed = await self._claim(p, call_id)
            if claimed is None:
                raise Conflict(f"call {call_id} is no longer waiting", code="taken")
            return {"call": public_call(claimed, self.clock())}
        # Next call: look at the heads of the queues only; agents racing for the same head
        # move on to the following calls, and a fresh look is taken when those are gone too.
        for _ in range(RETRIES):
            heads: list[Call] = []
            for dept_id in p.department_ids:
                heads.extend(await self.queue.waiting(dept_id, limit=TAKE_CANDIDATES))
            if not heads:
                break
            for candidate in sorted(heads, key=Call.queue_score):
                claimed = await self._claim(p, candidate.id)
                if claimed is not None:
                    return {"call": public_call(claimed, self.clock())}
        raise NotFound("no call is waiting in your departments", code="queue_empty")

    async def _claim(self, p: Principal, call_id: str) -> Call | None:
        """Offer one waiting call to the agent; None when it is no longer waiting."""
        for _ in range(RETRIES):
            call = await self.queue.get(call_id)
            if call is None or call.state is not CallState.QUEUED:
                return None
            if call.department_id not in p.department_ids:
                raise Forbidden(f"call {call_id} is for a department you do not serve")
            new, events = domain.offer(call, p.user_id, p.display_name, self.clock())
            try:
                stored = await self.queue.commit(call, new)
            except StaleCall:
                continue  # changed meanwhile (taken, or its outlet dropped): look again
            await self.finish_change(call, stored, events)
            log.info("call %s: offered to agent %s", stored.id, p.user_id)
            return stored
        return None

    async def accept(self, p: Principal, call_id: str) -> dict[str, Any]:
        """Pick up a ringing call: the agent for an inbound call, the outlet for a callback."""

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            if p.role is Role.OUTLET_STAFF:
                self._own_outlet_call(p, call)
                return domain.accept(call, p.user_id, self.clock(), by_outlet=True)
            p.require_role(Role.AGENT)
            return domain.accept(call, p.user_id, self.clock())

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    async def decline(self, p: Principal, call_id: str) -> dict[str, Any]:
        """Refuse a ringing call: inbound goes back to the front of the queue; a callback ends."""

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            now = self.clock()
            actor = f"user:{p.user_id}"
            if call.state is not CallState.OFFERED:
                raise Conflict(f'cannot decline call {call.id} in state "{call.state.value}"')
            if call.direction == "outbound":
                self._own_outlet_call(p, call)
                return domain.end(call, EndReason.CANCELLED, actor, now, why="declined by the outlet")
            self._own_agent_call(p, call)
            return domain.requeue(call, "declined", actor, now)

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    async def connected(self, p: Principal, call_id: str) -> dict[str, Any]:
        """A side reports media flowing: the call is in progress."""

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            self.participant_role(p, call)
            return domain.connected(call, f"user:{p.user_id}", self.clock())

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    async def hang_up(self, p: Principal, call_id: str) -> dict[str, Any]:
        """Either side ends a call that was answered (completed); the outlet may also cancel."""

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            self.participant_role(p, call)
            actor = f"user:{p.user_id}"
            if call.state in (CallState.QUEUED, CallState.OFFERED):
                if p.role is not Role.OUTLET_STAFF:
                    raise Conflict(f'cannot end call {call.id} in state "{call.state.value}": decline it')
                return domain.end(call, EndReason.CANCELLED, actor, self.clock())
            return domain.end(call, EndReason.COMPLETED, actor, self.clock(), by=p.role.value)

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    async def transfer(self, p: Principal, call_id: str, department_id: int) -> dict[str, Any]:
        """Hand the call to another department of the same county (front of its queue)."""
        p.require_role(Role.AGENT)
        dept = await self.directory.department(department_id)
        if not dept.enabled:
            raise Conflict(f"department {department_id} is disabled")

        def step(call: Call) -> tuple[Call, list[CallEvent]]:
            if dept.county != call.county:
                raise Forbidden(f"department {department_id} serves another county")
            return domain.transfer(call, dept.id, dept.name, p.user_id, self.clock())

        return {"call": public_call(await self.change(call_id, step), self.clock())}

    def participant_role(self, p: Principal, call: Call) -> str:
        if p.role is Role.OUTLET_STAFF and p.outlet_id == call.outlet_id:
            return "outlet"
        if p.role is Role.AGENT and call.agent_id == p.user_id:
            return "agent"
        raise Forbidden(f"you are not a participant of call {call.id}")

    # -- presence -----------------------------------------------------------------------------
    async def _put_presence(self, p: AgentPresence) -> None:
        before = await self.queue.get_presence(p.user_id)
        await self.queue.put_presence(p)
        if before is None or before.state is not p.state or before.call_id != p.call_id:
            body = {"agent": p.public()}
            await self.notifier.emit(PRESENCE_UPDATE, body, supervisor_room(p.county))
            await self.notifier.emit(PRESENCE_UPDATE, body, supervisor_room(None))
            for dept_id in p.department_ids:
                self.board.staffing_changed(dept_id)  # the estimated wait depends on who is online

    async def set_presence(self, p: Principal, state: str) -> dict[str, Any]:
        p.require_role(Role.AGENT)
        now = self.clock()
        current = await self._presence_of(p)
        updated = pres.choose(current, PresenceState(state), now)
        await self._put_presence(updated)
        await self.queue.schedule(f"presence:{p.user_id}", now + self.settings.presence_timeout_seconds)
        return {"presence": updated.public()}

    async def heartbeat(self, p: Principal) -> dict[str, Any]:
        now = self.clock()
        if p.role is not Role.AGENT:
            return {"server_time": now}
        current = await self._presence_of(p)
        if current.state is PresenceState.OFFLINE:
            current = pres.came_online(current, now, await self.queue.call_of_agent(p.user_id))
            await self._put_presence(current)
        else:
            await self.queue.put_presence(pres.heartbeat(current, now))
        await self.queue.schedule(f"presence:{p.user_id}", now + self.settings.presence_timeout_seconds)
        return {"server_time": now, "presence": current.public()}

    async def _presence_of(self, p: Principal) -> AgentPresence:
        current = await self.queue.get_presence(p.user_id)
        if current is None:
            current = AgentPresence(
                user_id=p.user_id, name=p.display_name, county=p.county or "", department_ids=p.department_ids
            )
        elif current.department_ids != p.department_ids or current.county != (p.county or ""):
            current = AgentPresence.from_dict(
                {**current.to_dict(), "department_ids": list(p.department_ids), "county": p.county or ""}
            )
        return current

    async def agents_visible_to(self, p: Principal) -> list[dict[str, Any]]:
        """Every agent's presence the principal may see (supervisors: their county; city: all)."""
        p.require_role(Role.SUPERVISOR, Role.ADMIN)
        return [a.public() for a in await self.queue.all_presence() if p.can_see_county(a.county)]

    # -- connections --------------------------------------------------------------------------
    async def connected_socket(self, p: Principal, sid: str) -> None:
        """A socket of ``p`` connected on this node: resume a dropped call, mark the agent online."""
        now = self.clock()
        if p.role is Role.OUTLET_STAFF and p.outlet_id is not None:
            await self.queue.connect(outlet_side(p.outlet_id), sid, self.node_id)
            call_id = await self.queue.call_of_outlet(p.outlet_id)
            if call_id is not None:
                await self._side_back(call_id, "outlet")
        elif p.role is Role.AGENT:
            await self.queue.connect(agent_side(p.user_id), sid, self.node_id)
            call_id = await self.queue.call_of_agent(p.user_id)
            current = await self._presence_of(p)
            await self._put_presence(pres.came_online(current, now, call_id))
            await self.queue.schedule(f"presence:{p.user_id}", now + self.settings.presence_timeout_seconds)
            if call_id is not None:
                await self._side_back(call_id, "agent")

    async def disconnected_socket(self, p: Principal, sid: str) -> None:
        """A socket went away: if it was the side's last, the grace period of its call starts."""
        if p.role is Role.OUTLET_STAFF and p.outlet_id is not None:
            await self.side_gone(outlet_side(p.outlet_id), sid)
        elif p.role is Role.AGENT:
            await self.side_gone(agent_side(p.user_id), sid)

    async def end_lost_sessions(self) -> list[str]:
        """End, in the session records, every call that is not ended there; return their ids.

        Callback requests still marked "calling" are settled too (their call is gone).

        Only for a node starting on the in-memory queue, which is a single node by definition:
        every call still open in the database lived in the previous run's memory and is gone
        with it (killed, or stopped). With Redis the calls outlive a node and other nodes may
        hold them, so this must not run there.
        """
        now = self.clock()
        reason, event = domain.ended_with_node(self.node_id, now)
        ended = await self.records.end_open(reason.value, event, opened_before=now)
        if ended:
            log.warning(
                "node %s: ended %d session(s) left open by the previous run as %s (node restarted): %s",
                self.node_id, len(ended), reason.value, ", ".join(ended[:20]) + (" …" if len(ended) > 20 else ""),
            )
        # Their callback requests stay "calling" otherwise, and nobody could call back again.
        # Settled as a call's end settles them: done when the call had been answered.
        stale = await self.directory.calling_callbacks()
        answered = await self.records.answered_among([row["session_id"] for row in stale if row["session_id"]])
        for row in stale:
            await self.directory.settle_callback(row["id"], answered=row["session_id"] in answered)
        if stale:
            log.warning("node %s: settled %d callback request(s) whose call was lost with the previous run: %s",
                        self.node_id, len(stale), ", ".join(str(row["id"]) for row in stale))
        return ended

    async def side_gone(self, side: str, sid: str | None) -> None:
        kind, _, ident = side.partition(":")
        remaining = await self.queue.disconnect(side, sid, self.node_id) if sid else 0
        if remaining:
            return
        if kind == "outlet":
            call_id = await self.queue.call_of_outlet(int(ident))
        else:
            call_id = await self.queue.call_of_agent(int(ident))
        if call_id is None:
            return
        try:
            await self.change(call_id, lambda c: domain.participant_lost(c, kind, self.clock()))
        except NotFound:
            return
        log.info("call %s: %s lost, grace period started", call_id, kind)

    async def _side_back(self, call_id: str, side: str) -> None:
        try:
            await self.change(call_id, lambda c: domain.participant_back(c, side, self.clock()))
        except NotFound:
            pass

    # -- snapshots ------------------------------------------------------------------------
    async def snapshot(self, p: Principal) -> dict[str, Any]:
        """Everything a client needs to rebuild its screen after (re)connecting."""
        now = self.clock()
        body: dict[str, Any] = {"user": p.to_dict(), "server_time": now, "call": None}
        call_id = None
        if p.role is Role.OUTLET_STAFF and p.outlet_id is not None:
            call_id = await self.queue.call_of_outlet(p.outlet_id)
        elif p.role is Role.AGENT:
            call_id = await self.queue.call_of_agent(p.user_id)
            presence = await self.queue.get_presence(p.user_id)
            body["presence"] = presence.public() if presence else None
            body["queues"] = await self.board.queues_for(p)
            body["callbacks"] = await self.directory.open_callbacks(p.department_ids)
        elif p.role in (Role.SUPERVISOR, Role.ADMIN):
            body["agents"] = await self.agents_visible_to(p)
            body["queues"] = await self.board.queues_for(p)
        if call_id is not None:
            call = await self.queue.get(call_id)
            if call is not None:
                body["call"] = public_call(call, now)
                if call.state is CallState.QUEUED:
                    body["position"] = await self.board.position_of(call)
        return body

    # -- deadlines --------------------------------------------------------------------------
    async def on_deadline(self, name: str) -> None:
        """A deadline came due (this node holds its lease): apply what it stands for."""
        kind, _, rest = name.partition(":")
        now = self.clock()
        if kind == "presence":
            await self._presence_expired(int(rest), now)
            return
        if kind == "grace":
            side, _, rest = rest.partition(":")
            call_id, _, stamp = rest.rpartition(":")

            def grace(call: Call) -> tuple[Call, list[CallEvent]]:
                lost = call.outlet_lost_at if side == "outlet" else call.agent_lost_at
                if not call.active or lost is None or repr(lost) != stamp:
                    return call, []
                return domain.grace_expired(call, side, now)

            await self._ignore_missing(call_id, grace)
            return
        call_id, _, step_s = rest.rpartition(":")
        step_no = int(step_s)
        staffed = self._staffed_counts(await self.queue.all_presence()) if kind == "qlimit" else {}

        def expire(call: Call) -> tuple[Call, list[CallEvent]]:
            if call.step != step_no:
                return call, []
            if kind == "ring" and call.state is CallState.OFFERED:
                if call.direction == "outbound":
                    return domain.end(call, EndReason.ABANDONED, "system", now, why="no answer at the outlet")
                return domain.requeue(call, "ring_timeout", "system", now)
            if kind == "qlimit" and call.state is CallState.QUEUED:
                # Nobody of the department online the whole time: "no agent"; else abandoned.
                reason = EndReason.ABANDONED if staffed.get(call.department_id) else EndReason.NO_AGENT
                return domain.end(call, reason, "system", now, waited_seconds=round(now - call.queued_at, 1))
            if kind == "connect" and call.state is CallState.CONNECTING:
                return domain.end(call, EndReason.FAILED, "system", now, why="media did not connect in time")
            return call, []

        await self._ignore_missing(call_id, expire)

    @staticmethod
    def _staffed_counts(agents: list[AgentPresence]) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in agents:
            if a.state in (PresenceState.AVAILABLE, PresenceState.BUSY):
                for d in a.department_ids:
                    counts[d] = counts.get(d, 0) + 1
        return counts

    async def _ignore_missing(self, call_id: str, step: Callable[[Call], tuple[Call, list[CallEvent]]]) -> None:
        try:
            await self.change(call_id, step)
        except NotFound:
            return

    async def _presence_expired(self, user_id: int, now: float) -> None:
        current = await self.queue.get_presence(user_id)
        if current is None or not pres.timed_out(current, now, self.settings.presence_timeout_seconds):
            return
        await self._put_presence(pres.offline(current, now))
        log.info("agent %s: offline (no heartbeat for %.0f s)", user_id, now - current.last_seen)

