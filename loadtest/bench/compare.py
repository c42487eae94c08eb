"""The ``window`` and ``storm`` commands: each measurement on this checkout and, with
``--before REV``, on the relay code of REV too, printed side by side.

``prepare_trees`` gives the trees and their databases: this checkout's (``after``) on the
command's database, and REV's (``before``, ``trees.tree_at``) on a sibling database of
the same PostgreSQL, migrated by REV's own migrations. For each configuration (sessions,
distinct queries) the runs of the trees alternate, after then before, so that a drift
of the machine touches both alike. Medians over ``--runs`` are reported, as everywhere
in the harness. ``command`` runs either; ``SideBySide`` is what they share (the trees,
the alternation, each tree's medians and what ``results.json`` keeps).

Must not: measure anything itself (``window``, ``storm``) or parse options (``cli``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar

from loadtest.bench.figures import ms_text as _ms
from loadtest.bench.figures import noisy
from loadtest.bench.runner import median
from loadtest.bench.stack import Cleanup, Database
from loadtest.bench.storm import StormRun, run_storm
from loadtest.bench.trees import Tree, TreeInfo, current_tree, tree_at
from loadtest.bench.window import WindowRun, run_window, subscription

#: Where a run measures: a tree, its database, and what the tree registered.
Where = tuple[Tree, Database, TreeInfo]


def prepare_trees(db: Database, workdir: Path, revision: str | None, *, quiet: bool) -> list[Where]:
    """(tree, its database, what it registered): this checkout's, then REV's if asked."""
    # The command's database was migrated by this checkout: it is the after tree's.
    pairs = [(current_tree(workdir), db)]
    if revision is not None:
        before = tree_at(revision, workdir)
        pairs.append((before, db.sibling("bench_before", before)))
    out = []
    for tree, tree_db in pairs:
        info = tree.info(tree_db.url)
        out.append((tree, tree_db, info))
        if not quiet:
            rev = f" at {tree.revision[:12]}" if tree.revision else " (this checkout)"
            print(
                f"bench: {tree.label}{rev}: books.latest from {info.books_latest_from}, "
                f"window as a {info.window}"
                + (" (re-run per subscriber on every commit)" if info.window != "cursor" else ""),
                flush=True,
            )
    return out


def describe(tree: Tree, info: TreeInfo) -> str:
    if tree.revision is None:
        return f"{tree.label} (this checkout)"
    return f"{tree.label} ({tree.revision[:7]}, {info.window})"


def aggregate(runs: list[WindowRun] | list[StormRun]) -> dict[str, Any]:
    """Medians over runs of each run's figures."""
    summaries = [r.summary() for r in runs]
    return {key: median([s[key] for s in summaries]) for key in summaries[0]} if runs else {}


def _ratio(before: float, after: float) -> str:
    if not (after > 0 and before == before and after == after) or math.isinf(before):
        return "n/a"
    return f"{before / after:,.1f}x"


Run = TypeVar("Run", WindowRun, StormRun)


class RunOptions(TypedDict):
    """What every window and storm run takes from the command line, and its label."""

    workers: int
    deflate: bool
    concurrency: int
    ramp_timeout: float
    settle: float
    live: bool
    profile_dir: Path | None
    label: str
    quiet: bool


