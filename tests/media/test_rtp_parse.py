"""media.rtp's lean parser reads what aiortc's RtpPacket.parse and VP8 depayloader read, on generated packets."""

from __future__ import annotations

import struct

import pytest
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtp import parse_rtp, vp8_payload_offset

ABS_ID, LEVEL_ID, MID_ID = 3, 1, 4


def _extensions_map() -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=ABS_ID, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
        RTCRtpHeaderExtensionParameters(id=LEVEL_ID, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        RTCRtpHeaderExtensionParameters(id=MID_ID, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
    ]))
    return extensions


EXTENSIONS = _extensions_map()

# One-byte header elements: (id, value); mid values are ASCII as browsers send them.
element = st.one_of(
    st.tuples(st.just(ABS_ID), st.binary(min_size=3, max_size=3)),
    st.tuples(st.just(LEVEL_ID), st.binary(min_size=1, max_size=1)),
    st.tuples(st.just(MID_ID), st.text(alphabet="0123456789abc", min_size=1, max_size=4).map(str.encode)),
    st.tuples(st.integers(5, 14), st.binary(min_size=1, max_size=16)),
)


@st.composite
def rtp_packets(draw: st.DrawFn) -> bytes:
    csrcs = draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3))
    elements = draw(st.lists(element, max_size=4))
    padding = draw(st.integers(0, 20))
    marker, pt = draw(st.integers(0, 1)), draw(st.integers(0, 127))
    first = 0x80 | (0x20 if padding else 0) | (0x10 if elements else 0) | len(csrcs)
    data = struct.pack("!BBHII", first, marker << 7 | pt, draw(st.integers(0, 0xFFFF)),
                       draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)))
    data += b"".join(struct.pack("!I", c) for c in csrcs)
    if elements:
        block = b""
        for ident, value in elements:
            block += bytes([ident << 4 | (len(value) - 1)]) + value
            block += b"\0" * draw(st.integers(0, 2))  # padding bytes between elements
        block += b"\0" * (-len(block) % 4)
        data += struct.pack("!HH", 0xBEDE, len(block) // 4) + block
    data += draw(st.binary(max_size=40))
    if padding:
        data += b"\0" * (padding - 1) + bytes([padding])
    return data


def _aiortc(data: bytes) -> tuple | None:
    try:
        p = RtpPacket.parse(data, EXTENSIONS)
    except UnicodeDecodeError:
        raise  # a mid that is not UTF-8: see the damaged-packet test
    except ValueError:
        return None
    level = p.extensions.audio_level
    return (p.payload_type, p.marker, p.sequence_number, p.timestamp, p.ssrc, p.payload, p.padding_size,
            p.extensions.abs_send_time, None if level is None else (level[0] << 7) | level[1])


def _lean(data: bytes) -> tuple | None:
    try:
        return parse_rtp(data, ABS_ID, LEVEL_ID)
    except ValueError:
        return None


@settings(max_examples=400, deadline=None)
@given(rtp_packets())
def test_well_formed_packets_parse_as_aiortc_parses_them(data: bytes) -> None:
    expected = _aiortc(data)
    assert expected is not None
    assert _lean(data) == expected


@settings(max_examples=400, deadline=None)
@given(rtp_packets(), st.data())
def test_damaged_packets_are_rejected_as_aiortc_rejects_them(data: bytes, draw: st.DataObject) -> None:
    """Truncated anywhere or with one byte changed: the same verdict, and the same fields when accepted."""
    damage = draw.draw(st.sampled_from(["truncate", "flip"]))
    if damage == "truncate":
        data = data[:draw.draw(st.integers(0, len(data)))]
    else:
        i = draw.draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw.draw(st.integers(0, 255))]) + data[i + 1:]
    try:
        expected = _aiortc(data)
    except (struct.error, UnicodeDecodeError):
        # aiortc crashes (struct.error escapes its parser) on an abs-send-time or audio-level
        # element of the wrong size, and rejects a mid that is not UTF-8; we reject the
        # former and ignore the mid, which the server does not read.
        return
    if expected is None:
        assert _lean(data) is None
    else:
        lean = parse_rtp(data, ABS_ID, LEVEL_ID)
        if lean is not None:  # None: a two-byte-header block, left to aiortc
            assert lean == expected


