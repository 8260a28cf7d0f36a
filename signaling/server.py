"""The Socket.IO edge: authentication at connect, rooms, and thin event handlers.

Each handler is parse (pydantic) → service call → acknowledgement. The wrapper in
:meth:`SignalingServer.on` answers every event with the result dict or
``{"error": {"code", "message"[, "details"]}}``, refuses roles that may not send the event,
and logs unexpected exceptions with their traceback while answering ``internal``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Awaitable, Callable, TypeVar

import socketio
from aiohttp import web
from pydantic import BaseModel, ValidationError

from cloudhall import appkeys
from cloudhall.auth import SESSION_COOKIE, AuthService
from cloudhall.errors import CloudHallError, Forbidden, InvalidInput, Unauthenticated, Unavailable
from cloudhall.http import csrf_exempt, public
from cloudhall.identities import Principal, Role
from signaling import schemas as s
from signaling.callbacks import CallbackService
from signaling.ice_servers import with_ice_servers
from signaling.media_bridge import MediaBridge
from signaling.service import CallService
from signaling.tasks import reraise_if_cancelling, stop_task
from signaling.views import department_room, outlet_room, supervisor_room, user_room

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
OUTLET = frozenset({Role.OUTLET_STAFF})
AGENT = frozenset({Role.AGENT})
CALLERS = frozenset({Role.OUTLET_STAFF, Role.AGENT})
WATCHERS = frozenset({Role.SUPERVISOR, Role.ADMIN})
EVERYONE = frozenset(Role)
SOCKETIO_PATH = "/socket.io/"


@dataclass(frozen=True)
class Connection:
    sid: str
    principal: Principal


class SocketNotifier:
    """signaling.ports.Notifier over python-socketio (the Redis manager reaches every node)."""

    def __init__(self, sio: socketio.AsyncServer) -> None:
        self._sio = sio

    async def emit(self, event: str, payload: dict[str, Any], room: str) -> None:
        await self._sio.emit(event, payload, room=room)


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(payload)", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ][:10]


def _session_token(environ: dict[str, Any]) -> str | None:
    raw = environ.get("HTTP_COOKIE", "")
    if not raw or len(raw) > 8192:
        return None
    try:
        cookie = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel else None


class SignalingServer:
    """Owns the AsyncServer and the per-socket principals of this node."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        auth: AuthService,
        service: CallService,
        media: MediaBridge,
    ) -> None:
        self.sio = sio
        self.auth = auth
        self.service = service
        self.media = media
        self.callbacks = CallbackService(service)
        self.connections: dict[str, Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        sio.on("connect", self._connect)
        sio.on("disconnect", self._disconnect)
        self._register()

    # -- connection lifecycle ---------------------------------------------------------------
    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        resolved = await self.auth.resolve(_session_token(environ))
        if resolved is None:
            message = "log in first (unknown, expired or disabled account)"
            # The client's connect_error carries {"message": ..., "data": {"code", "message"}}.
            raise socketio.exceptions.ConnectionRefusedError(
                message, {"code": "unauthenticated", "message": message}
            )
        p = resolved.principal
        self.connections[sid] = Connection(sid, p)
        for room in self._rooms(p):
            await self.sio.enter_room(sid, room)
        # After the connect handshake completes, so the socket is registered cluster-wide
        # and a resumed call's state reaches this client.
        self._spawn(self._after_connect(sid, p))
        log.info("socket %s: %s (%s) connected on %s", sid, p.username, p.role.value, self.service.node_id)

    async def _after_connect(self, sid: str, p: Principal) -> None:
        try:
            await self.service.connected_socket(p, sid)
        except Exception:
            reraise_if_cancelling()
            log.exception("socket %s: connect bookkeeping failed", sid)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        conn = self.connections.pop(sid, None)
        if conn is None:
            return
        log.info("socket %s: %s disconnected (%s)", sid, conn.principal.username, reason)
        self._spawn(self._after_disconnect(sid, conn.principal))

    async def _after_disconnect(self, sid: str, p: Principal) -> None:
        try:
            await self.service.disconnected_socket(p, sid)
        except Exception:
            reraise_if_cancelling()
            log.exception("socket %s: disconnect bookkeeping failed", sid)

    @staticmethod
    def _rooms(p: Principal) -> list[str]:
        rooms = [user_room(p.user_id)]
        if p.role is Role.OUTLET_STAFF and p.outlet_id is not None:
            rooms.append(outlet_room(p.outlet_id))
        elif p.role is Role.AGENT:
            rooms.extend(department_room(d) for d in p.department_ids)
        elif p.role is Role.SUPERVISOR:
            rooms.append(supervisor_room(p.county))
        elif p.role is Role.ADMIN:
            rooms.append(supervisor_room(None))
        return rooms

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            await stop_task(task)

    # -- the acknowledgement wrapper ----------------------------------------------------------
    def on(
        self,
        event: str,
        model: type[M],
        roles: frozenset[Role],
        handler: Callable[[Principal, M], Awaitable[dict[str, Any]]],
    ) -> None:
        """Register ``handler`` for ``event``: validated payload in, result or error dict out."""

        async def wrapped(sid: str, data: Any = None) -> dict[str, Any]:
            try:
                conn = self.connections.get(sid)
                if conn is None:
                    raise Unauthenticated("this socket is not logged in")
                if conn.principal.role not in roles:
                    raise Forbidden(f"role {conn.principal.role.value} may not send {event}")
                try:
                    payload = model.model_validate({} if data is None else data)
                except ValidationError as exc:
                    raise InvalidInput(f"{event}: invalid payload", details=_validation_details(exc)) from None
                return await handler(conn.principal, payload)
            except CloudHallError as exc:
                return {"error": exc.to_dict()}
            except Exception:
                reraise_if_cancelling()
                log.exception("socket %s: %s failed", sid, event)
                return {"error": {"code": "internal", "message": "internal error"}}

        self.sio.on(event, wrapped)

    # -- the events ---------------------------------------------------------------------------
    def _register(self) -> None:
        svc = self.service
        media = self.media
        callbacks = self.callbacks
        self.on(s.CALL_START, s.StartCall, OUTLET, lambda p, m: svc.start_call(p, m.item_id, m.applicant, m.priority))
        self.on(s.CALL_CANCEL, s.CallRef, OUTLET, lambda p, m: svc.cancel(p, m.call_id))
        self.on(
            s.CALL_ACCEPT, s.CallRef, CALLERS,
            lambda p, m: self._with_ice(p, svc.accept(p, m.call_id)),
        )
        self.on(s.CALL_DECLINE, s.CallRef, CALLERS, lambda p, m: svc.decline(p, m.call_id))
        self.on(s.CALL_CONNECTED, s.CallRef, CALLERS, lambda p, m: svc.connected(p, m.call_id))
        self.on(s.CALL_END, s.CallRef, CALLERS, lambda p, m: svc.hang_up(p, m.call_id))
        self.on(s.CALL_TRANSFER, s.Transfer, AGENT, lambda p, m: svc.transfer(p, m.call_id, m.department_id))
        self.on(s.QUEUE_TAKE, s.Take, AGENT, lambda p, m: svc.take(p, m.call_id))
        self.on(s.QUEUE_LIST, s.Empty, AGENT | WATCHERS, self._queue_list)
        self.on(s.PRESENCE_SET, s.SetPresence, AGENT, lambda p, m: svc.set_presence(p, m.state))
        self.on(s.PRESENCE_HEARTBEAT, s.Empty, EVERYONE, lambda p, m: svc.heartbeat(p))
        self.on(s.PRESENCE_LIST, s.Empty, WATCHERS, self._presence_list)
        self.on(s.SESSION_RESUME, s.Empty, EVERYONE, lambda p, m: self._with_ice(p, svc.snapshot(p)))
        self.on(
            s.CALLBACK_CREATE,
            s.CreateCallback,
            OUTLET,
            lambda p, m: callbacks.leave_callback(p, m.item_id, m.applicant, m.preferred_time, m.note),
        )
        self.on(s.CALLBACK_LIST, s.Empty, AGENT, self._callback_list)
        self.on(s.CALLBACK_CALL, s.CallbackRef, AGENT, lambda p, m: callbacks.call_back(p, m.callback_id))
        self.on(s.MEDIA_OFFER, s.MediaOffer, CALLERS, lambda p, m: media.offer(p, m.call_id, m.sdp, m.type, m.tracks))
        self.on(s.MEDIA_LEAVE, s.CallRef, CALLERS, lambda p, m: media.leave(p, m.call_id))
        self.on(
            s.MEDIA_KEYFRAME, s.MediaKeyframe, CALLERS, lambda p, m: media.keyframe(p, m.call_id, m.participant, m.source)
        )

    async def _with_ice(self, p: Principal, result: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """The result, plus the caller's ICE servers when its call has media (signaling.ice_servers)."""
        return with_ice_servers(await result, p, self.media.ice_servers)

    async def _queue_list(self, p: Principal, _: s.Empty) -> dict[str, Any]:
        return {"queues": await self.service.board.queues_for(p)}

    async def _presence_list(self, p: Principal, _: s.Empty) -> dict[str, Any]:
        return {"agents": await self.service.agents_visible_to(p)}

    async def _callback_list(self, p: Principal, _: s.Empty) -> dict[str, Any]:
        return {"callbacks": await self.callbacks.callbacks_for(p)}


@public
@csrf_exempt
async def engineio_endpoint(request: web.Request) -> web.StreamResponse:
    """The Engine.IO transport route. Public at the HTTP layer: the socket authenticates at connect."""
    server: SignalingServer | None = request.app[appkeys.SIGNALING].server
    if server is None:
        raise Unavailable("signalling is starting or stopping")
    return await server.sio.handle_request(request)


def add_routes(app: web.Application) -> None:
    for method in ("GET", "POST", "OPTIONS"):
        app.router.add_route(method, SOCKETIO_PATH, engineio_endpoint)
