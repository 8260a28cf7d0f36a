"""GB 11643 ID numbers: shape, birth date and check character, and the call:start payload that uses it."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from signaling.idcard import InvalidIdNumber, check_character, normalize_id_number
from signaling.schemas import StartCall

TODAY = date(2026, 11, 23)
VALID = "11010519491231002X"  # the standard's own example
VALID_DIGIT = "440524190001010017"


def test_valid_numbers_pass_and_are_upper_cased() -> None:
    assert check_character(VALID[:17]) == "X"
    assert normalize_id_number(VALID, TODAY) == VALID
    assert normalize_id_number(VALID_DIGIT, TODAY) == VALID_DIGIT
    assert normalize_id_number(" 11010519491231002x ", TODAY) == VALID


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("110105194912310021", "check character"),  # wrong last digit
        ("110105194912310029", "check character"),
        ("11010519491231002", "17 digits"),  # too short
        ("1101051949123100X2", "17 digits"),  # X not at the end
        ("110105194902300010", "not a real date"),  # 30 February
        ("110105194913010010", "not a real date"),  # month 13
        ("110105203001010010", "not possible"),  # born in the future
        ("110105180001010010", "not possible"),  # before 1900
    ],
)
def test_invalid_numbers_say_why(number: str, problem: str) -> None:
    with pytest.raises(InvalidIdNumber, match=problem):
        normalize_id_number(number, TODAY)


def test_future_birth_date_is_relative_to_today() -> None:
    tomorrow_born = "110105" + "20261124" + "001"
    number = tomorrow_born + check_character(tomorrow_born)
    with pytest.raises(InvalidIdNumber):
        normalize_id_number(number, TODAY)
    assert normalize_id_number(number, date(2026, 11, 24)) == number


def test_call_payload_refuses_a_bad_number_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        StartCall.model_validate({"item_id": 1, "applicant": {"name": "张三", "id_number": "110105194912310021"}})
    (error,) = caught.value.errors()
    assert error["loc"] == ("applicant", "id_number")
    ok = StartCall.model_validate({"item_id": 1, "applicant": {"name": "张三", "id_number": "11010519491231002x"}})
    assert ok.applicant.id_number == VALID
    assert StartCall.model_validate({"item_id": 1, "applicant": {"name": "张三"}}).applicant.id_number == ""
