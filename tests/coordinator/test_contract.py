"""One contract suite for every ``Coordinator``: memory, SQLite and ZooKeeper.

The ``cluster`` fixture is parametrized over a factory per backend; each call of it makes
and starts one more coordinator (one more "relay") on the same cluster: a shared
``MemoryStore``, one SQLite file (a coordinator per "worker process"), or a fresh znode
root on the session's ZooKeeper server (threading handler: this process is not
monkey-patched). Backend-only behaviour is in ``test_zookeeper.py`` (outage, session
expiry, the gevent handler) and ``test_sqlite.py`` (several processes, SIGKILL).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

from coordinator.base import MAX_FACTS_BYTES, Coordinator, Member, State
from coordinator.errors import (
    CoordinatorError,
    FencedError,
    NotConnectedError,
    SessionExists,
    SessionNotFound,
)
from coordinator.memory import MemoryCoordinator, MemoryStore
from coordinator.sqlite import SQLiteCoordinator
from tests.coordinator.util import LeaderEvents, wait_until

pytestmark = pytest.mark.timeout(30)

MakeCoordinator = Callable[[], Coordinator]


@pytest.fixture(params=["memory", "sqlite", "zookeeper"])
def cluster(request: pytest.FixtureRequest) -> Iterator[MakeCoordinator]:
    """A factory: each call returns one more started coordinator on the same cluster."""
    made: list[Coordinator] = []
    if request.param == "memory":
        store = MemoryStore()

        def make() -> Coordinator:
            coordinator = MemoryCoordinator(store)
            made.append(coordinator)
            return coordinator

    elif request.param == "sqlite":
        path = request.getfixturevalue("tmp_path") / "coordinator.sqlite"

        def make() -> Coordinator:
            coordinator = SQLiteCoordinator(path, member_ttl=2.0, leader_ttl=2.0)
            made.append(coordinator)
            return coordinator

    else:
        from coordinator.zk import ZooKeeperCoordinator

        hosts = request.getfixturevalue("zk_server")
        root = f"/ddp-relay-test/{uuid.uuid4().hex}/v1"

        def make() -> Coordinator:
            coordinator = ZooKeeperCoordinator(
                hosts, root=root, handler="threading", session_timeout=4.0
            )
            made.append(coordinator)
            return coordinator

    def make_started() -> Coordinator:
        coordinator = make()
        assert coordinator.start(timeout=10.0), "coordinator did not connect"
        assert coordinator.state is State.CONNECTED
        return coordinator

    try:
        yield make_started
    finally:
        for coordinator in made:
            coordinator.stop()


# --- sessions ------------------------------------------------------------------------


def test_create_and_get(cluster: MakeCoordinator) -> None:
    c = cluster()
    record = c.create_session("S1", "relay-a")
    assert (record.session_id, record.owner, record.epoch) == ("S1", "relay-a", 1)
    assert (record.cursor, record.parked, record.expires_at, record.facts) == (0, False, 0.0, b"")
    assert c.get_session("S1") == record
    assert cluster().get_session("S1") == record  # another relay sees it
    assert c.get_session("nope") is None
    with pytest.raises(SessionExists):
        c.create_session("S1", "relay-b")


def test_invalid_ids_and_oversized_facts_are_value_errors(cluster: MakeCoordinator) -> None:
    c = cluster()
    for bad in ("", "a/b", "..", "x" * 129, "sp ace"):
        with pytest.raises(ValueError):
            c.create_session(bad, "relay-a")
    with pytest.raises(ValueError):
        c.create_session("S1", "bad/owner")
    c.create_session("S1", "relay-a")
    with pytest.raises(ValueError):
        c.park_session("S1", "relay-a", 1, 0, b"x" * (MAX_FACTS_BYTES + 1), 100.0)
    big = c.park_session("S1", "relay-a", 1, 0, b"\x00\n" * (MAX_FACTS_BYTES // 2), 100.0)
    assert c.get_session("S1") == big


def test_park_then_claim_moves_ownership_and_bumps_epoch(cluster: MakeCoordinator) -> None:
    a, b = cluster(), cluster()
    a.create_session("S1", "relay-a")
    parked = a.park_session("S1", "relay-a", 1, cursor=42, facts=b"\x01ptr", expires_at=1e9)
    assert (parked.parked, parked.cursor, parked.facts, parked.epoch) == (True, 42, b"\x01ptr", 1)
    assert b.get_session("S1") == parked

    claimed = b.claim_session("S1", "relay-b", expected_epoch=1, require_parked=True)
    assert (claimed.owner, claimed.epoch, claimed.parked) == ("relay-b", 2, False)
    assert (claimed.cursor, claimed.facts) == (42, b"\x01ptr")  # what the resume loads
    assert a.get_session("S1") == claimed


def test_claim_with_a_stale_epoch_is_fenced(cluster: MakeCoordinator) -> None:
    c = cluster()
    c.create_session("S1", "relay-a")
    c.claim_session("S1", "relay-b", 1)
    with pytest.raises(FencedError):
        c.claim_session("S1", "relay-c", 1)
    with pytest.raises(FencedError):
        c.claim_session("S1", "relay-c", 3)
    record = c.get_session("S1")
    assert record is not None and (record.owner, record.epoch) == ("relay-b", 2)
    with pytest.raises(SessionNotFound):
        c.claim_session("missing", "relay-c", 1)


def test_claim_requiring_parked_refuses_a_live_session(cluster: MakeCoordinator) -> None:
    c = cluster()
    c.create_session("S1", "relay-a")
    with pytest.raises(FencedError):
        c.claim_session("S1", "relay-b", 1, require_parked=True)
    assert c.claim_session("S1", "relay-b", 1).epoch == 2  # without the flag: allowed


def test_concurrent_claims_with_the_same_epoch_exactly_one_wins(
    cluster: MakeCoordinator,
) -> None:
    relays = [cluster() for _ in range(3)]
    relays[0].create_session("S1", "relay-0")
    relays[0].park_session("S1", "relay-0", 1, 7, b"f", 1e9)
    claimers = 8
    barrier = threading.Barrier(claimers)
    outcomes: list[str] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        coordinator = relays[i % len(relays)]
        barrier.wait(timeout=10)
        try:
            coordinator.claim_session("S1", f"relay-{i}", 1)
            result = f"won:{i}"
        except FencedError:
            result = "fenced"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(outcomes) == claimers
    winners = [o for o in outcomes if o.startswith("won:")]
    assert len(winners) == 1, outcomes
    record = relays[0].get_session("S1")
    assert record is not None
    assert record.epoch == 2 and record.owner == f"relay-{winners[0][4:]}"


def test_only_the_current_owner_at_its_epoch_may_park(cluster: MakeCoordinator) -> None:
    c = cluster()
    c.create_session("S1", "relay-a")
    with pytest.raises(FencedError):
        c.park_session("S1", "relay-x", 1, 1, b"", 1e9)  # not the owner
    with pytest.raises(FencedError):
        c.park_session("S1", "relay-a", 2, 1, b"", 1e9)  # not its epoch
    c.park_session("S1", "relay-a", 1, 1, b"one", 1e9)
    again = c.park_session("S1", "relay-a", 1, 5, b"two", 2e9)  # re-park: an update
    assert (again.cursor, again.facts, again.expires_at) == (5, b"two", 2e9)
    with pytest.raises(SessionNotFound):
        c.park_session("missing", "relay-a", 1, 1, b"", 1e9)


def test_a_slow_old_owner_cannot_park_over_a_resumed_session(cluster: MakeCoordinator) -> None:
    old, new = cluster(), cluster()
    old.create_session("S1", "relay-old")
    # The client reconnects elsewhere before the old relay noticed its socket died.
    new.claim_session("S1", "relay-new", 1)
    with pytest.raises(FencedError):
        old.park_session("S1", "relay-old", 1, 99, b"stale", 1e9)
    with pytest.raises(FencedError):
        old.drop_session("S1", "relay-old", 1)
    record = new.get_session("S1")
    assert record is not None and (record.owner, record.epoch, record.facts) == (
        "relay-new",
        2,
        b"",
    )


def test_drop(cluster: MakeCoordinator) -> None:
    c = cluster()
    c.create_session("S1", "relay-a")
    with pytest.raises(FencedError):
        c.drop_session("S1", "relay-b", 1)
    c.drop_session("S1", "relay-a", 1)
    assert c.get_session("S1") is None
    with pytest.raises(SessionNotFound):
        c.drop_session("S1", "relay-a", 1)
    c.create_session("S1", "relay-a")  # the id is free again


def test_expired_sessions_and_reap(cluster: MakeCoordinator) -> None:
    c = cluster()
    for sid in ("A", "B", "C", "D"):
        c.create_session(sid, "relay-a")
    c.park_session("A", "relay-a", 1, 0, b"", expires_at=100.0)
    c.park_session("B", "relay-a", 1, 0, b"", expires_at=200.0)
    c.park_session("C", "relay-a", 1, 0, b"", expires_at=300.0)
    # D is live (not parked): never expired, whatever the time.
    assert c.expired_sessions(now=50.0) == []
    assert c.expired_sessions(now=200.0) == ["A", "B"]
    assert c.expired_sessions(now=1e12) == ["A", "B", "C"]

    c.claim_session("B", "relay-b", 1)  # resumed just in time
    c.park_session("C", "relay-a", 1, 0, b"", expires_at=900.0)  # re-parked, later expiry
    leader = cluster()
    assert leader.reap_session("A", now=250.0) is True
    assert leader.reap_session("B", now=250.0) is False
    assert leader.reap_session("C", now=350.0) is False
    assert leader.reap_session("D", now=1e12) is False
    assert leader.reap_session("missing", now=1e12) is False
    assert c.get_session("A") is None
    assert [c.get_session(s) is not None for s in ("B", "C", "D")] == [True, True, True]
    assert c.expired_sessions(now=1e12) == ["C"]


# --- membership ----------------------------------------------------------------------


def test_members_appear_and_disappear(cluster: MakeCoordinator) -> None:
    a, b = cluster(), cluster()
    ma = Member("relay-a", "10.0.0.1:8000", 1000.5)
    mb = Member("relay-b", "10.0.0.2:8000", 1001.25)
    assert a.members() == []
    a.register_member(ma)
    b.register_member(mb)
    assert a.members() == [ma, mb]
    assert b.members() == [ma, mb]
    b.stop()  # ephemeral: a relay that goes away leaves the member list
    wait_until(lambda: a.members() == [ma], "relay-b's member to vanish")
    with pytest.raises(NotConnectedError):
        b.members()


# --- leadership ----------------------------------------------------------------------


def test_exactly_one_leader_and_handover(cluster: MakeCoordinator) -> None:
    a, b = cluster(), cluster()
    events_a, events_b = LeaderEvents(), LeaderEvents()
    a.run_for_leader(events_a)
    wait_until(a.is_leader, "the first candidate to lead")
    b.run_for_leader(events_b)
    assert events_a.wait_for(True)
    assert not b.is_leader() and not events_b.seen(True, within=0.5)
    assert [a.is_leader(), b.is_leader()] == [True, False]

    a.stop()
    assert events_b.wait_for(True), "the other candidate did not take over"
    assert b.is_leader() and not a.is_leader()
    assert events_a.wait_for(False)


def test_stopped_coordinator_refuses_calls(cluster: MakeCoordinator) -> None:
    c = cluster()
    c.stop()
    c.stop()  # idempotent
    assert c.state is not State.CONNECTED
    with pytest.raises(NotConnectedError):
        c.get_session("S1")
    with pytest.raises(NotConnectedError):
        c.create_session("S1", "relay-a")
    with pytest.raises(CoordinatorError):
        c.start()
