"""The one risky module: every touch of aiortc's and aioice's private internals.

Written against ``aiortc==1.16.0`` and ``aioice==0.13.0`` (pinned in pyproject.toml).
``tests/media/test_passthrough_contract.py`` fails with the name of the missing attribute or
the changed behaviour if an upgrade breaks any of this. What is patched, per object (never
per class, so other aiortc users in the same process are untouched):

Receivers (:class:`ReceiverTap`)
    ``RTCRtpReceiver.__jitter_buffer`` is replaced by an adapter that feeds a
    :class:`media.assembler.FrameAssembler`, which hands complete *encoded* frames to the
    relay and never returns one to aiortc, so aiortc's decoder never sees a frame; its
    ``__decoder_queue`` is replaced by a queue whose ``get()`` ends the decoder thread at
    once (no idle thread per track, nothing queued, nothing decoded). ``_send_rtcp`` is
    wrapped so that the REMB aiortc computes per video stream is only read as an overuse
    signal, and what goes upstream is one value per connection (:class:`media.bandwidth.UplinkRate`:
    uncapped unless our link or a subscriber's is congested); ``_send_rtcp_pli`` is how
    keyframes are requested upstream (aiortc has no public PLI).
Senders (:func:`install_sender_hooks`)
    ``RTCRtpSender.__encoder`` is set to a :class:`_Packer` that only packetizes the
    pre-encoded ``av.Packet`` the forwarding track returns (aiortc's stock path would build
    an Opus *encoder* just to call its ``pack``), and whose ``target_bitrate`` setter is how
    a subscriber's REMB reaches us; ``_send_keyframe`` (called on PLI/FIR) is replaced by a
    callback that forwards the request upstream. NACKs are still answered by aiortc's own
    retransmission history.
Transceivers
    ``RTCRtpTransceiver._codecs`` is trimmed to VP8 (+RTX) and Opus before the answer.
ICE (:func:`tune_ice`)
    the aioice ``Connection`` behind each gatherer gets its host addresses from settings
    (aioice never offers 127.0.0.1, and cannot announce a 1:1 NAT address), and a consent
    check that tolerates long round trips; see :data:`CONSENT_RETRANSMISSIONS`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import weakref
from fractions import Fraction
from typing import Any, Callable

import aioice
import aioice.ice
import aioice.stun
import aiortc
import av
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci

from media.assembler import FrameAssembler, FrameCallback
from media.bandwidth import UplinkRate

logger = logging.getLogger(__name__)

TESTED_AIORTC = "1.16.0"
TESTED_AIOICE = "0.13.0"

# Consent freshness (RFC 7675). aioice 0.13 sends one consent check every ~5 s with *no*
# retransmission and a 0.5 s timeout, and closes after 6 consecutive misses: any round trip
# above 500 ms for ~30 s ends the call (measured: 480 ms RTT survives, 520 ms dies), which
# is exactly a satellite or congested island link. We keep the interval and the 30 s
# expiry, but let each check retransmit twice (0, 0.5, 1.5 s; answer accepted until 3.5 s),
# so a round trip of up to ~3.5 s, or 2 lost packets out of 3, no longer counts as a miss.
CONSENT_INTERVAL = 5.0
CONSENT_FAILURES = 6
CONSENT_RETRANSMISSIONS = 2


class PassthroughIncompatible(RuntimeError):
    """The installed aiortc/aioice no longer has what media/passthrough.py relies on."""


def _require(obj: Any, attribute: str, what: str) -> None:
    if not hasattr(obj, attribute):
        raise PassthroughIncompatible(
            f"{what}: {type(obj).__name__} has no attribute {attribute!r} "
            f"(media/passthrough.py was written for aiortc {TESTED_AIORTC}, aioice "
            f"{TESTED_AIOICE}; installed aiortc {aiortc.__version__}, aioice {aioice.__version__})"
        )


def check_classes() -> None:
    """Check the class-level hooks exist; raise :class:`PassthroughIncompatible` naming the first missing one."""
    _require(aiortc.RTCRtpReceiver, "_handle_rtp_packet", "receiver tap")
    _require(aiortc.RTCRtpReceiver, "_send_rtcp", "REMB cap")
    _require(aiortc.RTCRtpReceiver, "_send_rtcp_pli", "upstream keyframe request")
    _require(aiortc.RTCRtpSender, "_send_keyframe", "PLI forwarding")
    _require(aiortc.RTCRtpSender, "_handle_rtcp_packet", "REMB forwarding")
    _require(Vp8Encoder, "_packetize", "VP8 packetizer")
    _require(aioice.ice.Connection, "get_component_candidates", "host addresses")
    _require(aioice.ice.Connection, "query_consent", "consent timing")
    _require(aioice.ice.Connection, "build_request", "consent timing")
    if aiortc.__version__ != TESTED_AIORTC or aioice.__version__ != TESTED_AIOICE:
        logger.warning(
            "media passthrough was tested with aiortc %s / aioice %s, found %s / %s: "
            "run tests/media/test_passthrough_contract.py",
            TESTED_AIORTC, TESTED_AIOICE, aiortc.__version__, aioice.__version__,
        )


class _NoDecoderQueue:
    """Stands in for the receiver's decoder queue: the decoder thread exits at once."""

    def get(self) -> None:
        return None

    def put(self, item: Any) -> None:
        if item is not None:  # pragma: no cover - the assembler never returns frames to aiortc
            raise PassthroughIncompatible("aiortc handed a frame to the decoder despite the tap")


