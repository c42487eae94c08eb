"""``loadtest.bench.storm`` without a server: splitting a storm over generator processes,
merging their reports, and the figures of a run (subscriptions per second per worker,
the ready-time distribution, what makes a storm incomplete).

The real storms are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench.figures import quantile
from loadtest.bench.storm import StormRun, merge, split


@given(st.integers(min_value=1, max_value=100_000), st.integers(min_value=1, max_value=64))
def test_split_is_even_and_complete(sessions: int, generators: int) -> None:
    shares = split(sessions, generators)
    assert sum(shares) == sessions
    assert len(shares) == min(generators, sessions)
    assert min(shares) >= 1 and max(shares) - min(shares) <= 1


def _storm(first: float, ready_at: list[float], waits: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "connected": len(ready_at) + extra.get("failed", 0),
        "ready": len(ready_at),
        "firstSent": first,
        "lastSent": first + 5,
        "readyAt": ready_at,
        "subToReady": waits,
        "docsWrong": extra.get("docs_wrong", 0),
        "timedOut": extra.get("timed_out", False),
        "errors": extra.get("errors", {}),
    }


def _run(sessions: int, workers: int = 1) -> StormRun:
    return StormRun(tree="after", revision=None, sessions=sessions, workers=workers, generators=2)


def test_merge_takes_the_earliest_sub_and_the_latest_ready() -> None:
    run = _run(5, workers=2)
    merge(
        [
            _storm(1000.0, [1100.0, 1300.0], [100.0, 300.0], errors={"closed 1006": 1}),
            _storm(990.0, [1050.0, 1150.0, 1490.0], [60.0, 160.0, 500.0], errors={"x": 2}),
        ],
        run,
    )
    assert (run.connected, run.ready, run.failed) == (5, 5, 0)
    assert run.span_ms == pytest.approx(500.0)  # 990 -> 1490
    assert run.send_ms == pytest.approx(15.0)  # 990 -> 1005
    assert run.ready_ms == pytest.approx([60.0, 110.0, 160.0, 310.0, 500.0])
    assert run.wait_ms == sorted(run.wait_ms)
    assert run.subs_per_s == pytest.approx(10.0)  # 5 in 500 ms
    assert run.subs_per_s_per_worker == pytest.approx(5.0)
    assert run.generator_errors == {"closed 1006": 1, "x": 2}
    summary = run.summary()
    assert summary["ready_p50_ms"] == quantile(run.ready_ms, 0.5) == 160.0
    assert summary["ready_max_ms"] == 500.0
    assert run.complete


@pytest.mark.parametrize(
    ("extra", "sessions"),
    [
        ({"failed": 1}, 3),  # one sub never ready
        ({"docs_wrong": 1}, 2),  # a session got a different snapshot
        ({"timed_out": True}, 2),
        ({}, 3),  # one session never connected
    ],
)
def test_incomplete_storms(extra: dict[str, Any], sessions: int) -> None:
    run = _run(sessions)
    merge([_storm(0.0, [10.0, 20.0], [10.0, 20.0], **extra)], run)
    assert not run.complete
    assert run.failed == sessions - 2


def test_a_dead_relay_makes_it_incomplete() -> None:
    run = _run(2)
    merge([_storm(0.0, [10.0, 20.0], [10.0, 20.0])], run)
    assert run.complete
    run.relay_alive = False
    assert not run.complete


def test_nothing_sent_leaves_the_figures_unknown() -> None:
    run = _run(3)
    merge([{**_storm(0.0, [], []), "firstSent": None, "lastSent": None, "connected": 0}], run)
    assert math.isnan(run.span_ms) and math.isnan(run.subs_per_s)
    assert run.failed == 3 and not run.complete
