"""Background work of a node: due deadlines, the node heartbeat and reaping dead nodes.

Deadlines live in the backend (a sorted set in Redis), so ring timeouts and grace periods
survive the node that set them: every node polls, and :meth:`CallQueue.take_due` leases
each due deadline to exactly one node. A node that dies mid-way lets its lease run out and
another node handles the deadline again (transitions are idempotent: they check state and step).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from signaling.service import CallService
from signaling.tasks import reraise_if_cancelling

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
LEASE_SECONDS = 15.0
NODE_BEAT_SECONDS = 1.0
NODE_DEAD_AFTER_SECONDS = 6.0
FLUSH_DELAY_SECONDS = 0.05


class NodeWorker:
    """Owns the node's background loops; ``run`` until cancelled."""

    def __init__(
        self,
        service: CallService,
        *,
        poll: float = POLL_SECONDS,
        dead_after: float = NODE_DEAD_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.poll = poll
        self.dead_after = dead_after
        self.clock = clock
        self._flush = asyncio.Event()
        service.board.on_dirty = self._flush.set

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._deadlines())
            group.create_task(self._nodes())
            group.create_task(self._queue_flusher())

    async def _deadlines(self) -> None:
        queue = self.service.queue
        while True:
            try:
                for name, token in await queue.take_due(self.clock(), LEASE_SECONDS):
                    try:
                        await self.service.on_deadline(name)
                    except Exception:
                        reraise_if_cancelling()
                        log.exception("deadline %s failed; it comes due again after its lease", name)
                        continue
                    await queue.finish(name, token)
            except Exception:
                reraise_if_cancelling()
                log.exception("polling deadlines failed")
            await asyncio.sleep(self.poll)

    async def _nodes(self) -> None:
        service = self.service
        while True:
            try:
                now = self.clock()
                await service.queue.node_beat(service.node_id, now)
                for node, seen in (await service.queue.nodes()).items():
                    if node != service.node_id and now - seen > self.dead_after:
                        sides = await service.queue.reap_node(node)
                        log.warning("node %s is gone (silent %.1f s); its %d sockets are lost", node, now - seen,
                                    len(sides))
                        for side in sides:
                            await service.side_gone(side, None)
            except Exception:
                reraise_if_cancelling()
                log.exception("node registry upkeep failed")
            await asyncio.sleep(NODE_BEAT_SECONDS)

    async def _queue_flusher(self) -> None:
        next_due: float | None = None
        while True:
            try:
                async with asyncio.timeout(next_due):
                    await self._flush.wait()
                # Coalesce a burst of queue changes into one update per department.
                await asyncio.sleep(FLUSH_DELAY_SECONDS)
            except TimeoutError:
                pass  # positions held back by their interval are due
            self._flush.clear()
            try:
                next_due = await self.service.board.flush()
            except Exception:
                reraise_if_cancelling()
                next_due = None
                log.exception("queue update failed")
