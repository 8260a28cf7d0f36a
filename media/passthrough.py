"""The one risky module: every touch of aiortc's and aioice's private internals.

Written against ``aiortc==1.16.0`` and ``aioice==0.13.0`` (pinned in pyproject.toml).
``tests/media/test_passthrough_contract.py`` fails with the name of the missing attribute or
the changed behaviour if an upgrade breaks any of this. What is patched, per object (never
per class, so other aiortc users in the same process are untouched):

Incoming media (:func:`install_fast_receive`, :class:`ReceiverTap`)
    the aioice ``Connection.data_received`` of each peer connection decrypts SRTP packets of
    a connected DTLS transport (``_rx_srtp``), parses and routes them (``_rtp_router``) and
    runs :meth:`ReceiverTap.handle_rtp` — aiortc's ``_handle_rtp_packet`` steps on the same
    receiver state, synchronously — instead of queueing them for aiortc's per-transport task.
    ``RTCRtpReceiver.__jitter_buffer`` is replaced by the tap, which hands each packet to the
    relay (forwarding) and feeds a :class:`media.assembler.FrameAssembler` (complete *encoded*
    frames for the recorder), never returning a frame to aiortc, so aiortc's decoder never
    sees one; its ``__decoder_queue`` is replaced by a queue whose ``get()`` ends the decoder
    thread at once. ``_send_rtcp`` is wrapped so that the REMB aiortc computes per video
    stream is only read as an overuse signal, and what goes upstream is one value per
    connection (:class:`media.bandwidth.UplinkRate`: uncapped unless our link or a
    subscriber's is congested); ``_send_rtcp_pli`` is how keyframes are requested upstream
    (aiortc has no public PLI). The receiver's ``__remote_bitrate_estimator`` is swapped for
    :class:`media.estimator.RemoteBitrateEstimator` (the same results, ~3x cheaper per packet);
    after a stream's first packet, :meth:`ReceiverTap.handle_plain` runs these steps on a lean
    parse (:mod:`media.rtp`), and :func:`count_received` updates aiortc's ``StreamStatistics``
    (``_clockrate``, ``_jitter_q4``, ``_last_arrival``, ``_last_timestamp`` and its public
    counters) and ``NackGenerator`` (``max_seq``, ``missing``) as their ``add()`` would.
SRTP (:class:`LeanSrtp`)
    libsrtp's protect/unprotect on a pylibsrtp ``Session``'s own context and buffer
    (``_srtp``, ``_cdata``, ``_buffer``; pylibsrtp pinned too).
Outgoing media (:class:`SenderLink`)
    packets are written, SRTP-protected (``_tx_srtp``), straight to the nominated ICE pair's
    socket; the sender keeps running aiortc's RTCP (its report counters ``__packet_count``,
    ``__octet_count``, ``__ntp_timestamp``, ``__rtp_timestamp`` are kept current) while its
    RTP loop waits on a silent track. ``__encoder`` becomes a stub whose ``target_bitrate``
    setter is how a subscriber's REMB reaches us; ``_send_keyframe`` (PLI/FIR) and
    ``_retransmit`` (NACK, answered from our own history) are replaced.
Pre-encoded clients (:func:`install_sender_hooks`)
    for the load generator and tests, not the server: ``__encoder`` is a :class:`_Packer`
    that packetizes the ``av.Packet`` a track returns.
Transceivers
    ``RTCRtpTransceiver._codecs`` is trimmed to VP8 (+RTX) and Opus before the answer.
ICE (:func:`tune_ice`)
    the aioice ``Connection`` behind each gatherer gets its host addresses from settings
    (aioice never offers 127.0.0.1, and cannot announce a 1:1 NAT address), and a consent
    check that tolerates long round trips; see :data:`CONSENT_RETRANSMISSIONS`.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import functools
import logging
import random
import socket
import struct
import sys
import time
import weakref
from fractions import Fraction
from typing import Any, Callable

import aioice
import aioice.ice
import aioice.stun
import aiortc
import av
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
import pylibsrtp
from pylibsrtp import ERRORS as _SRTP_ERRORS
from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib
from aiortc import clock as aiortc_clock
from aiortc.codecs import depayload
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RTP_HISTORY_SIZE, RTCP_PSFB_APP, RtcpPsfbPacket, RtpPacket, pack_remb_fci, unpack_remb_fci, unwrap_rtx

from media.assembler import FrameAssembler, FrameCallback
from media.bandwidth import UplinkRate
from media.estimator import RemoteBitrateEstimator
from media.rtp import parse_rtp, vp8_payload_offset

logger = logging.getLogger(__name__)

# seq, timestamp, marker, RTP payload (b"": padding only), starts a key frame, audio level byte, loop time
PacketCallback = Callable[[int, int, int, bytes, bool, "int | None", float], None]

REMB_MIN_INTERVAL_MS = 250  # our receivers' estimates become a REMB at most this often...
REMB_DROP = 0.97  # ...unless the estimate fell by 3 % or more

TESTED_AIORTC = "1.16.0"
TESTED_AIOICE = "0.13.0"

# Consent freshness (RFC 7675). aioice 0.13 sends one consent check every ~5 s with *no*
# retransmission and a 0.5 s timeout, and closes after 6 consecutive misses: any round trip
# above 500 ms for ~30 s ends the call (measured: 480 ms RTT survives, 520 ms dies), which
# is exactly a satellite or congested island link. We keep the interval, let each check
# retransmit twice (0, 0.5, 1.5 s; an answer is accepted until 3.5 s), so a round trip of up
# to ~3.5 s, or 2 lost packets out of 3, no longer counts as a miss — and close, as the RFC
# says, when no check has been answered for CONSENT_EXPIRY seconds (counting misses instead
# would stretch that to ~50 s once each miss takes 3.5 s longer). Measured through the
# emulated island link (tests/media/test_consent_island_link.py): 800 ms RTT stays up,
# stock closes at 30-35 s.
CONSENT_INTERVAL = 5.0
CONSENT_EXPIRY = 30.0
CONSENT_RETRANSMISSIONS = 2
# When aioice sends each copy of a check, from the first (its RTO doubles from RETRY_RTO).
CONSENT_SENDS = tuple(aioice.stun.RETRY_RTO * ((1 << i) - 1) for i in range(CONSENT_RETRANSMISSIONS + 1))


def consent_rtt(elapsed: float, previous: float | None) -> float:
    """The round trip a consent check shows, ``elapsed`` seconds from its first copy to the answer.

    Once a copy was retransmitted the answer may be to any copy sent so far: of those
    readings, take the one closest to the previous round trip (a loss then does not add
    0.5 or 1.5 s to the estimate the repair wait follows).
    """
    readings = [elapsed - sent for sent in CONSENT_SENDS if elapsed - sent > 0]
    if previous is None or len(readings) == 1:
        return elapsed
    return min(readings, key=lambda reading: abs(reading - previous))


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
    _require(aiortc.RTCRtpSender, "_retransmit", "NACK answers")
    _require(aioice.ice.Connection, "data_received", "fast receive path")
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


def count_received(stream: StreamStatistics, nacks: Any, seq: int, timestamp: int, wall: float) -> bool:
    """aiortc's ``StreamStatistics.add`` and ``NackGenerator.add`` for one packet, fused; returns "new holes".

    The same fields, changed the same way (a property test compares them, field by field,
    with aiortc's own objects fed the same packets), without two packet objects' worth of
    calls and two ``uint16_gt`` calls per step: ~15 calls per packet fewer on the hot path. ``wall`` is the
    arrival time (aiortc reads ``time.time()`` here itself); ``nacks`` may be None.
    """
    # StreamStatistics.add
    max_seq = stream.max_seq
    stream.packets_received += 1
    if stream.base_seq is None:
        stream.base_seq = seq
    if max_seq is None or (seq != max_seq and (seq - max_seq) & 0xFFFF < 0x8000):  # uint16_gt
        arrival = int(wall * stream._clockrate)
        if max_seq is not None and seq < max_seq:
            stream.cycles += 1 << 16
        stream.max_seq = seq
        last_timestamp = stream._last_timestamp
        if timestamp != last_timestamp and stream.packets_received > 1:
            diff = abs((arrival - stream._last_arrival) - (timestamp - last_timestamp))
            stream._jitter_q4 += diff - ((stream._jitter_q4 + 8) >> 4)
        stream._last_arrival = arrival
        stream._last_timestamp = timestamp
    # NackGenerator.add
    if nacks is None:
        return False
    highest = nacks.max_seq
    if highest is None:
        nacks.max_seq = seq
        return False
    missing = nacks.missing
    missed = False
    ahead = (seq - highest) & 0xFFFF
    if seq != highest and ahead < 0x8000:
        for step in range(1, ahead):
            missing.add((highest + step) & 0xFFFF)
            missed = True
        nacks.max_seq = seq
    else:
        missing.discard(seq)
    if missing:  # NackGenerator.truncate: forget holes more than RTP_HISTORY_SIZE behind
        oldest = (nacks.max_seq - RTP_HISTORY_SIZE) & 0xFFFF
        for hole in list(missing):
            if hole != oldest and (oldest - hole) & 0xFFFF < 0x8000:
                missing.discard(hole)
    return missed


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
        on_packet: PacketCallback | None = None,
    ) -> None:
        for attribute in ("_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue",
                          "_RTCRtpReceiver__rtcp_ssrc", "_RTCRtpReceiver__remote_bitrate_estimator"):
            _require(receiver, attribute, "receiver tap")
        self._receiver = receiver
        self.kind = kind
        self.assembler = FrameAssembler(kind, on_frame, on_picture_loss, max_wait=max_wait)
        self.on_packet = on_packet
        self.fast_packets = 0  # packets that came through install_fast_receive's path
        # (payload type, ssrc, its StreamStatistics, is VP8) of the stream handle_plain may take
        self._lean: tuple[int, int, Any, bool] | None = None
        self.lean_packets = 0  # of those, packets handle_plain took
        self._remb_last: int | None = None
        self._remb_at_ms = 0
        self.media_ssrc: int | None = None
        self.packets = 0
        self.bytes = 0
        self.uplink = uplink if uplink is not None else UplinkRate()
        self._feed = self.uplink.stream(self, kind).add  # per packet: its bytes, for the REMB logic
        # The loop's clock, read per packet: asyncio.get_running_loop() costs a getpid()
        # system call each time (it checks for a fork), ~3 % of the server under load.
        self._clock: Callable[[], float] | None = None
        # Queues a packet's work after forwarding: the loop's AfterForwarding, bound with the clock.
        self._later: Callable[[Callable[..., None], tuple], None] = _run_now
        self.upstream_estimate: int | None = None  # bits/s, aiortc's estimate of this stream
        self._original_send_rtcp = receiver._send_rtcp
        if receiver._RTCRtpReceiver__remote_bitrate_estimator is not None:  # type: ignore[attr-defined]
            # Ours from the start (handle_rtp would swap it at the first packet): aiortc's keeps
            # 1,000 bucket objects that every full garbage collection walks (see SenderLink).
            receiver._RTCRtpReceiver__remote_bitrate_estimator = RemoteBitrateEstimator()  # type: ignore[attr-defined]
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
    # aiortc has already decrypted, parsed, counted, NACKed and unwrapped RTX: ``packet`` is the
    # original stream's packet, ``packet._data`` its depayloaded codec data.
    def add(self, packet: Any) -> tuple[bool, None]:
        level = packet.extensions.audio_level
        self._deliver(packet.ssrc, packet.sequence_number, packet.timestamp, packet.marker, packet.payload,
                      packet.padding_size, packet._data if packet.payload else b"",
                      None if level is None else (level[0] << 7) | level[1])
        return False, None

    def _deliver(self, ssrc: int, seq: int, timestamp: int, marker: int, payload: bytes, padding: int,
                 data: bytes, level: int | None, account: tuple | None = None) -> None:
        """One packet of the original stream (RTX unwrapped), ``data`` its codec data: forward it now.

        Everything else the packet needs (``account``: handle_plain's bookkeeping; frame
        assembly for the recorder and snapshots) waits for the end of the pass round the
        event loop (:class:`AfterForwarding`).
        """
        self.packets += 1
        self.bytes += len(payload)
        if self.media_ssrc != ssrc:
            self.media_ssrc = ssrc
            if self.kind == "video":
                self.uplink.ssrcs[self] = ssrc
        clock = self._clock
        if clock is None:
            loop = asyncio.get_running_loop()
            clock = self._clock = loop.time
            self._later = after_forwarding(loop).add
        now = clock()
        on_packet = self.on_packet
        if payload:
            if self.kind == "video":
                # VP8 payload descriptor (RFC 7741): S bit set and partition index 0; then
                # the VP8 payload header's P bit (RFC 6386 9.1) is 0 on a key frame.
                start = bool(payload[0] & 0x10) and not payload[0] & 0x0F
                keyframe = start and bool(data) and not data[0] & 0x01
            else:
                start = keyframe = True
            if on_packet is not None:
                on_packet(seq, timestamp, marker, payload, keyframe, level, now)
        else:  # padding only (bandwidth probing): it still takes a sequence number
            start = False
            if on_packet is not None:
                on_packet(seq, timestamp, 0, b"", False, None, now)
        self._later(self._after_forwarding, (account, seq, timestamp, marker, start, payload, padding, data, now))

    def _after_forwarding(self, account: tuple | None, seq: int, timestamp: int, marker: int, start: bool,
                          payload: bytes, padding: int, data: bytes, now: float) -> None:
        if account is not None:
            abs_time, arrival_ms, ssrc, stream, wall = account
            self._account(abs_time, arrival_ms, len(payload) + padding, ssrc, stream, seq, timestamp, wall)
        self._feed(len(payload) + padding, now)
        if payload:
            self.assembler.push(seq, timestamp, bool(marker), start, data, now)
        else:
            self.assembler.push_padding(seq, now)

    def handle_rtp(self, packet: Any, arrival_ms: int) -> bool:
        """aiortc's ``RTCRtpReceiver._handle_rtp_packet``, synchronous (see :func:`install_fast_receive`).

        Same steps, same receiver state: REMB estimation, RTCP statistics, RTX unwrapping,
        NACKs, depayloading, then :meth:`add`. RTCP it has to send (REMB, NACK) becomes a task;
        everything else runs to completion here, with no await. Returns whether the packet's
        stream can take :meth:`handle_plain` from now on (a VP8 or Opus stream, not RTX).
        """
        receiver = self._receiver
        if not receiver._enabled:
            return False
        estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
        if estimator is not None and type(estimator) is not RemoteBitrateEstimator:
            # The same estimator, ~3x cheaper per packet (media/estimator.py); swapped before it sees one.
            estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator = RemoteBitrateEstimator()  # type: ignore[attr-defined]
        if estimator is not None and packet.extensions.abs_send_time is not None:
            self._estimate(estimator, packet.extensions.abs_send_time, arrival_ms,
                           len(packet.payload) + packet.padding_size, packet.ssrc)
        codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return False
        streams = receiver._RTCRtpReceiver__remote_streams  # type: ignore[attr-defined]
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
            # getSynchronizationSources() reads when each source was last active; once per
            # new source instead of a datetime per packet.
            receiver._RTCRtpReceiver__active_ssrc[packet.ssrc] = aiortc_clock.current_datetime()  # type: ignore[attr-defined]
        stream.add(packet)
        lean = codec.name in ("VP8", "opus")
        if codec.mimeType.lower().endswith("/rtx"):
            lean = False
            original_ssrc = receiver._RTCRtpReceiver__rtx_ssrc.get(packet.ssrc)  # type: ignore[attr-defined]
            apt = codec.parameters.get("apt")
            if original_ssrc is None or len(packet.payload) < 2 or not isinstance(apt, int) or apt not in codecs:
                return False
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
        nacks = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if nacks is not None and nacks.add(packet):
            _spawn(receiver._send_rtcp_nack(packet.ssrc, sorted(nacks.missing)))
        try:
            packet._data = depayload(codec, packet.payload) if packet.payload else b""
        except ValueError:
            return False
        self.fast_packets += 1
        self.add(packet)
        if lean:
            self._lean = (packet.payload_type, packet.ssrc, stream, codec.name == "VP8")
        return lean

    def handle_plain(self, plain: bytes, wall: float, arrival_ms: int, ids: Any, ssrc_table: dict) -> bool:
        """:meth:`handle_rtp` for a decrypted packet of the stream it last vouched for, parsed lean.

        The same steps on the same receiver state, without aiortc's packet object (see
        :mod:`media.rtp`): ``ids`` is the transport's header extension ids, ``ssrc_table`` its
        router's. Returns False, having done nothing, for a packet this does not cover (another
        stream or payload type, no longer routed to this receiver, a two-byte extension block):
        the caller then takes the full path.
        """
        try:
            parsed = parse_rtp(plain, ids.abs_send_time, ids.audio_level)
        except ValueError:
            return True  # malformed: dropped, as aiortc drops it
        if parsed is None or self._lean is None:
            return False
        pt, marker, seq, timestamp, ssrc, payload, padding, abs_time, level = parsed
        lean_pt, lean_ssrc, stream, vp8 = self._lean
        receiver = self._receiver
        if pt != lean_pt or ssrc != lean_ssrc or ssrc_table.get(ssrc) is not receiver:
            return False
        if not receiver._enabled:
            return True
        if vp8 and payload:
            try:
                data = payload[vp8_payload_offset(payload):]
            except ValueError:
                # Dropped, but still counted and estimated, as aiortc counts it before depayloading.
                self._account(abs_time, arrival_ms, len(payload) + padding, ssrc, stream, seq, timestamp, wall)
                return True
        else:
            data = payload
        self.fast_packets += 1
        self.lean_packets += 1
        self._deliver(ssrc, seq, timestamp, marker, payload, padding, data, level,
                      (abs_time, arrival_ms, ssrc, stream, wall))
        return True

    def _account(self, abs_time: int | None, arrival_ms: int, size: int, ssrc: int, stream: Any, seq: int,
                 timestamp: int, wall: float) -> None:
        """handle_plain's receive bookkeeping: bandwidth estimate, RTCP statistics, NACKs for new holes."""
        receiver = self._receiver
        if abs_time is not None:
            estimator = receiver._RTCRtpReceiver__remote_bitrate_estimator  # type: ignore[attr-defined]
            if estimator is not None:
                self._estimate(estimator, abs_time, arrival_ms, size, ssrc)
        nacks = receiver._RTCRtpReceiver__nack_generator  # type: ignore[attr-defined]
        if count_received(stream, nacks, seq, timestamp, wall):
            _spawn(receiver._send_rtcp_nack(ssrc, sorted(nacks.missing)))

    def _estimate(self, estimator: RemoteBitrateEstimator, abs_time: int, arrival_ms: int, size: int,
                  ssrc: int) -> None:
        """Feed one packet to the receiver's bandwidth estimator; send a REMB when one is due.

        The estimator keeps aiortc's arithmetic, and with it aiortc's one failure: a publisher
        that backs off to nothing and then sends empty payloads makes its next increase divide
        by zero. Raised here, that would drop the packet for every subscriber and the recording
        (and again on every packet after it); instead the estimator starts afresh.
        """
        try:
            # positional: media.estimator's signature (handle_rtp swapped it in, first)
            remb = estimator.add(arrival_ms, abs_time, size, ssrc)
        except ArithmeticError as exc:
            logger.warning("bandwidth estimate of stream %d failed (%r): estimator restarted", ssrc, exc)
            self._receiver._RTCRtpReceiver__remote_bitrate_estimator = RemoteBitrateEstimator()  # type: ignore[attr-defined]
            return
        if remb is None:
            return
        rtcp_ssrc = self._receiver._RTCRtpReceiver__rtcp_ssrc  # type: ignore[attr-defined]
        if rtcp_ssrc is not None and self._remb_due(remb[0], arrival_ms):
            _spawn(self._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
                                                  fci=pack_remb_fci(*remb))))

    def _remb_due(self, bitrate: int, now_ms: int) -> bool:
        """Whether an estimate is worth a REMB now: a drop of 3 % or more at once, else 4 per second.

        While its detector says "overusing", aiortc's estimator yields an estimate on *every*
        packet; sending each (and recomputing the connection's value) cost ~10 % of the server's
        CPU under load, for values a few hundred microseconds apart. Chromium's own REMB sender
        is paced the same way.
        """
        last = self._remb_last
        if last is not None and now_ms - self._remb_at_ms < REMB_MIN_INTERVAL_MS and bitrate > REMB_DROP * last:
            return False
        self._remb_last, self._remb_at_ms = bitrate, now_ms
        return True

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


