"""Presence transitions and the estimated wait, as pure values."""

from __future__ import annotations

import pytest

from cloudhall.errors import Conflict
from signaling import presence as p
from signaling.presence import AgentPresence, PresenceState
from signaling.store import index_changes
from signaling import calls as c

T0 = 1_800_000_000.0


def agent() -> AgentPresence:
    return AgentPresence(user_id=9, name="a", county="东岛县", department_ids=(1,))


def test_online_busy_and_back_to_the_chosen_state() -> None:
    online = p.came_online(agent(), T0, None)
    assert online.state is PresenceState.AVAILABLE and online.since == T0
    away = p.choose(online, PresenceState.AWAY, T0 + 1)
    busy = p.busy(away, "call-1", T0 + 2)
    assert busy.state is PresenceState.BUSY and busy.call_id == "call-1"
    chose_available = p.choose(busy, PresenceState.AVAILABLE, T0 + 3)
    assert chose_available.state is PresenceState.BUSY  # applies after the call
    freed = p.free(chose_available, T0 + 4)
    assert freed.state is PresenceState.AVAILABLE and freed.call_id is None and freed.since == T0 + 4


def test_busy_and_offline_are_not_chosen() -> None:
    for state in (PresenceState.BUSY, PresenceState.OFFLINE):
        with pytest.raises(Conflict):
            p.choose(agent(), state, T0)


def test_heartbeat_timeout() -> None:
    online = p.came_online(agent(), T0, None)
    assert not p.timed_out(p.heartbeat(online, T0 + 30), T0 + 60, 45)
    assert p.timed_out(online, T0 + 45, 45)
    gone = p.offline(online, T0 + 45)
    assert gone.state is PresenceState.OFFLINE and not p.timed_out(gone, T0 + 999, 45)
    assert p.came_online(gone, T0 + 50, "call-2").state is PresenceState.BUSY


def test_round_trip() -> None:
    value = p.busy(p.came_online(agent(), T0, None), "x", T0)
    assert AgentPresence.from_dict(value.to_dict()) == value


def test_index_changes_follow_the_state() -> None:
    call, _ = c.new_call(call_id="a", department_id=1, outlet_id=2, staff_user_id=3, county="x", now=T0)
    created = index_changes(None, call)
    assert created.queue_add == 1 and created.outlet_claim == 2 and created.agent_claim is None
    offered, _ = c.offer(call, 9, "a", T0)
    claimed = index_changes(call, offered)
    assert claimed.queue_remove == 1 and claimed.queue_add is None and claimed.agent_claim == 9
    ended, _ = c.end(offered, c.EndReason.CANCELLED, "u", T0)
    released = index_changes(offered, ended)
    assert released.agent_release == 9 and released.outlet_release == 2 and released.ended
