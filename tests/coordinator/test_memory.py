"""MemoryCoordinator-only behaviour: ``simulate_state``, the hook relay tests use to
exercise ZooKeeper outages without ZooKeeper. It must mirror ``zk.py``: SUSPENDED keeps
members and candidacy but pauses leadership; LOST drops them; CONNECTED restores them.
"""

from __future__ import annotations

import pytest

from coordinator.base import Member, State
from coordinator.errors import NotConnectedError
from coordinator.memory import MemoryCoordinator, MemoryStore
from tests.coordinator.util import LeaderEvents, StateEvents

pytestmark = pytest.mark.timeout(10)


def test_suspended_pauses_leadership_and_refuses_calls() -> None:
    store = MemoryStore()
    a, b = MemoryCoordinator(store), MemoryCoordinator(store)
    states, lead_a, lead_b = StateEvents(), LeaderEvents(), LeaderEvents()
    a.add_listener(states)
    a.register_member(Member("relay-a", "a", 1.0))
    a.run_for_leader(lead_a)
    b.run_for_leader(lead_b)
    assert lead_a.wait_for(True, timeout=1)

    a.simulate_state(State.SUSPENDED)
    assert states.drain() == [State.SUSPENDED]
    assert not a.is_leader() and not b.is_leader()  # nobody else leads meanwhile
    assert lead_a.wait_for(False, timeout=1)
    with pytest.raises(NotConnectedError):
        a.get_session("S1")
    assert [m.relay_id for m in b.members()] == ["relay-a"]  # SUSPENDED is not LOST

    a.simulate_state(State.CONNECTED)
    assert a.is_leader() and lead_a.wait_for(True, timeout=1)


def test_lost_drops_ephemerals_and_connected_restores_them() -> None:
    store = MemoryStore()
    a, b = MemoryCoordinator(store), MemoryCoordinator(store)
    lead_a, lead_b = LeaderEvents(), LeaderEvents()
    a.register_member(Member("relay-a", "a", 1.0))
    a.run_for_leader(lead_a)
    b.run_for_leader(lead_b)

    a.simulate_state(State.LOST)
    assert b.members() == []
    assert b.is_leader() and lead_b.wait_for(True, timeout=1)
    assert lead_a.wait_for(False, timeout=1)

    a.register_member(Member("relay-a2", "a2", 2.0))  # while LOST: recorded, not visible
    assert b.members() == []
    a.simulate_state(State.CONNECTED)
    assert [m.relay_id for m in b.members()] == ["relay-a", "relay-a2"]
    assert b.is_leader() and not a.is_leader()  # a queues up behind the new leader
