"""The error tree: every expected failure carries a stable ``code`` and an HTTP status.

HTTP middleware and the Socket.IO acknowledgement wrapper translate these once, at the
edge; anything else is logged with its traceback and answered ``code="internal"``.
"""

from __future__ import annotations

from typing import Any


class CloudHallError(Exception):
    """Base of every expected error. ``message`` names the value or state involved."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class InvalidInput(CloudHallError):
    """The payload is malformed or a field is out of range."""

    code = "invalid_input"
    http_status = 400


class Unauthenticated(CloudHallError):
    code = "unauthenticated"
    http_status = 401


class Forbidden(CloudHallError):
    """The role or the scope of the caller does not allow this."""

    code = "forbidden"
    http_status = 403


class NotFound(CloudHallError):
    code = "not_found"
    http_status = 404


class Conflict(CloudHallError):
    """The object is not in a state that allows this (e.g. an illegal call transition)."""

    code = "conflict"
    http_status = 409


class PayloadTooLarge(CloudHallError):
    code = "payload_too_large"
    http_status = 413


class TooManyRequests(CloudHallError):
    code = "too_many_requests"
    http_status = 429


class Unavailable(CloudHallError):
    """A dependency (database, Redis, disk) is not reachable right now; retry later."""

    code = "unavailable"
    http_status = 503
