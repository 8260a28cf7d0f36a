"""Snapshots: the one place the server decodes video.

An agent asks for a still of the outlet's camera or screen; the forwarding side keeps the
encoded frames since the last keyframe and hands them here, in an executor (decoding a
720p keyframe and its followers takes tens of milliseconds of CPU).
"""

from __future__ import annotations

import fractions
import logging

import av

from cloudhall.errors import InvalidInput

log = logging.getLogger(__name__)


def encode_jpeg(codec: str, frames: list[bytes], *, quality: int = 90) -> bytes:
    """Decode VP8 ``frames`` (a keyframe and the frames after it) and JPEG-encode the last one.

    The JPEG has the full decoded resolution. If a frame fails to decode, the last frame
    decoded before it is used (later frames would depend on the broken one). ``quality``
    runs from 1 (smallest) to 100 (best), like libjpeg's.

    Blocking and CPU-bound: call it in an executor.

    Raises :class:`~cloudhall.errors.InvalidInput` if the codec is not VP8, ``frames`` is
    empty, the first frame is not a keyframe, ``quality`` is out of range, or no frame decodes.
    """
    if codec.lower() != "vp8":
        raise InvalidInput(
            f"cannot take a snapshot of a {codec!r} track: only VP8 video is supported"
        )
    if not frames:
        raise InvalidInput("cannot take a snapshot: no frame was received since the last keyframe")
    if not _is_vp8_keyframe(frames[0]):
        raise InvalidInput(
            f"cannot take a snapshot: the first of {len(frames)} frames is not a VP8 keyframe"
        )
    if not 1 <= quality <= 100:
        raise InvalidInput(f"JPEG quality {quality} is out of range 1-100")

    decoder = av.CodecContext.create("vp8", "r")
    picture: av.VideoFrame | None = None
    for index, data in enumerate(frames):
        try:
            decoded = decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            log.warning(
                "snapshot: frame %d of %d does not decode (%s); using the one before it",
                index,
                len(frames),
                exc,
            )
            break
        if decoded:
            picture = decoded[-1]
    if picture is None:
        raise InvalidInput(f"cannot take a snapshot: none of the {len(frames)} frames decodes")
    return _jpeg(picture, quality)


def _jpeg(picture: av.VideoFrame, quality: int) -> bytes:
    # libavcodec's MJPEG encoder takes a quantizer scale (2 best .. 31 worst), not a percentage.
    qscale = round(2 + (100 - quality) * 29 / 99)
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width = picture.width
    encoder.height = picture.height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = fractions.Fraction(1, 1)
    encoder.qscale = qscale
    encoder.qmin = qscale
    encoder.qmax = qscale
    # VP8 is limited-range video; JPEG is full-range: swscale converts the range here.
    full_range = picture.reformat(format="yuvj420p")
    full_range.pts = 0
    packets = encoder.encode(full_range) + encoder.encode(None)
    return b"".join(bytes(p) for p in packets)


def _is_vp8_keyframe(data: bytes) -> bool:
    # RFC 6386 §9.1: frame type bit 0 means keyframe, followed at byte 3 by the start code.
    return len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"
