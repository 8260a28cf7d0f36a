"""Where signalling meets media: ``media:offer`` routed to the node that owns the call's media,
and media events written to the session log and passed to the call's clients.

Each call's media lives on one node (``Call.media_node``), placed on the node that receives
the first offer; an offer arriving elsewhere is forwarded there through the router. If the
owner is gone (not in the node registry), the next offer moves the media to its node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

from cloudhall.errors import Conflict, Unavailable
from cloudhall.identities import Principal
from media.server import OfferIn
from signaling import calls as domain
from signaling.calls import Call, CallEvent, CallState
from signaling.ports import MediaPort, SessionLog
from signaling.routing import NodeRouter
from signaling.schemas import MEDIA_EVENT
from signaling.service import CallService
from signaling.tasks import reraise_if_cancelling, stop_task
from signaling.views import outlet_room, user_room

log = logging.getLogger(__name__)

MEDIA_STATES = frozenset({CallState.CONNECTING, CallState.IN_CALL})
NEGOTIATE_TIMEOUT = 15.0


class MediaBridge:
    """Routes media requests and implements media's ``MediaEvents`` and the recorder's events."""

    def __init__(
        self,
        service: CallService,
        router: NodeRouter,
        media: MediaPort | None,
        records: SessionLog,
    ) -> None:
        self.service = service
        self.router = router
        self.media = media
        self.records = records
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.get_running_loop()
        self._joined: dict[str, set[str]] = {}
        # More requests the owner of a call's media answers (signaling.incall adds "snapshot").
        self.requests: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}
        router.serve(self._handle)
        service.on_ended = self._call_ended

    # -- requests from clients --------------------------------------------------------------
    async def offer(self, p: Principal, call_id: str, sdp: str, kind: str, tracks: dict[str, str]) -> dict[str, Any]:
        """Negotiate the participant's peer connection on the node that owns the call's media."""
        call = await self._place(call_id, p)
        participant = self.service.participant_role(p, call)
        payload = {"call_id": call_id, "participant": participant, "sdp": sdp, "type": kind, "tracks": tracks}
        answer = await self.router.request(call.media_node, "offer", payload)
        answer["ice_servers"] = self.ice_servers(f"{participant}:{p.user_id}")
        return answer

    async def leave(self, p: Principal, call_id: str) -> dict[str, Any]:
        call = await self.service.queue.get(call_id)
        if call is None or not call.media_node:
            return {}
        participant = self.service.participant_role(p, call)
        return await self.router.request(call.media_node, "leave", {"call_id": call_id, "participant": participant})

    async def keyframe(self, p: Principal, call_id: str, participant: str, source: str) -> dict[str, Any]:
        call = await self._existing(call_id)
        self.service.participant_role(p, call)
        return await self.router.request(
            call.media_node, "keyframe", {"call_id": call_id, "participant": participant, "source": source}
        )

    def ice_servers(self, participant_id: str) -> list[dict[str, Any]]:
        return self.media.ice_servers(participant_id) if self.media is not None else []

    async def _existing(self, call_id: str) -> Call:
        call = await self.service.queue.get(call_id)
        if call is None or not call.media_node:
            raise Conflict(f"call {call_id} has no media yet")
        return call

    async def _place(self, call_id: str, p: Principal) -> Call:
        """The call, with its media placed on a live node (this one if none is)."""
        alive = await self.service.queue.nodes()
        node = self.service.node_id
        now = self.service.clock()

        def place(call: Call) -> tuple[Call, list[CallEvent]]:
            self.service.participant_role(p, call)
            if call.state not in MEDIA_STATES:
                raise Conflict(f'call {call.id} is "{call.state.value}": media starts after it is accepted')
            if call.media_node and (call.media_node in alive or call.media_node == node):
                return call, []
            events = [CallEvent("media_placed", f"node:{node}", now, {"node": node, "previous": call.media_node})]
            return replace(call, media_node=node), events

        return await self.service.change(call_id, place)

    # -- requests addressed to this node ----------------------------------------------------
    async def _handle(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self.media is None:
            raise Unavailable(f"media is not available on node {self.service.node_id}")
        call_id = payload["call_id"]
        if method == "offer":
            offer = OfferIn(sdp=payload["sdp"], type=payload["type"], tracks=payload["tracks"])
            async with asyncio.timeout(NEGOTIATE_TIMEOUT):
                answer = await self.media.negotiate(call_id, payload["participant"], offer)
            return {"sdp": answer.sdp, "type": answer.type, "node": self.service.node_id}
        if method == "leave":
            await self.media.leave(call_id, payload["participant"])
            return {}
        if method == "keyframe":
            await self.media.request_keyframe(call_id, payload["participant"], payload["source"])
            return {}
        if method == "end":
            self._joined.pop(call_id, None)
            await self.media.end(call_id)
            return {}
        extra = self.requests.get(method)
        if extra is not None:
            return await extra(payload)
        raise Unavailable(f"unknown media request {method!r}")

    async def _call_ended(self, call: Call) -> None:
        if not call.media_node:
            return
        try:
            await self.router.request(call.media_node, "end", {"call_id": call.id})
        except Exception as exc:  # the owner may be gone; its media went with it
            log.info("call %s: media end on %s not delivered: %s", call.id, call.media_node, exc)

    # -- events from media (on the owning node) -------------------------------------------------
    def media_event(self, session_id: str, kind: str, data: dict) -> None:
        """media.server.MediaEvents: must not block, so the work runs in an owned task."""
        self._spawn(self._media_event(session_id, kind, dict(data)))

    def file_finished(self, session_id: str, entry: Any) -> None:
        """recordings.writer.RecordingEvents: chain each finished file's SHA-256 into the log."""
        data = entry if isinstance(entry, dict) else getattr(entry, "to_dict", lambda: {"entry": str(entry)})()
        self._spawn(self._log(session_id, "recording_file", data))

    def recording_failed(self, session_id: str, reason: str) -> None:
        self._spawn(self._media_event(session_id, "recording_failed", {"error": reason}))

    def _spawn(self, coro: Any) -> None:
        """Run ``coro`` as an owned task; safe to call from another thread (the recorder's)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            self._loop.call_soon_threadsafe(self._spawn, coro)
            return
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _log(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        try:
            await self.records.append(session_id, kind, f"node:{self.service.node_id}", data, time.time())
        except Exception:
            reraise_if_cancelling()
            log.exception("session %s: could not log %s", session_id, kind)

    async def _media_event(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        await self._log(session_id, f"media_{kind}", data)
        call = await self.service.queue.get(session_id)
        if call is None:
            return
        body = {"call_id": session_id, "kind": kind, "data": data}
        await self.service.notifier.emit(MEDIA_EVENT, body, outlet_room(call.outlet_id))
        if call.agent_id is not None:
            await self.service.notifier.emit(MEDIA_EVENT, body, user_room(call.agent_id))
        if kind == "participant_connected":
            joined = self._joined.setdefault(session_id, set())
            joined.add(str(data.get("participant")))
            if {"outlet", "agent"} <= joined and call.state is CallState.CONNECTING:
                now = self.service.clock()
                await self.service.change(
                    session_id,
                    lambda c: domain.connected(c, f"node:{self.service.node_id}", now)
                    if c.state is CallState.CONNECTING
                    else (c, []),
                )

    async def close(self) -> None:
        for task in list(self._tasks):
            await stop_task(task)