def test_two_byte_header_blocks_are_left_to_aiortc():
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0x1000, 1) + bytes([ABS_ID, 2, 0, 0])
    assert parse_rtp(data, ABS_ID, LEVEL_ID) is None


def test_wrong_size_extension_elements_are_rejected_not_crashed_on():
    short_abs = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + struct.pack("!HH", 0xBEDE, 1) + bytes([ABS_ID << 4 | 1, 0, 0, 0])
    with pytest.raises(ValueError):
        parse_rtp(short_abs, ABS_ID, LEVEL_ID)
    with pytest.raises(struct.error):  # why we do not hand such a packet to aiortc
        RtpPacket.parse(short_abs, EXTENSIONS)


@st.composite
def vp8_descriptors(draw: st.DrawFn) -> bytes:
    first = draw(st.integers(0, 255))
    out = bytes([first])
    if first & 0x80:
        bits = draw(st.integers(0, 255))
        out += bytes([bits])
        if bits & 0x80:
            out += bytes([0x80 | draw(st.integers(0, 127)), draw(st.integers(0, 255))]) if draw(st.booleans()) \
                else bytes([draw(st.integers(0, 127))])
        if bits & 0x40:
            out += bytes([draw(st.integers(0, 255))])
        if bits & 0x30:
            out += bytes([draw(st.integers(0, 255))])
    return out


@settings(max_examples=400, deadline=None)
@given(vp8_descriptors(), st.binary(max_size=8), st.integers(0, 12))
def test_vp8_descriptor_length_matches_aiortcs_depayloader(descriptor: bytes, rest: bytes, cut: int) -> None:
    for payload in (descriptor + rest, (descriptor + rest)[:cut]):
        try:
            expected = vp8_depayload(payload)
        except ValueError:
            with pytest.raises(ValueError):
                vp8_payload_offset(payload)
            continue
        assert payload[vp8_payload_offset(payload):] == expected


def _header_builder(mid: bytes, abs_id: int | None, level_id: int | None):
    """A SenderLink's header builder alone, with what _prepare() would have read from negotiation."""
    from media.passthrough import SenderLink

    link = object.__new__(SenderLink)  # no transceiver needed: _header only reads these
    link._mid_element = bytes([(MID_ID << 4) | (len(mid) - 1)]) + mid if mid else b""
    link._abs_id, link._level_id, link._layouts = abs_id, level_id, {}
    return link._header


@settings(max_examples=300, deadline=None)
@given(mid=st.text(alphabet="0123456789", max_size=3).map(str.encode), with_abs=st.booleans(),
       with_level=st.booleans(), marker=st.integers(0, 1), pt=st.integers(0, 127),
       seq=st.integers(0, 0xFFFF), timestamp=st.integers(0, 0xFFFFFFFF), ssrc=st.integers(0, 0xFFFFFFFF),
       abs_time=st.one_of(st.none(), st.integers(0, 0xFFFFFF)), level=st.one_of(st.none(), st.integers(0, 0xFF)))
def test_sender_header_is_what_aiortc_parses(mid: bytes, with_abs: bool, with_level: bool, marker: int, pt: int,
                                             seq: int, timestamp: int, ssrc: int, abs_time: int | None,
                                             level: int | None) -> None:
    header = _header_builder(mid, ABS_ID if with_abs else None, LEVEL_ID if with_level else None)
    payload = b"\x10\x00payload"
    data = header(pt, seq, timestamp, marker, ssrc, abs_time, level) + payload
    packet = RtpPacket.parse(data, EXTENSIONS)
    assert (packet.payload_type, packet.marker, packet.sequence_number, packet.timestamp, packet.ssrc) == \
        (pt, marker, seq, timestamp, ssrc)
    assert packet.payload == payload
    assert packet.extensions.mid == (mid.decode() if mid else None)
    assert packet.extensions.abs_send_time == (abs_time if with_abs else None)
    expected_level = (bool(level >> 7), level & 0x7F) if with_level and level is not None else None
    assert packet.extensions.audio_level == expected_level
    # and media.rtp's lean parser, on the receiving side, reads the same
    parsed = parse_rtp(data, ABS_ID, LEVEL_ID)
    assert parsed is not None and parsed[7] == (abs_time if with_abs else None)
