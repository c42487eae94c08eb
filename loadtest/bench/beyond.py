"""The ``events`` and ``presence`` commands (issue #11, beyond rows): runs, medians, tables.

``events_command`` runs ``events.run_events`` ``--runs`` times per session count (each
with a fresh relay) and prints events beside row changes on the same sessions, then the
sustained rates; ``presence_command`` runs ``presence.run_presence`` ``--runs`` times and
prints the churn, the database writes per join or leave, the convergence and the crash.
Medians over runs, as everywhere in the harness; ``results.json`` keeps every run.

Must not: measure anything itself (``events``, ``presence``) or parse options (``cli``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.bench.events import EventsRun, SustainRun, run_events
from loadtest.bench.figures import ms_text as _ms
from loadtest.bench.figures import noisy
from loadtest.bench.presence import LEASE_TABLE, PresenceRun, run_presence
from loadtest.bench.runner import median
from loadtest.bench.stack import Cleanup, Database


def medians(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Per key of the first summary, the median over all of them (NaN ignored)."""
    return {key: median([s[key] for s in summaries]) for key in summaries[0]} if summaries else {}


def auto_pool(rate: float, hold: float, relays: int, crash: int = 0) -> int:
    """The churn pool when ``--pool`` is not given: the sessions present at the asked rate
    (``rate`` x ``hold``) plus a second's worth of joins and leaves in flight, at least
    ten per relay, and ``crash`` on each relay (the crash case takes them from the
    first)."""
    return max(10 * relays, math.ceil(rate * (hold + 1.0)), crash * relays)


def _noise(rows: list[dict[str, Any]], what: str) -> None:
    for a in rows:
        if noisy(a["other_cpu_share_max"], a["steal_share_max"]):
            print(
                f"NOTE: {what.format(**a)}: the machine was not quiet (other processes up to "
                f"{a['other_cpu_share_max']:.0%} of a core, stolen up to "
                f"{a['steal_share_max']:.0%})"
            )


# -- events -----------------------------------------------------------------------------------


def _shares(a: dict[str, Any], prefix: str = "") -> str:
    """The CPU shares of a phase: relay / generator / writer / postgres, in % of a core."""
    return " / ".join(
        f"{a[f'{prefix}{name}_cpu_share']:.0%}"
        for name in ("relay", "generator", "writer", "postgres")
    )


def _events_totals(runs: list[EventsRun]) -> dict[str, Any]:
    phases = [p for r in runs for p in (r.events, r.rows) if p is not None]
    return {
        "exact": all(r.exact for r in runs),
        "failed": sum(r.failed for r in runs),
        "lost": sum(p.missing for p in phases),
        "duplicates": sum(p.duplicates for p in phases),
        "out_of_order": sum(r.out_of_order for r in runs),
        "protocol_errors": sum(r.protocol_errors for r in runs),
        "checked": sum(r.checked for r in runs),
        "mismatched": sum(r.mismatched for r in runs),
        "max_held": max((r.max_held for r in runs), default=0),
        "history": runs[0].history if runs else 0,
        "events": runs[0].events.writes if runs else 0,
        "renames": runs[0].rows.writes if runs and runs[0].rows else 0,
        "other_cpu_share_max": max(
            (p.other_cpu_share for p in phases if p.other_cpu_share == p.other_cpu_share),
            default=0.0,
        ),
        "steal_share_max": max(
            (p.steal_share for p in phases if p.steal_share == p.steal_share), default=0.0
        ),
    }


def _sustain_rows(runs: list[EventsRun]) -> list[dict[str, Any]]:
    """Per asked rate: the medians over the runs and their verdicts."""
    by_rate: dict[float, list[SustainRun]] = {}
    for run in runs:
        for s in run.sustain:
            by_rate.setdefault(s.rate, []).append(s)
    rows = []
    for rate, sustains in by_rate.items():
        rows.append(
            {
                **medians([s.summary() for s in sustains]),
                "rate": rate,
                "seconds": sustains[0].seconds,
                "sessions": sustains[0].sessions,
                "batch": sustains[0].phase.batch,
                "runs": len(sustains),
                "kept_up_runs": sum(s.kept_up for s in sustains),
                "exact": all(s.exact for s in sustains),
                "lost": sum(s.phase.missing + s.failed for s in sustains),
                "duplicates": sum(s.phase.duplicates for s in sustains),
                "out_of_order": sum(s.out_of_order for s in sustains),
                "published": median([float(s.phase.writes) for s in sustains]),
            }
        )
    return rows


