"""The call state machine: allowed transitions, refused ones, events, queue order and estimates."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from cloudhall.errors import Conflict, Forbidden
from signaling import calls as c
from signaling.calls import ALLOWED, CallState, EndReason, Priority
from signaling.hours import desk_status

T0 = 1_800_000_000.0


def queued(**kw):
    call, events = c.new_call(
        call_id="c1", department_id=1, outlet_id=7, staff_user_id=3, county="东岛县", now=T0, **kw
    )
    return call, events


def test_new_call_is_queued_with_an_event() -> None:
    call, events = queued(priority=Priority.PRIORITY, item_id=5)
    assert call.state is CallState.QUEUED and call.queued_at == T0
    assert [(e.kind, e.actor, e.at) for e in events] == [("call_queued", "user:3", T0)]
    assert events[0].data == {"department_id": 1, "priority": "priority", "item_id": 5}


def test_happy_path_records_every_transition_with_actor_and_time() -> None:
    call, _ = queued()
    call, ev1 = c.offer(call, 9, "agent", T0 + 1)
    call, ev2 = c.accept(call, 9, T0 + 2)
    call, ev3 = c.connected(call, "user:9", T0 + 3)
    call, ev4 = c.end(call, EndReason.COMPLETED, "user:9", T0 + 60)
    assert call.state is CallState.ENDED and call.end_reason is EndReason.COMPLETED
    assert [e.kind for e in ev1 + ev2 + ev3 + ev4] == ["call_offered", "call_accepted", "call_connected", "call_ended"]
    assert [e.at for e in ev1 + ev2 + ev3 + ev4] == [T0 + 1, T0 + 2, T0 + 3, T0 + 60]
    assert call.answered_at == T0 + 2 and call.ended_at == T0 + 60
    assert call.step == 4


@pytest.mark.parametrize(
    "action",
    [
        lambda call: c.accept(call, 9, T0),
        lambda call: c.connected(call, "user:9", T0),
        lambda call: c.requeue(call, "x", "system", T0),
        lambda call: c.transfer(call, 2, "MED", 9, T0),
        lambda call: c.end(call, EndReason.COMPLETED, "system", T0),
    ],
)
def test_illegal_transitions_from_queued_name_the_state(action) -> None:
    call, _ = queued()
    with pytest.raises(Conflict, match='state "queued"'):
        action(call)


def test_an_ended_call_accepts_nothing() -> None:
    call, _ = queued()
    call, _ = c.end(call, EndReason.CANCELLED, "user:3", T0 + 1)
    for action in (
        lambda: c.offer(call, 9, "a", T0),
        lambda: c.end(call, EndReason.CANCELLED, "system", T0),
        lambda: c.requeue(call, "x", "system", T0),
    ):
        with pytest.raises(Conflict, match='state "ended"'):
            action()


def test_only_the_offered_agent_can_accept() -> None:
    call, _ = queued()
    call, _ = c.offer(call, 9, "a", T0)
    with pytest.raises(Forbidden):
        c.accept(call, 10, T0)


def test_requeue_goes_to_the_front_and_keeps_the_session() -> None:
    call, _ = queued()
    later, _ = c.new_call(call_id="c2", department_id=1, outlet_id=8, staff_user_id=4, county="x", now=T0 - 100,
                          priority=Priority.PRIORITY)
    offered, _ = c.offer(call, 9, "a", T0 + 1)
    back, events = c.requeue(offered, "ring_timeout", "system", T0 + 21)
    assert back.state is CallState.QUEUED and back.front and back.agent_id is None and back.id == "c1"
    assert events[0].data == {"reason": "ring_timeout", "previous_agent_id": 9}
    assert back.queue_score() < later.queue_score()  # ahead of an earlier priority call


def test_queue_order_priority_then_fifo() -> None:
    a, _ = c.new_call(call_id="a", department_id=1, outlet_id=1, staff_user_id=1, county="x", now=T0)
    b, _ = c.new_call(call_id="b", department_id=1, outlet_id=2, staff_user_id=1, county="x", now=T0 + 1)
    p, _ = c.new_call(call_id="p", department_id=1, outlet_id=3, staff_user_id=1, county="x", now=T0 + 2,
                      priority=Priority.PRIORITY)
    assert [x.id for x in sorted([b, p, a], key=c.Call.queue_score)] == ["p", "a", "b"]


def test_transfer_passes_through_transferred_into_the_other_queue() -> None:
    call, _ = queued()
    call, _ = c.offer(call, 9, "a", T0)
    call, _ = c.accept(call, 9, T0)
    call, _ = c.connected(call, "user:9", T0)
    moved, events = c.transfer(call, 2, "医保窗口", 9, T0 + 5)
    assert moved.state is CallState.QUEUED and moved.department_id == 2 and moved.front
    assert [e.kind for e in events] == ["call_transferred", "call_queued"]
    assert CallState.TRANSFERRED in ALLOWED[CallState.IN_CALL]


def test_end_reason_must_fit_the_state() -> None:
    call, _ = queued()
    with pytest.raises(Conflict, match="completed"):
        c.end(call, EndReason.COMPLETED, "system", T0)
    ended, _ = c.end(call, EndReason.ABANDONED, "system", T0 + 1800)
    assert ended.end_reason is EndReason.ABANDONED


def test_grace_expiry_outlet_ends_agent_requeues() -> None:
    call, _ = queued()
    call, _ = c.offer(call, 9, "a", T0)
    call, _ = c.accept(call, 9, T0)
    call, _ = c.connected(call, "user:9", T0)
    lost, events = c.participant_lost(call, "agent", T0 + 1)
    assert lost.agent_lost_at == T0 + 1 and events[0].kind == "participant_lost"
    assert c.participant_lost(lost, "agent", T0 + 2) == (lost, [])
    requeued, events = c.grace_expired(lost, "agent", T0 + 61)
    assert requeued.state is CallState.QUEUED and requeued.front
    assert events[0].data["reason"] == "agent_lost"
    both, _ = c.participant_lost(lost, "outlet", T0 + 2)
    ended, _ = c.grace_expired(both, "agent", T0 + 61)
    assert ended.end_reason is EndReason.AGENT_LOST
    gone, _ = c.grace_expired(call, "outlet", T0 + 61)
    assert gone.end_reason is EndReason.OUTLET_LOST


def test_participant_back_within_grace_keeps_the_call() -> None:
    call, _ = queued()
    lost, _ = c.participant_lost(call, "outlet", T0 + 1)
    back, events = c.participant_back(lost, "outlet", T0 + 3)
    assert back.outlet_lost_at is None and back.state is CallState.QUEUED
    assert events[0].data == {"side": "outlet", "away_seconds": 2.0}


def test_outbound_call_rings_at_the_outlet() -> None:
    call, events = c.new_outbound_call(call_id="o", department_id=1, outlet_id=7, staff_user_id=3, county="x",
                                       agent_id=9, agent_name="a", callback_id=4, now=T0)
    assert call.state is CallState.OFFERED and events[0].kind == "call_outbound"
    with pytest.raises(Forbidden):
        c.accept(call, 9, T0)
    answered, _ = c.accept(call, 3, T0 + 2, by_outlet=True)
    assert answered.state is CallState.CONNECTING
    with pytest.raises(Conflict):
        c.requeue(call, "ring_timeout", "system", T0)


def test_round_trip_through_dict() -> None:
    call, _ = queued(applicant={"name": "张三"})
    call, _ = c.offer(call, 9, "a", T0)
    assert c.Call.from_dict(call.to_dict()) == call


def test_estimated_wait_uses_recent_handling_times() -> None:
    assert c.estimate_wait(1, [], 1) == 0
    assert c.estimate_wait(3, [100, 200], 1) == 300
    assert c.estimate_wait(3, [100, 200], 2) == 150
    assert c.estimate_wait(2, [], 0) == 300


def test_working_hours() -> None:
    hours = {"tz": "Asia/Shanghai", "mon": [["08:30", "12:00"], ["14:00", "17:30"]], "tue": [["08:30", "12:00"]]}
    monday_9 = datetime(2026, 11, 23, 1, 0, tzinfo=timezone.utc)  # 09:00 in Shanghai
    assert desk_status(hours, monday_9).open
    monday_13 = datetime(2026, 11, 23, 5, 0, tzinfo=timezone.utc)  # 13:00 lunch break
    status = desk_status(hours, monday_13)
    assert not status.open and status.opens_at == datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
    monday_night = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # 20:00
    assert desk_status(hours, monday_night).opens_at == datetime(2026, 11, 24, 0, 30, tzinfo=timezone.utc)
    assert desk_status({}, monday_night).open
    assert desk_status({"tz": "Asia/Shanghai"}, monday_night).open