class SideBySide(Generic[Run]):
    """The measurements of one command (``args.command``) on every tree; ``add`` measures
    one configuration and keeps its medians per tree as a row of the table (``rows``)
    and an entry of ``results[args.command]``; ``ok`` until a run was not all it should
    be."""

    def __init__(
        self,
        db: Database,
        workdir: Path,
        cleanup: Cleanup,
        args: argparse.Namespace,
        results: dict[str, Any],
    ) -> None:
        self.args = args
        self.workdir = workdir
        self.cleanup = cleanup
        self.trees = prepare_trees(db, workdir, args.before, quiet=args.quiet)
        results["trees"] = {
            t.label: {"revision": t.revision, **asdict(i)} for t, _, i in self.trees
        }
        self.results = results
        self.rows: list[dict[str, Any]] = []
        self.ok = True

    def _options(self, label: str) -> RunOptions:
        args = self.args
        return RunOptions(
            workers=args.workers, deflate=args.deflate, concurrency=args.concurrency,
            ramp_timeout=args.ramp_timeout, settle=args.settle, live=args.live_check,
            profile_dir=self.workdir / "profiles" if args.profile else None,
            label=label, quiet=args.quiet,
        )  # fmt: skip

    def add(
        self,
        name: str,
        config: dict[str, Any],
        run: Callable[[Where, RunOptions], Run],
        verdict: str,
        totals: Callable[[list[Run]], dict[str, Any]],
    ) -> None:
        """``args.runs`` runs per tree of configuration ``name`` (the trees alternate run
        by run), then per tree: the medians (``aggregate``), ``config``, ``runs``,
        ``totals`` (``verdict`` among them: were the runs all they should be) and the
        noise."""
        mode, count = self.args.command, self.args.runs
        by_tree: dict[str, list[Run]] = {tree.label: [] for tree, _, _ in self.trees}
        for i in range(count):
            for where in self.trees:
                tree = where[0]
                label = f"[{mode} {tree.label} {name} run {i + 1}/{count}] "
                by_tree[tree.label].append(run(where, self._options(label)))
        for tree, _, info in self.trees:
            runs = by_tree[tree.label]
            agg = aggregate(runs)
            agg.update(
                tree=tree.label,
                relay=describe(tree, info),
                **config,
                runs=len(runs),
                **totals(runs),
                other_cpu_share_max=max((r.other_cpu_share for r in runs), default=0.0),
                steal_share_max=max((r.steal_share for r in runs), default=0.0),
            )
            self.ok = self.ok and agg[verdict]
            self.rows.append(agg)
            self.results.setdefault(mode, []).append(
                {"aggregate": agg, "runs": [asdict(r) for r in runs]}
            )


