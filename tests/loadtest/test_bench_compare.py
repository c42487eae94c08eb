"""``loadtest.bench.compare`` and ``window.WindowRun`` without a server: when a window run
counts as exact, the medians over runs, and the side-by-side tables with their
before / after lines.

The real runs (both trees) are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from loadtest.bench import compare
from loadtest.bench.window import WindowRun, subscription


def _window(**changes: Any) -> WindowRun:
    run = WindowRun(
        tree="after",
        revision=None,
        window_kind="cursor",
        sessions=10,
        distinct=1,
        n=20,
        publication="books.latest",
        writes_planned=4,
        interval_s=0.5,
        workers=1,
        ready=10,
        writes=4,
        all_done=True,
        delivered=40,
        all_ms=[5.0, 6.0, 7.0, 8.0],
        received=[10] * 4,
        delivery_p50_ms=4.0,
        delivery_p99_ms=7.0,
        delivery_max_ms=8.0,
        relay_cpu_s=0.02,
        generator_cpu_s=0.01,
        postgres_cpu_s=0.01,
        wall_s=2.0,
        checked=10,
        ramp_s=1.0,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def test_subscriptions() -> None:
    assert subscription(20, 1) == ("books.latest", "[20]")
    assert subscription(20, 500) == ("bench.latest", "[20, s % 500]")


def test_an_exact_run() -> None:
    run = _window()
    assert run.exact
    assert run.relay_cpu_per_commit_ms == pytest.approx(5.0)
    assert run.summary()["all_p50_ms"] == 6.0


@pytest.mark.parametrize(
    "changes",
    [
        {"failed": 1},
        {"missing": 1},
        {"duplicates": 1},
        {"protocol_errors": 1},
        {"closed_after_ready": 1},
        {"mismatched": 1},
        {"checked": 9},  # a session's window was never compared
        {"writes": 3},  # a planned commit did not happen
        {"relay_alive": False},
    ],
)
def test_what_makes_a_run_inexact(changes: dict[str, Any]) -> None:
    assert not _window(**changes).exact


def test_no_commit_has_no_cost_per_commit() -> None:
    assert math.isnan(_window(writes=0).relay_cpu_per_commit_ms)


def test_aggregate_takes_medians() -> None:
    runs = [_window(relay_cpu_s=c) for c in (0.02, 0.04, 0.4)]
    assert compare.aggregate(runs)["relay_cpu_per_commit_ms"] == pytest.approx(10.0)
    assert compare.aggregate([]) == {}


def _row(tree: str, cpu: float, **extra: Any) -> dict[str, Any]:
    agg = compare.aggregate([_window(relay_cpu_s=cpu)])
    agg.update(
        tree=tree,
        relay=tree,
        sessions=10,
        distinct=1,
        lost=0,
        duplicates=0,
        protocol_errors=0,
        checked=10,
        mismatched=0,
        other_cpu_share_max=0.0,
        steal_share_max=0.0,
    )
    agg.update(extra)
    return agg


def test_window_table_puts_the_trees_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(n=20, writes=4, interval=0.5, runs=1, workers=1)
    compare.print_window([_row("after", 0.02), _row("before", 2.0)], args)
    out = capsys.readouterr().out.strip().splitlines()
    header, rule, after, before, ratio = out[1:6]
    assert header.count("|") == rule.count("|") == after.count("|") == before.count("|")
    assert after.startswith("| after | 10 | 1 | 5.0 ms |")
    assert before.startswith("| before | 10 | 1 | 500.0 ms |")
    assert ratio.startswith("10 sessions, distinct 1: before / after: relay CPU per commit 100.0x")


def test_window_table_notes_a_busy_machine(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(n=20, writes=4, interval=0.5, runs=1, workers=1)
    compare.print_window([_row("after", 0.02, steal_share_max=0.3)], args)
    assert "NOTE: after at 10 sessions: the machine was not quiet" in capsys.readouterr().out


def test_storm_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = []
    for tree, span in (("after", 500.0), ("before", 5000.0)):
        rows.append(
            {
                "tree": tree,
                "relay": tree,
                "sessions": 100,
                "subs_per_s": 100_000 / span,
                "subs_per_s_per_worker": 100_000 / span,
                "span_ms": span,
                "ready_p50_ms": span / 2,
                "ready_p90_ms": span * 0.9,
                "ready_p99_ms": span,
                "wait_p50_ms": span / 2,
                "wait_p99_ms": span,
                "relay_cpu_per_sub_ms": span / 100,
                "postgres_cpu_s": 0.1,
                "failed": 0,
                "docs_wrong": 0,
                "expected_docs": 13,
                "other_cpu_share_max": 0.0,
                "steal_share_max": 0.0,
            }
        )
    args = argparse.Namespace(workers=1, generators=1, runs=1)
    compare.print_storm(rows, args)
    out = capsys.readouterr().out.strip().splitlines()
    assert "(13 documents)" in out[0]
    header, rule, after, before, ratio = out[1:6]
    assert header.count("|") == rule.count("|") == after.count("|") == before.count("|")
    assert after.startswith("| after | 100 | 200 | 200 | 500.0 ms |")
    assert ratio == (
        "100 sessions: before / after: all ready after 10.0x, relay CPU per subscription 10.0x"
    )


def test_ratios_need_both_trees(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(n=20, writes=4, interval=0.5, runs=1, workers=1)
    compare.print_window([_row("before", 2.0)], args)
    assert "before / after" not in capsys.readouterr().out
