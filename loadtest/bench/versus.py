"""The ``versus`` command: ddp-relay beside a reference peer, in one invocation, on one
generator, with ratios to the peer's figures of the same run.

Contenders are ``name:workers`` (``ddp-relay:2``, ``ddp-relay:1``, ``socketio:2``);
the first ``socketio`` one is the reference. For each session count, run i of every
contender is measured back to back (``runner.run_once``: its own server, N sessions
subscribed or joined to the room, the same paced writes from the same writer, the same
``loadgen.js``), the order rotating from run to run so a drift of the machine touches
each alike, after the floor of any server's CPU per delivery on this machine is measured
(``floor.send_floor``). Absolute times on a shared 2-core machine move between invocations; the
ratio of two contenders' run i, measured a minute apart, is what this reports (median,
and min-max over the runs). ``plot`` draws completion time and CPU per delivery
against N.

Must not: measure anything itself (``runner`` does), or parse options (``cli``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtest.bench.figures import ms_text, noisy
from loadtest.bench.floor import send_floor
from loadtest.bench.runner import RELAY, SOCKETIO, RunResult, common_options, median, run_once
from loadtest.bench.stack import BenchError, Cleanup, Database

#: Sessions one generator process holds at most (the descriptor limit here is 20,000).
SESSIONS_PER_GENERATOR = 10_000
#: Sockets of the send floor: a worker's share of N (two workers), at most this many.
FLOOR_SOCKETS = 5_000


@dataclass(frozen=True)
class Contender:
    peer: str
    workers: int

    @property
    def label(self) -> str:
        name = "ddp-relay" if self.peer == RELAY else "Socket.IO 4.8"
        return f"{name}, {self.workers} worker{'s' if self.workers > 1 else ''}"

    @property
    def key(self) -> str:
        return f"{self.peer}:{self.workers}"


def contenders(text: str) -> list[Contender]:
    """``ddp-relay:2,socketio:2`` (workers default to 2); at least one of each peer."""
    out = []
    for part in text.split(","):
        name, _, workers = part.strip().partition(":")
        if name not in (RELAY, SOCKETIO):
            raise argparse.ArgumentTypeError(f"{name!r}: a contender is ddp-relay or socketio")
        try:
            count = int(workers or 2)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: workers must be a number") from None
        if count < 1:
            raise argparse.ArgumentTypeError(f"{part!r}: at least one worker")
        out.append(Contender(name, count))
    if len({c.key for c in out}) != len(out):
        raise argparse.ArgumentTypeError("a contender is named twice")
    if not any(c.peer == RELAY for c in out) or not any(c.peer == SOCKETIO for c in out):
        raise argparse.ArgumentTypeError("name ddp-relay and socketio (the reference)")
    return out


def per_run(run: RunResult) -> dict[str, float]:
    """The figures of one run that ``versus`` compares."""
    s = run.summary()
    return {
        "all_p50_ms": s["all_p50_ms"],
        "delivery_p50_ms": s["delivery_p50_ms"],
        "delivery_p99_ms": s["delivery_p99_ms"],
        "cpu_us_per_delivery": (
            run.relay_cpu_s * 1e6 / run.delivered if run.delivered else math.nan
        ),
        "cpu_share": run.relay_cpu_s / run.wall_s if run.wall_s else math.nan,
        "memory_per_session": run.memory_per_session,
        "subscribe_s": run.ramp_s,
        "sustained_per_s": run.sustained_per_s,
    }


#: The ratios ``versus`` reports, each the contender's figure over the reference's.
RATIOS = ("all_p50_ms", "cpu_us_per_delivery", "subscribe_s", "memory_per_session")


def ratios(runs: list[RunResult], reference: list[RunResult]) -> dict[str, list[float]]:
    """Per run index, each of ``RATIOS``: this contender's run i over the reference's."""
    out: dict[str, list[float]] = {key: [] for key in RATIOS}
    for mine, theirs in zip(runs, reference, strict=False):
        a, b = per_run(mine), per_run(theirs)
        for key in RATIOS:
            out[key].append(a[key] / b[key] if b[key] and b[key] == b[key] else math.nan)
    return out


def spread(values: list[float], fmt: Callable[[float], str]) -> str:
    """``median (min-max)`` of the finite values; ``n/a`` when there are none."""
    clean = [v for v in values if v == v and not math.isinf(v)]
    if not clean:
        return fmt(math.inf) if any(math.isinf(v) for v in values) else "n/a"
    if min(clean) == max(clean):
        return fmt(clean[0])
    return f"{fmt(median(clean))} ({fmt(min(clean))}-{fmt(max(clean))})"


def _x(value: float) -> str:
    return f"{value:.2f}x"


def table(
    n: int, by: dict[Contender, list[RunResult]], reference: Contender, floor_us: float
) -> list[str]:
    """The Markdown rows of one session count; ``floor_us``: ``floor.send_floor``'s."""
    lines = [
        f"\n{n:,} sessions (a loopback send() of one frame alone costs {floor_us:.1f} us of "
        "CPU here: the floor of any server's CPU per delivery)",
        "| server | one write reaches all, p50 (min-max) | delivery p50 / p99 "
        "| deliveries/s over the series | CPU per delivery | server CPU during the writes "
        f"| memory per idle session | subscribing all {n:,} "
        "| vs Socket.IO: time / CPU / subscribing / memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for contender, runs in by.items():
        figures = [per_run(r) for r in runs]
        col = {key: [f[key] for f in figures] for key in figures[0]} if figures else {}
        if contender == reference:
            versus = "(the reference)"
        else:
            r = ratios(runs, by[reference])
            versus = " / ".join(spread(r[key], _x) for key in RATIOS)
        lost = sum(run.lost + run.duplicates for run in runs)
        lines.append(
            f"| {contender.label}{' (LOST OR DUPLICATED: ' + str(lost) + ')' if lost else ''} "
            f"| {spread(col.get('all_p50_ms', []), ms_text)} "
            f"| {ms_text(median(col.get('delivery_p50_ms', [])))} / "
            f"{ms_text(median(col.get('delivery_p99_ms', [])))} "
            f"| {median(col.get('sustained_per_s', [])):,.0f} "
            f"| {median(col.get('cpu_us_per_delivery', [])):.1f} us "
            f"| {median(col.get('cpu_share', [])):.0%} of a core "
            f"| {median(col.get('memory_per_session', [])) / 1024:.1f} KiB "
            f"| {median(col.get('subscribe_s', [])):.1f} s "
            f"| {versus} |"
        )
    if any(noisy(r.other_cpu_share, r.steal_share) for runs in by.values() for r in runs):
        lines.append("(WARNING: the machine was not quiet during some writes)")
    return lines


def plot(
    path: Path, sessions: list[int], by_n: dict[int, dict[Contender, list[RunResult]]]
) -> None:
    """Completion time p50 and CPU per delivery against N, one line per contender (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = {c for by in by_n.values() for c in by}
    for contender in sorted(names, key=lambda c: c.key):
        xs, times, cpus = [], [], []
        for n in sessions:
            runs = by_n.get(n, {}).get(contender, [])
            if not runs:
                continue
            figures = [per_run(r) for r in runs]
            xs.append(n)
            times.append(median([f["all_p50_ms"] for f in figures]))
            cpus.append(median([f["cpu_us_per_delivery"] for f in figures]))
        left.plot(xs, times, marker="o", label=contender.label)
        right.plot(xs, cpus, marker="o", label=contender.label)
    for axis, title, unit in (
        (left, "one commit reaches all N sessions (p50)", "ms"),
        (right, "server CPU per delivery (all workers)", "µs"),
    ):
        axis.set_xscale("log")
        axis.set_xticks(sessions, [f"{n // 1000}k" if n >= 1000 else str(n) for n in sessions])
        axis.minorticks_off()
        axis.set_xlabel("idle subscribed sessions (N)")
        axis.set_ylabel(unit)
        axis.set_title(title, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    args: argparse.Namespace,
    results: dict[str, Any],
) -> bool:
    """Every contender at each session count, runs interleaved; the tables and the plot."""
    field: list[Contender] = args.contenders
    reference = next(c for c in field if c.peer == SOCKETIO)
    by_n: dict[int, dict[Contender, list[RunResult]]] = {}
    ok = True
    for n in args.sessions:
        generators = args.generators or max(1, math.ceil(n / SESSIONS_PER_GENERATOR))
        by: dict[Contender, list[RunResult]] = {c: [] for c in field}
        floor_us = send_floor(max(1, min(n // 2, FLOOR_SOCKETS)))
        for i in range(args.runs):
            order = field[i % len(field) :] + field[: i % len(field)]
            for contender in order:
                run = run_once(
                    db,
                    workdir,
                    cleanup,
                    **common_options(args, workdir),
                    mode="versus",
                    sessions=n,
                    writes=args.writes,
                    interval=args.interval,
                    label=f"[{contender.key} {n} run {i + 1}/{args.runs}] ",
                    workers=contender.workers,
                    generators=generators,
                    peer=contender.peer,
                )
                by[contender].append(run)
                ok = ok and run.lost + run.duplicates == 0 and run.relay_alive
        by_n[n] = by
        results.setdefault("versus", []).append(
            {
                "sessions": n,
                "generators": generators,
                "send_floor_us": floor_us,
                "contenders": {
                    c.key: {
                        "runs": [asdict(r) for r in runs],
                        "figures": [per_run(r) for r in runs],
                    }
                    for c, runs in by.items()
                },
            }
        )
        print("\n".join(table(n, by, reference, floor_us)), flush=True)
    print(
        f"\nversus: {args.writes} writes {args.interval * 1000:.0f} ms apart per run, "
        f"medians of {args.runs} runs (min-max); clients "
        + ("offer permessage-deflate" if args.deflate else "do not offer permessage-deflate")
    )
    if args.plot is not None or len(args.sessions) > 1:
        path = args.plot or workdir / "versus.png"
        try:
            plot(path, list(args.sessions), by_n)
        except ImportError as exc:
            raise BenchError(f"the plot needs matplotlib (the loadtest extra): {exc}") from exc
        results["plot"] = str(path)
        print(f"bench: plot in {path}")
    return ok