class _RembTap:
    """Stands in for a forwarding sender's encoder: only its ``target_bitrate`` setter is used.

    aiortc hands a subscriber's REMB to ``encoder.target_bitrate``; nothing is ever encoded
    or packed through it.
    """

    def __init__(self, on_remb: Callable[[int], None]) -> None:
        self._on_remb = on_remb
        self._bitrate = 0

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        raise PassthroughIncompatible("a forwarding sender pulled a frame from its track")

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        raise PassthroughIncompatible("a forwarding sender was handed a raw frame to encode")

    @property
    def target_bitrate(self) -> int:
        return self._bitrate

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self._bitrate = bitrate
        self._on_remb(bitrate)


class _Packer(_RembTap):
    """Replaces a client sender's encoder: packetizes pre-encoded frames; encoding is refused.

    Not the server's forwarding path (that is :class:`SenderLink`, at the RTP level): this is
    how a *client* built on aiortc sends pre-encoded media, used by the load generator in
    ``benchmarks/media_load.py`` and by tests.
    """

    def __init__(self, kind: str, on_remb: Callable[[int], None]) -> None:
        super().__init__(on_remb)
        self.kind = kind
        self._picture_id = random.randint(0, (1 << 15) - 1)

    def pack(self, packet: av.Packet) -> tuple[list[bytes], int]:
        data = bytes(packet)
        if self.kind == "video":
            payloads = Vp8Encoder._packetize(data, self._picture_id)
            self._picture_id = (self._picture_id + 1) % (1 << 15)
        else:
            payloads = [data]
        return payloads, int(packet.pts)


