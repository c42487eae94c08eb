"""``loadtest.bench.compare`` and ``window.WindowRun`` without a server: when a window run
counts as exact, the medians over runs, and the side-by-side tables with their
before / after lines.

The real runs (both trees) are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, cast

import pytest

from loadtest.bench import compare
from loadtest.bench.stack import Cleanup, Database
from loadtest.bench.trees import Tree, TreeInfo
from loadtest.bench.window import WindowRun, subscription
from tests.loadtest.bench_runs import window_run


def test_subscriptions() -> None:
    assert subscription(20, 1) == ("books.latest", "[20]")
    assert subscription(20, 500) == ("bench.latest", "[20, s % 500]")


def test_an_exact_run() -> None:
    run = window_run()
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
    assert not window_run(**changes).exact


def test_no_commit_has_no_cost_per_commit() -> None:
    assert math.isnan(window_run(writes=0).relay_cpu_per_commit_ms)


def test_aggregate_takes_medians() -> None:
    runs = [window_run(relay_cpu_s=c) for c in (0.02, 0.04, 0.4)]
    assert compare.aggregate(runs)["relay_cpu_per_commit_ms"] == pytest.approx(10.0)
    assert compare.aggregate([]) == {}


def _row(tree: str, cpu: float, **extra: Any) -> dict[str, Any]:
    agg = compare.aggregate([window_run(relay_cpu_s=cpu)])
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


# -- both trees, run by run -------------------------------------------------------------------


def _trees(tmp_path: Path) -> list[compare.Where]:
    db = cast(Database, object())
    return [
        (
            Tree("after", tmp_path, tmp_path),
            db,
            TreeInfo(window="cursor", books_latest_from="example", relay="r", django_app="d"),
        ),
        (
            Tree("before", tmp_path, tmp_path, revision="49143b3deadbeef"),
            db,
            TreeInfo(window="queryset", books_latest_from="ddp_bench", relay="r", django_app="d"),
        ),
    ]


def _args(**changes: Any) -> argparse.Namespace:
    options: dict[str, Any] = {
        "command": "window",
        "before": "49143b3",
        "quiet": True,
        "runs": 2,
        "workers": 1,
        "deflate": True,
        "concurrency": 7,
        "ramp_timeout": 5.0,
        "settle": 0.1,
        "live_check": False,
        "profile": False,
    }
    return argparse.Namespace(**{**options, **changes})


def test_side_by_side_alternates_the_trees_and_keeps_each_tree_s_medians(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trees = _trees(tmp_path)
    monkeypatch.setattr(compare, "prepare_trees", lambda *a, **k: trees)
    results: dict[str, Any] = {}
    side: compare.SideBySide[WindowRun] = compare.SideBySide(
        cast(Database, object()), tmp_path, Cleanup(), _args(), results
    )
    calls: list[tuple[str, compare.RunOptions]] = []

    def run(where: compare.Where, options: compare.RunOptions) -> WindowRun:
        calls.append((where[0].label, options))
        cpu = 0.02 if where[0].label == "after" else 2.0
        return window_run(tree=where[0].label, relay_cpu_s=cpu, missing=int(len(calls) == 4))

    side.add(
        "10x1",
        {"sessions": 10, "distinct": 1},
        run,
        "exact",
        lambda runs: {"exact": all(r.exact for r in runs), "lost": sum(r.missing for r in runs)},
    )
    assert [tree for tree, _ in calls] == ["after", "before", "after", "before"]
    assert [options["label"] for _, options in calls] == [
        "[window after 10x1 run 1/2] ",
        "[window before 10x1 run 1/2] ",
        "[window after 10x1 run 2/2] ",
        "[window before 10x1 run 2/2] ",
    ]
    assert calls[0][1] == {
        "workers": 1,
        "deflate": True,
        "concurrency": 7,
        "ramp_timeout": 5.0,
        "settle": 0.1,
        "live": False,
        "profile_dir": None,
        "label": "[window after 10x1 run 1/2] ",
        "quiet": True,
    }
    assert set(results["trees"]) == {"after", "before"}
    assert results["trees"]["before"]["revision"] == "49143b3deadbeef"
    after, before = side.rows
    assert list(after)[-9:] == [
        "tree",
        "relay",
        "sessions",
        "distinct",
        "runs",
        "exact",
        "lost",
        "other_cpu_share_max",
        "steal_share_max",
    ]
    assert (after["tree"], after["relay"], after["runs"]) == ("after", "after (this checkout)", 2)
    assert before["relay"] == "before (49143b3, queryset)"
    assert after["relay_cpu_per_commit_ms"] == pytest.approx(5.0)
    assert after["exact"] and not before["exact"] and before["lost"] == 1
    assert not side.ok
    entries = results["window"]
    assert [e["aggregate"] for e in entries] == side.rows
    assert [len(e["runs"]) for e in entries] == [2, 2]
    assert entries[1]["runs"][1]["missing"] == 1


def test_side_by_side_is_ok_while_every_run_is(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(compare, "prepare_trees", lambda *a, **k: _trees(tmp_path)[:1])
    args = _args(profile=True, command="storm", runs=1)
    side: compare.SideBySide[WindowRun] = compare.SideBySide(
        cast(Database, object()), tmp_path, Cleanup(), args, {}
    )
    seen: list[compare.RunOptions] = []

    def run(where: compare.Where, options: compare.RunOptions) -> WindowRun:
        seen.append(options)
        return window_run()

    side.add("3", {"sessions": 3}, run, "exact", lambda runs: {"exact": True})
    assert side.ok and len(side.rows) == 1
    assert seen[0]["profile_dir"] == tmp_path / "profiles"
    assert seen[0]["label"] == "[storm after 3 run 1/1] "
