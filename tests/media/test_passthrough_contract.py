"""Contract of media/passthrough.py with the installed aiortc/aioice.

If this fails after an upgrade, the message names the attribute or the behaviour that
changed; fix media/passthrough.py (only that module touches aiortc internals) before
moving the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import subprocess
import sys
import time
from collections import deque


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from media import passthrough
from media.estimator import RemoteBitrateEstimator
from tests.media.peers import Received, SyntheticVideo, ToneAudio, consume, wait_for


def test_the_hooks_exist_in_the_installed_aiortc():
    passthrough.check_classes()  # raises PassthroughIncompatible naming the missing attribute


def test_a_missing_attribute_is_named():
    with pytest.raises(passthrough.PassthroughIncompatible, match="'_RTCRtpReceiver__jitter_buffer'"):
        passthrough.ReceiverTap(object(), "video", lambda *a: None, lambda: None)  # type: ignore[arg-type]


class PacketTrack(MediaStreamTrack):
    """Replays tapped encoded frames as av.Packets, as a pre-encoded client does (benchmarks/media_load.py)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.frames: deque[tuple[bytes, int]] = deque(maxlen=30)
        self.event = asyncio.Event()

    async def recv(self):  # type: ignore[no-untyped-def]
        while not self.frames:
            self.event.clear()
            await self.event.wait()
        data, ts = self.frames.popleft()
        return passthrough.make_packet(data, ts, 90000)


