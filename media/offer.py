"""Offers and answers as the signalling layer hands them over, and what each m-line is for.

``OfferIn.tracks`` maps each SDP ``mid`` to a role (tracks are identified by mid, never by
track id: aiortc labels a browser's second stream with a random id):

- the participant's own sources: ``"camera"``, ``"screen"``, ``"microphone"`` (the
  browser's m-line is ``sendonly`` or ``sendrecv``);
- media it wants to receive: ``"remote:camera"``, ``"remote:screen"``,
  ``"remote:microphone"`` — the *other* party's source (outlet <-> agent) — or the
  explicit form ``"remote:<participant>-<source>"`` (e.g. ``"remote:agent-camera"``), which
  the receive-only ``"monitor"`` must use. The browser offers a ``recvonly`` transceiver
  for each, so no renegotiation is ever needed: the server attaches a forwarding track to
  that transceiver at answer time, silent until the source exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc.sdp import SessionDescription

from cloudhall.errors import InvalidInput
from media.relay import SOURCE_KINDS

PARTICIPANTS = ("outlet", "agent", "monitor")
PUBLISHES = {"outlet": ("camera", "screen", "microphone"), "agent": ("camera", "microphone"), "monitor": ()}
OTHER_PARTY = {"outlet": "agent", "agent": "outlet"}
CODEC_FOR_KIND = {"video": "video/vp8", "audio": "audio/opus"}


@dataclass(frozen=True)
class OfferIn:
    """A browser's SDP offer and the role of each of its m-lines (by mid)."""

    sdp: str
    type: str = "offer"
    tracks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerOut:
    """The server's SDP answer."""

    sdp: str
    type: str = "answer"


@dataclass(frozen=True)
class MediaLine:
    """One m-line of an offer, resolved: either a source this participant publishes or one it receives."""

    mid: str
    kind: str
    role: str
    publish: bool
    owner: str  # the participant whose source this is
    source: str  # camera | screen | microphone


def parse_offer(participant: str, offer: OfferIn) -> list[MediaLine]:
    """Validate an offer against its role map; raise :class:`InvalidInput` naming the problem."""
    if participant not in PARTICIPANTS:
        raise InvalidInput(f"unknown participant {participant!r}: expected one of {', '.join(PARTICIPANTS)}")
    if offer.type != "offer":
        raise InvalidInput(f"expected an SDP of type 'offer', got {offer.type!r}")
    if not isinstance(offer.sdp, str) or not offer.sdp.startswith("v=0"):
        raise InvalidInput("broken SDP: it must start with 'v=0'")
    try:
        description = SessionDescription.parse(offer.sdp)
    except Exception as exc:  # aiortc's parser raises bare ValueError/IndexError/KeyError
        raise InvalidInput(f"broken SDP: {type(exc).__name__}: {exc}") from None
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise InvalidInput("broken SDP: the offer has no audio or video m-line")
    mids = [m.rtp.muxId for m in media]
    unknown = sorted(set(offer.tracks) - set(mids))
    if unknown:
        raise InvalidInput(f"unknown mid(s) in tracks: {', '.join(unknown)} (the offer has {', '.join(mids)})")
    lines: list[MediaLine] = []
    published: set[str] = set()
    for m in media:
        mid = m.rtp.muxId
        role = offer.tracks.get(mid)
        if role is None:
            raise InvalidInput(f"m-line mid={mid} ({m.kind}) has no role in tracks")
        line = _resolve(participant, mid, m.kind, role)
        if line.publish:
            if line.source in published:
                raise InvalidInput(f"source {line.source!r} is offered twice")
            published.add(line.source)
            if m.direction not in ("sendonly", "sendrecv"):
                raise InvalidInput(f"mid={mid} is the {role} but its direction is {m.direction}, not sendonly")
        elif m.direction not in ("recvonly", "sendrecv"):
            raise InvalidInput(f"mid={mid} asks for {role} but its direction is {m.direction}, not recvonly")
        if m.dtls is None or not m.dtls.fingerprints:
            raise InvalidInput(f"mid={mid} has no DTLS fingerprint: the media could not be authenticated")
        wanted = CODEC_FOR_KIND[m.kind]
        offered = [c.mimeType for c in m.rtp.codecs]
        if not any(name.lower() == wanted for name in offered):
            raise InvalidInput(
                f"mid={mid} ({m.kind}) offers {', '.join(offered) or 'no codec'}; "
                f"only {'VP8' if m.kind == 'video' else 'Opus'} can be forwarded without transcoding"
            )
        lines.append(line)
    return lines


def _resolve(participant: str, mid: str, kind: str, role: str) -> MediaLine:
    if not isinstance(role, str):
        raise InvalidInput(f"role of mid={mid} must be a string")
    if role.startswith("remote:"):
        wanted = role[len("remote:"):]
        if "-" in wanted:
            owner, _, source = wanted.partition("-")
        elif participant in OTHER_PARTY:
            owner, source = OTHER_PARTY[participant], wanted
        else:
            raise InvalidInput(f"{participant} must name whose media it wants: 'remote:agent-camera', not {role!r}")
        if owner not in PUBLISHES or source not in PUBLISHES[owner] or owner == participant:
            raise InvalidInput(f"mid={mid}: {role!r} names no source {participant} can receive")
        publish = False
    else:
        owner, source = participant, role
        if source not in PUBLISHES[participant]:
            allowed = ", ".join(PUBLISHES[participant]) or "nothing"
            raise InvalidInput(f"mid={mid}: {participant} cannot send {role!r} (it sends {allowed})")
        publish = True
    if SOURCE_KINDS[source] != kind:
        raise InvalidInput(f"mid={mid} is a {kind} m-line but {role!r} is {SOURCE_KINDS[source]}")
    return MediaLine(mid=mid, kind=kind, role=role, publish=publish, owner=owner, source=source)