def install_sender_hooks(
    sender: aiortc.RTCRtpSender,
    kind: str,
    on_keyframe_request: Callable[[], None],
    on_remb: Callable[[int], None],
) -> None:
    """Make a client's ``sender`` send pre-encoded frames and report PLI/FIR and REMB to us."""
    _require(sender, "_RTCRtpSender__encoder", "pre-encoded sender")
    sender._RTCRtpSender__encoder = _Packer(kind, on_remb)  # type: ignore[attr-defined]
    sender._send_keyframe = on_keyframe_request  # type: ignore[method-assign]


# --------------------------------------------------------------------------- RTP-level sending
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
SEND_HISTORY = 512  # packets kept per subscriber stream to answer NACKs (power of two)
BACKLOG_LIMIT = 256 * 1024  # bytes waiting in the socket's user-space buffer before we drop


def abs_send_time(wall: float) -> int:
    """The abs-send-time header extension value for Unix time ``wall`` (6.18 fixed point, 24 bits)."""
    return int((wall + NTP_EPOCH_OFFSET) * 262144) & 0xFFFFFF


class _SilentTrack(MediaStreamTrack):
    """Given to a forwarding sender so that aiortc's own RTP loop waits, pulling nothing."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended: asyncio.Future[None] | None = None

    async def recv(self) -> Any:
        if self.readyState == "live":
            self._ended = asyncio.get_running_loop().create_future()
            await self._ended
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)


class SenderLink:
    """RTP-level output of one forwarded stream: packets go out through an RTCRtpSender's transport.

    The forwarding path (:class:`media.relay.Forward`) hands over payloads already rewritten to
    this stream's sequence numbers and timestamps; here they get this sender's SSRC, payload
    type and header extensions (mid, abs-send-time for the subscriber's bandwidth estimator,
    audio level), are SRTP-protected and written to the ICE pair's socket **synchronously**,
    with no task, queue or frame in between. The sender itself stays aiortc's: it answers
    RTCP, sends sender reports (we keep its counters and RTP/NTP timestamps current) and hands
    us PLI/FIR (``on_keyframe_request``) and REMB (``on_remb``). NACKs are answered here from a
    history of the last :data:`SEND_HISTORY` packets, as RTX when the subscriber negotiated it.

    Bounded: when more than ``backlog_limit`` bytes (default :data:`BACKLOG_LIMIT`) already
    wait in the socket's user-space buffer (the kernel refused them), :meth:`send` drops and
    returns -1.
    """

    def __init__(self, transceiver: aiortc.RTCRtpTransceiver, kind: str, *, backlog_limit: int = BACKLOG_LIMIT) -> None:
        sender = transceiver.sender
        for attribute in ("_RTCRtpSender__encoder", "_RTCRtpSender__rtp_header_extensions_map",
                          "_RTCRtpSender__rtx_payload_type", "_RTCRtpSender__started",
                          "_RTCRtpSender__packet_count", "_RTCRtpSender__octet_count",
                          "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
                          "_ssrc", "_rtx_ssrc", "_retransmit"):
            _require(sender, attribute, "RTP-level sender")
        _require(transceiver, "_codecs", "RTP-level sender")
        self.kind = kind
        self.backlog_limit = backlog_limit
        self.on_keyframe_request: Callable[[], None] = lambda: None
        self.on_remb: Callable[[int], None] = lambda bitrate: None
        self._transceiver = transceiver
        self._sender = sender
        sender._RTCRtpSender__encoder = _RembTap(lambda bitrate: self.on_remb(bitrate))  # type: ignore[attr-defined]
        sender._send_keyframe = lambda: self.on_keyframe_request()  # type: ignore[method-assign]
        sender._retransmit = self._retransmit  # type: ignore[method-assign]
        sender.replaceTrack(_SilentTrack(kind))
        # The transceiver's receiver never gets media (sendonly), but aiortc gave its video
        # receiver a bandwidth estimator whose rate counter is 1,000 Python objects: ~6,000 per
        # call that every full garbage collection walked, most of a 100 ms pause at 30 calls.
        # aiortc skips estimation when there is none.
        _require(transceiver.receiver, "_RTCRtpReceiver__remote_bitrate_estimator", "RTP-level sender")
        transceiver.receiver._RTCRtpReceiver__remote_bitrate_estimator = None  # type: ignore[attr-defined]
        # The NACK history: payloads, and beside them each packet's numbers packed into one int
        # (see _pack_sent). No tuple per packet: the garbage collector tracks tuples, and ~40,000
        # live history entries at 16 calls, each replaced by a new one, piled up in the young
        # generation until one collection had to walk them all (5-30 ms with the loop stopped).
        self._sent_payloads: list[bytes | None] = [None] * SEND_HISTORY
        self._sent_numbers: list[int] = [-1] * SEND_HISTORY
        self._prepared = False
        self._ssrc = 0
        self._pt = 0
        self._rtx_pt: int | None = None
        self._rtx_seq = random.randint(0, 0xFFFF)
        self._mid_element = b""
        self._abs_id: int | None = None
        self._level_id: int | None = None
        self._dtls: Any = None
        self._connection: aioice.ice.Connection | None = None
        self.packets = 0
        self.bytes = 0
        self.retransmits = 0
        self.backlog_drops = 0
        self.send_errors = 0  # packets SRTP could not protect (too long), dropped
        self._pair: Any = None
        self._address: Any = None
        self._direct: Any = None  # the transport send() writes to the socket of (see _direct_ok)
        self._srtp: Any = None  # the DTLS transport's _tx_srtp, and its LeanSrtp's protect
        self._protect: Callable[[bytes], bytes] | None = None
        self._layouts: dict[tuple[bool, bool], tuple[struct.Struct | None, int]] = {}

    def _prepare(self) -> bool:
        """Read what negotiation decided (once the sender has started); False until then."""
        sender = self._sender
        if not sender._RTCRtpSender__started:  # type: ignore[attr-defined]
            return False
        ids = sender._RTCRtpSender__rtp_header_extensions_map._HeaderExtensionsMap__ids  # type: ignore[attr-defined]
        mid = (self._transceiver.mid or "").encode()
        if ids.mid and 0 < len(mid) <= 16:
            self._mid_element = bytes([(ids.mid << 4) | (len(mid) - 1)]) + mid
        self._abs_id = ids.abs_send_time or None
        self._level_id = ids.audio_level or None
        self._ssrc = sender._ssrc
        self._pt = self._transceiver._codecs[0].payloadType
        self._rtx_pt = sender._RTCRtpSender__rtx_payload_type  # type: ignore[attr-defined]
        self._dtls = sender.transport
        self._connection = self._dtls.transport.iceGatherer._connection
        self._prepared = True
        return True

    def _socket(self) -> tuple[Any, Any] | None:
        """(asyncio datagram transport, remote address) of the nominated pair, or None."""
        if self._dtls._state is not DtlsState.CONNECTED:
            return None
        pair = self._connection._nominated.get(1)  # type: ignore[union-attr]
        if pair is None or pair.protocol.transport is None:
            return None
        if pair is not self._pair:  # remote_addr is a property that builds a tuple
            self._pair, self._address = pair, pair.remote_addr
        return pair.protocol.transport, self._address

    @property
    def ready(self) -> bool:
        """Whether a packet sent now would leave (negotiated, DTLS connected, pair nominated)."""
        return (self._prepared or self._prepare()) and self._socket() is not None

    def _header(self, pt: int, seq: int, timestamp: int, marker: int, ssrc: int,
                abs_time: int | None, level: int | None) -> bytes:
        """The RTP header with our extension elements (mid, abs-send-time, audio level), one pack call."""
        with_abs = abs_time is not None and self._abs_id is not None
        with_level = level is not None and self._level_id is not None
        layout = self._layouts.get((with_abs, with_level))
        if layout is None:
            layout = self._layouts[(with_abs, with_level)] = self._layout(with_abs, with_level)
        struct_, words = layout
        if struct_ is None:
            return _RTP_HEADER.pack(0x80, marker << 7 | pt, seq, timestamp, ssrc)
        values = [0x90, marker << 7 | pt, seq, timestamp, ssrc, 0xBEDE, words]
        if self._mid_element:
            values.append(self._mid_element)
        if with_abs:  # one-byte header (id, length 3 - 1) and the 24-bit value, as one word
            values.append((self._abs_id << 4 | 2) << 24 | abs_time)  # type: ignore[operator]
        if with_level:
            values.append(self._level_id << 12 | level)  # type: ignore[operator]
        return struct_.pack(*values)

    def _layout(self, with_abs: bool, with_level: bool) -> tuple[struct.Struct | None, int]:
        """The header's struct for one combination of elements, and its extension length in words."""
        size = len(self._mid_element) + 4 * with_abs + 2 * with_level
        if not size:
            return None, 0
        padding = -size % 4
        form = "!BBHIIHH" + (f"{len(self._mid_element)}s" if self._mid_element else "") \
            + ("I" if with_abs else "") + ("H" if with_level else "") + (f"{padding}x" if padding else "")
        return struct.Struct(form), (size + padding) // 4

    def send(self, seq: int, timestamp: int, marker: int, payload: bytes, wall: float,
             level: int | None = None) -> int:
        """Send one packet now; returns the bytes sent, 0 if not sent (link not up, too long), -1 if dropped (backlog)."""
        if not self._prepared and not self._prepare():
            return 0
        out = self._socket()
        if out is None:
            return 0
        transport, address = out
        direct = transport is self._direct or self._direct_ok(transport)
        if (transport._buffer_size if direct else transport.get_write_buffer_size()) > self.backlog_limit:
            self.backlog_drops += 1
            return -1
        data = self._header(self._pt, seq, timestamp, marker, self._ssrc,
                            abs_send_time(wall) if self._abs_id is not None else None, level) + payload
        srtp = self._dtls._tx_srtp
        if srtp is not self._srtp:
            self._srtp, self._protect = srtp, LeanSrtp(srtp).protect
        try:
            packet = self._protect(data)  # type: ignore[misc]
        except pylibsrtp.Error as exc:
            # Too long to protect (a publisher's packet near the MTU plus our extensions):
            # dropped here, never raised into the receive path that forwards it.
            self.send_errors += 1
            if self.send_errors == 1:
                logger.warning("a %s packet of %d bytes could not be forwarded: %s", self.kind, len(data), exc)
            return 0
        slot = seq & (SEND_HISTORY - 1)
        self._sent_payloads[slot] = payload
        self._sent_numbers[slot] = _pack_sent(seq, timestamp, marker, level)
        if direct and not transport._buffer:
            # asyncio's sendto, minus its checks: straight to the socket while nothing waits in
            # the transport's buffer; anything else (would block, an error) goes through it.
            try:
                transport._sock.sendto(packet, address)
            except OSError:
                transport.sendto(packet, address)
        else:
            transport.sendto(packet, address)
        sender = self._sender
        sender._RTCRtpSender__ntp_timestamp = int((wall + NTP_EPOCH_OFFSET) * 4294967296.0)  # type: ignore[attr-defined]
        sender._RTCRtpSender__rtp_timestamp = timestamp  # type: ignore[attr-defined]
        sender._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        sender._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]
        self.packets += 1
        self.bytes += len(data)
        return len(data)

    def _direct_ok(self, transport: Any) -> bool:
        """Whether ``transport`` is asyncio's selector datagram transport, whose socket send may write to."""
        if type(transport).__name__ != "_SelectorDatagramTransport" \
                or not all(hasattr(transport, a) for a in ("_buffer", "_buffer_size", "_sock", "_address")) \
                or transport._address is not None:
            return False
        self._direct = transport
        return True

    async def _retransmit(self, seq: int) -> None:
        """aiortc calls this per NACKed sequence number: resend from the history (as RTX if negotiated)."""
        slot = seq & (SEND_HISTORY - 1)
        numbers, payload = self._sent_numbers[slot], self._sent_payloads[slot]
        if numbers < 0 or payload is None or numbers & 0xFFFF != seq:
            return
        out = self._socket()
        if out is None:
            return
        _, timestamp, marker, level = _unpack_sent(numbers)
        wall = time.time()
        abs_time = abs_send_time(wall) if self._abs_id is not None else None
        if self._rtx_pt is not None:
            data = self._header(self._rtx_pt, self._rtx_seq, timestamp, marker, self._sender._rtx_ssrc,
                                abs_time, level) + _SEQ.pack(seq) + payload
            self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        else:
            data = self._header(self._pt, seq, timestamp, marker, self._ssrc, abs_time, level) + payload
        out[0].sendto(self._dtls._tx_srtp.protect(data), out[1])
        self.retransmits += 1


