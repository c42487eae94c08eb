"""``loadtest.bench.dbwrites`` without a server: table counter arithmetic (against a
model) and the wait for PostgreSQL's late counters to settle, on scripted readings.

The counters and the NOTIFY counter against a real PostgreSQL run in the presence smoke
(tests/e2e/test_bench_smoke.py).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench import dbwrites

TABLES = ["a", "b", "lease"]
counts = st.tuples(*(st.integers(min_value=0, max_value=10**9),) * 3)
readings = st.fixed_dictionaries({t: counts for t in TABLES})


@given(readings, readings)
def test_deltas_are_per_table_and_counter_differences(
    before: dbwrites.Counters, after: dbwrites.Counters
) -> None:
    got = dbwrites.deltas(before, after)
    assert set(got) == set(after)
    for table, ops in got.items():
        assert list(ops) == list(dbwrites.OPS)
        for i, op in enumerate(dbwrites.OPS):
            assert ops[op] == after[table][i] - before[table][i]
    # Summing the deltas of every table but one is the model's sum minus that table's.
    assert dbwrites.total(got, skip=["lease"]) == sum(
        after[t][i] - before[t][i] for t in TABLES if t != "lease" for i in range(3)
    )


def test_a_table_without_statistics_before_counts_from_zero() -> None:
    assert dbwrites.deltas({}, {"a": (3, 2, 1)}) == {"a": {"ins": 3, "upd": 2, "del": 1}}


@given(readings, st.integers(min_value=1, max_value=1000))
def test_per_change_divides_every_counter(after: dbwrites.Counters, count: int) -> None:
    changes = dbwrites.deltas({}, after)
    per = dbwrites.per_change(changes, count)
    for table, ops in per.items():
        for op, value in ops.items():
            assert value == pytest.approx(changes[table][op] / count)


def test_per_change_of_nothing_is_unknown() -> None:
    per = dbwrites.per_change({"a": {"ins": 1, "upd": 0, "del": 0}}, 0)
    assert all(math.isnan(v) for v in per["a"].values())


class Clock:
    """A monotonic clock that ``sleep`` advances (no real waiting)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _script(monkeypatch: pytest.MonkeyPatch, values: list[dbwrites.Counters]) -> Clock:
    """``table_counters`` returns ``values`` in turn (the last one forever); the clock."""
    clock = Clock()
    # Only the module's own bindings: the real clock stays everyone else's.
    monkeypatch.setattr("loadtest.bench.dbwrites.monotonic", clock.monotonic)
    monkeypatch.setattr("loadtest.bench.dbwrites.sleep", clock.sleep)
    it = iter(values)
    last: list[dbwrites.Counters] = []

    def read(url: str, tables: object) -> dbwrites.Counters:
        value = next(it, None)
        if value is None:
            return last[-1]
        last.append(value)
        return value

    monkeypatch.setattr(dbwrites, "table_counters", read)
    return clock


def _reading(a: int, lease: int = 0) -> dbwrites.Counters:
    return {"a": (a, 0, 0), "b": (0, 0, 0), "lease": (0, lease, 0)}


def test_settles_after_a_quiet_period(monkeypatch: pytest.MonkeyPatch) -> None:
    # Late reports at 2 s and 5 s, then nothing: settled once quiet for 4 s (at 9 s).
    values = [_reading(0), _reading(0), _reading(5), _reading(5), _reading(5), _reading(9)]
    clock = _script(monkeypatch, values)
    counters, settled = dbwrites.settled_counters("x", TABLES, quiet=4.0, limit=60.0)
    assert settled and counters["a"] == (9, 0, 0)
    assert clock.now == pytest.approx(9.0)


def test_ignored_tables_do_not_keep_it_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lease renewals go on every second: ignored, so quiet after 3 s.
    clock = _script(monkeypatch, [_reading(1, lease=n) for n in range(100)])
    counters, settled = dbwrites.settled_counters(
        "x", TABLES, ignore=["lease"], quiet=3.0, limit=60.0
    )
    assert settled and clock.now == pytest.approx(3.0)
    assert counters["a"] == (1, 0, 0)


def test_never_quiet_gives_up_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _script(monkeypatch, [_reading(n) for n in range(100)])
    counters, settled = dbwrites.settled_counters("x", TABLES, quiet=4.0, limit=10.0)
    assert not settled
    assert clock.now == pytest.approx(10.0)
    assert counters["a"] == (10, 0, 0)
