"""``loadtest.bench.presence`` without a server: the membership changes of a topic read
back from changelog rows (against a model), the figures of a run (rows written per join
or leave, without the lease renewals), what makes a run incomplete, and how the
generator's events fill a run (unknown values stay unknown).

The real runs are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench.presence import (
    presence_changes,
    take_churn,
    take_convergence,
    take_lag,
)
from tests.loadtest.bench_runs import presence_run

TOPICS = ["book:a", "book:b"]
MEMBERS = ["m1", "m2", "m3", "m4"]

# One membership event: (member, topic, op) where op is "i" (join) or "d" (leave).
events = st.lists(
    st.tuples(st.sampled_from(MEMBERS), st.sampled_from(TOPICS), st.sampled_from("id")),
    max_size=40,
)


def _member_id(member: str, topic: str) -> str:
    # A member id is a digest of its topic and member: distinct per (topic, member).
    return f"{topic}/{member}"


def _rows(batches: list[list[tuple[str, str, str]]]) -> list[tuple[Any, float]]:
    """Changelog rows, one per batch, each committed 10 ms after the last."""
    rows = []
    for n, batch in enumerate(batches):
        changes = [
            {
                "o": op,
                "id": _member_id(m, t),
                "f": {"topic": t, "userId": None} if op == "i" else {},
            }
            for m, t, op in batch
        ]
        rows.append((changes, 1000.0 + 10 * n))
    return rows


@given(events, st.integers(min_value=1, max_value=5))
def test_presence_changes_match_a_model(flat: list[tuple[str, str, str]], size: int) -> None:
    batches = [flat[i : i + size] for i in range(0, len(flat), size)]
    got = presence_changes(_rows(batches), "book:a")
    # The model: every insert or delete of an id that was inserted on book:a, in order.
    on_a = {_member_id(m, t) for m, t, op in flat if op == "i" and t == "book:a"}
    want: dict[str, list[float]] = {}
    for n, batch in enumerate(batches):
        for m, t, op in batch:
            key = _member_id(m, t)
            if key in on_a:
                want.setdefault(key, []).extend((1.0 if op == "i" else -1.0, 1000.0 + 10 * n))
    assert got == want


def test_updates_are_not_membership_changes() -> None:
    rows = [
        ([{"o": "i", "id": "x", "f": {"topic": "book:a"}}], 1.0),
        ([{"o": "u", "id": "x", "f": {"topic": "book:a"}}], 2.0),
        ([{"o": "d", "id": "x", "f": {}}], 3.0),
    ]
    assert presence_changes(rows, "book:a") == {"x": [1.0, 1.0, -1.0, 3.0]}
    assert presence_changes(rows, "book:b") == {}


def test_a_malformed_changelog_row_is_an_error() -> None:
    with pytest.raises(ValueError):
        presence_changes([([{"o": "i"}], 1.0)], "book:a")


# -- figures and verdicts ------------------------------------------------------------------------


def test_a_complete_run() -> None:
    run = presence_run()
    assert run.complete
    assert run.changes == 80
    assert run.join_rate == run.leave_rate == pytest.approx(20.0)
    # 6 rows per join or leave; the lease's 9 renewals are the relays' chore, not counted.
    assert run.rows_per_change == pytest.approx(6.0)
    summary = run.summary()
    assert summary["changelog_per_change"] == summary["notifies_per_change"] == 1.0
    assert summary["relay_cpu_per_change_ms"] == pytest.approx(4.0)
    assert summary["crash_views_s"] == 4.4


@pytest.mark.parametrize(
    "changes",
    [
        {"failed": 1},  # a session never started
        {"joins": 0, "leaves": 0},  # nothing measured
        {"failed_joins": 1},
        {"lost_churners": 1},
        {"churn_timed_out": True},
        {"leaves": 39},  # a join that never left
        {"converged": False},
        {"protocol_errors": 1},
        {"members_db": 7},  # a ghost member in the database
        {"crash_converged": False},
        {"relay_alive": False},
    ],
)
def test_incomplete_runs(changes: dict[str, Any]) -> None:
    assert not presence_run(**changes).complete


def test_a_run_without_a_crash_needs_no_crash_convergence() -> None:
    assert presence_run(crash_sessions=0, crash_converged=False).complete


def test_no_changes_no_ratios() -> None:
    run = presence_run(joins=0, leaves=0, churn_s=0.0)
    summary = run.summary()
    for key in ("rows_per_change", "changelog_per_change", "join_rate", "relay_cpu_per_change_ms"):
        assert math.isnan(summary[key]), key


def _churned(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "started": 10,
        "joins": 9,
        "leaves": 9,
        "failedJoins": 0,
        "starved": 1,
        "lostChurners": 0,
        "timedOut": False,
        "churnStart": 1000.0,
        "scheduleEnd": 3000.0,
        "lastNosub": 2500.0,
        "join": {"p50": 5.0, "p99": 9.0, "max": 9.5},
        "leave": {"p50": 1.0, "p99": None, "max": None},
        "errors": {"closed 1006": 1},
    }
    event.update(changes)
    return event


def test_take_churn() -> None:
    run = presence_run()
    take_churn(run, _churned())
    assert (run.started, run.joins, run.leaves, run.starved) == (10, 9, 9, 1)
    assert run.churn_s == 2.0 and run.join_rate == 4.5
    # Joins answered late: the churn lasts until the last leave, and the rates are over it.
    take_churn(run, _churned(lastNosub=5000.0))
    assert run.churn_s == 4.0 and run.join_rate == 2.25
    assert (run.join_p50_ms, run.join_p99_ms, run.leave_p50_ms) == (5.0, 9.0, 1.0)
    assert math.isnan(run.leave_p99_ms)
    assert run.generator_errors == {"closed 1006": 1}


def test_take_churn_without_any_join() -> None:
    run = presence_run()
    take_churn(run, _churned(churnStart=None, scheduleEnd=None, lastNosub=None, joins=0, leaves=0))
    assert math.isnan(run.join_rate)


def _verified(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "checked": 6,
        "mismatched": 0,
        "examples": [],
        "lastChange": 5010.0,
        "members": 6,
        "open": [2, 2, 2],
        "badAdded": 0,
        "badRemoved": 0,
    }
    event.update(changes)
    return event


def test_take_convergence() -> None:
    run = presence_run()
    take_convergence(run, True, _verified(), 6, 5000.0)
    assert run.converged and run.converge_ms == 10.0 and run.members_db == 6
    take_convergence(run, False, _verified(mismatched=2, badRemoved=1), 8, 5000.0)
    assert not run.converged and run.mismatched == 2 and run.protocol_errors == 1
    assert run.members_db == 8 and not run.complete


def test_convergence_without_a_leave_on_the_topic_has_no_time() -> None:
    run = presence_run(converge_ms=math.nan)
    take_convergence(run, True, _verified(), 6, None)
    assert run.converged and math.isnan(run.converge_ms)


def test_take_lag() -> None:
    run = presence_run()
    take_lag(
        run,
        {
            "changes": 80,
            "matched": 470,
            "unmatched": 10,
            "delivery": {"p50": 2.0, "p99": 6.0, "max": 8.0},
            "reachedAll": {"p50": None, "p99": None, "max": None},
            "examples": [{"id": "x", "want": [1, -1], "got": []}],
        },
    )
    assert (run.lag_changes, run.lag_matched, run.lag_unmatched) == (80, 470, 10)
    assert (run.lag_p50_ms, run.lag_p99_ms, run.lag_max_ms) == (2.0, 6.0, 8.0)
    assert math.isnan(run.lag_all_p50_ms)
    assert run.lag_examples == [{"id": "x", "want": [1, -1], "got": []}]
