"""The ``window`` and ``storm`` commands: each measurement on this checkout and, with
``--before REV``, on the relay code of REV too, printed side by side.

``prepare_trees`` gives the trees and their databases: this checkout's (``after``) on the
command's database, and REV's (``before``, ``trees.tree_at``) on a sibling database of
the same PostgreSQL, migrated by REV's own migrations. For each configuration (sessions,
distinct queries) the runs of the trees alternate, after then before, so that a drift
of the machine touches both alike. Medians over ``--runs`` are reported, as everywhere
in the harness.

Must not: measure anything itself (``window``, ``storm``) or parse options (``cli``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.bench.runner import median
from loadtest.bench.stack import Cleanup, Database
from loadtest.bench.storm import StormRun, run_storm
from loadtest.bench.trees import Tree, TreeInfo, current_tree, tree_at
from loadtest.bench.window import WindowRun, run_window, subscription


def prepare_trees(
    db: Database, workdir: Path, revision: str | None, *, quiet: bool
) -> list[tuple[Tree, Database, TreeInfo]]:
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


def _ms(value: float) -> str:
    if value != value:
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"


def _ratio(before: float, after: float) -> str:
    if not (after > 0 and before == before and after == after) or math.isinf(before):
        return "n/a"
    return f"{before / after:,.1f}x"


# -- window -----------------------------------------------------------------------------------


def window_command(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> bool:
    trees = prepare_trees(db, workdir, args.before, quiet=args.quiet)
    results["trees"] = {t.label: {"revision": t.revision, **asdict(i)} for t, _, i in trees}
    ok = True
    rows: list[dict[str, Any]] = []
    for sessions in args.sessions:
        # More distinct queries than sessions would leave some without a subscriber.
        for distinct in sorted({min(d, sessions) for d in args.distinct}):
            by_tree: dict[str, list[WindowRun]] = {tree.label: [] for tree, _, _ in trees}
            for i in range(args.runs):
                for tree, tree_db, info in trees:
                    by_tree[tree.label].append(
                        run_window(
                            tree_db, tree, workdir, cleanup,
                            sessions=sessions, distinct=distinct, n=args.n,
                            writes=args.writes, interval=args.interval,
                            deflate=args.deflate, concurrency=args.concurrency,
                            ramp_timeout=args.ramp_timeout, settle=args.settle,
                            workers=args.workers, live=args.live_check,
                            max_wait=args.max_wait, window_kind=info.window,
                            profile_dir=workdir / "profiles" if args.profile else None,
                            label=f"[window {tree.label} {sessions}x{distinct} run "
                            f"{i + 1}/{args.runs}] ",
                            quiet=args.quiet,
                        )
                    )  # fmt: skip
            for tree, _, info in trees:
                runs = by_tree[tree.label]
                agg = aggregate(runs)
                agg.update(
                    tree=tree.label,
                    relay=describe(tree, info),
                    sessions=sessions,
                    distinct=distinct,
                    runs=len(runs),
                    exact=all(r.exact for r in runs),
                    lost=sum(r.missing + r.failed for r in runs),
                    duplicates=sum(r.duplicates for r in runs),
                    protocol_errors=sum(r.protocol_errors for r in runs),
                    mismatched=sum(r.mismatched for r in runs),
                    checked=sum(r.checked for r in runs),
                    other_cpu_share_max=max((r.other_cpu_share for r in runs), default=0.0),
                    steal_share_max=max((r.steal_share for r in runs), default=0.0),
                )
                ok = ok and agg["exact"]
                rows.append(agg)
                results.setdefault("window", []).append(
                    {"aggregate": agg, "runs": [asdict(r) for r in runs]}
                )
    print_window(rows, args)
    return ok


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


def storm_command(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> bool:
    trees = prepare_trees(db, workdir, args.before, quiet=args.quiet)
    results["trees"] = {t.label: {"revision": t.revision, **asdict(i)} for t, _, i in trees}
    ok = True
    rows: list[dict[str, Any]] = []
    for sessions in args.sessions:
        by_tree: dict[str, list[StormRun]] = {tree.label: [] for tree, _, _ in trees}
        for i in range(args.runs):
            for tree, tree_db, _ in trees:
                by_tree[tree.label].append(
                    run_storm(
                        tree_db, tree, workdir, cleanup,
                        sessions=sessions, workers=args.workers, generators=args.generators,
                        deflate=args.deflate, concurrency=args.concurrency,
                        ramp_timeout=args.ramp_timeout, storm_timeout=args.storm_timeout,
                        settle=args.settle, live=args.live_check,
                        profile_dir=workdir / "profiles" if args.profile else None,
                        label=f"[storm {tree.label} {sessions} run {i + 1}/{args.runs}] ",
                        quiet=args.quiet,
                    )
                )  # fmt: skip
        for tree, _, info in trees:
            runs = by_tree[tree.label]
            agg = aggregate(runs)
            agg.update(
                tree=tree.label,
                relay=describe(tree, info),
                sessions=sessions,
                workers=args.workers,
                runs=len(runs),
                complete=all(r.complete for r in runs),
                failed=sum(r.failed for r in runs),
                docs_wrong=sum(r.docs_wrong for r in runs),
                expected_docs=runs[0].expected_docs if runs else 0,
                other_cpu_share_max=max((r.other_cpu_share for r in runs), default=0.0),
                steal_share_max=max((r.steal_share for r in runs), default=0.0),
            )
            ok = ok and agg["complete"]
            rows.append(agg)
            results.setdefault("storm", []).append(
                {"aggregate": agg, "runs": [asdict(r) for r in runs]}
            )
    print_storm(rows, args)
    return ok


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
        if a["other_cpu_share_max"] > 0.1 or a["steal_share_max"] > 0.1:
            print(
                f"NOTE: {a['relay']} at {a['sessions']:,} sessions: the machine was not quiet "
                f"(other processes up to {a['other_cpu_share_max']:.0%} of a core, stolen up to "
                f"{a['steal_share_max']:.0%})"
            )