def events_command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``events`` for every ``--sessions`` count; False when a run was not exact."""
    ok = True
    rows = []
    for sessions in args.sessions:
        runs = []
        for i in range(args.runs):
            run = run_events(
                    db, workdir, cleanup,
                    sessions=sessions, events=args.events, renames=args.renames,
                    interval=args.interval, deflate=args.deflate,
                    concurrency=args.concurrency, ramp_timeout=args.ramp_timeout,
                    settle=args.settle, sustain_rates=args.sustain_rates,
                    sustain_sessions=args.sustain_sessions,
                    sustain_seconds=args.sustain_seconds, sustain_batch=args.sustain_batch,
                    workers=args.workers, live=args.live_check, max_wait=args.max_wait,
                    profile_dir=workdir / "profiles" if args.profile else None,
                    label=f"[events {sessions} run {i + 1}/{args.runs}] ", quiet=args.quiet,
            )  # fmt: skip
            runs.append(run)
        agg = {
            **medians([r.summary() for r in runs]),
            "sessions": sessions,
            "runs": len(runs),
            "workers": args.workers,
            **_events_totals(runs),
        }
        sustain = _sustain_rows(runs)
        ok = ok and agg["exact"]
        rows.append((agg, sustain))
        results.setdefault("events", []).append(
            {"aggregate": agg, "sustain": sustain, "runs": [asdict(r) for r in runs]}
        )
    print_events([a for a, _ in rows], args)
    print_sustain([s for _, sustain in rows for s in sustain], args)
    return ok


def print_events(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nevents: each session subscribes chat.byBook [a fresh book] and books.all; "
        f"{args.events} events (publish_event from a Django process, one transaction each), "
        f"then {args.renames} renames of that book, {args.interval * 1000:.0f} ms apart; "
        f"medians of {args.runs} runs"
        + (f"; {args.workers} relay workers, CPU summed" if args.workers > 1 else "")
    )
    print(
        "| sessions | write | reached all sessions p50 / p99 | delivery p50 / p99 / max "
        "| relay CPU per write | CPU relay / generator / writer / postgres "
        "| lost / dup / out of order |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for a in rows:
        for prefix, what in (("events", "event (chat.byBook)"), ("rows", "row (books.all)")):
            if f"{prefix}_all_p50_ms" not in a:
                continue
            print(
                f"| {a['sessions']:,} | {what} "
                f"| {_ms(a[f'{prefix}_all_p50_ms'])} / {_ms(a[f'{prefix}_all_p99_ms'])} "
                f"| {_ms(a[f'{prefix}_delivery_p50_ms'])} / {_ms(a[f'{prefix}_delivery_p99_ms'])} "
                f"/ {_ms(a[f'{prefix}_delivery_max_ms'])} "
                f"| {_ms(a[f'{prefix}_relay_cpu_per_write_ms'])} "
                f"| {_shares(a, prefix + '_')} "
                f"| {a['lost'] + a['failed']} / {a['duplicates']} / {a['out_of_order']} |"
            )
    for a in rows:
        print(
            f"{a['sessions']:,} sessions: views equal to the stream's history ({a['history']} "
            f"events): {a['checked'] - a['mismatched']:,}/{a['checked']:,}; protocol errors "
            f"{a['protocol_errors']}; at most {a['max_held']} chat documents held; subscribed "
            f"in {a['ramp_s']:.1f} s; {a['memory_per_session_bytes'] / 1024:.1f} KiB PSS per "
            "session"
        )
    _noise(rows, "at {sessions:,} sessions")


def print_sustain(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if not rows:
        return
    print(
        f"\nsustained: {args.sustain_sessions} sessions subscribe chat.byBook [a fresh book]; "
        f"events at the asked rate for {args.sustain_seconds:g} s ({args.sustain_batch} per "
        f"transaction); lag = commit to the last subscriber; keeps up: the last tenth's lag "
        f"at most 500 ms above the first tenth's; medians of {args.runs} runs"
    )
    print(
        "| asked events/s | published events/s | lag p50 / p99 | lag first / last tenth "
        "| drain after the last | deliveries/s | relay CPU per event "
        "| CPU relay / generator / writer / postgres | keeps up | lost / dup / out of order |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a in rows:
        print(
            f"| {a['rate']:,.0f} | {a['write_rate']:,.0f} "
            f"| {_ms(a['all_p50_ms'])} / {_ms(a['all_p99_ms'])} "
            f"| {_ms(a['lag_first_tenth_ms'])} / {_ms(a['lag_last_tenth_ms'])} "
            f"| {_ms(a['drain_ms'])} | {a['deliveries_per_s']:,.0f} "
            f"| {_ms(a['relay_cpu_per_write_ms'])} | {_shares(a)} "
            f"| {a['kept_up_runs']}/{a['runs']} runs "
            f"| {a['lost']} / {a['duplicates']} / {a['out_of_order']} |"
        )


# -- presence ---------------------------------------------------------------------------------


def _writes_per_change(runs: list[PresenceRun]) -> dict[str, dict[str, float]]:
    """Per table and counter: the median over the runs of rows per join or leave."""
    out: dict[str, dict[str, float]] = {}
    for table, ops in runs[0].writes.items():
        out[table] = {
            op: median([r.writes[table][op] / r.changes for r in runs if r.changes]) for op in ops
        }
    return out


def _presence_totals(runs: list[PresenceRun]) -> dict[str, Any]:
    return {
        "complete": all(r.complete for r in runs),
        "joins": sum(r.joins for r in runs),
        "leaves": sum(r.leaves for r in runs),
        "starved": sum(r.starved for r in runs),
        "failed": sum(r.failed + r.failed_joins + r.lost_churners for r in runs),
        "converged_runs": sum(r.converged for r in runs),
        "crash_converged_runs": sum(r.crash_converged for r in runs),
        "mismatched": sum(r.mismatched for r in runs),
        "protocol_errors": sum(r.protocol_errors for r in runs),
        "lag_unmatched": sum(r.lag_unmatched for r in runs),
        "lag_matched": sum(r.lag_matched for r in runs),
        "writes_settled": all(r.writes_settled for r in runs),
        "writes_per_change": _writes_per_change(runs),
        "other_cpu_share_max": max((r.other_cpu_share for r in runs), default=0.0),
        "steal_share_max": max((r.steal_share for r in runs), default=0.0),
    }


def presence_command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``presence`` ``--runs`` times; False when a run was not complete."""
    pool = args.pool or auto_pool(args.rate, args.hold, args.relays, args.crash_sessions)
    runs = []
    for i in range(args.runs):
        run = run_presence(
                db, workdir, cleanup,
                relays=args.relays, watchers=args.watchers, pool=pool, rate=args.rate,
                seconds=args.seconds, hold=args.hold, topics=args.topics, lease=args.lease,
                crash_sessions=args.crash_sessions, converge_timeout=args.converge_timeout,
                deflate=args.deflate, concurrency=args.concurrency,
                ramp_timeout=args.ramp_timeout, settle=args.settle, workers=args.workers,
                live=args.live_check, label=f"[presence run {i + 1}/{args.runs}] ",
                quiet=args.quiet,
        )  # fmt: skip
        runs.append(run)
    agg = {
        **medians([r.summary() for r in runs]),
        "relays": args.relays,
        "watchers": args.watchers,
        "pool": pool,
        "rate": args.rate,
        "topics": args.topics,
        "runs": len(runs),
        **_presence_totals(runs),
    }
    results.setdefault("presence", []).append({"aggregate": agg, "runs": [asdict(r) for r in runs]})
    print_presence([agg], args)
    return bool(agg["complete"])


