"""Contract of media/passthrough.py with the installed aiortc/aioice.

If this fails after an upgrade, the message names the attribute or the behaviour that
changed; fix media/passthrough.py (only that module touches aiortc internals) before
moving the pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
from collections import deque


import pytest
from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from media import passthrough
from tests.media.peers import SyntheticVideo, ToneAudio, wait_for


def test_the_hooks_exist_in_the_installed_aiortc():
    passthrough.check_classes()  # raises PassthroughIncompatible naming the missing attribute


def test_a_missing_attribute_is_named():
    with pytest.raises(passthrough.PassthroughIncompatible, match="'_RTCRtpReceiver__jitter_buffer'"):
        passthrough.ReceiverTap(object(), "video", lambda *a: None, lambda: None)  # type: ignore[arg-type]


class PacketTrack(MediaStreamTrack):
    """Replays tapped encoded frames as av.Packets, like media.relay.ForwardTrack."""

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
        back: list[int] = []

        async def consume() -> None:
            while True:
                back.append((await a_back.receiver.track.recv()).width)

        consumer = asyncio.ensure_future(consume())
        try:
            await wait_for(lambda: len(back) > 10, 10, lambda: f"{len(back)} frames decoded at A")
            assert back[-1] == 320
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


async def test_consent_retransmits_and_expires_after_consecutive_misses(monkeypatch):
    monkeypatch.setattr(passthrough, "CONSENT_INTERVAL", 0.001)
    pair = _Pair([False] * 5 + [True] + [False] * 6)  # 5 misses, an answer, then 6 misses
    connection = _Connection(pair)
    await asyncio.wait_for(passthrough._query_consent(connection), 5)  # type: ignore[arg-type]
    assert connection.closed and connection._query_consent_task is None
    assert connection in passthrough._CONSENT_RTTS, "an answered consent check was not timed"
    assert len(pair.retransmissions) == 12, "one answer must reset the miss count"
    assert set(pair.retransmissions) == {passthrough.CONSENT_RETRANSMISSIONS}
