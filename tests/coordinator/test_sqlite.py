"""SQLiteCoordinator-only behaviour: several processes on one file (as the gunicorn workers
of one node are), SIGKILLed members and leaders, an unusable file (SUSPENDED), gevent.

The shared behaviour of every coordinator is in ``test_contract.py``. The processes here
are ``multiprocessing`` "spawn" children (fresh interpreters) running the functions below.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import pytest

from coordinator.base import Member, State
from coordinator.errors import CoordinatorError, FencedError, NotConnectedError
from coordinator.sqlite import SQLiteCoordinator
from tests.coordinator.util import LeaderEvents, StateEvents, wait_until

pytestmark = pytest.mark.timeout(60)

ROOT_DIR = Path(__file__).resolve().parents[2]
TTL = 1.0
ROUNDS = 300

ctx = multiprocessing.get_context("spawn")


# --- what the child processes run ----------------------------------------------------


def _claimer(path: str, name: str, rounds: int, barrier: Any, results: Any) -> None:
    """Claim session S1 at epoch 1, 2, ... in lockstep (``barrier``) with another process."""
    c = SQLiteCoordinator(path, member_ttl=TTL, leader_ttl=TTL)
    assert c.start(timeout=10.0)
    won: list[int] = []
    try:
        for epoch in range(1, rounds + 1):
            barrier.wait(timeout=10.0)
            try:
                c.claim_session("S1", name, expected_epoch=epoch)
                won.append(epoch)
            except FencedError:
                pass
    finally:
        c.stop()
    results.put((name, won))


def _relay(path: str, name: str, ttl: float, events: Any) -> None:
    """A relay: a member and a leader candidate; reports to ``events`` until killed."""
    c = SQLiteCoordinator(path, member_ttl=ttl, leader_ttl=ttl)
    assert c.start(timeout=10.0)
    c.register_member(Member(name, f"{name}:8000", time.time()))
    c.run_for_leader(lambda leading: events.put((name, leading)))
    events.put((name, "ready"))
    time.sleep(120)  # until SIGKILLed


# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[SpawnProcess]]:
    """Children to SIGKILL and reap at the end, whatever happened."""
    started: list[SpawnProcess] = []
    try:
        yield started
    finally:
        for p in started:
            if p.is_alive():
                p.kill()
            p.join(timeout=10)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / ".state" / "coordinator.sqlite")


def _spawn(processes: list[SpawnProcess], target: Any, *args: Any) -> SpawnProcess:
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    processes.append(p)
    return p


def _expect(events: Any, wanted: tuple[str, object], timeout: float = 10.0) -> float:
    """Wait for ``wanted`` on a multiprocessing queue (others are dropped); its arrival time."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            if events.get(timeout=left) == wanted:
                return time.monotonic()
        except queue.Empty:
            break
    raise AssertionError(f"timed out after {timeout} s waiting for {wanted}")


def _never(events: Any, unwanted: tuple[str, object], within: float) -> bool:
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            if events.get(timeout=left) == unwanted:
                return False
        except queue.Empty:
            return True
    return True


@pytest.fixture
def observer(db_path: str) -> Iterator[SQLiteCoordinator]:
    c = SQLiteCoordinator(db_path, member_ttl=TTL, leader_ttl=TTL)
    assert c.start(timeout=10.0)
    try:
        yield c
    finally:
        c.stop()


# --- several processes ---------------------------------------------------------------


def test_two_processes_claiming_at_the_same_epoch_exactly_one_wins_each_round(
    db_path: str, observer: SQLiteCoordinator, processes: list[SpawnProcess]
) -> None:
    observer.create_session("S1", "relay-0")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    for name in ("relay-a", "relay-b"):
        _spawn(processes, _claimer, db_path, name, ROUNDS, barrier, results)
    won = dict(results.get(timeout=30) for _ in range(2))
    a, b = set(won["relay-a"]), set(won["relay-b"])
    assert not a & b, f"both won rounds {sorted(a & b)}"
    assert a | b == set(range(1, ROUNDS + 1)), "a round nobody won"
    record = observer.get_session("S1")
    assert record is not None and record.epoch == ROUNDS + 1
    assert record.owner == ("relay-a" if ROUNDS in a else "relay-b")


def test_a_killed_process_member_vanishes_after_member_ttl(
    db_path: str, observer: SQLiteCoordinator, processes: list[SpawnProcess]
) -> None:
    events = ctx.Queue()
    child = _spawn(processes, _relay, db_path, "relay-a", TTL, events)
    _expect(events, ("relay-a", "ready"))
    observer.register_member(Member("relay-o", "o:8000", 1.0))
    assert [m.relay_id for m in observer.members()] == ["relay-a", "relay-o"]

    child.kill()  # SIGKILL: no stop(), its row stays until the heartbeat is too old
    child.join(timeout=5)
    killed = time.monotonic()
    assert [m.relay_id for m in observer.members()] == ["relay-a", "relay-o"]
    wait_until(
        lambda: [m.relay_id for m in observer.members()] == ["relay-o"],
        "the killed relay's member to vanish",
        timeout=TTL + 3.0,
    )
    assert time.monotonic() - killed >= TTL * 0.5  # it went by TTL, not at once
    time.sleep(TTL)  # our own member is kept alive by our heartbeat meanwhile
    assert [m.relay_id for m in observer.members()] == ["relay-o"]