def _pack_sent(seq: int, timestamp: int, marker: int, level: int | None) -> int:
    """One int for a sent packet's numbers: seq (16 bits), marker (1), level + 1 or 0 (9), timestamp."""
    return seq | (marker & 1) << 16 | (0 if level is None else level + 1) << 17 | timestamp << 26


def _unpack_sent(numbers: int) -> tuple[int, int, int, int | None]:
    """(seq, timestamp, marker, level) from :func:`_pack_sent`."""
    level = numbers >> 17 & 0x1FF
    return numbers & 0xFFFF, numbers >> 26, numbers >> 16 & 1, level - 1 if level else None


_RTP_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_SEQ = struct.Struct("!H")


# --------------------------------------------------------------------------- SRTP
class LeanSrtp:
    """``protect``/``unprotect`` of RTP through a pylibsrtp ``Session``'s own libsrtp context, lean.

    pylibsrtp's methods type-check the packet, allocate a length cell and look the libsrtp
    function up on every call: ~0.5-0.9 µs of the ~2-3 µs each costs, twice per forwarded
    packet. This calls the same libsrtp functions on the same context and buffer
    (``Session._srtp``, ``_cdata``, ``_buffer``; pylibsrtp pinned) with the cell allocated
    once. Single-threaded like the session itself: the result is copied out before returning.
    Raises ``pylibsrtp.Error`` as pylibsrtp does (replayed, forged, or too long a packet).
    """

    __slots__ = ("session", "_context", "_cdata", "_buffer", "_room", "_length")

    def __init__(self, session: pylibsrtp.Session) -> None:
        for attribute in ("_srtp", "_cdata", "_buffer"):
            _require(session, attribute, "lean SRTP")
        self.session = session  # keeps the context alive (pylibsrtp frees it with the session)
        self._context = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._room = len(session._buffer)
        self._length = _srtp_ffi.new("int *")

    def protect(self, packet: bytes) -> bytes:
        return self._process(packet, _srtp_lib.srtp_protect, pylibsrtp.SRTP_MAX_TRAILER_LEN)

    def unprotect(self, packet: bytes) -> bytes:
        return self._process(packet, _srtp_lib.srtp_unprotect, 0)

    def _process(self, packet: bytes, function: Any, trailer: int) -> bytes:
        size = len(packet)
        if size > self._room - trailer:
            raise pylibsrtp.Error("packet is too long")
        buffer = self._buffer
        buffer[0:size] = packet
        length = self._length
        length[0] = size
        status = function(self._context, self._cdata, length)
        if status:
            raise pylibsrtp.Error(_SRTP_ERRORS[status] if 0 <= status < len(_SRTP_ERRORS) else f"libsrtp status {status}")
        return buffer[0:length[0]]


