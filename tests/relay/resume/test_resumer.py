"""The resumer's decisions, on the in-process twins: ``coordinator.memory`` for the cluster
(several ``MemoryCoordinator`` on one ``MemoryStore`` are several relays) and
``relay.resume.memory.MemoryParkStore`` for the database.

Each relay is a ``Resumer`` with a fixed relay id and shortened waits. Every test checks
the outcomes counted in ``ddp_relay_resumes_total{outcome}`` exactly (as a difference of
the process's counters), so a decision counted under the wrong label fails too. The waits
are gevent sleeps: a test that needs something to happen meanwhile spawns a greenlet.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import pytest
from prometheus_client import REGISTRY

from coordinator import CoordinatorError, FencedError, Member, SessionRecord, State
from coordinator.memory import MemoryCoordinator, MemoryStore
from coordinator.sqlite import SQLiteCoordinator
from relay.config import ConfigError, Settings
from relay.metrics import get_metrics
from relay.protocol.ids import session_tag
from relay.resume.memory import MemoryParkStore
from relay.resume.parked import ParkedSession
from relay.resume.resumer import (
    OUTCOMES,
    PARK_WAIT_SECONDS,
    RESUME_WAIT_SECONDS,
    SUSPENDED_WAIT_SECONDS,
    Resumed,
    Resumer,
    build_coordinator,
    redacted,
    relay_id,
)
from relay.resume.store import ParkedStore
from tests.relay.resume.helpers import make_state

pytestmark = pytest.mark.timeout(30)


def ACCEPT(state: ParkedSession) -> bool:
    """The session's binding judge, for tests of everything else: accepts any state."""
    return True


SID = "S0000000000000001"
OTHER_SID = "S0000000000000002"
WINDOW = 300.0
#: The shortened waits (the real ones are seconds).
PARK_WAIT = 0.4
SUSPENDED_WAIT = 0.3
RESUME_WAIT = 0.3


def outcome_counts() -> Counter[str]:
    get_metrics()  # the counters exist from the first use on
    counts: Counter[str] = Counter()
    for outcome in OUTCOMES:
        value = REGISTRY.get_sample_value("ddp_relay_resumes_total", {"outcome": outcome})
        if value:
            counts[outcome] = int(value)
    return counts


@pytest.fixture
def counted() -> Callable[[], Counter[str]]:
    """The outcomes counted since the test began."""
    before = outcome_counts()
    return lambda: outcome_counts() - before


@dataclass
class Cluster:
    """Relays sharing one coordinator ensemble and one park store ("the database")."""

    ensemble: MemoryStore = field(default_factory=MemoryStore)
    parked: MemoryParkStore = field(default_factory=MemoryParkStore)
    made: list[Resumer] = field(default_factory=list)

    def relay(
        self,
        name: str,
        *,
        window: float = WINDOW,
        store: ParkedStore | None = None,
        coordinator: MemoryCoordinator | None = None,
    ) -> Resumer:
        """A started relay named ``name`` (its member registered, in the election)."""
        resumer = Resumer(
            Settings(resume_window=window),
            coordinator if coordinator is not None else MemoryCoordinator(self.ensemble),
            store if store is not None else self.parked,
            get_metrics(),
        )
        resumer.relay_id = name
        resumer.park_wait, resumer.suspended_wait = PARK_WAIT, SUSPENDED_WAIT
        resumer.resume_wait = RESUME_WAIT
        self.made.append(resumer)
        resumer.start()  # in a greenlet: let it run
        deadline = time.monotonic() + 5
        while name not in {m.relay_id for m in self.members()}:
            assert time.monotonic() < deadline, f"{name} never registered"
            gevent.sleep(0.01)
        return resumer

    def members(self) -> list[Member]:
        with self.ensemble.lock:
            return [m for m, _ in self.ensemble.members.values()]

    def record(self, session_id: str = SID) -> SessionRecord | None:
        return self.ensemble.sessions.get(session_id)

    def parked_at(self, relay: Resumer, state: ParkedSession) -> None:
        """``relay`` registers the session and parks it (its socket went away)."""
        assert relay.created(state.session_id) == 1
        assert relay.park(state, 1) is True


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster()
    yield made
    for resumer in made.made:
        resumer.stop()