class ReceiverTap:
    """Installed on one RTCRtpReceiver: encoded frames go to ``on_frame``, never to a decoder.

    Also the receiver's upstream control: :meth:`send_pli`, :attr:`remb_limit` (the cap the
    subscribers justify) and the REMB, shared with the connection's other taps through ``uplink``.
    """

    def __init__(
        self,
        receiver: aiortc.RTCRtpReceiver,
        kind: str,
        on_frame: FrameCallback,
        on_picture_loss: Callable[[], None],
        *,
        max_wait: float = 0.5,
        uplink: UplinkRate | None = None,
    ) -> None:
        for attribute in ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue",
                          "_RTCRtpReceiver__rtcp_ssrc"):
            _require(receiver, attribute, "receiver tap")
        self._receiver = receiver
        self.kind = kind
        self.assembler = FrameAssembler(kind, on_frame, on_picture_loss, max_wait=max_wait)
        self.media_ssrc: int | None = None
        self.packets = 0
        self.bytes = 0
        self.uplink = uplink if uplink is not None else UplinkRate()
        self.uplink.stream(self, kind)
        self.upstream_estimate: int | None = None  # bits/s, aiortc's estimate of this stream
        self._original_send_rtcp = receiver._send_rtcp
        receiver._RTCRtpReceiver__jitter_buffer = self  # type: ignore[attr-defined]
        receiver._RTCRtpReceiver__decoder_queue = _NoDecoderQueue()  # type: ignore[attr-defined]
        receiver._send_rtcp = self._send_rtcp  # type: ignore[method-assign]

    @property
    def remb_limit(self) -> int | None:
        """bits/s: the cap the congested subscribers of this source justify (None: none)."""
        return self.uplink.limits.get(self)

    @remb_limit.setter
    def remb_limit(self, bitrate: int | None) -> None:
        self.uplink.limits[self] = bitrate

    # The jitter buffer interface aiortc calls: add(packet) -> (pli_flag, frame or None).
    def add(self, packet: Any) -> tuple[bool, None]:
        self.packets += 1
        payload = packet.payload
        self.bytes += len(payload)
        if self.media_ssrc != packet.ssrc:
            self.media_ssrc = packet.ssrc
            if self.kind == "video":
                self.uplink.ssrcs[self] = packet.ssrc
        now = asyncio.get_running_loop().time()
        self.uplink.add(self, len(payload) + packet.padding_size, now)
        if payload:
            if self.kind == "video":
                # VP8 payload descriptor (RFC 7741): S bit set and partition index 0.
                start = bool(payload[0] & 0x10) and not payload[0] & 0x0F
            else:
                start = True
            self.assembler.push(
                packet.sequence_number, packet.timestamp, bool(packet.marker), start,
                packet._data, now,
            )
        else:  # padding only (bandwidth probing): it still takes a sequence number
            self.assembler.push_padding(packet.sequence_number, now)
        return False, None

    async def _send_rtcp(self, packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, _ = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            self.upstream_estimate = bitrate
            value = self.uplink.on_estimate(self, bitrate, asyncio.get_running_loop().time())
            packet = self._remb(value)
            if packet is None:
                return
        await self._original_send_rtcp(packet)

    def _remb(self, bitrate: int) -> RtcpPsfbPacket | None:
        # One REMB for the whole connection: the browser applies it to its whole transport.
        rtcp_ssrc = self._receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        ssrcs = sorted(set(self.uplink.ssrcs.values()))
        if rtcp_ssrc is None or not ssrcs:
            return None
        return RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                              fci=pack_remb_fci(int(bitrate), ssrcs))

    async def send_pli(self) -> None:
        """Ask the sender for a keyframe (RTCP PLI)."""
        if self.media_ssrc is not None:
            await self._receiver._send_rtcp_pli(self.media_ssrc)

    async def send_remb(self, bitrate: int | None = None) -> None:
        """Send a REMB now (default: the connection's current value), e.g. when a subscriber's cap drops."""
        if bitrate is None:
            bitrate = self.uplink.value(asyncio.get_running_loop().time())
        packet = self._remb(bitrate)
        if packet is not None:
            await self._original_send_rtcp(packet)


