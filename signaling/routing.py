"""Routing a request to the node that owns a call's media: local, or over Redis request/reply.

``LocalRouter`` (one node) calls the handler directly. ``RedisRouter`` publishes the request
on the owner's channel ``{prefix}rpc:{node}`` and waits for the reply on its own channel
``{prefix}rpc-reply:{node}``; every node listens on both of its channels. Chosen once in
setup, like LiveKit's LocalRouter/RedisRouter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any, Awaitable, Callable, Protocol

from redis.asyncio import Redis

from cloudhall.errors import CloudHallError, Unavailable

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
REQUEST_TIMEOUT = 10.0


class NodeRouter(Protocol):
    node_id: str

    def serve(self, handler: Handler) -> None:
        """Set the function that answers requests addressed to this node."""

    async def request(self, node: str, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run ``method`` on ``node``; raise its CloudHallError, or Unavailable on timeout."""

    async def run(self) -> None:
        """Listen for requests and replies until cancelled."""


def _error_from(body: dict[str, Any]) -> CloudHallError:
    return CloudHallError(body.get("message", "remote error"), code=body.get("code", "internal"),
                          details=body.get("details"))


class LocalRouter:
    """One node: every call's media is here."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._handler: Handler | None = None

    def serve(self, handler: Handler) -> None:
        self._handler = handler

    async def request(self, node: str, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if self._handler is None or node != self.node_id:
            raise Unavailable(f"node {node} is not reachable")
        return await self._handler(method, payload)

    async def run(self) -> None:
        await asyncio.Event().wait()


class RedisRouter:
    """Request/reply between nodes over Redis pub/sub."""

    def __init__(self, redis: Redis, prefix: str, node_id: str) -> None:
        self.node_id = node_id
        self._r = redis
        self._p = prefix
        self._handler: Handler | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()

    def _channel(self, kind: str, node: str) -> str:
        return f"{self._p}{kind}:{node}"

    def serve(self, handler: Handler) -> None:
        self._handler = handler

    async def request(self, node: str, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if node == self.node_id and self._handler is not None:
            return await self._handler(method, payload)
        request_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = {"id": request_id, "reply_to": self.node_id, "method": method, "payload": payload}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                receivers = await self._r.publish(self._channel("rpc", node), json.dumps(message))
                if not receivers:
                    raise Unavailable(f"node {node} is not listening")
                body = await future
        except TimeoutError:
            raise Unavailable(f"node {node} did not answer {method} in time") from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in body:
            raise _error_from(body["error"])
        return body["result"]

    async def run(self) -> None:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel("rpc", self.node_id), self._channel("rpc-reply", self.node_id))
            self.ready.set()
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                body = json.loads(message["data"])
                if channel.startswith(self._p + "rpc-reply:"):
                    future = self._pending.get(body.get("id", ""))
                    if future is not None and not future.done():
                        future.set_result(body)
                else:
                    task = asyncio.create_task(self._answer(body))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await pubsub.aclose()

    async def _answer(self, body: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": body.get("id")}
        try:
            if self._handler is None:
                raise Unavailable(f"node {self.node_id} serves no requests")
            reply["result"] = await self._handler(body["method"], body.get("payload") or {})
        except CloudHallError as exc:
            reply["error"] = exc.to_dict()
        except Exception:
            log.exception("node %s: request %s failed", self.node_id, body.get("method"))
            reply["error"] = {"code": "internal", "message": "internal error"}
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._r.publish(self._channel("rpc-reply", body["reply_to"]), json.dumps(reply))
        except (TimeoutError, OSError, ConnectionError):
            log.warning("node %s: could not reply to %s", self.node_id, body.get("reply_to"))
