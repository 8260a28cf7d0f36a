"""What clients see: public call snapshots, room names and end-of-call messages."""

from __future__ import annotations

from typing import Any

from signaling.calls import Call, EndReason

END_MESSAGES: dict[EndReason, str] = {
    EndReason.COMPLETED: "通话已结束。",
    EndReason.CANCELLED: "呼叫已取消。",
    EndReason.ABANDONED: "排队等待时间过长，呼叫已结束，请稍后再呼叫或留下回拨请求。",
    EndReason.NO_AGENT: "目前没有坐席在线，呼叫已结束，请留下回拨请求。",
    EndReason.OUTLET_LOST: "服务站连接中断且未能及时恢复，通话已结束。",
    EndReason.AGENT_LOST: "坐席连接中断且未能及时恢复，通话已结束。",
    EndReason.FAILED: "通话未能建立，请重新呼叫。",
}


def outlet_room(outlet_id: int) -> str:
    return f"outlet:{outlet_id}"


def user_room(user_id: int) -> str:
    return f"user:{user_id}"


def department_room(department_id: int) -> str:
    return f"dept:{department_id}"


def supervisor_room(county: str | None) -> str:
    """Supervisors of one county, or ``sup:*`` for city-wide supervisors and admins."""
    return f"sup:{county}" if county else "sup:*"


def public_call(call: Call, now: float) -> dict[str, Any]:
    """The call as both sides and supervisors see it (the applicant is already masked)."""
    return {
        "id": call.id,
        "version": call.version,
        "state": call.state.value,
        "direction": call.direction,
        "department_id": call.department_id,
        "department_name": call.department_name,
        "outlet_id": call.outlet_id,
        "outlet_name": call.outlet_name,
        "island": call.island,
        "item_id": call.item_id,
        "item_name": call.item_name,
        "applicant": dict(call.applicant),
        "priority": call.priority.value,
        "front": call.front,
        "agent": {"id": call.agent_id, "name": call.agent_name} if call.agent_id is not None else None,
        "queued_at": call.queued_at,
        "wait_seconds": round(max(now - call.queued_at, 0.0), 1),
        "offered_at": call.offered_at,
        "answered_at": call.answered_at,
        "ended_at": call.ended_at,
        "end_reason": call.end_reason.value if call.end_reason else None,
        "end_message": END_MESSAGES[call.end_reason] if call.end_reason else None,
        "outlet_present": call.outlet_lost_at is None,
        "agent_present": call.agent_lost_at is None,
        "callback_id": call.callback_id,
    }


def queue_entry(call: Call, position: int, now: float) -> dict[str, Any]:
    """One line of an agent's waiting list."""
    return {
        "id": call.id,
        "position": position,
        "wait_seconds": round(max(now - call.queued_at, 0.0), 1),
        "outlet_id": call.outlet_id,
        "outlet_name": call.outlet_name,
        "island": call.island,
        "item_id": call.item_id,
        "item_name": call.item_name,
        "applicant_name": call.applicant.get("name", ""),
        "priority": call.priority.value,
        "front": call.front,
        "outlet_present": call.outlet_lost_at is None,
    }


def mask(value: str, keep_start: int, keep_end: int) -> str:
    """Mask the middle of an identifier (ID numbers, phones) for display and storage in logs."""
    value = value.strip()
    if len(value) <= keep_start + keep_end:
        return "*" * len(value)
    return value[:keep_start] + "*" * (len(value) - keep_start - keep_end) + value[-keep_end:]