def config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def test_tap_sender_hooks_codecs_and_ice_against_real_peers():
    camera, mic = SyntheticVideo(320, 240, 30), ToneAudio()
    a = RTCPeerConnection(config())  # plain aiortc: encodes, decodes
    b = RTCPeerConnection(config())  # patched like the server
    try:
        a.addTransceiver(camera, direction="sendonly")
        a.addTransceiver(mic, direction="sendonly")
        a_back = a.addTransceiver("video", direction="recvonly")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)

        frames: dict[str, list[tuple[bytes, int, bool]]] = {"video": [], "audio": []}
        forward = PacketTrack()
        taps = {}
        for t in b.getTransceivers():
            kept = passthrough.restrict_codecs(t)
            assert kept and kept[0] in ("video/VP8", "audio/opus"), f"codec restriction kept {kept}"
            if t.mid in ("0", "1"):
                t.direction = "recvonly"

                def on_frame(data, ts, key, now, kind=t.kind):  # type: ignore[no-untyped-def]
                    frames[kind].append((data, ts, key))
                    if kind == "video":
                        forward.frames.append((data, ts))
                        forward.event.set()

                taps[t.kind] = passthrough.ReceiverTap(t.receiver, t.kind, on_frame, lambda: None)
            else:
                t.sender.replaceTrack(forward)
                t.direction = "sendonly"
                plis: list[int] = []
                rembs: list[int] = []
                passthrough.install_sender_hooks(t.sender, "video", lambda: plis.append(1), rembs.append)
                b_sender = t.sender
        passthrough.tune_ice(b, passthrough.discovered_host_addresses() + ["127.0.0.1"], "203.0.113.5")
        await b.setLocalDescription(await b.createAnswer())
        answer = b.localDescription.sdp
        assert " 127.0.0.1 " in answer, "aioice did not gather on loopback: get_component_candidates hook broken"
        assert "203.0.113.5" in answer and "raddr" in answer, "1:1 NAT address was not announced"
        assert "H264" not in answer, "restrict_codecs no longer trims the answer (RTCRtpTransceiver._codecs)"
        for connection in passthrough.ice_connections(b):
            assert getattr(connection.query_consent, "func", None) is passthrough._query_consent, \
                "consent loop hook not installed on aioice.Connection"
        await a.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

        # The tap sees complete encoded frames, starting at a keyframe; aiortc decodes nothing.
        await wait_for(lambda: len(frames["video"]) > 20 and len(frames["audio"]) > 20, 10,
                       lambda: {k: len(v) for k, v in frames.items()})
        assert frames["video"][0][2], "first tapped video frame is not a keyframe"
        for kind, tap in taps.items():
            receiver = tap._receiver
            thread = receiver._RTCRtpReceiver__decoder_thread
            assert thread is None or not thread.is_alive(), f"aiortc's {kind} decoder thread still runs"
            assert passthrough.receiver_backlog(receiver) <= 1, f"aiortc queued {kind} frames behind the tap"

        # Keyframe request upstream (RTCRtpReceiver._send_rtcp_pli).
        keyframes = sum(1 for f in frames["video"] if f[2])
        await taps["video"].send_pli()
        await wait_for(lambda: sum(1 for f in frames["video"] if f[2]) > keyframes, 3,
                       lambda: "no keyframe after PLI")

        # REMB cap: the receiver's own REMB is rewritten to the limit (RTCRtpReceiver._send_rtcp).
        a_encoder = a.getTransceivers()[0].sender._RTCRtpSender__encoder
        taps["video"].remb_limit = 300_000
        rtcp_ssrc = b.getTransceivers()[0].receiver._RTCRtpReceiver__rtcp_ssrc
        await b.getTransceivers()[0].receiver._send_rtcp(RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0,
            fci=pack_remb_fci(1_400_000, [taps["video"].media_ssrc])))
        await wait_for(lambda: a_encoder.target_bitrate == 300_000, 3,
                       lambda: f"sender's target bitrate {a_encoder.target_bitrate}")
        await taps["video"].send_remb(400_000)
        await wait_for(lambda: a_encoder.target_bitrate == 400_000, 3,
                       lambda: f"sender's target bitrate {a_encoder.target_bitrate}")

        # Pre-encoded forwarding: A decodes what B's packer sends; B never built an encoder.
        back = Received("remote:camera")
        consumer = asyncio.ensure_future(consume(a_back.receiver.track, back, time.monotonic))
        try:
            await wait_for(lambda: len(back.sizes) > 10, 10, lambda: f"{len(back.sizes)} frames decoded at A")
            assert back.sizes[-1] == (320, 240)
            assert hasattr(b_sender, "_RTCRtpSender__rtt"), "RTCRtpSender.__rtt is gone: round_trip_time() is blind"
            assert isinstance(b_sender._RTCRtpSender__encoder, passthrough._Packer), \
                "RTCRtpSender replaced our packer with a real encoder"
            # PLI from A reaches our hook instead of aiortc's encoder flag (RTCRtpSender._send_keyframe).
            await a_back.receiver._send_rtcp_pli(b_sender._ssrc)
            await wait_for(lambda: plis, 3, lambda: "PLI did not reach the sender hook")
            # REMB from A's receiver reaches the packer's target_bitrate setter.
            await wait_for(lambda: rembs, 8, lambda: "no REMB reached the sender hook")
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    finally:
        await a.close()
        await b.close()


class _Pair:
    remote_addr = ("192.0.2.7", 40000)

    def __init__(self, answers: list[bool]) -> None:
        self.protocol = self
        self.answers = answers
        self.retransmissions: list[int | None] = []

    async def request(self, request, addr, integrity_key=None, retransmissions=None):  # type: ignore[no-untyped-def]
        import aioice.stun

        self.retransmissions.append(retransmissions)
        if not (self.answers.pop(0) if self.answers else False):
            raise aioice.stun.TransactionTimeout()


class _Connection:
    """Just what the consent loop uses of aioice.Connection (names checked by check_classes)."""

    remote_password = "x" * 22

    def __init__(self, pair: _Pair) -> None:
        self._nominated = {1: pair}
        self._query_consent_task = object()
        self.closed = False

    def build_request(self, pair, nominate):  # type: ignore[no-untyped-def]
        return object()

    async def close(self) -> None:
        self.closed = True


