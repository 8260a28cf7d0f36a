"""One call's media: a peer connection per participant, a relay per source, a watchdog.

A participant that negotiates again (transport failure, page reload) gets a new
RTCPeerConnection and a new *epoch*: the old connection is closed, its recordings are
closed, and forwarding and recording resume on the new one (aiortc has no ICE restart).
aiortc never reports ``disconnected``, so the watchdog also reports missing media.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from cloudhall.errors import InvalidInput, Unavailable
from cloudhall.settings import MediaSettings
from media import passthrough
from media.bandwidth import DownlinkRate, UplinkRate
from media.offer import AnswerOut, MediaLine, OfferIn, parse_offer
from media.relay import KEYFRAME_MIN_INTERVAL, Forward, SourceRelay
from media.sink import PacketSink

logger = logging.getLogger(__name__)

NETWORK_TIMEOUT = 15.0  # seconds for one offer/answer (ICE gathering included)
CLOSE_TIMEOUT = 5.0
SINK_CLOSE_TIMEOUT = 60.0  # the recorder finalizes (remuxes, hashes) its files on close
WATCHDOG_INTERVAL = 1.0
REPAIR_WAIT_MIN = 0.3  # seconds a hole may wait for its retransmission (see _adapt_repair_wait)
REPAIR_WAIT_MAX = 1.5


@dataclass(eq=False)
class _Peer:
    participant: str
    epoch: int
    pc: RTCPeerConnection
    lines: list[MediaLine]
    taps: dict[str, passthrough.ReceiverTap] = field(default_factory=dict)
    forwards: list[Forward] = field(default_factory=list)
    created_at: float = 0.0
    connected: bool = False
    closing: bool = False
    failed: bool = False
    media_missing: bool = False

    @property
    def sources(self) -> list[str]:
        return [line.source for line in self.lines if line.publish]


class MediaSession:
    """The media of one call on this node (created by :class:`media.server.MediaServer`)."""

    def __init__(
        self, session_id: str, settings: MediaSettings, *, configuration: Callable[[], RTCConfiguration],
        addresses: list[str], sink: PacketSink | None, emit: Callable[[str, str, dict], None],
        media_timeout: float,
    ) -> None:
        self.session_id = session_id
        self._settings = settings
        self._configuration = configuration
        self._addresses = addresses
        self._sink = sink
        self._emit_raw = emit
        self._media_timeout = media_timeout
        self.relays: dict[tuple[str, str], SourceRelay] = {}
        self.peers: dict[str, _Peer] = {}
        self._next_epoch: dict[str, int] = {}
        self._last_media_wall: dict[str, float] = {}
        self._gap_pending: set[str] = set()
        self._lock = asyncio.Lock()
        self._watchdog = asyncio.ensure_future(self._watch())

    def _emit(self, kind: str, data: dict) -> None:
        self._emit_raw(self.session_id, kind, data)

    def relay(self, owner: str, source: str) -> SourceRelay:
        """The relay of ``owner``'s ``source``, created on first use."""
        key = (owner, source)
        if key not in self.relays:
            self.relays[key] = SourceRelay(
                self.session_id, owner, source, sink=self._sink, emit=self._emit,
                on_first_frame=self._on_first_frame,
            )
        return self.relays[key]

    async def negotiate(self, participant: str, offer: OfferIn) -> AnswerOut:
        """Answer ``participant``'s offer; a second offer replaces its connection (new epoch)."""
        lines = parse_offer(participant, offer)
        async with self._lock:
            old = self.peers.pop(participant, None)
            if old is not None:
                logger.info("session %s: %s rejoins, closing epoch %d", self.session_id, participant, old.epoch)
                await self._close_peer(old)
            epoch = self._next_epoch.get(participant, 0)
            if epoch > 0:
                self._gap_pending.add(participant)
            self._next_epoch[participant] = epoch + 1
            pc = RTCPeerConnection(configuration=self._configuration())
            peer = _Peer(participant, epoch, pc, lines, created_at=asyncio.get_running_loop().time())
            try:
                async with asyncio.timeout(NETWORK_TIMEOUT):
                    answer = await self._answer(peer, offer)
            except BaseException as exc:
                await self._close_pc(pc)
                if isinstance(exc, (InvalidInput, asyncio.CancelledError)):
                    raise
                if isinstance(exc, TimeoutError):
                    raise Unavailable(f"media negotiation for {participant} in session {self.session_id} timed out") from None
                logger.exception("session %s: negotiation for %s failed", self.session_id, participant)
                raise Unavailable(f"media negotiation for {participant} failed: {type(exc).__name__}") from None
            self.peers[participant] = peer
            for source, tap in peer.taps.items():
                self.relay(participant, source).attach(epoch, tap)
            logger.info("session %s: %s negotiated epoch %d (%s)", self.session_id, participant, epoch,
                        ", ".join(f"{l.mid}={l.role}" for l in lines))
            return answer

    async def _answer(self, peer: _Peer, offer: OfferIn) -> AnswerOut:
        pc = peer.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"the SDP offer was refused: {type(exc).__name__}: {exc}") from None
        passthrough.tune_ice(pc, self._addresses, self._settings.public_ip)
        by_mid = {line.mid: line for line in peer.lines}
        uplink = UplinkRate()  # one REMB for everything this participant sends us
        downlink = DownlinkRate()  # what we forward to it, and the cap its REMB justifies
        for transceiver in pc.getTransceivers():
            line = by_mid.get(transceiver.mid)
            if line is None:
                raise InvalidInput(f"m-line mid={transceiver.mid} has no role in tracks")
            if not passthrough.restrict_codecs(transceiver):
                raise InvalidInput(f"mid={line.mid} has no VP8/Opus codec in common with the server")
            if line.publish:
                transceiver.direction = "recvonly"
                relay = self.relay(peer.participant, line.source)
                peer.taps[line.source] = passthrough.ReceiverTap(
                    transceiver.receiver, line.kind,
                    on_frame=partial(relay.on_frame, peer.epoch),
                    on_picture_loss=partial(relay.request_keyframe, "picture loss"),
                    uplink=uplink,
                    on_packet=partial(relay.on_packet, peer.epoch),
                )
            else:
                relay = self.relay(line.owner, line.source)
                link = passthrough.SenderLink(transceiver, line.kind,
                                              backlog_limit=self._settings.subscriber_backlog_kb * 1024)
                forward = relay.subscribe(peer.participant, link, caps_upstream=peer.participant != "monitor",
                                          downlink=downlink)
                link.on_keyframe_request = partial(relay.request_keyframe, f"PLI from {peer.participant}")
                link.on_remb = partial(relay.set_remb, forward)
                transceiver.direction = "sendonly"
                peer.forwards.append(forward)
        pc.on("connectionstatechange", partial(self._on_state, peer))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        passthrough.install_fast_receive(pc, receive_buffer=self._settings.udp_receive_buffer_kb * 1024)
        return AnswerOut(sdp=pc.localDescription.sdp)

    def _on_state(self, peer: _Peer) -> None:
        state = peer.pc.connectionState
        if peer.closing or self.peers.get(peer.participant) is not peer:
            return
        logger.info("session %s: %s epoch %d is %s", self.session_id, peer.participant, peer.epoch, state)
        if state == "connected" and not peer.connected:
            peer.connected = True
            self._emit("participant_connected", {"participant": peer.participant, "epoch": peer.epoch})
        elif state in ("failed", "closed"):
            self._fail(peer, state)

    def _fail(self, peer: _Peer, reason: str) -> None:
        if not peer.failed:
            peer.failed = True
            for source in peer.sources:
                relay = self.relays.get((peer.participant, source))
                if relay is not None and relay.epoch == peer.epoch:
                    self._note_last_media(peer.participant, relay)
                    relay.detach()
            self._emit("participant_failed", {"participant": peer.participant, "epoch": peer.epoch,
                                              "reason": reason})

    def _on_first_frame(self, relay: SourceRelay, epoch: int) -> None:
        participant = relay.participant
        self._emit("track_started", {"participant": participant, "source": relay.source, "epoch": epoch})
        if participant in self._gap_pending:
            self._gap_pending.discard(participant)
            last = self._last_media_wall.get(participant)
            self._emit("gap", {"participant": participant, "epoch": epoch,
                               "gap_seconds": round(time.time() - last, 3) if last else None})

    def _note_last_media(self, participant: str, relay: SourceRelay) -> None:
        if relay.last_frame_wall is not None:
            self._last_media_wall[participant] = max(
                self._last_media_wall.get(participant, 0.0), relay.last_frame_wall
            )

    async def leave(self, participant: str) -> None:
        """Close ``participant``'s connection and recordings; its subscribers go silent."""
        async with self._lock:
            peer = self.peers.pop(participant, None)
            if peer is not None:
                await self._close_peer(peer)

    async def _close_peer(self, peer: _Peer) -> None:
        peer.closing = True
        for source in peer.sources:
            relay = self.relays.get((peer.participant, source))
            if relay is not None and relay.epoch == peer.epoch:
                self._note_last_media(peer.participant, relay)
                relay.detach()
        for forward in peer.forwards:
            forward.close()
        await self._close_pc(peer.pc)

    async def _close_pc(self, pc: RTCPeerConnection) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await pc.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a half-open aiortc connection may fail to close cleanly
            logger.warning("session %s: closing a peer connection failed: %r", self.session_id, exc)

    async def end(self) -> None:
        """Close every peer connection and every recording."""
        self._watchdog.cancel()
        try:
            await self._watchdog
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
        async with self._lock:
            peers = list(self.peers.values())
            self.peers.clear()
            for peer in peers:
                await self._close_peer(peer)
            for relay in self.relays.values():
                relay.close()
        await self._close_sink()
        logger.info("session %s: media ended", self.session_id)

    async def _close_sink(self) -> None:
        """The sink came from our sink_factory, so we end it: ``close()`` if it has one (sync or async)."""
        close = getattr(self._sink, "close", None)
        if close is None:
            return
        try:
            result = close()
            if inspect.isawaitable(result):
                async with asyncio.timeout(SINK_CLOSE_TIMEOUT):
                    await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("session %s: closing the recorder failed: %r", self.session_id, exc)
            self._emit("recording_failed", {"step": "sink_close", "error": f"{type(exc).__name__}: {exc}"})

    async def _watch(self) -> None:
        """Report transports that died and media that stopped (aiortc never says 'disconnected')."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL)
            now = asyncio.get_running_loop().time()
            for peer in list(self.peers.values()):
                if peer.failed or peer.closing:
                    continue
                self._adapt_repair_wait(peer)
                if peer.pc.connectionState in ("failed", "closed"):
                    self._fail(peer, peer.pc.connectionState)
                    continue
                if not peer.connected or not peer.sources:
                    continue
                times = [r.last_frame_at for s in peer.sources
                         if (r := self.relays.get((peer.participant, s))) and r.epoch == peer.epoch
                         and r.last_frame_at is not None]
                last = max(times) if times else peer.created_at
                missing = now - last > self._media_timeout
                if missing and not peer.media_missing:
                    peer.media_missing = True
                    self._emit("participant_failed", {"participant": peer.participant, "epoch": peer.epoch,
                                                      "reason": "media_timeout",
                                                      "seconds": round(now - last, 1)})
                elif not missing and peer.media_missing:
                    peer.media_missing = False
                    self._emit("participant_media_resumed", {"participant": peer.participant,
                                                             "epoch": peer.epoch})

    def _adapt_repair_wait(self, peer: _Peer) -> None:
        """Wait for a retransmission as long as one takes on this link before calling a loss a gap.

        A NACKed packet comes back after one round trip; asking for a keyframe sooner turns
        every loss on a long island link into a keyframe (the storm that kills such calls).
        A key frame asked for comes back no sooner either, so the publisher is asked again only
        after the same wait: with a fixed 0.5 s, a publisher on an 800 ms link was asked again
        before the first key frame could have arrived, and each key frame it answers with is
        50-200 KB, most of a second or more of a 1 Mbit/s island link.
        """
        rtt = passthrough.round_trip_time(peer.pc)
        if rtt is not None:
            wait = min(REPAIR_WAIT_MAX, max(REPAIR_WAIT_MIN, 1.5 * rtt + 0.1))
            for source, tap in peer.taps.items():
                tap.assembler.max_wait = wait
                relay = self.relays.get((peer.participant, source))
                if relay is not None:
                    relay.keyframe_interval = max(KEYFRAME_MIN_INTERVAL, wait)

    def stats(self) -> dict:
        """Per source: frames in/out, drops, keyframe requests, bitrate; per participant: state."""
        return {
            "session_id": self.session_id,
            "participants": {
                p.participant: {"epoch": p.epoch, "state": p.pc.connectionState,
                                "media_missing": p.media_missing,
                                "rtt_seconds": passthrough.round_trip_time(p.pc)}
                for p in self.peers.values()
            },
            "tracks": {f"{owner}-{source}": relay.stats() for (owner, source), relay in self.relays.items()},
        }
