"""Offers the server must refuse, with a message that names the problem; unknown sessions."""

from __future__ import annotations

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender

from cloudhall.errors import InvalidInput, NotFound
from media.server import OfferIn
from tests.media.peers import SyntheticVideo, ToneAudio


async def client_offer(video_codec: str | None = None) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video = pc.addTransceiver(SyntheticVideo(320, 240, 30), direction="sendonly")
    pc.addTransceiver(ToneAudio(), direction="sendonly")
    if video_codec:
        caps = RTCRtpSender.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in caps if c.mimeType == video_codec])
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


@pytest.mark.parametrize(
    ("participant", "sdp", "tracks", "message"),
    [
        ("outlet", "hello", {}, "broken SDP"),
        ("outlet", "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", {}, "no audio or video"),
        ("teller", "v=0\r\n", {}, "unknown participant"),
    ],
)
async def test_broken_offers_are_invalid_input(media_env, participant, sdp, tracks, message):
    server = media_env.server()
    with pytest.raises(InvalidInput, match=message):
        await server.negotiate("s", participant, OfferIn(sdp=sdp, tracks=tracks))
    assert server.session_ids == []


@pytest.mark.parametrize(
    ("participant", "tracks", "message"),
    [
        ("outlet", {"0": "camera", "1": "microphone", "7": "screen"}, "unknown mid"),
        ("outlet", {"0": "camera"}, "has no role"),
        ("agent", {"0": "screen", "1": "microphone"}, "agent cannot send 'screen'"),
        ("outlet", {"0": "microphone", "1": "camera"}, "is a video m-line"),
        ("monitor", {"0": "camera", "1": "microphone"}, "monitor cannot send"),
        ("outlet", {"0": "remote:camera", "1": "microphone"}, "not recvonly"),
        ("outlet", {"0": "camera", "1": "remote:agent-telephone"}, "names no source"),
    ],
)
async def test_offers_that_do_not_match_their_roles_are_invalid_input(media_env, participant, tracks, message):
    server = media_env.server()
    pc, sdp = await client_offer()
    try:
        with pytest.raises(InvalidInput, match=message):
            await server.negotiate("s", participant, OfferIn(sdp=sdp, tracks=tracks))
    finally:
        await pc.close()


async def test_an_offer_without_vp8_is_refused_by_name(media_env):
    server = media_env.server()
    pc, sdp = await client_offer(video_codec="video/H264")
    try:
        with pytest.raises(InvalidInput, match="only VP8"):
            await server.negotiate("s", "outlet", OfferIn(sdp=sdp, tracks={"0": "camera", "1": "microphone"}))
    finally:
        await pc.close()


async def test_an_answer_type_is_refused(media_env):
    server = media_env.server()
    pc, sdp = await client_offer()
    try:
        with pytest.raises(InvalidInput, match="type 'offer'"):
            await server.negotiate("s", "outlet", OfferIn(sdp=sdp, type="answer", tracks={"0": "camera"}))
    finally:
        await pc.close()


async def test_unknown_sessions_are_not_found(media_env):
    server = media_env.server()
    with pytest.raises(NotFound, match="nope"):
        server.stats("nope")
    with pytest.raises(NotFound):
        await server.leave("nope", "outlet")
    with pytest.raises(NotFound):
        await server.end("nope")
    with pytest.raises(NotFound):
        await server.snapshot("nope", "outlet", "camera")
    with pytest.raises(NotFound):
        await server.request_keyframe("nope", "outlet", "camera")


@pytest.mark.parametrize(("line", "message"), [("a=fingerprint", "no DTLS fingerprint"), ("a=ice-ufrag", "refused")])
async def test_an_offer_missing_security_or_ice_lines_is_invalid_input_and_leaves_no_session(media_env, line, message):
    server = media_env.server()
    pc, sdp = await client_offer()
    broken = "\r\n".join(x for x in sdp.split("\r\n") if not x.startswith(line))
    try:
        with pytest.raises(InvalidInput, match=message):
            await server.negotiate("s", "outlet", OfferIn(sdp=broken, tracks={"0": "camera", "1": "microphone"}))
    finally:
        await pc.close()
    assert server.session_ids == []