class _SlowPair(_Pair):
    """A pair whose unanswered checks take ``miss`` seconds (the retransmissions' wait)."""

    def __init__(self, answers: list[bool], miss: float) -> None:
        super().__init__(answers)
        self.miss = miss
        self.answered_at: list[float] = []

    async def request(self, request, addr, integrity_key=None, retransmissions=None):  # type: ignore[no-untyped-def]
        import aioice.stun

        self.retransmissions.append(retransmissions)
        if self.answers.pop(0) if self.answers else False:
            self.answered_at.append(asyncio.get_running_loop().time())
            return
        await asyncio.sleep(self.miss)
        raise aioice.stun.TransactionTimeout()


async def test_consent_retransmits_and_expires_when_nothing_was_answered_for_the_expiry(monkeypatch):
    monkeypatch.setattr(passthrough, "CONSENT_INTERVAL", 0.001)
    monkeypatch.setattr(passthrough, "CONSENT_EXPIRY", 0.3)
    # Misses that last 0.05 s: five (0.25 s) do not expire consent, an answer restarts the clock.
    pair = _SlowPair([False] * 5 + [True] + [False] * 20, miss=0.05)
    connection = _Connection(pair)
    await asyncio.wait_for(passthrough._query_consent(connection), 5)  # type: ignore[arg-type]
    closed_at = asyncio.get_running_loop().time()
    assert connection.closed and connection._query_consent_task is None
    assert connection in passthrough._CONSENT_RTTS, "an answered consent check was not timed"
    assert len(pair.retransmissions) > 6, "consent expired before the answer"
    assert closed_at - pair.answered_at[0] >= 0.3, "consent expired sooner than CONSENT_EXPIRY after the answer"
    assert len(pair.retransmissions) < 6 + 12, "consent outlived CONSENT_EXPIRY"
    assert set(pair.retransmissions) == {passthrough.CONSENT_RETRANSMISSIONS}


def test_a_consent_answer_after_a_retransmission_is_read_as_the_likeliest_round_trip():
    sends = passthrough.CONSENT_SENDS
    assert sends == (0.0, 0.5, 1.5)
    assert passthrough.consent_rtt(0.8, None) == 0.8  # nothing to compare with yet
    assert passthrough.consent_rtt(0.3, 0.8) == 0.3  # before any retransmission: unambiguous
    assert passthrough.consent_rtt(0.82, 0.8) == pytest.approx(0.82)  # an 800 ms link, answered to the first copy
    assert passthrough.consent_rtt(0.62, 0.1) == pytest.approx(0.12)  # first copy lost on a 100 ms link
    assert passthrough.consent_rtt(1.62, 0.1) == pytest.approx(0.12)  # two copies lost


