"""Task hygiene shared by the node's loops and handlers."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


def reraise_if_cancelling() -> None:
    """Some drivers turn a cancellation into their own error: never let that swallow a cancel."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError()


async def stop_task(task: asyncio.Task, timeout: float = 5.0) -> None:
    """Cancel ``task`` and wait for it, cancelling again if a library swallowed the first cancel."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            log.error("task %s did not stop within %.0f s", task.get_name(), timeout)
            return
        await asyncio.wait({task}, timeout=min(0.5, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with %r", task.get_name(), task.exception())
