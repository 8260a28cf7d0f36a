"""The packet-sink port: how encoded media leaves the media library (for recording).

``media`` calls these; ``recordings`` implements them without importing ``media``
(structural typing). Frames are already encoded (VP8 or Opus) and are never decoded here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TrackInfo:
    """One track of one participant during one connection epoch."""

    session_id: str
    participant: str  # "outlet" | "agent"
    source: str  # "camera" | "screen" | "microphone"
    kind: str  # "video" | "audio"
    codec: str  # "VP8" | "opus"
    clock_rate: int  # 90000 for video, 48000 for Opus
    epoch: int  # 0 for the first connection, +1 after each rejoin with a new peer connection
    started_at: float  # wall-clock (time.time()) of the epoch's first frame, for synchronized playback
    width: int | None = None
    height: int | None = None

    @property
    def name(self) -> str:
        return f"{self.participant}-{self.source}"


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """One complete encoded frame (a VP8 picture or an Opus packet).

    ``timestamp`` is in ``clock_rate`` units from the start of the epoch (first frame: 0),
    monotonically non-decreasing; ``arrival`` is wall-clock seconds.
    """

    data: bytes
    timestamp: int
    keyframe: bool
    arrival: float


class TrackWriter(Protocol):
    """Receives the frames of one track epoch. ``write`` must return quickly (no blocking I/O)."""

    def write(self, frame: EncodedFrame) -> None: ...

    def close(self) -> None:
        """No more frames; finalize in the background."""


class PacketSink(Protocol):
    """A per-session consumer of encoded tracks (the recorder)."""

    def open_track(self, track: TrackInfo) -> TrackWriter: ...
