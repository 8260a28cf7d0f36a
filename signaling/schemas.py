"""Payloads of client events, validated at the edge (pydantic), and the event names.

Every string has a length limit; unknown fields are refused so that a typo in a client
is an error, not a silently ignored value.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from signaling.idcard import normalize_id_number

# -- event names: client -> server --------------------------------------------------------
CALL_START = "call:start"
CALL_CANCEL = "call:cancel"
CALL_ACCEPT = "call:accept"
CALL_DECLINE = "call:decline"
CALL_CONNECTED = "call:connected"
CALL_END = "call:end"
CALL_TRANSFER = "call:transfer"
QUEUE_TAKE = "queue:take"
QUEUE_LIST = "queue:list"
PRESENCE_SET = "presence:set"
PRESENCE_HEARTBEAT = "presence:heartbeat"
PRESENCE_LIST = "presence:list"
SESSION_RESUME = "session:resume"
CALLBACK_CREATE = "callback:create"
CALLBACK_LIST = "callback:list"
CALLBACK_CALL = "callback:call"
MEDIA_OFFER = "media:offer"
MEDIA_LEAVE = "media:leave"
MEDIA_KEYFRAME = "media:keyframe"

# -- event names: server -> client --------------------------------------------------------
CALL_STATE = "call:state"
QUEUE_UPDATE = "queue:update"
QUEUE_POSITION = "queue:position"
PRESENCE_UPDATE = "presence:update"
CALLBACK_UPDATE = "callback:update"
MEDIA_EVENT = "media:event"

CallId = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=r"^[0-9a-f-]{1,36}$")]
Short = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Empty(Payload):
    pass


class Applicant(Payload):
    name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(default="", max_length=18, pattern=r"^[0-9]{0,17}[0-9Xx]?$")
    phone: str = Field(default="", max_length=20, pattern=r"^[0-9+\- ]*$")

    @field_validator("id_number")
    @classmethod
    def _gb11643(cls, value: str) -> str:
        """Empty (not given) or a valid GB 11643 number, upper-cased; refused as ``applicant.id_number``."""
        return normalize_id_number(value, date.today()) if value else value


class StartCall(Payload):
    item_id: int = Field(ge=1)
    applicant: Applicant
    # Elderly or disabled applicant: served before normal calls.
    priority: bool = False


class CallRef(Payload):
    call_id: CallId


class Transfer(Payload):
    call_id: CallId
    department_id: int = Field(ge=1)


class Take(Payload):
    call_id: CallId | None = None


class SetPresence(Payload):
    state: Literal["available", "away"]


class CreateCallback(Payload):
    item_id: int = Field(ge=1)
    applicant: Applicant
    preferred_time: datetime | None = None
    note: str = Field(default="", max_length=500)


class CallbackRef(Payload):
    callback_id: int = Field(ge=1)


class MediaOffer(Payload):
    call_id: CallId
    sdp: str = Field(min_length=1, max_length=64 * 1024)
    type: Literal["offer"] = "offer"
    # SDP mid -> source ("camera", "screen", "microphone", "remote:camera", ...)
    tracks: dict[Short, Short] = Field(default_factory=dict, max_length=16)


class MediaKeyframe(Payload):
    call_id: CallId
    participant: Literal["outlet", "agent"]
    source: Literal["camera", "screen"]