async def test_rtp_level_sending_and_the_synchronous_receive_path_against_real_peers():
    """The server's own hooks: install_fast_receive, ReceiverTap.on_packet and SenderLink.

    A (plain aiortc) sends a camera to B and receives it back; B forwards each RTP packet as it
    arrives through a SenderLink, as media.relay does (numbers kept as they come, enough here).
    """
    camera = SyntheticVideo(320, 240, 30)
    a = RTCPeerConnection(config())
    b = RTCPeerConnection(config())
    try:
        a.addTransceiver(camera, direction="sendonly")
        a_back = a.addTransceiver("video", direction="recvonly")
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        up, down = b.getTransceivers()
        for t in (up, down):
            passthrough.restrict_codecs(t)
        up.direction, down.direction = "recvonly", "sendonly"
        link = passthrough.SenderLink(down, "video")
        plis: list[int] = []
        rembs: list[int] = []
        link.on_keyframe_request = lambda: plis.append(1)
        link.on_remb = rembs.append
        sent: list[int] = []

        def on_packet(seq, ts, marker, payload, keyframe, level, now):  # type: ignore[no-untyped-def]
            if link.send(seq, ts, marker, payload, time.time(), level) > 0:
                sent.append(seq)

        assembled_while_reading: list[bool] = []

        def on_frame(*frame: object) -> None:  # frames come together after the pass's forwarding
            caller, inside = sys._getframe(1), False
            while caller is not None:
                inside = inside or caller.f_code.co_name in ("read_ready", "data_received")
                caller = caller.f_back
            assembled_while_reading.append(inside)

        tap = passthrough.ReceiverTap(up.receiver, "video", on_frame, lambda: None, on_packet=on_packet)
        await b.setLocalDescription(await b.createAnswer())
        assert passthrough.install_fast_receive(b, receive_buffer=1 << 20) == 1, "BUNDLE: one ICE connection to patch"
        protocols = passthrough.ice_connections(b)[0]._protocols
        assert all(p.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20
                   for p in protocols), "the media sockets did not get their receive buffer"
        assert protocols and all("_media_first" in p.datagram_received.__qualname__ for p in protocols), \
            "aioice StunProtocol.datagram_received not wrapped (Connection._protocols)"
        selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
        readers = [selector.get_key(p.transport._sock_fd).data[0]._callback for p in protocols]
        assert all("drain_reads" in r.__qualname__ for r in readers), \
            "asyncio's datagram reader was not replaced (_SelectorDatagramTransport._sock_fd / loop._add_reader)"
        await a.setRemoteDescription(b.localDescription)
        assert isinstance(down.sender.track, passthrough._SilentTrack)

        back = Received("remote:camera")
        consumer = asyncio.ensure_future(consume(a_back.receiver.track, back, time.monotonic))
        try:
            # A decodes what B forwarded packet by packet (after asking for the key frame it missed).
            async def keyframe_on_pli() -> None:
                while True:
                    if plis:
                        plis.clear()
                        await tap.send_pli()
                    await asyncio.sleep(0.05)

            relay_pli = asyncio.ensure_future(keyframe_on_pli())
            try:
                await wait_for(lambda: len(back.sizes) > 10, 10,
                               lambda: f"{len(back.sizes)} frames decoded at A, {len(sent)} sent")
            finally:
                relay_pli.cancel()
            assert back.sizes[-1] == (320, 240)
            assert assembled_while_reading and not any(assembled_while_reading[-20:]), \
                "frames were assembled inside the socket reader, ahead of the forwarding of later packets"
            assert tap.fast_packets > 0 and tap.fast_packets >= tap.packets - 5, \
                "RTP did not come through install_fast_receive (aioice Connection.data_received hook)"
            assert tap.lean_packets >= tap.packets - 5, "the lean parse (ReceiverTap.handle_plain) was not taken"
            # ...and it kept aiortc's receiver statistics (the fields StreamStatistics.add and NackGenerator.add
            # are kept by passthrough.count_received, compared field by field in the test below).
            stream = up.receiver._RTCRtpReceiver__remote_streams[tap.media_ssrc]
            assert stream.packets_received >= tap.packets - 5 and stream.max_seq is not None and stream.jitter >= 0
            assert up.receiver._RTCRtpReceiver__nack_generator.max_seq == stream.max_seq
            assert type(up.receiver._RTCRtpReceiver__remote_bitrate_estimator) is RemoteBitrateEstimator, \
                "aiortc's estimator was not swapped for media.estimator's (RTCRtpReceiver.__remote_bitrate_estimator)"
            # An estimator failure (aiortc's divide by zero, reproduced) restarts the estimator
            # and never stops the packets behind it.
            class Failing(RemoteBitrateEstimator):
                def add(self, *args: object) -> None:
                    raise ZeroDivisionError("float division by zero")

            up.receiver._RTCRtpReceiver__remote_bitrate_estimator = Failing()
            before = tap.packets
            await wait_for(lambda: tap.packets > before + 10, 5, lambda: f"{tap.packets - before} packets since")
            assert type(up.receiver._RTCRtpReceiver__remote_bitrate_estimator) is RemoteBitrateEstimator
            sender = down.sender
            assert sender._RTCRtpSender__packet_count == link.packets > 0, "sender-report counters not kept"
            # A packet too long to protect is dropped and counted, never raised into the receive path.
            assert link.send((sent[-1] + 1) & 0xFFFF, 0, 0, b"\x10" + b"x" * 1400, time.time()) == 0 and link.send_errors == 1
            assert link._direct is not None, \
                "SenderLink no longer writes to the socket (asyncio _SelectorDatagramTransport._buffer/_sock/_address)"
            # A NACK is answered from the link's history (RTCRtpSender._retransmit hook).
            await a_back.receiver._send_rtcp_nack(sender._ssrc, [sent[-3]])
            await wait_for(lambda: link.retransmits == 1, 3, lambda: "the NACK was not answered")
            # REMB from A's receiver reaches on_remb (RTCRtpSender.__encoder.target_bitrate).
            await wait_for(lambda: rembs, 8, lambda: "no REMB reached the link")
            # A's receiver reports reach the sender: round trip known (RTCRtpSender.__rtt).
            await wait_for(lambda: sender._RTCRtpSender__rtt is not None, 8, lambda: "no round trip from A's reports")
            # Anyone can send B's sockets a datagram: empty or garbage ones end nothing (aiortc alone
            # indexes data[0] and closes the transport on an empty one).
            ports = [p.transport.get_extra_info("sockname") for p in protocols]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
                for host, port in (a[:2] for a in ports if len(a) == 2):
                    for junk in (b"", b"\x80", b"\x90" + b"\x00" * 40, b"\x17\xfe\xfd" + b"\x00" * 20):
                        stray.sendto(junk, (host, port))
            decoded = len(back.sizes)
            await wait_for(lambda: len(back.sizes) > decoded + 10, 5, lambda: "media stopped after stray datagrams")
            assert b.connectionState == "connected" and up.receiver.transport.state == "connected"
            # Forwarding leaves nothing behind for the garbage collector: the NACK history holds
            # no object it tracks (a tuple per packet piled up in the young generation, and one
            # collection then stopped the loop for up to 30 ms at 16 calls).
            first = (sent[-1] + 1000) & 0xFFFF
            gc.disable()
            try:
                young = gc.get_count()[0]
                for i in range(300):
                    assert link.send((first + i) & 0xFFFF, 90 * i, 1, b"\x10" + bytes(60), time.time(), 0x85) > 0
                young = gc.get_count()[0] - young
            finally:
                gc.enable()
            assert young < 30, f"{young} objects for the garbage collector after forwarding 300 packets"
            assert link.packets >= 300
        finally:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
    finally:
        await a.close()
        await b.close()


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 1), st.none() | st.integers(0, 255))
def test_sent_packet_numbers_pack_into_one_int_and_back(seq: int, timestamp: int, marker: int,
                                                        level: int | None) -> None:
    numbers = passthrough._pack_sent(seq, timestamp, marker, level)
    assert numbers >= 0 and passthrough._unpack_sent(numbers) == (seq, timestamp, marker, level)