class _Packer:
    """Replaces a sender's encoder: packetizes pre-encoded frames; encoding is refused."""

    def __init__(self, kind: str, on_remb: Callable[[int], None]) -> None:
        self.kind = kind
        self._on_remb = on_remb
        self._picture_id = random.randint(0, (1 << 15) - 1)
        self._bitrate = 0

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        data = bytes(packet)
        if self.kind == "video":
            payloads = Vp8Encoder._packetize(data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
        else:
            payloads = [data]
        return payloads, int(packet.pts)

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise PassthroughIncompatible("a forwarding sender was handed a raw frame to encode")

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._bitrate = bitrate
        self._on_remb(bitrate)


def install_sender_hooks(
    sender: aiortc.RTCRtpSender,
    kind: str,
    on_keyframe_request: Callable[[], None],
    on_remb: Callable[[int], None],
) -> None:
    """Make ``sender`` forward pre-encoded frames and report PLI/FIR and REMB to us."""
    _require(sender, "_RTCRtpSender__encoder", "pre-encoded sender")
    sender._RTCRtpSender__encoder = _Packer(kind, on_remb)  # type: ignore[attr-defined]
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


def receiver_backlog(receiver: aiortc.RTCRtpReceiver) -> int:
    """Items waiting inside aiortc for a receiver: its decoder queue plus its (unconsumed) track queue."""
    backlog = 0
    queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
    if queue is not None and hasattr(queue, "qsize"):
        backlog += queue.qsize()
    track = receiver.track
    if track is not None and hasattr(track, "_queue"):
        backlog += track._queue.qsize()
    return backlog


def make_packet(data: bytes, pts: int, clock_rate: int) -> av.Packet:
    """An av.Packet carrying one encoded frame, as a forwarding track returns it."""
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = Fraction(1, clock_rate)
    return packet


def restrict_codecs(transceiver: aiortc.RTCRtpTransceiver) -> list[str]:
    """Keep only VP8 (+ its RTX) or Opus in the answer; return the kept MIME types."""
    _require(transceiver, "_codecs", "codec restriction")
    kept: list[Any] = []
    primary_pts: set[int] = set()
    for codec in transceiver._codecs:
        if codec.mimeType.lower() in ("video/vp8", "audio/opus") and not primary_pts:
            kept.append(codec)
            primary_pts.add(codec.payloadType)
    for codec in transceiver._codecs:
        if codec.mimeType.lower() == "video/rtx" and codec.parameters.get("apt") in primary_pts:
            kept.append(codec)
    transceiver._codecs = kept
    return [c.mimeType for c in kept]


def ice_connections(pc: aiortc.RTCPeerConnection) -> list[aioice.ice.Connection]:
    """The distinct aioice connections behind a peer connection's transports."""
    seen: dict[int, aioice.ice.Connection] = {}
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    for dtls in transports:
        gatherer = dtls.transport.iceGatherer
        _require(gatherer, "_connection", "ICE tuning")
        seen[id(gatherer._connection)] = gatherer._connection
    return list(seen.values())


def discovered_host_addresses() -> list[str]:
    """What aioice would gather on by itself (every interface except loopback)."""
    return aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)


