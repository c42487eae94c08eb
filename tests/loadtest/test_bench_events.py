"""``loadtest.bench.events`` without a server: the lag of the first and last tenth of a
sustained run (against a brute-force model), when a stream keeps up, and what makes a
phase, a sustained rate or a whole events run not exact.

The real runs are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench.events import KEPT_UP_SLACK_MS, kept_up, tenths
from loadtest.bench.figures import quantile
from tests.loadtest.bench_runs import events_run, phase, sustain_run

lags = st.lists(st.floats(min_value=0.0, max_value=1e6, allow_nan=False), max_size=300)


def _low_median(values: list[float]) -> float:
    """The nearest-rank median as the harness defines it: the lower middle value."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


@given(lags)
def test_tenths_are_the_medians_of_the_first_and_last_tenth(values: list[float]) -> None:
    first, last = tenths(values)
    if not values:
        assert math.isnan(first) and math.isnan(last)
        return
    k = max(1, len(values) // 10)
    assert first == _low_median(values[:k])
    assert last == _low_median(values[-k:])
    assert min(values[:k]) <= first <= max(values[:k])


def test_tenths_of_a_growing_lag() -> None:
    values = [float(i) for i in range(100)]
    assert tenths(values) == (4.0, 94.0)
    assert tenths([7.0]) == (7.0, 7.0)


@given(
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_kept_up_when_the_lag_does_not_grow_by_more_than_the_slack(
    first: float, last: float
) -> None:
    assert kept_up(first, last) == (last - first <= KEPT_UP_SLACK_MS)


@pytest.mark.parametrize(
    ("first", "last"), [(math.nan, 1.0), (1.0, math.nan), (1.0, math.inf), (math.inf, math.inf)]
)
def test_an_unknown_or_infinite_lag_did_not_keep_up(first: float, last: float) -> None:
    assert not kept_up(first, last)


def test_quantile_rule_is_the_generator_s() -> None:
    # tenths() takes the harness's nearest-rank median, not statistics.median.
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0 != statistics.median([1.0, 2.0, 3.0, 4.0])


# -- verdicts -----------------------------------------------------------------------------------


def test_a_complete_phase() -> None:
    p = phase()
    assert p.complete
    assert p.relay_cpu_per_write_ms == pytest.approx(10.0)
    summary = p.summary()
    assert summary["all_p50_ms"] == 6.0 and summary["all_p99_ms"] == 7.0
    assert summary["relay_cpu_share"] == pytest.approx(0.02)
    # The meter's "generators" are the Node.js generator and the writer: split apart.
    assert summary["generator_cpu_share"] == pytest.approx(0.006)
    assert summary["writer_cpu_share"] == pytest.approx(0.004)
    assert summary["postgres_cpu_share"] == pytest.approx(0.008)


@pytest.mark.parametrize(
    "changes",
    [
        {"writes": 2},  # the writer made fewer than planned
        {"all_done": False},  # the wait gave up
        {"missing": 1},
        {"duplicates": 1},
        {"closed_after_ready": 1},
    ],
)
def test_incomplete_phases(changes: dict[str, Any]) -> None:
    assert not phase(**changes).complete


def test_a_phase_without_writes_has_no_cpu_per_write() -> None:
    assert math.isnan(phase(writes=0).relay_cpu_per_write_ms)


def test_a_sustained_rate_that_kept_up() -> None:
    run = sustain_run()
    assert run.exact and run.kept_up
    summary = run.summary()
    assert summary["lag_first_tenth_ms"] == summary["lag_last_tenth_ms"] == 3.0
    assert summary["drain_ms"] == 3.0
    assert summary["deliveries_per_s"] == pytest.approx(30 / 1.5)


def test_a_sustained_rate_that_fell_behind_is_still_exact() -> None:
    growing = [float(i * 20) for i in range(100)]  # 0 ms ... 1,980 ms
    run = sustain_run(phase=phase(planned=100, writes=100, all_ms=growing, received=[10] * 100))
    assert not run.kept_up
    assert run.exact  # falling behind is a figure, not a loss


@pytest.mark.parametrize(
    "changes",
    [{"failed": 1}, {"out_of_order": 1}, {"protocol_errors": 1}, {"mismatched": 1}, {"checked": 9}],
)
def test_inexact_sustained_rates(changes: dict[str, object]) -> None:
    assert not sustain_run(**changes).exact


def test_an_exact_events_run() -> None:
    run = events_run()
    assert run.exact
    summary = run.summary()
    assert summary["events_all_p50_ms"] == 6.0
    assert summary["rows_all_p50_ms"] == 5.0
    assert summary["memory_per_session_bytes"] == pytest.approx(20 * 1024)


@pytest.mark.parametrize(
    "changes",
    [
        {"failed": 1},
        {"out_of_order": 1},
        {"protocol_errors": 1},
        {"mismatched": 1},
        {"checked": 9},  # a session's view was never compared
        {"relay_alive": False},
        {"events": phase(missing=1)},
        {"rows": phase("rename", duplicates=1)},
        {"sustain": [sustain_run(), sustain_run(failed=1)]},
    ],
)
def test_inexact_events_runs(changes: dict[str, object]) -> None:
    assert not events_run(**changes).exact


def test_an_events_run_without_rows_has_no_row_figures() -> None:
    run = events_run(rows=None)
    assert run.exact
    assert not any(key.startswith("rows_") for key in run.summary())