def test_lean_srtp_is_pylibsrtp_without_the_overhead() -> None:
    """LeanSrtp calls libsrtp on pylibsrtp's own context and buffer (Session._srtp, _cdata, _buffer)."""
    import os

    import pylibsrtp

    key = os.urandom(30)
    profile = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80

    def session(direction: int) -> pylibsrtp.Session:
        return pylibsrtp.Session(pylibsrtp.Policy(key=key, ssrc_type=direction, srtp_profile=profile))

    stock_tx, stock_rx = session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND), session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
    lean_tx = passthrough.LeanSrtp(session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    lean_rx = passthrough.LeanSrtp(session(pylibsrtp.Policy.SSRC_ANY_INBOUND))
    for seq in range(5):
        plain = bytes([0x80, 96, 0, seq]) + b"\0\0\0\1" + b"\x11\x22\x33\x44" + os.urandom(200)
        protected = lean_tx.protect(plain)
        assert protected != plain and stock_rx.unprotect(protected) == plain
        assert lean_rx.unprotect(stock_tx.protect(plain)) == plain
    with pytest.raises(pylibsrtp.Error):
        lean_rx.unprotect(protected)  # a replay
    with pytest.raises(pylibsrtp.Error):
        lean_rx.unprotect(protected[:-1] + bytes([protected[-1] ^ 1]))  # forged
    with pytest.raises(pylibsrtp.Error):
        lean_tx.protect(b"\x80" * 1500)  # no room for the trailer


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 0xFFFF), steps=st.lists(st.tuples(st.integers(-200, 300), st.integers(0, 6000),
                                                             st.floats(0.0, 0.05)), max_size=120))