def tune_ice(pc: aiortc.RTCPeerConnection, addresses: list[str], public_ip: str) -> None:
    """Gather host candidates on ``addresses`` (+ ``public_ip`` for 1:1 NAT); long-RTT consent."""
    for connection in ice_connections(pc):
        connection.get_component_candidates = _gather_on(
            connection.get_component_candidates, list(addresses), public_ip
        )
        connection.query_consent = functools.partial(_query_consent, connection)


def _gather_on(
    original: Callable[..., Any], host_addresses: list[str], public_ip: str
) -> Callable[..., Any]:
    # aioice calls self.get_component_candidates(component=..., addresses=...).
    async def get_component_candidates(
        component: int, addresses: list[str] | None = None, timeout: int = 5
    ) -> list[Candidate]:
        candidates = await original(component=component, addresses=host_addresses, timeout=timeout)
        if public_ip:
            candidates += [_announced(c, public_ip) for c in candidates if c.type == "host"]
        return candidates

    return get_component_candidates


def _announced(host: Candidate, public_ip: str) -> Candidate:
    """The host candidate as seen through a 1:1 NAT: same port, public address."""
    return Candidate(
        foundation=candidate_foundation("srflx", "udp", host.host),
        component=host.component,
        transport="udp",
        priority=candidate_priority(host.component, "srflx"),
        host=public_ip,
        port=host.port,
        type="srflx",
        related_address=host.host,
        related_port=host.port,
    )


_CONSENT_RTTS: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()


def round_trip_time(pc: aiortc.RTCPeerConnection) -> float | None:
    """The latest round trip to the peer, in seconds: from our senders' RTCP reports, else consent checks."""
    rtts = [rtt for t in pc.getTransceivers()
            if (rtt := getattr(t.sender, "_RTCRtpSender__rtt", None)) is not None]
    if rtts:
        return max(rtts)
    consent = [_CONSENT_RTTS[c] for c in ice_connections(pc) if c in _CONSENT_RTTS]
    return max(consent) if consent else None


async def _query_consent(connection: aioice.ice.Connection) -> None:
    """aioice's consent loop (RFC 7675) with retransmissions; see :data:`CONSENT_RETRANSMISSIONS`.

    Also times each check: :func:`round_trip_time` falls back on it.
    """
    assert connection.remote_password is not None
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            request = connection.build_request(pair, nominate=False)
            try:
                started = loop.time()
                await pair.protocol.request(
                    request,
                    pair.remote_addr,
                    integrity_key=connection.remote_password.encode("utf8"),
                    retransmissions=CONSENT_RETRANSMISSIONS,
                )
                _CONSENT_RTTS[connection] = loop.time() - started
                failures = 0
            except aioice.stun.TransactionError:
                failures += 1
            if failures >= CONSENT_FAILURES:
                logger.info("ICE consent expired after %d missed checks", failures)
                connection._query_consent_task = None
                await connection.close()
                return
