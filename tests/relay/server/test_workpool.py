"""The work pool: at most ``size`` greenlets run backend calls; errors reach the caller."""

from __future__ import annotations

import logging

import gevent
import pytest

from relay.server.workpool import WorkPool


def test_calls_run_on_at_most_size_greenlets_which_are_kept_between_calls() -> None:
    pool = WorkPool(2)
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
