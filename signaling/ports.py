"""Ports signalling needs from outside, declared here by the consumer (CONVENTIONS 5).

``SessionLog`` is satisfied by :class:`recordings.service.SessionRecords`; ``Notifier`` by
the Socket.IO edge (:mod:`signaling.server`); ``MediaPort`` by ``media.server.MediaServer``.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from signaling.calls import Call, CallEvent


class SessionLog(Protocol):
    """The session record and its hash-chained event log."""

    async def open(self, call: Call, events: Sequence[CallEvent], node: str) -> None:
        """Create the session record for a new call and write its first events."""

    async def record(self, call: Call, events: Sequence[CallEvent]) -> None:
        """Write a transition's events and the call's state, agent, times and end reason, in one transaction."""

    async def append(self, session_id: str, kind: str, actor: str, data: dict[str, Any], at: float) -> None:
        """Write one event that changes no state (media events, recording files)."""

    async def end_open(self, reason: str, event: CallEvent, opened_before: float) -> list[str]:
        """End every session opened before ``opened_before`` and not ended yet; return their ids.

        Each ends with ``reason`` at ``event.at``, and ``event`` is appended to its log.
        """

    async def answered_among(self, session_ids: Sequence[str]) -> set[str]:
        """Those of ``session_ids`` whose call was answered (unknown ids are left out)."""


class Notifier(Protocol):
    """Delivers server events to rooms of connected clients, on every node."""

    async def emit(self, event: str, payload: dict[str, Any], room: str) -> None: ...


class MediaPort(Protocol):
    """The subset of ``media.server.MediaServer`` signalling drives."""

    async def negotiate(self, session_id: str, participant: str, offer: Any) -> Any: ...

    async def leave(self, session_id: str, participant: str) -> None: ...

    async def end(self, session_id: str) -> None: ...

    async def request_keyframe(self, session_id: str, participant: str, source: str) -> None: ...

    def ice_servers(self, participant_id: str) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...