# --------------------------------------------------------------------------- fast receive path
_TASKS: set[asyncio.Future[Any]] = set()


def _spawn(coro: Any) -> None:
    """Run an RTCP send started from the synchronous receive path; keep it referenced until done."""
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def install_fast_receive(pc: aiortc.RTCPeerConnection, receive_buffer: int = 0) -> int:
    """Handle incoming SRTP media synchronously, as the datagram arrives; returns the transports patched.

    aiortc passes every datagram through aioice's queue to a per-transport task that awaits
    it, decrypts it and awaits the receiver's handler: one event-loop hop and half a dozen
    coroutine frames per packet, the largest share of the server's CPU once forwarding is
    synchronous (docs/media.md). Here the ICE connection's ``data_received`` decrypts an SRTP
    (not SRTCP) packet of a connected DTLS transport, parses it and routes it to its
    receiver's :meth:`ReceiverTap.handle_rtp` on the spot. Everything else — DTLS, SRTCP,
    packets before the handshake ends or for a receiver without a tap — takes aiortc's own path.
    Call it after ``setLocalDescription`` (the sockets exist once candidates are gathered):
    their RTP and RTCP then skip aioice's attempt to parse every datagram as STUN.

    ``receive_buffer`` (bytes, 0: the system default) sizes each socket's kernel receive
    buffer: what arrives while the loop is busy waits there instead of being dropped.
    """
    patched = 0
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        for attribute in ("_rx_srtp", "_state", "_rtp_router", "_rtp_header_extensions_map"):
            _require(dtls, attribute, "fast receive path")
        _require(dtls.transport.iceGatherer, "_connection", "fast receive path")
        connection = dtls.transport.iceGatherer._connection
        if id(connection) in seen:
            continue
        seen.add(id(connection))
        _require(connection, "data_received", "fast receive path")
        _require(connection, "_protocols", "fast receive path")
        connection.data_received = _fast_data_received(dtls, connection.data_received)
        for protocol in connection._protocols:
            if receive_buffer:
                set_receive_buffer(protocol, receive_buffer)
            protocol.datagram_received = _media_first(protocol, protocol.datagram_received)
            drain_reads(protocol, media=(connection.data_received, protocol.local_candidate.component))
        patched += 1
    return patched


