"""Lean RTP parsing for the server's receive path: the fields forwarding needs, nothing more.

aiortc's ``RtpPacket.parse`` builds a packet object and a ``HeaderExtensions`` dataclass and
decodes every header extension it knows, and its VP8 depayloader builds a descriptor object,
for every packet; on the server those steps and the routing around them were ~15 % of the
CPU under load (docs/media.md). :func:`parse_rtp` reads the fixed header, skips CSRCs, picks
only the abs-send-time and audio-level elements out of a one-byte-header extension block,
and strips padding; :func:`vp8_payload_offset` measures the VP8 payload descriptor
(RFC 7741 4.2) without decoding it. Both reject what aiortc rejects (``ValueError``), and
``tests/media/test_rtp_parse.py`` checks them against aiortc on generated packets.
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct("!BBHII")
_EXTENSION = struct.Struct("!HH")
ONE_BYTE_PROFILE = 0xBEDE

# pt, marker, sequence number, timestamp, ssrc, payload, padding size, abs-send-time or None,
# audio level byte (V bit << 7 | level) or None
Parsed = tuple[int, int, int, int, int, bytes, int, "int | None", "int | None"]


def parse_rtp(data: bytes, abs_id: int | None, level_id: int | None) -> Parsed | None:
    """Parse one decrypted RTP packet; ``abs_id``/``level_id``: the negotiated extension ids (None: not used).

    Raises ``ValueError`` for a packet aiortc would reject too (wrong version, truncated
    CSRCs or extension block, bad padding, an abs-send-time or audio-level element of the
    wrong size). Returns None for what it leaves to aiortc: a two-byte-header extension block.
    """
    size = len(data)
    if size < 12:
        raise ValueError("RTP packet shorter than its header")
    first, second, seq, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != 2:
        raise ValueError("RTP packet has invalid version")
    pos = 12 + 4 * (first & 0x0F)
    if size < pos:
        raise ValueError("RTP packet has truncated CSRC")
    abs_time = level = None
    if first & 0x10:
        if size < pos + 4:
            raise ValueError("RTP packet has truncated extension header")
        profile, words = _EXTENSION.unpack_from(data, pos)
        pos += 4
        end = pos + 4 * words
        if size < end:
            raise ValueError("RTP packet has truncated extension block")
        if profile == ONE_BYTE_PROFILE:
            while pos < end:
                element = data[pos]
                if not element:  # padding between elements
                    pos += 1
                    continue
                length = (element & 0x0F) + 1
                pos += 1
                if end < pos + length:
                    raise ValueError("RTP one-byte header extension value is truncated")
                ident = element >> 4
                if ident == abs_id:
                    if length != 3:
                        raise ValueError("abs-send-time element is not 3 bytes")
                    abs_time = data[pos] << 16 | data[pos + 1] << 8 | data[pos + 2]
                elif ident == level_id:
                    if length != 1:
                        raise ValueError("audio level element is not 1 byte")
                    level = data[pos]
                pos += length
        elif profile == 0x1000:
            return None
        pos = end
    if first & 0x20:
        padding = data[-1]
        if not padding or padding > size - pos:
            raise ValueError("RTP packet padding length is invalid")
        payload = data[pos:size - padding]
    else:
        padding = 0
        payload = data[pos:]
    return second & 0x7F, second >> 7, seq, timestamp, ssrc, payload, padding, abs_time, level


def vp8_payload_offset(payload: bytes) -> int:
    """Length of the VP8 payload descriptor at the start of ``payload`` (``ValueError`` if truncated)."""
    try:
        first = payload[0]
        pos = 1
        if first & 0x80:  # X: extended control bits follow
            bits = payload[1]
            pos = 2
            if bits & 0x80:  # I: picture id, 7 or 15 bits
                pos += 2 if payload[2] & 0x80 else 1
            if bits & 0x40:  # L: TL0PICIDX
                pos += 1
            if bits & 0x30:  # T and/or K: one shared byte
                pos += 1
    except IndexError:
        raise ValueError("VP8 payload descriptor is truncated") from None
    if pos > len(payload):
        raise ValueError("VP8 payload descriptor is truncated")
    return pos