def test_count_received_is_aiortcs_statistics_and_nack_generator(start: int, steps: list) -> None:
    """passthrough.count_received changes aiortc's StreamStatistics and NackGenerator as their add() does."""
    from unittest import mock

    from aiortc.rtcrtpreceiver import NackGenerator, StreamStatistics

    ours, theirs = (StreamStatistics(90000), NackGenerator()), (StreamStatistics(90000), NackGenerator())
    seq, timestamp, wall = start, 1000, 1_700_000_000.0
    for jump, advance, elapsed in [(0, 0, 0.0)] + steps:
        seq, timestamp, wall = (seq + jump) & 0xFFFF, (timestamp + advance) & 0xFFFFFFFF, wall + elapsed
        missed = passthrough.count_received(ours[0], ours[1], seq, timestamp, wall)
        packet = mock.Mock(sequence_number=seq, timestamp=timestamp)
        with mock.patch("aiortc.rtcrtpreceiver.time.time", return_value=wall):
            theirs[0].add(packet)
        assert missed == theirs[1].add(packet)
        assert vars(ours[0]) == vars(theirs[0]) and vars(ours[1]) == vars(theirs[1])


async def test_drained_socket_reads_whole_datagrams_of_every_size() -> None:
    """drain_reads reads into 64 KiB (not asyncio's 256 KiB, which cost an mmap per packet) and loses nothing."""
    loop = asyncio.get_running_loop()
    got: list[tuple[bytes, object]] = []

    class Protocol(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: object) -> None:
            got.append((data, addr))

    transport, protocol = await loop.create_datagram_endpoint(Protocol, local_addr=("127.0.0.1", 0))
    try:
        await asyncio.sleep(0)  # the transport registers its own reader first
        assert passthrough.drain_reads(protocol)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sizes = [1, 1200, 65507, 70, 65507]  # 65,507: the largest IPv4 UDP payload
        for size in sizes:
            sender.sendto(bytes([size & 0xFF]) * size, transport.get_extra_info("sockname"))
        await wait_for(lambda: len(got) == len(sizes), 3, lambda: f"{len(got)} of {len(sizes)} datagrams read")
        assert [len(data) for data, _ in got] == sizes
        assert all(data == bytes([len(data) & 0xFF]) * len(data) for data, _ in got)
        assert got[0][1][1] == sender.getsockname()[1]  # the sender address comes along
        sender.close()
    finally:
        transport.close()


_STREAM = """
import socket, sys, time
sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(300):
    sender.sendto(b"\\x80" * 200, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.0003)
"""


class _Counting(asyncio.DatagramProtocol):
    """A datagram endpoint that counts what it receives."""

    def __init__(self) -> None:
        self.got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got += 1