# --------------------------------------------------------------------------- forward first
def _run_now(function: Callable[..., None], args: tuple) -> None:
    function(*args)


class AfterForwarding:
    """A packet's work other than forwarding it, done after the pass round the loop that forwarded it.

    One pass of the event loop reads every socket that has datagrams, and each datagram is
    forwarded as it is read. What the packet also needs (receive statistics and NACKs, the
    bandwidth estimate, assembling frames for the recorder and snapshots) is a quarter to a
    third of the work and no subscriber waits for it; done inline, a packet read late in a
    busy pass waited behind all of it for every packet read before it. Here it is queued, in
    arrival order, and done once the pass's reads are done: by the wake-up coalescing
    selector just before it selects again (so the loop still naps), else by a callback the
    next pass runs first. A failing item is logged and the rest still run.
    """

    __slots__ = ("_loop", "_items", "_scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: list[Any] = []  # function, args, function, args, ...
        self._scheduled = False

    def add(self, function: Callable[..., None], args: tuple) -> None:
        items = self._items
        if not items and not self._scheduled:  # the pass's first: who will run the queue?
            selector = getattr(self._loop, "_selector", None)
            if not (isinstance(selector, _CoalescingSelector) and selector._after is self):
                self._scheduled = True
                self._loop.call_soon(self.run)
        items.append(function)
        items.append(args)

    @property
    def pending(self) -> int:
        return len(self._items) // 2

    def run(self) -> None:
        self._scheduled = False
        while self._items:  # what an item queues (it never should) runs in this round too
            items, self._items = self._items, []
            for index in range(0, len(items), 2):
                try:
                    items[index](*items[index + 1])
                except Exception:  # noqa: BLE001 - one packet's bookkeeping must not lose the others'
                    logger.exception("packet work after forwarding failed")


_AFTER_FORWARDING: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AfterForwarding]" = weakref.WeakKeyDictionary()