def test_leadership_moves_to_the_survivor_when_the_leader_is_killed(
    db_path: str, observer: SQLiteCoordinator, processes: list[SpawnProcess]
) -> None:
    ttl = 1.5
    events = ctx.Queue()
    leader = _spawn(processes, _relay, db_path, "relay-a", ttl, events)
    _expect(events, ("relay-a", "ready"))
    _expect(events, ("relay-a", True))
    _spawn(processes, _relay, db_path, "relay-b", ttl, events)
    _expect(events, ("relay-b", "ready"))
    assert _never(events, ("relay-b", True), within=1.0), "two leaders"

    leader.kill()
    leader.join(timeout=5)
    killed = time.monotonic()
    took_over = _expect(events, ("relay-b", True), timeout=ttl + 5.0)
    assert took_over - killed >= ttl / 3  # after the dead leader's lease ran out
    wait_until(
        lambda: [m.relay_id for m in observer.members()] == ["relay-b"],
        "only the survivor to be a member",
    )


# --- one process ---------------------------------------------------------------------


def test_state_survives_a_restart_on_the_same_file(db_path: str) -> None:
    first = SQLiteCoordinator(db_path)
    assert first.start()
    first.create_session("S1", "relay-a")
    first.park_session("S1", "relay-a", 1, 7, b"\x00ptr\n", 1e9)
    first.stop()
    second = SQLiteCoordinator(db_path)
    try:
        assert second.start()
        record = second.get_session("S1")
        assert record is not None and (record.cursor, record.facts, record.parked) == (
            7,
            b"\x00ptr\n",
            True,
        )
        assert second.claim_session("S1", "relay-b", 1, require_parked=True).epoch == 2
    finally:
        second.stop()


def test_a_relay_id_held_by_another_live_coordinator_is_refused(db_path: str) -> None:
    a = SQLiteCoordinator(db_path, member_ttl=TTL, leader_ttl=TTL)
    b = SQLiteCoordinator(db_path, member_ttl=TTL, leader_ttl=TTL)
    try:
        assert a.start() and b.start()
        a.register_member(Member("relay-x", "a:8000", 1.0))
        with pytest.raises(CoordinatorError):
            b.register_member(Member("relay-x", "b:8000", 2.0))
        assert [m.address for m in b.members()] == ["a:8000"]
        time.sleep(TTL * 1.5)  # b must not have re-created it behind a's back
        assert [m.address for m in b.members()] == ["a:8000"]
    finally:
        a.stop()
        b.stop()


def test_an_unusable_file_is_suspended_until_it_can_be_written(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("a file where the directory should be")
    c = SQLiteCoordinator(state_dir / "coordinator.sqlite", member_ttl=0.6, leader_ttl=0.6)
    states, lead = StateEvents(), LeaderEvents()
    c.add_listener(states)
    c.register_member(Member("relay-a", "a:8000", 1.0))  # recorded, never raises
    c.run_for_leader(lead)
    try:
        assert c.start(timeout=0.3) is False
        assert c.state is State.SUSPENDED and not c.is_leader()
        with pytest.raises(NotConnectedError):
            c.get_session("S1")
        with pytest.raises(NotConnectedError):
            c.create_session("S1", "relay-a")

        state_dir.unlink()
        assert states.wait_for(State.CONNECTED)
        assert lead.wait_for(True)
        assert [m.relay_id for m in c.members()] == ["relay-a"]
        c.create_session("S1", "relay-a")

        # The directory is replaced under a running coordinator: never write to the old file.
        shutil.rmtree(state_dir)
        state_dir.write_text("again")
        with pytest.raises(NotConnectedError):
            c.get_session("S1")
        assert c.state is State.SUSPENDED and not c.is_leader()
        assert states.wait_for(State.SUSPENDED)
        assert lead.wait_for(False)

        state_dir.unlink()  # back, empty: members and leadership are re-created
        assert states.wait_for(State.CONNECTED)
        assert lead.wait_for(True)
        assert [m.relay_id for m in c.members()] == ["relay-a"]
        assert c.get_session("S1") is None
    finally:
        c.stop()
    assert _state_of(c) is State.LOST


def _state_of(c: SQLiteCoordinator) -> State:
    return c.state  # read again (mypy narrowed ``c.state`` from earlier asserts)


def test_works_under_gevent_monkey_patching(db_path: str) -> None:
    """The worker is a greenlet: heartbeats go on while greenlets sleep, claims are fenced."""
    script = textwrap.dedent(
        """
        from gevent import monkey

        monkey.patch_all()

        import sys
        import gevent
        from gevent.event import Event

        from coordinator.base import Member
        from coordinator.errors import FencedError
        from coordinator.sqlite import SQLiteCoordinator

        a = SQLiteCoordinator(sys.argv[1], member_ttl=0.6, leader_ttl=0.6)
        b = SQLiteCoordinator(sys.argv[1], member_ttl=0.6, leader_ttl=0.6)
        assert a.start(timeout=5) and b.start(timeout=5)
        leading = Event()
        a.register_member(Member("relay-a", "a:8000", 1.0))
        a.run_for_leader(lambda now: leading.set() if now else None)
        assert leading.wait(5), "no leadership"
        gevent.sleep(1.5)  # > member_ttl: only the heartbeat greenlet keeps relay-a alive
        assert [m.relay_id for m in b.members()] == ["relay-a"], b.members()
        assert a.is_leader()

        a.create_session("S1", "relay-a")
        wins = []

        def claim(i):
            try:
                (a if i % 2 else b).claim_session("S1", f"relay-{i}", 1)
                wins.append(i)
            except FencedError:
                pass

        gevent.joinall([gevent.spawn(claim, i) for i in range(20)], timeout=10)
        assert len(wins) == 1, wins
        a.stop()
        b.stop()
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", script, db_path],
        cwd=ROOT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
