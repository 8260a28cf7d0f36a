"""Working hours of a department desk: is it open at ``now``, and when does it open next.

Pure functions over the mapping checked by :func:`cloudhall.identities.validate_working_hours`:
``{"tz": "Asia/Shanghai", "mon": [["08:30", "12:00"], ["14:00", "17:30"]], ...}``.
An empty mapping means always open; a day that is absent is closed all day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from cloudhall.identities import WEEKDAYS

DEFAULT_TZ = "Asia/Shanghai"


@dataclass(frozen=True)
class DeskStatus:
    open: bool
    opens_at: datetime | None = None  # next opening (aware, UTC) when closed; None if never


def _ranges(hours: dict[str, Any], day: str) -> list[tuple[time, time]]:
    out = []
    for start, stop in hours.get(day, []) or []:
        out.append((time.fromisoformat(start), time.fromisoformat(stop)))
    return sorted(out)


def desk_status(hours: dict[str, Any] | None, now: datetime) -> DeskStatus:
    """Whether the desk is open at aware ``now``; if closed, the next opening within a week."""
    if not hours or not any(k in WEEKDAYS for k in hours):
        return DeskStatus(open=True)
    tz = ZoneInfo(str(hours.get("tz") or DEFAULT_TZ))
    local = now.astimezone(tz)
    for offset in range(0, 8):
        day = (local + timedelta(days=offset)).date()
        name = WEEKDAYS[day.weekday()]
        for start, stop in _ranges(hours, name):
            begin = datetime.combine(day, start, tz)
            finish = datetime.combine(day, stop, tz)
            if offset == 0 and begin <= local < finish:
                return DeskStatus(open=True)
            if begin > local:
                return DeskStatus(open=False, opens_at=begin.astimezone(timezone.utc))
    return DeskStatus(open=False, opens_at=None)