def print_presence(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\npresence: {args.relays} relays ({args.workers} worker(s) each, lease "
        f"{args.lease:g} s), {args.watchers} watchers per relay on presence.book [book 1]; "
        f"churn: pool sessions join presence.book on a random relay (book 1 of "
        f"{args.topics}) at {args.rate:g}/s for {args.seconds:g} s and leave "
        f"{args.hold * 1000:.0f} ms after their ready; medians of {args.runs} runs"
    )
    print(
        "| joins/s / leaves/s (asked) | rows written per join or leave | changelog rows "
        "/ NOTIFYs per change | relay CPU per change | join p50 / p99 | lag to a watcher "
        "p50 / p99 | a change reached all watchers p50 / p99 | converged after the last leave "
        "| crash: views / database converged after | CPU relays / generator / postgres "
        "| complete |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for a in rows:
        crash = (
            f"{a['crash_views_s']:.1f} / {a['crash_db_s']:.1f} s"
            if args.crash_sessions
            else "not run"
        )
        print(
            f"| {a['join_rate']:,.0f} / {a['leave_rate']:,.0f} ({a['rate']:,.0f}) "
            f"| {a['rows_per_change']:.2f} "
            f"| {a['changelog_per_change']:.2f} / {a['notifies_per_change']:.2f} "
            f"| {_ms(a['relay_cpu_per_change_ms'])} "
            f"| {_ms(a['join_p50_ms'])} / {_ms(a['join_p99_ms'])} "
            f"| {_ms(a['lag_p50_ms'])} / {_ms(a['lag_p99_ms'])} "
            f"| {_ms(a['lag_all_p50_ms'])} / {_ms(a['lag_all_p99_ms'])} "
            f"| {_ms(a['converge_ms'])} ({a['converged_runs']}/{a['runs']} runs) "
            f"| {crash} | {a['relay_cpu_share']:.0%} / {a['generator_cpu_share']:.0%} "
            f"/ {a['postgres_cpu_share']:.0%} | {'yes' if a['complete'] else 'NO'} |"
        )
    for a in rows:
        parts = [
            f"{table} " + " + ".join(f"{v:.2f} {op}" for op, v in ops.items() if v)
            for table, ops in a["writes_per_change"].items()
            if table != LEASE_TABLE and any(ops.values())
        ]
        print(
            "rows per join or leave (pg_stat_user_tables): "
            + "; ".join(parts)
            + f" (lease renewals not counted; counters settled: {a['writes_settled']})"
        )
        print(
            f"{a['joins']:,} joins and {a['leaves']:,} leaves in {a['runs']} runs; "
            f"{a['starved']:,} joins skipped (no idle pool session of {a['pool']:,}); "
            f"failed or lost {a['failed']}; lag: {a['lag_matched']:,} receipts matched, "
            f"{a['lag_unmatched']:,} commits a watcher never saw apart (a join and leave a "
            "relay merged)"
        )
    _noise(rows, "presence")