async def test_a_larger_receive_buffer_keeps_the_burst_a_small_one_drops(monkeypatch, caplog) -> None:
    """set_receive_buffer: datagrams that arrive while the loop is busy wait in the kernel, up to the buffer.

    A request past net.core.rmem_max (Debian's default is 208 KiB) gets the cap, and the
    operator is told once how to raise it; the 2 MiB burst is checked where the cap allows it.
    """
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(passthrough, "_short_buffer_warned", False)

    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = {}
    try:
        for size in (64 * 1024, 2 << 20):
            transport, protocol = await loop.create_datagram_endpoint(_Counting, local_addr=("127.0.0.1", 0))
            try:
                assert passthrough.set_receive_buffer(protocol, size) == min(size, rmem_max)
                # 600 packets of 1,200 bytes while the loop reads nothing (~1.4 MB with the kernel's overhead)
                for _ in range(600):
                    sender.sendto(b"\x80" * 1200, transport.get_extra_info("sockname"))
                await asyncio.sleep(0.2)
                got[size] = protocol.got
            finally:
                transport.close()
    finally:
        sender.close()
    assert got[64 * 1024] < 600, "a 64 KiB buffer should not hold the burst (is the loop reading mid-burst?)"
    if rmem_max >= 2 << 20:
        assert got[2 << 20] == 600, f"{600 - got[2 << 20]} of the burst dropped with a 2 MiB buffer"
    # Asking past the cap gets the cap, and the operator is told once (on any machine).
    transport, protocol = await loop.create_datagram_endpoint(_Counting, local_addr=("127.0.0.1", 0))
    try:
        for _ in range(2):
            assert passthrough.set_receive_buffer(protocol, 2 * rmem_max) == rmem_max
    finally:
        transport.close()
    warned = [r for r in caplog.records if "net.core.rmem_max" in r.getMessage()]
    assert len(warned) == 1, "a receive buffer cut by net.core.rmem_max must be reported, once"


async def test_wakeup_coalescing_gathers_datagrams_under_load_and_blocks_when_idle() -> None:
    """install_wakeup_coalescing: a stream of datagrams is read a window at a time; an idle loop blocks."""
    loop = asyncio.get_running_loop()
    original = loop._selector  # type: ignore[attr-defined]

    class Spy:  # the real selector, counting the polls that found something
        def __init__(self, selector: object) -> None:
            self.selector = selector
            self.busy_polls = 0
            self.timeouts: list[float | None] = []

        def select(self, timeout: float | None = None) -> list:
            self.timeouts.append(timeout)
            events = self.selector.select(timeout)  # type: ignore[attr-defined]
            self.busy_polls += bool(events)
            return events

        def __getattr__(self, name: str) -> object:
            return getattr(self.selector, name)

    transport, protocol = await loop.create_datagram_endpoint(_Counting, local_addr=("127.0.0.1", 0))
    try:
        assert passthrough.install_wakeup_coalescing(loop, 0.002)
        coalescing = loop._selector  # type: ignore[attr-defined]
        assert isinstance(coalescing, passthrough._CoalescingSelector)
        assert passthrough.install_wakeup_coalescing(loop, 0.001)  # again: the window changes, no second layer
        assert loop._selector is coalescing and coalescing.window == 0.001  # type: ignore[attr-defined]
        assert not passthrough.install_wakeup_coalescing(loop, 0)
        await asyncio.sleep(0)
        assert passthrough.drain_reads(protocol)
        spy = coalescing._selector = Spy(original)
        address = transport.get_extra_info("sockname")

        def stream() -> None:  # 300 datagrams, one every ~0.3 ms, from another process (no GIL shared)
            subprocess.run([sys.executable, "-c", _STREAM, address[0], str(address[1])], check=True, timeout=30)

        await loop.run_in_executor(None, stream)
        await wait_for(lambda: protocol.got == 300, 3, lambda: f"{protocol.got} of 300 datagrams read")
        # Without coalescing each datagram is its own wake-up (301 measured); with a 1 ms window ~3 come at once.
        assert spy.busy_polls < 150, f"{spy.busy_polls} wake-ups for 300 datagrams"
        spy.timeouts.clear()
        await asyncio.sleep(0.1)  # idle: after WAKEUP_IDLE_POLLS empty polls the loop blocks until its timer
        assert any(t is not None and t > 0.01 for t in spy.timeouts), spy.timeouts
        assert len(spy.timeouts) < 3 * (passthrough.WAKEUP_IDLE_POLLS + 5), "an idle loop kept polling"
        # Traffic after the idle spell is gathered per window again (not one wake-up per datagram).
        spy.busy_polls = 0
        await loop.run_in_executor(None, stream)
        await wait_for(lambda: protocol.got == 600, 3, lambda: f"{protocol.got} of 600 datagrams read")
        assert spy.busy_polls < 150, f"{spy.busy_polls} wake-ups for 300 datagrams after an idle spell"
    finally:
        loop._selector = original  # type: ignore[attr-defined]
        transport.close()


