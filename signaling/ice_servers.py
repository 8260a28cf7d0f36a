"""ICE servers (STUN, TURN with per-participant credentials) handed out before the first offer.

The browser builds its first RTCPeerConnection the moment a call becomes "connecting", so
the servers must come with that news, not only with the ``media:offer`` answer:
:class:`IceServersNotifier` adds ``ice_servers`` to every ``call:state`` of a connecting
call, minted for the room it goes to; the ``call:accept`` acknowledgement and
``session:resume`` carry them too (:func:`participant_id` names the credentials' owner).
"""

from __future__ import annotations

from typing import Any, Callable

from cloudhall.identities import Principal, Role
from signaling.ports import Notifier
from signaling.schemas import CALL_STATE

IceServers = Callable[[str], list[dict[str, Any]]]
MEDIA_STATES = frozenset({"connecting", "in_call"})
# Rooms of the call's sides (signaling.views.outlet_room, user_room); supervisors get no credentials.
PARTICIPANT_ROOMS = ("outlet:", "user:")


def participant_id(p: Principal) -> str:
    """Whom TURN credentials are minted for: ``outlet:<user id>`` or ``agent:<user id>`` (as media:offer)."""
    return f"{'outlet' if p.role is Role.OUTLET_STAFF else 'agent'}:{p.user_id}"


class IceServersNotifier:
    """A :class:`signaling.ports.Notifier` that adds ``ice_servers`` to connecting ``call:state`` bodies.

    ``ice_servers`` is set once media is wired (``MediaBridge.ice_servers``); until then, and
    for every other event, bodies pass unchanged. Credentials are minted per room (the
    outlet's room, the agent's own room), so each side gets its own.
    """

    def __init__(self, inner: Notifier, ice_servers: IceServers | None = None) -> None:
        self._inner = inner
        self.ice_servers = ice_servers

    async def emit(self, event: str, payload: dict[str, Any], room: str) -> None:
        if event == CALL_STATE and self.ice_servers is not None and room.startswith(PARTICIPANT_ROOMS):
            call = payload.get("call") or {}
            if call.get("state") == "connecting":
                payload = {**payload, "ice_servers": self.ice_servers(room)}
        await self._inner.emit(event, payload, room)


def with_ice_servers(result: dict[str, Any], p: Principal, ice_servers: IceServers) -> dict[str, Any]:
    """``result`` (a ``{"call": ...}`` body) plus ``ice_servers`` when that call has or is about to have media."""
    call = result.get("call") or {}
    if call.get("state") in MEDIA_STATES and p.role in (Role.OUTLET_STAFF, Role.AGENT):
        return {**result, "ice_servers": ice_servers(participant_id(p))}
    return result
