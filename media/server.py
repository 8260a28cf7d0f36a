"""The media library's entry point: :class:`MediaServer`, one per node.

Signalling calls it with offers and gets answers back; media never imports signalling.
Events (connections, failures, tracks, gaps, recording failures) go to a
:class:`MediaEvents` the consumer implements.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Callable, Protocol

from cloudhall.errors import InvalidInput, NotFound
from cloudhall.settings import MediaSettings
from media import ice, passthrough
from media.offer import AnswerOut, OfferIn, parse_offer
from media.relay import SourceRelay
from media.session import MediaSession
from media.sink import PacketSink

logger = logging.getLogger(__name__)

__all__ = ["AnswerOut", "MediaEvents", "MediaServer", "OfferIn"]

MEDIA_TIMEOUT_SECONDS = 5.0
SNAPSHOT_KEYFRAME_TIMEOUT = 3.0


class MediaEvents(Protocol):
    """What media reports; the consumer (signalling, session records) implements it.

    ``kind`` is one of: ``participant_connected`` {participant, epoch};
    ``participant_failed`` {participant, epoch, reason: "failed" | "closed" |
    "media_timeout", seconds?}; ``participant_media_resumed`` {participant, epoch};
    ``track_started`` {participant, source, epoch}; ``gap`` {participant, epoch,
    gap_seconds} (first media after a rejoin); ``recording_failed`` {participant, source,
    epoch, step, error} (the sink raised; the call goes on). Must not block.
    """

    def media_event(self, session_id: str, kind: str, data: dict) -> None: ...


class MediaServer:
    """One per node. Owns every MediaSession on this node.

    ``sink_factory(session_id)`` returns the session's :class:`media.sink.PacketSink`
    (the recorder) or None; if it raises, the call goes on unrecorded and
    ``recording_failed`` is reported. Media owns what the factory returned: :meth:`end`
    calls its ``close()`` (sync or async) if it has one, after closing every TrackWriter.
    """

    def __init__(
        self,
        settings: MediaSettings,
        *,
        sink_factory: Callable[[str], PacketSink | None] | None = None,
        events: MediaEvents | None = None,
    ) -> None:
        passthrough.check_classes()
        self._settings = settings
        self._sink_factory = sink_factory
        self._events = events
        self._sessions: dict[str, MediaSession] = {}
        self._addresses = ice.host_addresses(settings, passthrough.discovered_host_addresses())
        self.media_timeout = MEDIA_TIMEOUT_SECONDS

    def _emit(self, session_id: str, kind: str, data: dict) -> None:
        if kind in ("participant_failed", "recording_failed", "gap"):
            logger.info("session %s: %s %s", session_id, kind, data)
        if self._events is not None:
            try:
                self._events.media_event(session_id, kind, data)
            except Exception:
                logger.exception("session %s: media event consumer failed on %s", session_id, kind)

    def _session(self, session_id: str) -> MediaSession:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"no media session {session_id!r} on this node")
        return session

    async def negotiate(self, session_id: str, participant: str, offer: OfferIn) -> AnswerOut:
        """Answer ``participant``'s offer, creating the session on first use.

        ``participant`` is "outlet", "agent" or "monitor". A second negotiate() for the same
        participant (rejoin after transport failure or page reload) closes the old
        RTCPeerConnection and starts a new epoch: forwarding and recording resume and the
        gap is reported. Raises InvalidInput for a broken SDP, unknown mids, bad roles or
        codecs other than VP8/Opus; Unavailable if negotiation itself fails.
        """
        if not isinstance(session_id, str) or not session_id:
            raise InvalidInput("session_id must be a non-empty string")
        parse_offer(participant, offer)  # refuse a bad offer before creating anything
        session = self._sessions.get(session_id)
        created = session is None
        if session is None:
            passthrough.install_wakeup_coalescing(asyncio.get_running_loop(), self._settings.wakeup_coalesce_ms / 1000)
            session = MediaSession(
                session_id, self._settings,
                configuration=lambda: ice.server_configuration(self._settings),
                addresses=self._addresses, sink=self._open_sink(session_id), emit=self._emit,
                media_timeout=self.media_timeout,
            )
            self._sessions[session_id] = session
            logger.info("session %s: media session created", session_id)
        try:
            return await session.negotiate(participant, offer)
        except BaseException:
            if created and not session.peers and self._sessions.get(session_id) is session:
                # nothing was ever connected: do not keep an empty session (and its recorder) around
                del self._sessions[session_id]
                await session.end()
            raise

    def _open_sink(self, session_id: str) -> PacketSink | None:
        if self._sink_factory is None:
            return None
        try:
            return self._sink_factory(session_id)
        except Exception as exc:
            logger.warning("session %s: recorder could not start: %r", session_id, exc)
            self._emit(session_id, "recording_failed", {"step": "sink_factory", "error": f"{type(exc).__name__}: {exc}"})
            return None

    async def leave(self, session_id: str, participant: str) -> None:
        """Close ``participant``'s connection and recordings; raises NotFound for an unknown session."""
        await self._session(session_id).leave(participant)

    async def end(self, session_id: str) -> None:
        """Close every peer connection and TrackWriter, then the session's sink; raises NotFound if unknown."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFound(f"no media session {session_id!r} on this node")
        await session.end()

    async def request_keyframe(self, session_id: str, participant: str, source: str) -> None:
        """Ask ``participant``'s ``source`` (camera | screen) for a keyframe now."""
        relay = self._relay(session_id, participant, source)
        relay.request_keyframe("requested", force=True)

    def _relay(self, session_id: str, participant: str, source: str) -> SourceRelay:
        session = self._session(session_id)
        relay = session.relays.get((participant, source))
        if relay is None:
            raise NotFound(f"session {session_id!r} has no {participant} {source}")
        return relay

    async def snapshot(self, session_id: str, participant: str, source: str) -> bytes:
        """A full-resolution JPEG of ``participant``'s ``source`` (camera | screen).

        Decodes the frames since the latest keyframe with ``media.snapshot.encode_jpeg``
        in an executor (the only decoding the server does). Raises NotFound if the source
        has no video yet (or no keyframe arrives within a few seconds).
        """
        relay = self._relay(session_id, participant, source)
        if relay.kind != "video":
            raise InvalidInput(f"{participant} {source} is not a video source")
        if not relay.gop or relay.gop_overflow:
            try:
                await relay.wait_keyframe(SNAPSHOT_KEYFRAME_TIMEOUT)
            except TimeoutError:
                raise NotFound(f"no picture from {participant} {source} in session {session_id!r}") from None
        frames = list(relay.gop)
        encode_jpeg = importlib.import_module("media.snapshot").encode_jpeg
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, encode_jpeg, relay.codec, frames)

    def ice_servers(self, participant_id: str) -> list[dict]:
        """``iceServers`` for a browser: STUN URLs, then TURN with coturn REST credentials for ``participant_id``."""
        return ice.browser_ice_servers(self._settings, participant_id)

    def stats(self, session_id: str) -> dict:
        """Per track: frames in/out, drops, keyframe requests, bitrate, queue depths; raises NotFound."""
        return self._session(session_id).stats()

    @property
    def session_ids(self) -> list[str]:
        return list(self._sessions)

    async def close(self) -> None:
        """End every session on this node."""
        for session_id in list(self._sessions):
            session = self._sessions.pop(session_id)
            await session.end()
