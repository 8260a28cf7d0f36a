"""One track epoch being written: a live, flushed Matroska file fed with encoded frames.

Nothing here decodes or encodes. The output stream is declared from codec parameters only:
VP8 through ``OutputContainer.add_mux_stream`` (no codec context at all) and Opus through
``add_stream_from_template`` with a template stream demuxed from a 100-byte Ogg header
built here, because the Matroska ``CodecPrivate`` of Opus (the ``OpusHead``) and its channel
count cannot be set on a codec-less PyAV stream, and Chromium refuses Opus without them.
Opening an encoder instead would cost ~10 MB per VP8 track (libvpx lookahead buffers).

The Matroska muxer runs in live mode (no cues, no seeking back), flushes after every
packet and closes a cluster at every new timestamp, so a ``kill -9`` leaves a file that
demuxes up to the frame before the last one written. Finalizing (seekable WebM, duration,
cues, hash) is :mod:`recordings.finalize`'s job.

Runs only on the recorder's writer thread: these calls block on disk.
"""

from __future__ import annotations

import functools
import io
import struct
from fractions import Fraction
from pathlib import Path

import av

# Matroska muxer options for the in-progress ``.mkv.part`` file (see the module docstring).
MATROSKA_LIVE_OPTIONS = {"live": "1", "flush_packets": "1", "cluster_time_limit": "0"}

# Opus in WebRTC is always negotiated as opus/48000/2; a mono sender still decodes to stereo.
OPUS_CHANNELS = 2
OPUS_CLOCK_RATE = 48000

SUPPORTED_CODECS = {"vp8": "video", "opus": "audio"}


class TrackFile:
    """A Matroska file holding one track epoch, written as frames arrive.

    Timestamps are rebased so that the first written frame is at 0; ``first_timestamp`` keeps
    the offset (in ``clock_rate`` units from the epoch start) for the wall-clock anchor.
    Every frame goes to disk as soon as the next one is muxed (one frame per cluster).

    Raises ``OSError`` / ``av.FFmpegError`` from the disk; the caller treats either as a
    failed recording.
    """

    def __init__(
        self, path: Path, codec: str, clock_rate: int, width: int = 0, height: int = 0
    ) -> None:
        codec = codec.lower()
        if codec not in SUPPORTED_CODECS:
            raise ValueError(f"codec {codec!r} cannot be recorded (VP8 and Opus only)")
        self.path = path
        self.codec = codec
        self.kind = SUPPORTED_CODECS[codec]
        self.clock_rate = clock_rate
        self.width = width
        self.height = height
        self.frames = 0
        self.first_timestamp: int | None = None
        self._time_base = Fraction(1, clock_rate)
        self._last_pts = 0
        self._container = av.open(
            str(path), "w", format="matroska", options=dict(MATROSKA_LIVE_OPTIONS)
        )
        try:
            if self.kind == "video":
                self._stream = self._container.add_mux_stream("vp8", width=width, height=height)
            else:
                with av.open(io.BytesIO(opus_template_ogg()), format="ogg") as template:
                    self._stream = self._container.add_stream_from_template(
                        template.streams.audio[0], opaque=True
                    )
            self._stream.time_base = self._time_base
        except BaseException:
            self._container.close()
            raise

    def write(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        """Mux one frame (``timestamp`` in ``clock_rate`` units from the epoch start)."""
        if self.first_timestamp is None:
            self.first_timestamp = timestamp
        pts = max(timestamp - self.first_timestamp, self._last_pts)
        self._last_pts = pts
        # Matroska stores no duration for a video SimpleBlock; the remux derives them.
        duration = opus_packet_samples(data) if self.kind == "audio" else 0
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = self._time_base
        packet.pts = pts
        packet.dts = pts
        packet.duration = duration
        packet.is_keyframe = keyframe
        self._container.mux_one(packet)
        self.frames += 1

    def close(self) -> None:
        """Write the trailer and close the file."""
        self._container.close()

    def abort(self) -> None:
        """Close without raising (after a disk failure); the file stays for recovery."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the disk already failed; the caller has reported it
            pass


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header (RFC 6386 §9.1), or None for an interframe."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    return width & 0x3FFF, height & 0x3FFF


# Frame sizes in 48 kHz samples by TOC configuration (RFC 6716 §3.1).
_OPUS_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK NB/MB/WB: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid SWB/FB: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT: 2.5, 5, 10, 20 ms
)


def opus_packet_samples(data: bytes) -> int:
    """Duration of one Opus packet in 48 kHz samples, from its TOC byte (960 if unreadable)."""
    if not data:
        return 960
    toc = data[0]
    per_frame = _OPUS_FRAME_SAMPLES[toc >> 3]
    code = toc & 3
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = data[1] & 0x3F if len(data) > 1 else 1
    return per_frame * max(count, 1)


@functools.lru_cache(maxsize=1)
def opus_template_ogg() -> bytes:
    """A minimal Ogg Opus stream (OpusHead, OpusTags, one silent packet) to template from."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, OPUS_CHANNELS, 0, OPUS_CLOCK_RATE, 0, 0)
    vendor = b"cloudhall"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    silence = b"\xfc\xff\xfe"  # CELT FB 20 ms stereo, zero energy
    return (
        _ogg_page(head, sequence=0, flags=0x02, granule=0)
        + _ogg_page(tags, sequence=1, flags=0x00, granule=0)
        + _ogg_page(silence, sequence=2, flags=0x04, granule=960)
    )


def _ogg_page(payload: bytes, *, sequence: int, flags: int, granule: int, serial: int = 1) -> bytes:
    lacing = [255] * (len(payload) // 255) + [len(payload) % 255]
    header = b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, serial, sequence, 0, len(lacing))
    header += bytes(lacing)
    crc = _ogg_crc(header + payload)
    return header[:22] + struct.pack("<I", crc) + header[26:] + payload


@functools.lru_cache(maxsize=1)
def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        reg = i << 24
        for _ in range(8):
            reg = ((reg << 1) ^ 0x04C11DB7) if reg & 0x80000000 else reg << 1
        table.append(reg & 0xFFFFFFFF)
    return tuple(table)


def _ogg_crc(data: bytes) -> int:
    table = _ogg_crc_table()
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ byte) & 0xFF]
    return crc
