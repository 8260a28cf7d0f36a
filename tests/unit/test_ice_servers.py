"""ICE servers ride on the connecting call:state to the call's sides only (never to supervisors)."""

from __future__ import annotations

from typing import Any

from signaling.ice_servers import IceServersNotifier


class Recorded:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    async def emit(self, event: str, payload: dict[str, Any], room: str) -> None:
        self.sent.append((event, payload, room))


def minted(owner: str) -> list[dict[str, Any]]:
    return [{"urls": ["turn:t"], "username": f"1:{owner}", "credential": "c"}]


async def test_connecting_state_gets_servers_per_side_room() -> None:
    inner = Recorded()
    notifier = IceServersNotifier(inner, minted)
    body = {"call": {"id": "c1", "state": "connecting"}, "events": ["call_accepted"]}
    for room in ("outlet:3", "user:7", "sup:东岛县", "sup:*"):
        await notifier.emit("call:state", body, room)
    await notifier.emit("call:state", {"call": {"id": "c1", "state": "in_call"}, "events": []}, "outlet:3")
    await notifier.emit("queue:update", {"calls": []}, "dept:1")
    got = {(room, p["call"]["state"] if "call" in p else event): p.get("ice_servers") for event, p, room in inner.sent}
    assert got[("outlet:3", "connecting")] == minted("outlet:3")
    assert got[("user:7", "connecting")] == minted("user:7")
    assert got[("sup:东岛县", "connecting")] is None and got[("sup:*", "connecting")] is None
    assert got[("outlet:3", "in_call")] is None and got[("dept:1", "queue:update")] is None
    assert "ice_servers" not in body  # the shared body is not changed for the next room


async def test_nothing_is_added_before_media_is_wired() -> None:
    inner = Recorded()
    await IceServersNotifier(inner).emit("call:state", {"call": {"state": "connecting"}}, "outlet:1")
    assert "ice_servers" not in inner.sent[0][1]