def command(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> bool:
    """``window`` or ``storm`` (``args.command``) on every tree, then its table. False
    when a run was not exact (window) or complete (storm)."""
    if args.command == "window":
        return _windows(SideBySide(db, workdir, cleanup, args, results))
    return _storms(SideBySide(db, workdir, cleanup, args, results))


# -- window -----------------------------------------------------------------------------------


def _windows(side: SideBySide[WindowRun]) -> bool:
    args = side.args
    for sessions in args.sessions:
        # More distinct queries than sessions would leave some without a subscriber.
        for distinct in sorted({min(d, sessions) for d in args.distinct}):
            side.add(
                f"{sessions}x{distinct}",
                {"sessions": sessions, "distinct": distinct},
                partial(_window_run, side, sessions, distinct),
                "exact",
                lambda runs: {
                    "exact": all(r.exact for r in runs),
                    "lost": sum(r.missing + r.failed for r in runs),
                    "duplicates": sum(r.duplicates for r in runs),
                    "protocol_errors": sum(r.protocol_errors for r in runs),
                    "mismatched": sum(r.mismatched for r in runs),
                    "checked": sum(r.checked for r in runs),
                },
            )
    print_window(side.rows, args)
    return side.ok


def _window_run(
    side: SideBySide[WindowRun], sessions: int, distinct: int, where: Where, options: RunOptions
) -> WindowRun:
    args, (tree, tree_db, info) = side.args, where
    return run_window(
        tree_db, tree, side.workdir, side.cleanup,
        sessions=sessions, distinct=distinct, n=args.n, writes=args.writes,
        interval=args.interval, max_wait=args.max_wait, window_kind=info.window, **options,
    )  # fmt: skip


def print_window(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    same, same_params = subscription(args.n, 1)
    spread, _ = subscription(args.n, 2)
    print(
        f"\nwindow: sessions subscribe {same} {same_params} (distinct 1) or {spread} "
        f"[{args.n}, s % distinct] (the same window under distinct parameters); "
        f"{args.writes} commits {args.interval * 1000:.0f} ms apart, inserts of a newest book "
        f"alternating with removals of the book at position {args.n}; medians of {args.runs} "
        "runs" + (f"; {args.workers} relay workers, CPU summed" if args.workers > 1 else "")
    )
    print(
        "| relay | sessions | distinct queries | relay CPU per commit | delivery p50 / p99 / max "
        "| all sessions had a commit, p50 / p99 | windows equal to the database "
        "| lost / dup / protocol errors | CPU relay / generator / postgres | subscribe all |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a in rows:
        print(
            f"| {a['relay']} | {a['sessions']:,} | {a['distinct']:,} "
            f"| {_ms(a['relay_cpu_per_commit_ms'])} "
            f"| {_ms(a['delivery_p50_ms'])} / {_ms(a['delivery_p99_ms'])} "
            f"/ {_ms(a['delivery_max_ms'])} "
            f"| {_ms(a['all_p50_ms'])} / {_ms(a['all_p99_ms'])} "
            f"| {a['checked'] - a['mismatched']:,}/{a['checked']:,} "
            f"| {a['lost']} / {a['duplicates']} / {a['protocol_errors']} "
            f"| {a['relay_cpu_share']:.0%} / {a['generator_cpu_share']:.0%} "
            f"/ {a['postgres_cpu_share']:.0%} | {a['ramp_s']:.1f} s |"
        )
    _print_ratios(
        rows,
        ("distinct",),
        [
            ("relay CPU per commit", "relay_cpu_per_commit_ms"),
            ("delivery p50", "delivery_p50_ms"),
            ("delivery p99", "delivery_p99_ms"),
        ],
    )
    _print_noise(rows)


# -- storm ------------------------------------------------------------------------------------


def _storms(side: SideBySide[StormRun]) -> bool:
    args = side.args
    for sessions in args.sessions:
        side.add(
            str(sessions),
            {"sessions": sessions, "workers": args.workers},
            partial(_storm_run, side, sessions),
            "complete",
            lambda runs: {
                "complete": all(r.complete for r in runs),
                "failed": sum(r.failed for r in runs),
                "docs_wrong": sum(r.docs_wrong for r in runs),
                "expected_docs": runs[0].expected_docs if runs else 0,
            },
        )
    print_storm(side.rows, args)
    return side.ok


def _storm_run(
    side: SideBySide[StormRun], sessions: int, where: Where, options: RunOptions
) -> StormRun:
    args, (tree, tree_db, _) = side.args, where
    return run_storm(
        tree_db, tree, side.workdir, side.cleanup,
        sessions=sessions, generators=args.generators, storm_timeout=args.storm_timeout,
        **options,
    )  # fmt: skip


def print_storm(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    docs = rows[0]["expected_docs"] if rows else 0
    print(
        f"\nstorm: every session connected first, then all send `sub books.all` ({docs} "
        f"documents) at once; {args.workers} relay worker(s), {args.generators} generator "
        f"process(es); medians of {args.runs} runs"
    )
    print(
        "| relay | sessions | subscriptions/s | per worker | all ready after "
        "| ready after the first sub, p50 / p90 / p99 | each session's wait p50 / p99 "
        "| relay CPU per subscription | postgres CPU | failed / wrong snapshot |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a in rows:
        print(
            f"| {a['relay']} | {a['sessions']:,} | {a['subs_per_s']:,.0f} "
            f"| {a['subs_per_s_per_worker']:,.0f} | {_ms(a['span_ms'])} "
            f"| {_ms(a['ready_p50_ms'])} / {_ms(a['ready_p90_ms'])} / {_ms(a['ready_p99_ms'])} "
            f"| {_ms(a['wait_p50_ms'])} / {_ms(a['wait_p99_ms'])} "
            f"| {a['relay_cpu_per_sub_ms']:.2f} ms | {a['postgres_cpu_s']:.1f} s "
            f"| {a['failed']} / {a['docs_wrong']} |"
        )
    _print_ratios(
        rows,
        (),
        [("all ready after", "span_ms"), ("relay CPU per subscription", "relay_cpu_per_sub_ms")],
    )
    _print_noise(rows)


# -- shared -----------------------------------------------------------------------------------


def _print_ratios(
    rows: list[dict[str, Any]], keys: tuple[str, ...], figures: list[tuple[str, str]]
) -> None:
    """A line per configuration measured on both trees: before / after of each figure."""
    after = {(r["sessions"], *(r[k] for k in keys)): r for r in rows if r["tree"] == "after"}
    for row in rows:
        if row["tree"] == "after":
            continue
        config = (row["sessions"], *(row[k] for k in keys))
        base = after.get(config)
        if base is None:
            continue
        where = f"{row['sessions']:,} sessions" + "".join(f", {k} {row[k]:,}" for k in keys)
        print(
            f"{where}: {row['tree']} / after: "
            + ", ".join(f"{name} {_ratio(row[key], base[key])}" for name, key in figures)
        )


def _print_noise(rows: list[dict[str, Any]]) -> None:
    for a in rows:
        if noisy(a["other_cpu_share_max"], a["steal_share_max"]):
            print(
                f"NOTE: {a['relay']} at {a['sessions']:,} sessions: the machine was not quiet "
                f"(other processes up to {a['other_cpu_share_max']:.0%} of a core, stolen up to "
                f"{a['steal_share_max']:.0%})"
            )
