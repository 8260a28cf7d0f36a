"""The disk threads of the recorders: one muxing thread and one finalizing thread.

One :class:`DiskWriter` can serve every :class:`~recordings.writer.SessionRecorder` of the
process (the composition root creates it and closes it at shutdown); a recorder given none
makes its own. Sharing matters: with a thread per session, every thread wakes up and takes
the GIL on its own, and on a busy event loop each hand-over costs tens of microseconds.
Measured with 30 recorded calls (``benchmarks/recorder_write.py``), one shared thread
spends about half the CPU per frame of thirty private ones.

Finalizing (remux + hash of a closed file, seconds for a long call) runs on a second
thread so that it never holds up the live tracks' frames.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)

# The muxing thread wakes at most this often: frames reach the disk up to 20 ms later.
DEFAULT_BATCH_INTERVAL = 0.02

Handler = Callable[[str, Any, Any], None]


class DiskWriter:
    """Runs recorders' disk work off the event loop, in arrival order, in batches."""

    def __init__(
        self, *, batch_interval: float = DEFAULT_BATCH_INTERVAL, name: str = "recorder"
    ) -> None:
        self._batch_interval = batch_interval
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Handler, str, Any, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._finalizer: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    def submit(self, handler: Handler, op: str, target: Any, payload: Any) -> None:
        """Queue ``handler(op, target, payload)`` for the muxing thread (never blocks).

        Raises ``RuntimeError`` after :meth:`close`.
        """
        with self._lock:  # checked with the put, so nothing is queued after the stop sentinel
            if self._closed:
                raise RuntimeError(f"disk writer {self._name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put((handler, op, target, payload))

    def finalize(self, fn: Callable[..., None], *args: Any) -> concurrent.futures.Future[None]:
        """Run ``fn(*args)`` on the finalizing thread.

        Raises ``RuntimeError`` after :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"disk writer {self._name} is closed")
            if self._finalizer is None:
                self._finalizer = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"{self._name}-finalize"
                )
            return self._finalizer.submit(fn, *args)

    def close(self) -> None:
        """Finish the queued work and stop both threads (blocking: call it in an executor)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread, finalizer = self._thread, self._finalizer
        if thread is not None:
            self._queue.put(None)
            thread.join()
        if finalizer is not None:
            finalizer.shutdown(wait=True)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]  # idle: sleep until something comes
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is None:
                    return
                handler, op, target, payload = item
                try:
                    handler(op, target, payload)
                except Exception:  # noqa: BLE001 - handlers report their own failures; keep serving the others
                    log.exception("disk writer %s: handler for %r failed", self._name, op)
            # Let frames gather: waking up (and taking the GIL) for every frame costs more
            # than muxing it.
            time.sleep(self._batch_interval)