class _Forwarding(_Counting):
    """Reads like a media socket: 'forwards' each datagram at once, queues the rest of its work."""

    def __init__(self, name: str, events: list, queue: passthrough.AfterForwarding) -> None:
        super().__init__()
        self.name, self.events, self.queue = name, events, queue

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.events.append(("forwarded", self.name, data))
        self.queue.add(self.after, (data,))

    def after(self, data: bytes) -> None:
        if data == b"bad":
            raise RuntimeError("one packet's bookkeeping failed")
        self.events.append(("after", self.name, data))


async def test_a_pass_forwards_every_datagram_it_reads_before_the_rest_of_their_work(caplog) -> None:
    """AfterForwarding: the datagrams one pass round the loop reads on several sockets are all
    forwarded before any of them is counted or assembled; a failing item does not stop the others;
    without wake-up coalescing the queue runs first thing in the next pass."""
    loop = asyncio.get_running_loop()
    original = loop._selector  # type: ignore[attr-defined]
    events: list[tuple[str, str, bytes]] = []
    queue = passthrough.after_forwarding(loop)
    assert passthrough.after_forwarding(loop) is queue
    endpoints = [await loop.create_datagram_endpoint(lambda n=n: _Forwarding(n, events, queue),  # type: ignore[misc]
                                                     local_addr=("127.0.0.1", 0)) for n in ("a", "b")]
    try:
        assert passthrough.install_wakeup_coalescing(loop, 0.002)
        assert loop._selector._after is queue  # type: ignore[attr-defined]
        for _, protocol in endpoints:
            assert passthrough.drain_reads(protocol)
        await asyncio.sleep(0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for _, protocol in endpoints:  # sent while the loop runs nothing: one pass reads them all
                for data in (b"1", b"bad", b"2", b"3"):
                    out.sendto(data, protocol.transport.get_extra_info("sockname"))
        with caplog.at_level(logging.ERROR, logger="media.passthrough"):
            await wait_for(lambda: sum(e[0] == "after" for e in events) == 6, 3, lambda: f"{events}")
        kinds = [e[0] for e in events]
        assert kinds == ["forwarded"] * 8 + ["after"] * 6, events
        assert [e[1:] for e in events if e[0] == "after"] == \
            [(n, d) for n in ("a", "b") for d in (b"1", b"2", b"3")], "not in arrival order"
        assert sum(bool(r.exc_info) and "bookkeeping failed" in str(r.exc_info[1]) for r in caplog.records) == 2
        # Without the coalescing selector (uvloop, or coalescing off) a callback runs the queue.
        loop._selector = original  # type: ignore[attr-defined]
        events.clear()
        endpoints[0][1].datagram_received(b"4", None)
        assert queue.pending == 1
        await asyncio.sleep(0)
        assert events == [("forwarded", "a", b"4"), ("after", "a", b"4")]
    finally:
        loop._selector = original  # type: ignore[attr-defined]
        for transport, _ in endpoints:
            transport.close()