def after_forwarding(loop: asyncio.AbstractEventLoop) -> AfterForwarding:
    """The loop's :class:`AfterForwarding` queue (made on first use, hooked to its coalescing selector)."""
    queue = _AFTER_FORWARDING.get(loop)
    if queue is None:
        queue = _AFTER_FORWARDING[loop] = AfterForwarding(loop)
        selector = getattr(loop, "_selector", None)
        if isinstance(selector, _CoalescingSelector):
            selector.hook(queue)
    return queue


WAKEUP_IDLE_POLLS = 20  # empty polls in a row (20 naps) after which the loop blocks again


class _CoalescingSelector:
    """The event loop's selector, made to gather a window of datagrams per wake-up under load.

    asyncio blocks in ``epoll_wait`` until the first datagram arrives, so a busy media node
    wakes up for every packet or two; each wake-up (the system call, the scheduler switching
    back to the thread, caches refilled) cost more than forwarding the packet. Here, when
    nothing is ready the loop naps for ``window`` seconds (bounded by its next timer) and then
    takes everything that arrived meanwhile; work that is already waiting is returned at once,
    with no nap. After :data:`WAKEUP_IDLE_POLLS` empty polls in a row the loop blocks as
    usual, so an idle node does not poll. The datagrams wait in the sockets' kernel buffers
    (see :func:`set_receive_buffer`).
    """

    def __init__(self, selector: Any, window: float, ready: Any = None) -> None:
        self._selector = selector
        self.window = window
        self._quiet = 0
        self._ready = ready  # the loop's ready callbacks (asyncio's BaseEventLoop._ready)
        self._after: AfterForwarding | None = None

    def hook(self, queue: AfterForwarding) -> None:
        """Run ``queue`` before each select: after the pass's reads, before any nap."""
        self._after = queue

    def select(self, timeout: float | None = None) -> Any:
        after = self._after
        if after is not None and after._items:
            after.run()
            if self._ready:  # it made callbacks ready (an RTCP send): no nap before they run
                timeout = 0
        events = self._selector.select(0)
        if events or timeout == 0:
            self._quiet = 0
            return events
        self._quiet += 1
        if self._quiet > WAKEUP_IDLE_POLLS:  # idle: block until I/O or a timer
            events = self._selector.select(timeout)
        else:
            time.sleep(self.window if timeout is None else min(self.window, timeout))
            events = self._selector.select(0)
        if events:  # traffic (again): gather per window from here on
            self._quiet = 0
        return events

    def __getattr__(self, name: str) -> Any:  # register, unregister, modify, get_key, get_map, close
        return getattr(self._selector, name)


def install_wakeup_coalescing(loop: asyncio.AbstractEventLoop, window: float) -> bool:
    """Make ``loop`` gather up to ``window`` seconds of I/O per wake-up when busy; returns whether it did.

    Only asyncio's selector loop (uvloop wakes in C); installing again changes the window,
    and a window of 0 installs nothing. Measured with ``benchmarks/media_load.py`` at 24
    recorded calls: ~9 % less CPU per call, and lower one-hop latency (docs/media.md).
    """
    if window <= 0 or not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop):
        return False
    _require(loop, "_selector", "wake-up coalescing")
    selector = loop._selector  # type: ignore[attr-defined]
    if isinstance(selector, _CoalescingSelector):
        selector.window = window
    else:
        _require(loop, "_ready", "wake-up coalescing")
        selector = loop._selector = _CoalescingSelector(selector, window, loop._ready)  # type: ignore[attr-defined]
        queue = _AFTER_FORWARDING.get(loop)
        if queue is not None:
            selector.hook(queue)
    return True


_short_buffer_warned = False


