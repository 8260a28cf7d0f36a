"""Mainland resident ID numbers (GB 11643-1999): 17 digits and an ISO 7064 MOD 11-2 check character.

Pure: no I/O and no clock reads (the caller passes ``today``). The browser checks the same
rule for instant feedback (``web/static/js/idcard.js``); this is the check that counts.
"""

from __future__ import annotations

import re
from datetime import date

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK = "10X98765432"
EARLIEST_YEAR = 1900
_SHAPE = re.compile(r"^[0-9]{17}[0-9X]$")


class InvalidIdNumber(ValueError):
    """The ID number breaks the GB 11643 rule; the message says which part."""


def check_character(first17: str) -> str:
    """The check character for the first 17 digits of an ID number."""
    return CHECK[sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True)) % 11]


def normalize_id_number(value: str, today: date) -> str:
    """Return ``value`` upper-cased if it is a valid 18-character ID number born by ``today``.

    Raises :class:`InvalidIdNumber` naming what is wrong: the shape (18 characters, digits
    and a final digit or X), the birth date (YYYYMMDD at positions 7-14, a real day, not in
    the future, not before 1900) or the check character.
    """
    number = value.strip().upper()
    if not _SHAPE.match(number):
        raise InvalidIdNumber("an ID number has 17 digits followed by a digit or X")
    digits = number[6:14]
    try:
        born = date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise InvalidIdNumber(f"the birth date {digits} in the ID number is not a real date") from None
    if born > today or born.year < EARLIEST_YEAR:
        raise InvalidIdNumber(f"the birth date {digits} in the ID number is not possible")
    expected = check_character(number[:17])
    if number[17] != expected:
        # The expected character is not named: it would turn any 17 digits into a "valid" number.
        raise InvalidIdNumber("the check character of the ID number does not match (a digit is mistyped?)")
    return number
