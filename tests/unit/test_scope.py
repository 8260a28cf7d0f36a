"""Scope rules on the Principal: outlets see only themselves, county supervisors only their county."""

from __future__ import annotations

import pytest

from cloudhall.errors import Forbidden
from cloudhall.identities import Principal, Role

STAFF_O1 = Principal(1, "staff1", "s", Role.OUTLET_STAFF, outlet_id=1, county="东岛县")
AGENT_EAST = Principal(2, "agent1", "a", Role.AGENT, county="东岛县", department_ids=(1,))
SUPER_EAST = Principal(3, "super1", "s", Role.SUPERVISOR, county="东岛县")
SUPER_CITY = Principal(4, "city", "c", Role.SUPERVISOR, county=None)
ADMIN = Principal(5, "admin", "a", Role.ADMIN)


@pytest.mark.parametrize(
    ("who", "outlet_id", "county", "allowed"),
    [
        (STAFF_O1, 1, "东岛县", True),
        (STAFF_O1, 2, "东岛县", False),  # another outlet of the same county
        (STAFF_O1, 3, "西岛县", False),
        (AGENT_EAST, 2, "东岛县", True),
        (AGENT_EAST, 3, "西岛县", False),
        (SUPER_EAST, 2, "东岛县", True),
        (SUPER_EAST, 3, "西岛县", False),
        (SUPER_CITY, 3, "西岛县", True),
        (ADMIN, 3, "西岛县", True),
    ],
)
def test_outlet_scope(who: Principal, outlet_id: int, county: str, allowed: bool) -> None:
    assert who.can_see_outlet(outlet_id, county) is allowed
    if allowed:
        who.check_outlet(outlet_id, county)
    else:
        with pytest.raises(Forbidden, match=f"outlet {outlet_id}"):
            who.check_outlet(outlet_id, county)


def test_require_role_names_the_role() -> None:
    with pytest.raises(Forbidden, match="role outlet_staff"):
        STAFF_O1.require_role(Role.ADMIN, Role.SUPERVISOR)
    ADMIN.require_role(Role.ADMIN)