def set_receive_buffer(protocol: asyncio.DatagramProtocol, size: int) -> int:
    """Ask for a kernel receive buffer of ``size`` bytes on the protocol's socket; returns what it got.

    The default (net.core.rmem_default, 208 KiB here) holds ~90 full-size datagrams: one
    participant's media for ~0.3 s, less in a burst of screen-share packets, so that a loop
    busy for tens of milliseconds with 30 calls lost datagrams in the kernel (measured with
    ``benchmarks/media_load.py``: a few hundred a second at K=24). Linux caps the request at
    net.core.rmem_max and reports twice what it keeps (its bookkeeping): the warning, logged
    once, says when the cap cut it.
    """
    global _short_buffer_warned
    transport = getattr(protocol, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return 0
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as exc:
        logger.warning("could not size a media socket's receive buffer: %s", exc)
        return 0
    if sys.platform.startswith("linux"):
        got //= 2
    if got < size and not _short_buffer_warned:
        _short_buffer_warned = True
        logger.warning("media sockets get a %d KiB receive buffer, not the %d KiB asked for: raise "
                       "net.core.rmem_max (docs/operations.md)", got // 1024, size // 1024)
    return got


READ_BURST = 64  # datagrams read per wake-up of one socket, at most
UDP_READ_SIZE = 65536  # bytes: room for the largest UDP datagram


def drain_reads(protocol: asyncio.DatagramProtocol,
                media: tuple[Callable[[bytes, int], None], int] | None = None) -> bool:
    """Read up to :data:`READ_BURST` datagrams per readiness of the protocol's socket, not one.

    asyncio's datagram transport reads one datagram per callback, so every packet costs a
    trip round the event loop (an ``epoll_wait``, a handle run) — ~20 % of the server's CPU
    at a few thousand packets/s. Here the socket's reader is replaced by one that drains it,
    with the transport's own error handling. Only on asyncio's selector loop and its datagram
    transport (uvloop reads in C already); returns whether it was installed.
    """
    transport = getattr(protocol, "transport", None)
    loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) \
            or type(transport).__name__ != "_SelectorDatagramTransport":
        return False
    for attribute in ("_sock", "_sock_fd", "max_size", "_conn_lost", "_fatal_error"):
        _require(transport, attribute, "datagram reader")
    # Read into a 64 KiB buffer, not the transport's max_size (256 KiB): CPython allocates the
    # whole buffer for every datagram and then shrinks it, and 256 KiB is past malloc's mmap
    # threshold, so each read cost an mmap, page faults and a munmap — 15 µs instead of 1.4 µs
    # per packet. No UDP datagram is larger (65,507 bytes of IPv4 payload at most).
    sock, fd, size = transport._sock, transport._sock_fd, min(transport.max_size, UDP_READ_SIZE)  # type: ignore[union-attr]
    on_media, component = media if media is not None else (None, 0)

    def read_ready() -> None:
        for _ in range(READ_BURST):
            if transport._conn_lost:  # type: ignore[union-attr]
                return
            try:
                data, address = sock.recvfrom(size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                transport._fatal_error(exc, "Fatal read error on datagram transport")  # type: ignore[union-attr]
                return
            if on_media is not None and data and 127 < data[0] < 192:
                on_media(data, component)
            else:
                protocol.datagram_received(data, address)

    loop._remove_reader(fd)
    loop._add_reader(fd, read_ready)
    return True


def _media_first(protocol: Any, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
    """aioice tries to parse every datagram as STUN first; RTP/RTCP (first byte 128-191) never is."""
    receiver = protocol.receiver
    component = protocol.local_candidate.component

    def datagram_received(data: bytes, addr: Any) -> None:
        if not data:
            return  # aiortc would index data[0] and close the whole transport: one empty datagram ended a call
        if 127 < data[0] < 192:
            receiver.data_received(data, component)
        else:
            original(data, addr)

    return datagram_received


def _fast_data_received(dtls: Any, original: Callable[[bytes, int], None]) -> Callable[[bytes, int], None]:
    router = dtls._rtp_router
    extensions = dtls._rtp_header_extensions_map
    ids = extensions._HeaderExtensionsMap__ids  # configure() updates this object in place
    ssrc_table = router.ssrc_table
    lean: dict[bytes, ReceiverTap] = {}  # SSRC (4 header bytes) -> the tap whose handle_plain takes it
    session: Any = None  # dtls._rx_srtp, and its LeanSrtp's unprotect
    unprotect: Callable[[bytes], bytes] | None = None

    def data_received(data: bytes, component: int) -> None:
        nonlocal session, unprotect
        if not data:
            return  # see _media_first
        srtp = dtls._rx_srtp
        # RTCP packet types 192-208 in the second byte (aiortc's is_rtcp, inlined: per packet).
        if srtp is None or not 127 < data[0] < 192 or dtls._state is not DtlsState.CONNECTED \
                or (len(data) >= 2 and 192 <= data[1] <= 208):
            original(data, component)
            return
        if srtp is not session:
            session, unprotect = srtp, LeanSrtp(srtp).unprotect
        try:
            plain = unprotect(data)  # type: ignore[misc]
        except pylibsrtp.Error:
            return  # aiortc drops these too (replayed or forged)
        wall = time.time()
        arrival_ms = int((wall + NTP_EPOCH_OFFSET) * 1000)
        key = plain[8:12]
        tap = lean.get(key)
        if tap is not None:
            if tap.handle_plain(plain, wall, arrival_ms, ids, ssrc_table):
                return
            del lean[key]
        try:
            packet = RtpPacket.parse(plain, extensions)
        except (ValueError, struct.error):
            return  # malformed (aiortc's parser lets struct.error out on a bad extension element)
        receiver = router.route_rtp(packet)
        if receiver is None:
            return
        tap = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if isinstance(tap, ReceiverTap):
            if tap.handle_rtp(packet, arrival_ms):
                lean[key] = tap
        else:
            _spawn(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_ms))

    return data_received


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

    Also times each check (:func:`consent_rtt`): :func:`round_trip_time` falls back on it.
    """
    assert connection.remote_password is not None
    loop = asyncio.get_running_loop()
    answered_at = loop.time()
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
                answered_at = loop.time()
                _CONSENT_RTTS[connection] = consent_rtt(answered_at - started, _CONSENT_RTTS.get(connection))
            except aioice.stun.TransactionError:
                pass
            if loop.time() - answered_at >= CONSENT_EXPIRY:
                logger.info("ICE consent expired: no answer for %.0f s", loop.time() - answered_at)
                connection._query_consent_task = None
                await connection.close()
                return
