"""Snapshots: VP8 frames from a keyframe on → one full-resolution JPEG (the only decode)."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest

from cloudhall.errors import InvalidInput
from media.snapshot import encode_jpeg
from tests.media.conftest_recording import vp8_track


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from the JPEG's SOF marker."""
    assert data[:2] == b"\xff\xd8", "not a JPEG (no SOI marker)"
    pos = 2
    while pos < len(data):
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise AssertionError("no SOF marker in the JPEG")


def decode_jpeg(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data), format="mjpeg") as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


@pytest.mark.parametrize(("width", "height", "fps"), [(640, 480, 30), (1280, 720, 10)])
def test_snapshot_is_a_full_resolution_jpeg_of_the_last_frame(
    width: int, height: int, fps: int
) -> None:
    track = vp8_track(width, height, fps, 4.0)
    frames = [data for data, _, _ in track.frames]
    keyframes = [i for i, (_, _, key) in enumerate(track.frames) if key]
    start = keyframes[1]
    end = start + 9  # the keyframe and nine frames after it (one GOP is >= 10 frames)

    jpeg = encode_jpeg("VP8", frames[start : end + 1])

    assert jpeg_size(jpeg) == (width, height)
    pixels = decode_jpeg(jpeg)
    assert pixels.shape == (height, width, 3)
    # The synthetic picture has a white 64x64 box sliding by 12 px a frame: it must be where
    # it was in the last frame given, not in the keyframe.
    box = (end * 12) % (width - 64)
    row = pixels[height // 3 + 32]
    assert row[box + 8 : box + 56].min() > 200, "the box of the last frame is not in the snapshot"
    keyframe_box = (start * 12) % (width - 64)
    assert row[keyframe_box + 8 : keyframe_box + 12].min() < 200, "the snapshot shows the keyframe"


def test_quality_changes_the_size() -> None:
    frames = [data for data, _, _ in vp8_track(640, 480, 30, 4.0).frames[:3]]
    small = encode_jpeg("vp8", frames, quality=10)
    large = encode_jpeg("vp8", frames, quality=95)
    assert len(small) < len(large)
    assert jpeg_size(small) == jpeg_size(large) == (640, 480)


def test_a_frame_that_does_not_decode_gives_the_frame_before_it() -> None:
    frames = [data for data, _, _ in vp8_track(640, 480, 30, 4.0).frames[:4]]
    jpeg = encode_jpeg("VP8", frames[:2] + [b"\x01\x00\x00garbage"])
    assert jpeg_size(jpeg) == (640, 480)


def test_no_frames_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no frame"):
        encode_jpeg("VP8", [])


def test_frames_not_starting_with_a_keyframe_are_refused() -> None:
    frames = [data for data, _, _ in vp8_track(640, 480, 30, 4.0).frames[1:4]]
    with pytest.raises(InvalidInput, match="not a VP8 keyframe"):
        encode_jpeg("VP8", frames)


def test_audio_is_refused() -> None:
    with pytest.raises(InvalidInput, match="only VP8"):
        encode_jpeg("opus", [b"\xfc\xff\xfe"])
