"""The work pool: at most ``size`` greenlets run backend calls; errors reach the caller."""

from __future__ import annotations

import logging

import gevent
import gevent.event
import pytest

from relay.server.workpool import WorkPool


def test_calls_run_on_at_most_size_greenlets_which_are_kept_between_calls() -> None:
    pool = WorkPool(2, reserved=0, per_owner=2)  # no fairness limits: size is the bound
    active = 0
    peak = 0
    runners: set[gevent.Greenlet] = set()

    def job(n: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        runners.add(gevent.getcurrent())
        gevent.sleep(0.02)
        active -= 1
        return n * n

    callers = [gevent.spawn(pool.run, job, n) for n in range(6)]
    gevent.joinall(callers, timeout=2, raise_error=True)
    assert [c.value for c in callers] == [0, 1, 4, 9, 16, 25]
    assert peak == 2
    assert len(runners) == 2 and gevent.getcurrent() not in runners
    assert pool.busy == 0
    assert pool.run(job, 7) == 49 and len(runners) == 2  # the same greenlets again
    pool.close()


def test_a_calls_exception_is_raised_in_the_caller_and_the_pool_goes_on() -> None:
    pool = WorkPool(1)
    error = ValueError("bad row")

    def fails() -> None:
        raise error

    with pytest.raises(ValueError) as caught:
        pool.run(fails)
    assert caught.value is error
    assert pool.run(lambda: "still here") == "still here"
    pool.close()


def test_close_lets_queued_calls_finish_then_refuses_new_ones() -> None:
    exits: list[int] = []
    pool = WorkPool(1, on_exit=lambda: exits.append(1))
    done: list[int] = []

    def job(n: int) -> int:
        gevent.sleep(0.02)
        done.append(n)
        return n

    callers = [gevent.spawn(pool.run, job, n) for n in range(3)]
    gevent.sleep(0)
    pool.close()
    assert done == [0, 1, 2] and [c.value for c in callers] == [0, 1, 2]
    assert exits == [1]  # once per pool greenlet: releases its database connection
    with pytest.raises(RuntimeError, match="work pool is closed"):
        pool.run(job, 9)
    pool.close()  # idempotent
    assert exits == [1]


def test_close_stops_a_stuck_call_after_its_timeout_and_its_caller_is_told() -> None:
    pool = WorkPool(1)
    caller = gevent.spawn(pool.run, gevent.sleep, 10)
    gevent.sleep(0.01)
    pool.close(timeout=0.05)
    caller.join(timeout=1)
    assert isinstance(caller.exception, RuntimeError)
    assert str(caller.exception) == "work pool stopped"


def test_a_failing_exit_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook() -> None:
        raise OSError("connection already gone")

    pool = WorkPool(1, on_exit=hook)
    assert pool.run(lambda: 1) == 1
    with caplog.at_level(logging.ERROR, logger="relay.server.workpool"):
        pool.close()
    assert "work pool exit hook failed" in caplog.text


def test_a_pool_that_never_ran_anything_closes_at_once() -> None:
    exits: list[int] = []
    pool = WorkPool(4, on_exit=lambda: exits.append(1))
    pool.close(timeout=0.1)
    assert exits == []


# -- fairness ---------------------------------------------------------------------------------


def _hold(pool: WorkPool, owner: str, release: gevent.event.Event) -> gevent.Greenlet:
    return gevent.spawn(pool.run, release.wait, owner=owner)


def test_urgent_calls_never_wait_behind_normal_ones() -> None:
    # The probe: sessions in long methods fill the pool; a new session's identity check
    # still runs at once, on a reserved slot.
    pool = WorkPool(8)
    release = gevent.event.Event()
    holders = [_hold(pool, f"10.0.0.{n}", release) for n in range(24)]
    gevent.sleep(0.01)
    assert pool.busy == 6  # 2 of 8 slots stay free for urgent calls
    with gevent.Timeout(0.5):
        assert pool.run(lambda: "connected", urgent=True) == "connected"
    release.set()
    gevent.joinall(holders, timeout=2, raise_error=True)
    pool.close()


def test_one_owner_holds_at_most_its_share_and_others_go_round_robin() -> None:
    pool = WorkPool(8)  # 6 normal slots, 5 per owner
    release = gevent.event.Event()
    flood = [_hold(pool, "attacker", release) for _ in range(50)]
    gevent.sleep(0.01)
    assert pool.busy == 5
    # An honest client from another address is served while the flood waits its turn.
    with gevent.Timeout(0.5):
        assert pool.run(lambda: "honest", owner="honest") == "honest"
    order: list[str] = []

    def note(who: str) -> None:
        order.append(who)

    waiting = [gevent.spawn(pool.run, note, who, owner=who) for who in ("b", "c", "b", "c")]
    gevent.joinall(waiting, timeout=1, raise_error=True)
    assert sorted(order) == ["b", "b", "c", "c"]
    release.set()
    gevent.joinall(flood, timeout=2, raise_error=True)
    assert pool.busy == 0 and pool.queued == 0
    pool.close()


def test_queued_calls_are_taken_round_robin_across_owners() -> None:
    pool = WorkPool(1, reserved=0)
    order: list[str] = []
    gate = gevent.event.Event()
    first = gevent.spawn(pool.run, gate.wait, owner="x")
    gevent.sleep(0.01)
    calls = [gevent.spawn(pool.run, order.append, who, owner=who) for who in "aaab"]
    gevent.sleep(0.01)
    gate.set()
    gevent.joinall([first, *calls], timeout=1, raise_error=True)
    assert order == ["a", "b", "a", "a"]
    pool.close()


def test_close_fails_calls_still_queued_after_its_timeout() -> None:
    pool = WorkPool(1, reserved=0)
    stuck = gevent.spawn(pool.run, gevent.sleep, 10)
    queued = gevent.spawn(pool.run, lambda: 1)
    gevent.sleep(0.01)
    pool.close(timeout=0.05)
    for caller in (stuck, queued):
        caller.join(timeout=1)
        assert isinstance(caller.exception, RuntimeError)


def test_each_call_reports_how_long_it_waited_for_a_slot() -> None:
    waits: list[float] = []
    pool = WorkPool(1, on_wait=waits.append)
    release = gevent.event.Event()
    first = gevent.spawn(pool.run, release.wait)
    second = gevent.spawn(pool.run, lambda: "second")
    gevent.sleep(0.1)  # the second call queues behind the first
    release.set()
    gevent.joinall([first, second], timeout=2, raise_error=True)
    assert len(waits) == 2
    assert waits[0] < 0.05
    assert 0.09 <= waits[1] < 2
    assert pool.size == 1 and pool.busy == 0
    pool.close()


def test_a_failing_wait_hook_loses_no_call(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: float) -> None:
        raise RuntimeError("metrics are down")

    pool = WorkPool(2, on_wait=broken)
    with caplog.at_level(logging.ERROR):
        assert pool.run(lambda: 42) == 42
    assert "wait hook failed" in caplog.text
    pool.close()