def coordinator_of(relay: Resumer) -> MemoryCoordinator:
    assert isinstance(relay.coordinator, MemoryCoordinator)
    return relay.coordinator


class SlowLoad:
    """A park store whose ``load`` yields to other greenlets first (as a query does)."""

    def __init__(self, inner: ParkedStore, seconds: float = 0.05) -> None:
        self.inner, self.seconds = inner, seconds
        self.closed = 0

    def save(self, state: ParkedSession, window: float) -> None:
        self.inner.save(state, window)

    def load(self, session_id: str) -> ParkedSession | None:
        gevent.sleep(self.seconds)
        return self.inner.load(session_id)

    def delete(self, session_id: str) -> None:
        self.inner.delete(session_id)

    def delete_expired(self) -> None:
        self.inner.delete_expired()

    def close(self) -> None:
        self.closed += 1


# -- created, parked, resumed ------------------------------------------------------------------


def test_created_parked_then_resumed_on_another_relay(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    state = make_state(SID)
    assert a.created(SID) == 1
    assert cluster.record() == SessionRecord(SID, "relay-a", 1)
    before = time.time()
    assert a.park(state, 1) is True
    record = cluster.record()
    assert record is not None and record.parked and record.owner == "relay-a"
    assert record.epoch == 1 and record.cursor == state.sent_count
    assert before + WINDOW <= record.expires_at <= time.time() + WINDOW

    resumed = b.resume(SID, 8, ACCEPT)

    assert resumed == Resumed(state, 2, ["m9", "m10"])
    assert cluster.record() == SessionRecord(SID, "relay-b", 2, cursor=state.sent_count)
    assert counted() == Counter(parked=1, resumed=1)


def test_a_resumed_session_parks_and_resumes_again_anywhere(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    first = b.resume(SID, 10, ACCEPT)
    assert first is not None and first.epoch == 2
    later = make_state(SID, sent=30, log=5, title="later")
    assert b.park(later, first.epoch) is True
    # Back on the relay it started on, and then on the same relay it was parked on.
    again = a.resume(SID, 27, ACCEPT)
    assert again == Resumed(later, 3, ["m28", "m29", "m30"])
    assert a.park(later, again.epoch) is True
    assert a.resume(SID, 30, ACCEPT) == Resumed(later, 4, [])
    assert counted() == Counter(parked=3, resumed=3)


@pytest.mark.parametrize(
    ("received", "missed"),
    [(10, []), (9, ["m10"]), (6, ["m7", "m8", "m9", "m10"])],
    ids=["all-received", "one-lost", "log-reaches-just-back"],
)
def test_the_messages_after_the_clients_count_are_handed_back(
    cluster: Cluster, received: int, missed: list[str]
) -> None:
    a = cluster.relay("relay-a")
    cluster.parked_at(a, make_state(SID, sent=10, log=4))  # the log holds m7..m10
    resumed = a.resume(SID, received, ACCEPT)
    assert resumed is not None and resumed.missed == missed


# -- refused: a new session ---------------------------------------------------------------------


def test_an_unknown_session_is_refused(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    b = cluster.relay("relay-b")
    assert b.resume(SID, 1, ACCEPT) is None
    assert counted() == Counter(unknown=1)


@pytest.mark.parametrize(
    "bogus",
    ["", "a b", "../up", ".", "x" * 129, "\u00e9t\u00e9", "a/b"],
    ids=["empty", "space", "dotdot", "dot", "too-long", "non-ascii", "slash"],
)
def test_a_session_id_that_cannot_be_one_is_unknown_and_not_logged(
    cluster: Cluster,
    counted: Callable[[], Counter[str]],
    caplog: pytest.LogCaptureFixture,
    bogus: str,
) -> None:
    # The id is whatever the client sent. It used to reach the coordinator, whose
    # ValueError was logged as a warning and counted as "unavailable".
    b = cluster.relay("relay-b")
    caplog.set_level(logging.DEBUG, logger="relay.resume")
    assert b.resume(bogus, 1, ACCEPT) is None
    assert counted() == Counter(unknown=1)
    assert caplog.records == []


def test_a_session_whose_window_passed_is_refused(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a", window=0.1), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    gevent.sleep(0.2)
    assert b.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(parked=1, expired=1)


def test_a_session_the_client_is_not_bound_to_is_refused_and_stays_resumable(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    state = make_state(SID, user_id="u1")
    cluster.parked_at(a, state)
    judged: list[ParkedSession] = []

    def refuse(parked: ParkedSession) -> bool:
        judged.append(parked)
        return False

    assert b.resume(SID, 10, refuse) is None
    assert judged == [state]  # the session judges the parked state itself
    record = cluster.record()
    assert record is not None and record.parked and record.epoch == 1  # nothing claimed
    assert b.resume(SID, 10, ACCEPT) is not None
    assert counted() == Counter(parked=1, not_bound=1, resumed=1)


def test_the_binding_is_judged_only_once_the_count_can_be_replayed(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    # Judging may cost a backend call (a pipelined login): not for a hopeless resume.
    a = cluster.relay("relay-a")
    cluster.parked_at(a, make_state(SID, sent=10, log=4))

    def judge(parked: ParkedSession) -> bool:
        raise AssertionError("judged a resume the log cannot serve")

    assert a.resume(SID, 2, judge) is None
    assert counted() == Counter(parked=1, count=1)


@pytest.mark.parametrize(
    "received",
    [0, -1, 5, 11, 1000],
    ids=["zero", "negative", "before-the-log", "ahead-of-the-server", "far-ahead"],
)
def test_a_count_the_log_cannot_serve_is_refused_and_claims_nothing(
    cluster: Cluster, counted: Callable[[], Counter[str]], received: int
) -> None:
    a = cluster.relay("relay-a")
    cluster.parked_at(a, make_state(SID, sent=10, log=4))  # can serve counts 6..10
    assert a.resume(SID, received, ACCEPT) is None
    record = cluster.record()
    assert record is not None and record.parked and record.epoch == 1
    assert counted() == Counter(parked=1, count=1)


def test_a_parked_session_without_its_state_is_lost(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a = cluster.relay("relay-a")
    cluster.parked_at(a, make_state(SID))
    cluster.parked.delete(SID)
    assert a.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(parked=1, lost=1)


# -- two relays, one session --------------------------------------------------------------------


def test_relays_racing_for_one_session_one_wins_the_others_are_fenced(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    cluster.parked_at(cluster.relay("relay-a"), make_state(SID))
    # Each racer reads the parked record, then yields while loading the state, so all of
    # them pass every check before the first claims: the epoch decides.
    slow = SlowLoad(cluster.parked)
    racers = [cluster.relay(f"relay-{n}", store=slow) for n in range(5)]
    greenlets = [gevent.spawn(r.resume, SID, 10, ACCEPT) for r in racers]
    gevent.joinall(greenlets, timeout=10, raise_error=True)

    results = [g.value for g in greenlets]
    winners = [(r.relay_id, res) for r, res in zip(racers, results, strict=True) if res]
    assert len(winners) == 1
    winner, resumed = winners[0]
    assert resumed.epoch == 2
    record = cluster.record()
    assert record is not None and record.owner == winner and record.epoch == 2
    assert counted() == Counter(parked=1, resumed=1, fenced=4)


def test_a_claimed_session_is_not_resumed_again(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b, c = cluster.relay("relay-a"), cluster.relay("relay-b"), cluster.relay("relay-c")
    cluster.parked_at(a, make_state(SID))
    assert b.resume(SID, 10, ACCEPT) is not None
    # Live on relay-b now (not parked): relay-c waits for a park that does not come.
    assert c.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(parked=1, resumed=1, not_parked=1)


def test_parking_a_session_claimed_meanwhile_is_fenced(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    state = make_state(SID)
    cluster.parked_at(a, state)
    assert b.resume(SID, 10, ACCEPT) is not None
    assert a.park(state, 1) is False
    assert cluster.record() == SessionRecord(SID, "relay-b", 2, cursor=state.sent_count)
    assert counted() == Counter(parked=1, resumed=1, park_fenced=1)


# -- a park still under way ---------------------------------------------------------------------


def test_a_park_under_way_is_waited_for(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    state = make_state(SID)
    assert a.created(SID) == 1
    parking = gevent.spawn_later(0.1, a.park, state, 1)  # the old socket's teardown
    started = time.monotonic()
    resumed = b.resume(SID, 10, ACCEPT)
    waited = time.monotonic() - started
    assert resumed == Resumed(state, 2, [])
    assert 0.1 <= waited < PARK_WAIT
    assert parking.get(timeout=1) is True
    assert counted() == Counter(parked=1, resumed=1)


def test_a_park_that_does_not_come_is_waited_for_briefly(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    assert a.created(SID) == 1  # relay-a is alive and the session live there
    started = time.monotonic()
    assert b.resume(SID, 10, ACCEPT) is None
    assert PARK_WAIT <= time.monotonic() - started < PARK_WAIT + 1
    assert counted() == Counter(not_parked=1)


def test_an_owner_that_died_before_parking_is_not_waited_for(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    b = cluster.relay("relay-b")
    coordinator_of(b).create_session(SID, "relay-dead")  # never a member (killed)
    started = time.monotonic()
    assert b.resume(SID, 10, ACCEPT) is None
    assert time.monotonic() - started < PARK_WAIT / 2
    assert counted() == Counter(owner_gone=1)


def test_an_owner_that_parks_then_leaves_between_two_reads_is_resumed(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    # A graceful shutdown: relay-a parks its sessions and leaves the cluster. Here that
    # happens right after relay-b read the unparked record and before it looks at the
    # members, which used to be refused as "owner_gone".
    a = cluster.relay("relay-a")
    state = make_state(SID)
    assert a.created(SID) == 1
    shutdowns: list[Resumer] = [a]

    class Racing(MemoryCoordinator):
        def members(self) -> list[Member]:
            while shutdowns:
                leaving = shutdowns.pop()
                assert leaving.park(state, 1) is True
                leaving.coordinator.stop()
            return list(super().members())

    b = cluster.relay("relay-b", coordinator=Racing(cluster.ensemble))
    assert b.resume(SID, 10, ACCEPT) == Resumed(state, 2, [])
    assert counted() == Counter(parked=1, resumed=1)


# -- the coordinator or the store unavailable ---------------------------------------------------


def test_a_session_created_while_the_coordinator_is_down_is_not_resumable(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a = cluster.relay("relay-a")
    coordinator_of(a).simulate_state(State.SUSPENDED)
    started = time.monotonic()
    assert a.created(SID) is None
    # No waiting: the client is waiting for ``connected``.
    assert time.monotonic() - started < SUSPENDED_WAIT / 2
    coordinator_of(a).simulate_state(State.CONNECTED)
    assert a.resume(SID, 1, ACCEPT) is None
    assert counted() == Counter(unregistered=1, unknown=1)


def test_such_a_session_is_registered_when_it_parks_if_the_coordinator_is_back(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    # What Session._park_or_drop does with a session that has no epoch.
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    state = make_state(SID)
    coordinator_of(a).simulate_state(State.SUSPENDED)
    assert a.created(SID) is None
    coordinator_of(a).simulate_state(State.CONNECTED)
    assert a.created(SID) == 1
    assert a.park(state, 1) is True
    assert b.resume(SID, 10, ACCEPT) == Resumed(state, 2, [])
    assert counted() == Counter(unregistered=1, parked=1, resumed=1)


def test_a_resume_while_the_coordinator_is_down_starts_anew_and_claims_nothing(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    coordinator_of(b).simulate_state(State.SUSPENDED)
    started = time.monotonic()
    assert b.resume(SID, 10, ACCEPT) is None
    # Retried (backing off) for at most the wait, never past it.
    assert RESUME_WAIT / 2 <= time.monotonic() - started <= RESUME_WAIT + 0.2
    coordinator_of(b).simulate_state(State.CONNECTED)
    assert b.resume(SID, 10, ACCEPT) is not None  # still parked: resumable once it is back
    assert counted() == Counter(parked=1, unavailable=1, resumed=1)


def test_a_brief_suspension_is_ridden_out(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    b.resume_wait = 2.0
    coordinator_of(b).simulate_state(State.SUSPENDED)
    gevent.spawn_later(0.2, coordinator_of(b).simulate_state, State.CONNECTED)
    assert b.resume(SID, 10, ACCEPT) is not None
    # And parking does the same.
    a2 = cluster.relay("relay-a2")
    assert a2.created(OTHER_SID) == 1
    a2.suspended_wait = 2.0
    coordinator_of(a2).simulate_state(State.SUSPENDED)
    gevent.spawn_later(0.2, coordinator_of(a2).simulate_state, State.CONNECTED)
    assert a2.park(make_state(OTHER_SID), 1) is True
    assert counted() == Counter(parked=2, resumed=1)


def test_a_park_while_the_coordinator_is_down_fails_and_is_not_resumable(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    assert a.created(SID) == 1
    coordinator_of(a).simulate_state(State.SUSPENDED)
    started = time.monotonic()
    assert a.park(make_state(SID), 1) is False
    assert SUSPENDED_WAIT / 2 <= time.monotonic() - started <= SUSPENDED_WAIT + 0.2
    coordinator_of(a).simulate_state(State.CONNECTED)
    record = cluster.record()
    assert record is not None and not record.parked
    assert b.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(park_failed=1, not_parked=1)


def test_a_park_while_the_store_is_down_fails_and_is_never_marked_parked(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    # Marked parked without its state, every resume would end "lost".
    a = cluster.relay("relay-a")
    assert a.created(SID) == 1
    cluster.parked.simulate_unavailable()
    assert a.park(make_state(SID), 1) is False
    assert cluster.record() == SessionRecord(SID, "relay-a", 1)
    assert counted() == Counter(park_failed=1)


def test_a_resume_while_the_store_is_down_starts_anew_and_claims_nothing(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    cluster.parked.simulate_unavailable()
    assert b.resume(SID, 10, ACCEPT) is None
    cluster.parked.simulate_unavailable(False)
    assert b.resume(SID, 10, ACCEPT) is not None
    assert counted() == Counter(parked=1, unavailable=1, resumed=1)


# -- disconnect, housekeeping, leadership, lifecycle --------------------------------------------


def test_a_deliberate_disconnect_forgets_the_session(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    resumed = b.resume(SID, 10, ACCEPT)
    assert resumed is not None
    b.dropped(SID, resumed.epoch)  # the resumed session later says ``disconnect``
    assert cluster.record() is None
    assert cluster.parked.session_ids() == set()
    assert a.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(parked=1, resumed=1, unknown=1)


def test_dropping_is_best_effort_and_fenced(cluster: Cluster) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    resumed = b.resume(SID, 10, ACCEPT)
    assert resumed is not None
    a.dropped(SID, 1)  # a stale owner: fenced, quietly; only the stored state goes
    assert cluster.record() == SessionRecord(SID, "relay-b", 2, cursor=10)
    assert cluster.parked.session_ids() == set()
    assert a.created(OTHER_SID) == 1
    a.dropped(OTHER_SID, None)  # no epoch: the record stays (expiry is not for live ones)
    assert cluster.record(OTHER_SID) is not None
    cluster.parked.simulate_unavailable()
    coordinator_of(a).simulate_state(State.SUSPENDED)
    a.dropped(OTHER_SID, 1)  # nothing reachable: no error either


def test_housekeeping_forgets_sessions_whose_window_passed(cluster: Cluster) -> None:
    brief, long = cluster.relay("relay-a", window=0.1), cluster.relay("relay-b")
    cluster.parked_at(brief, make_state(SID))
    cluster.parked_at(long, make_state(OTHER_SID))
    live = "S0000000000000003"
    assert long.created(live) == 1  # connected, never parked: never reaped
    gevent.sleep(0.2)
    brief.housekeeping()
    assert cluster.record(SID) is None
    assert cluster.record(OTHER_SID) is not None and cluster.record(live) is not None
    assert cluster.parked.session_ids() == {OTHER_SID}
    assert long.resume(OTHER_SID, 10, ACCEPT) is not None


def test_housekeeping_chores_do_not_hold_each_other_up(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    a = cluster.relay("relay-a", window=0.1)
    cluster.parked_at(a, make_state(SID))
    gevent.sleep(0.2)
    coordinator_of(a).simulate_state(State.SUSPENDED)
    a.housekeeping()  # the records cannot be reaped; the expired state still goes
    assert cluster.parked.session_ids() == set()
    assert cluster.record() is not None
    coordinator_of(a).simulate_state(State.CONNECTED)
    cluster.parked_at(a, make_state(OTHER_SID))
    gevent.sleep(0.2)
    cluster.parked.simulate_unavailable()
    a.housekeeping()  # and the other way round
    assert cluster.record() is None and cluster.record(OTHER_SID) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "coordinator" in warnings[0] and "park store" in warnings[1]


def test_the_first_relay_leads_and_another_takes_over(cluster: Cluster) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    assert a.is_leader() and not b.is_leader()
    coordinator_of(a).simulate_state(State.SUSPENDED)  # leadership is never trusted then
    assert not a.is_leader()
    coordinator_of(a).simulate_state(State.CONNECTED)
    a.stop()
    assert b.is_leader() and not a.is_leader()


def test_is_leader_is_false_when_the_coordinator_errs(cluster: Cluster) -> None:
    class Broken(MemoryCoordinator):
        def is_leader(self) -> bool:
            raise CoordinatorError("broken")

    assert cluster.relay("relay-a", coordinator=Broken(cluster.ensemble)).is_leader() is False


def test_start_never_fails_and_stop_releases_everything(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    class WillNotStart(MemoryCoordinator):
        def start(self, timeout: float = 10.0) -> bool:
            raise CoordinatorError("no ensemble")

    store = SlowLoad(cluster.parked)
    relay = Resumer(Settings(), WillNotStart(cluster.ensemble), store, None)
    relay.start()  # in the background: a worker starts whatever the coordinator does
    gevent.sleep(0.05)
    assert "coordinator did not start" in caplog.text
    relay.stop()
    assert relay.coordinator.state is State.LOST and store.closed == 1


def test_without_metrics_nothing_is_counted(
    cluster: Cluster, counted: Callable[[], Counter[str]]
) -> None:
    relay = Resumer(Settings(), MemoryCoordinator(cluster.ensemble), cluster.parked, None)
    relay.relay_id = "relay-quiet"
    assert relay.resume(SID, 1, ACCEPT) is None
    assert counted() == Counter()


def test_the_real_waits_and_relay_id() -> None:
    relay = Resumer(Settings(), MemoryCoordinator(), MemoryParkStore(), None)
    assert (relay.park_wait, relay.suspended_wait, relay.resume_wait) == (
        PARK_WAIT_SECONDS,
        SUSPENDED_WAIT_SECONDS,
        RESUME_WAIT_SECONDS,
    )
    assert relay.relay_id == relay_id()
    # A coordinator id (it names a ZooKeeper node): hostname and pid.
    SessionRecord("S1", relay.relay_id, 1)


def test_build_coordinator_follows_the_settings(tmp_path: Path) -> None:
    from coordinator.zk import ZooKeeperCoordinator  # imports kazoo: only here

    assert isinstance(build_coordinator(Settings()), MemoryCoordinator)
    sqlite = build_coordinator(Settings(coordinator_path=str(tmp_path / "c.sqlite")))
    assert isinstance(sqlite, SQLiteCoordinator)
    sqlite.stop()
    zk = build_coordinator(Settings(zookeeper="127.0.0.1:1", coordinator_path="ignored"))
    assert isinstance(zk, ZooKeeperCoordinator)  # ZooKeeper wins; nothing connects yet
    zk.stop()


def test_fenced_error_is_a_coordinator_error() -> None:
    # resume() tells "fenced" from "unavailable" by this family.
    assert issubclass(FencedError, CoordinatorError)


def test_a_session_reaped_between_the_read_and_the_claim_is_unknown(
    cluster: Cluster, counted: Callable[[], Counter[str]], caplog: pytest.LogCaptureFixture
) -> None:
    a = cluster.relay("relay-a", window=0.1)
    cluster.parked_at(a, make_state(SID))

    class ReapedMeanwhile(SlowLoad):
        def load(self, session_id: str) -> ParkedSession | None:
            state = self.inner.load(session_id)
            assert coordinator_of(a).reap_session(session_id, time.time() + 1)  # the leader
            return state

    b = cluster.relay("relay-b", store=ReapedMeanwhile(cluster.parked))
    assert b.resume(SID, 10, ACCEPT) is None
    assert counted() == Counter(parked=1, unknown=1)
    assert "failed" not in caplog.text


def test_log_lines_name_a_session_by_its_tag_even_inside_an_error_text() -> None:
    text = redacted(FencedError("session aGAyuyZwCFxWdJyGm is not parked"), "aGAyuyZwCFxWdJyGm")
    assert "aGAyuyZwCFxWdJyGm" not in text
    assert text == f"session {session_tag('aGAyuyZwCFxWdJyGm')} is not parked"


def test_zookeeper_without_kazoo_is_a_config_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kazoo is the ``zookeeper`` extra: a relay told to use ZooKeeper without it says so."""
    monkeypatch.delitem(sys.modules, "coordinator.zk", raising=False)
    monkeypatch.setitem(sys.modules, "kazoo", None)  # import kazoo -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "kazoo.client", None)
    with pytest.raises(ConfigError, match=r"ddp-relay\[zookeeper\]"):
        build_coordinator(Settings.from_env({"RELAY_ZOOKEEPER": "127.0.0.1:1"}))


# -- metrics ------------------------------------------------------------------------------------


def test_a_resume_is_timed_and_spends_its_stored_state(cluster: Cluster) -> None:
    a, b = cluster.relay("relay-a"), cluster.relay("relay-b")
    cluster.parked_at(a, make_state(SID))
    count = "ddp_relay_resume_seconds_count"
    before = REGISTRY.get_sample_value(count) or 0.0
    assert b.resume(SID, 10, ACCEPT) is not None
    assert REGISTRY.get_sample_value(count) == before + 1
    # Claimed: its stored state is gone (not counted as parked, not held against its
    # address's cap), and a second claimant is fenced, not told the state was lost.
    assert SID not in cluster.parked.session_ids()
    assert cluster.relay("relay-c").resume(SID, 10, ACCEPT) is None
    refused = cluster.relay("relay-d").resume(SID, 10, ACCEPT)
    assert refused is None
    assert REGISTRY.get_sample_value(count) == before + 1  # refusals are not timed


def test_coordinator_connected_follows_its_state(cluster: Cluster) -> None:
    relay = cluster.relay("relay-a")
    assert relay.coordinator_connected()
    coordinator_of(relay).simulate_state(State.SUSPENDED)
    assert not relay.coordinator_connected()
    coordinator_of(relay).simulate_state(State.CONNECTED)
    assert relay.coordinator_connected()


def test_count_parked_without_a_database_cannot_say(cluster: Cluster) -> None:
    assert cluster.relay("relay-a").count_parked() is None


@pytest.mark.django_db
def test_count_parked_counts_the_states_inside_their_window(django_database_url: str) -> None:
    from relay.resume.store import PostgresParkStore

    store = PostgresParkStore(django_database_url)
    ensemble = MemoryStore()
    resumer = Resumer(
        Settings(resume_window=WINDOW, database_url=django_database_url),
        MemoryCoordinator(ensemble),
        store,
        get_metrics(),
    )
    ids = [f"S{n:016d}" for n in range(900, 903)]
    try:
        base = resumer.count_parked()
        assert base is not None
        for sid in ids:
            store.save(make_state(sid), WINDOW)
        store.save(make_state("S0000000000000999"), -1)  # its window passed already
        assert resumer.count_parked() == base + 3
        resumer._counter.close()  # type: ignore[union-attr]  # the database dropped it
        assert resumer.count_parked() == base + 3  # reopened
    finally:
        for sid in [*ids, "S0000000000000999"]:
            store.delete(sid)
        resumer.stop()
    bad = Resumer(
        Settings(resume_window=WINDOW, database_url="postgresql://127.0.0.1:1/none"),
        MemoryCoordinator(ensemble),
        MemoryParkStore(),
        get_metrics(),
    )
    assert bad.count_parked() is None  # unreachable: unknown, logged
