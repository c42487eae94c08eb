"""``python -m loadtest.bench``: the reproducible benchmark of one relay worker.

Every command starts its own throwaway PostgreSQL, migrates and seeds the example app,
and measures ONE relay worker (gunicorn, ``RELAY_WORKERS=1``; ``--workers N`` for N
gevent workers, as the default deployment runs one per core) with a Node.js load
generator on loopback; nothing else needs to run. From the repository root::

    .venv/bin/python -m loadtest.bench fanout --sessions 1000,5000,10000
    .venv/bin/python -m loadtest.bench fanout --sessions 10000 --workers 2
    .venv/bin/python -m loadtest.bench latency --sessions 1000 --rate 100 --seconds 20
    .venv/bin/python -m loadtest.bench memory --sessions 5000
    .venv/bin/python -m loadtest.bench overhead
    .venv/bin/python -m loadtest.bench all          # all four, as docs/benchmarks.md reports
    .venv/bin/python -m loadtest.bench check        # do live updates reach clients at all?
    .venv/bin/python -m loadtest.bench window --before   # books.latest windows, before/after
    .venv/bin/python -m loadtest.bench storm --before    # 10,000 subscriptions at once
    .venv/bin/python -m loadtest.bench events            # one event to 5,000, beside a row
    .venv/bin/python -m loadtest.bench presence          # join/leave churn on 3 relays
    .venv/bin/python -m loadtest.bench sockjs            # SockJS over HTTP across 2 relays
    .venv/bin/python -m loadtest.bench notify            # NOTIFY cost by listener count
    .venv/bin/python -m loadtest.bench drain             # SIGTERM a relay of 5,000 sessions

Each measurement is repeated ``--runs`` times (default 3, each with a fresh relay and
fresh sessions) and the median of the runs is reported, as the peers' figures in
``shared/reference/peers.md`` were. Clients offer permessage-deflate as browsers do
(``--no-deflate`` to measure without it). Results are printed and written as JSON to
``<workdir>/results.json`` (``--json`` for another path); logs stay in the workdir.

``window`` and ``storm`` (``compare``) measure issue #10's shared live queries and, with
``--before REV``, the relay code of an earlier commit side by side (``trees``). ``events``
and ``presence`` (``beyond``) measure issue #11's server-pushed events and presence.

Exit status: 0 when every session received every write exactly once, 1 when anything was
lost or duplicated, a session failed or a window ended unlike the database's, 2 when the
benchmark could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.bench.beyond import auto_pool, events_command, presence_command
from loadtest.bench.books import max_writes
from loadtest.bench.compare import command as compare_command
from loadtest.bench.coordination import command as coordination_command
from loadtest.bench.drain import command as drain_command
from loadtest.bench.figures import ms_text, noisy
from loadtest.bench.notify import command as notify_command
from loadtest.bench.runner import RunResult, common_options, live_check, machine, median, run_once
from loadtest.bench.sockjs import command as sockjs_command
from loadtest.bench.stack import (
    BenchError,
    Cleanup,
    Database,
    Relay,
    fd_limit,
    make_workdir,
    raise_fd_limit,
)
from loadtest.bench.trees import BEFORE_DEFAULT
from loadtest.bench.versus import SESSIONS_PER_GENERATOR, contenders
from loadtest.bench.versus import command as versus_command
from loadtest.bench.writer import DrainListener, channels, trigger_overhead

#: Each command's line in ``--help``, in the order ``--help`` lists them.
MODES = {
    "fanout": "one commit fanned out to N idle subscribed sessions",
    "latency": "commit-to-client latency at a steady commit rate",
    "memory": "PSS of the worker(s) per idle subscribed session",
    "overhead": "ms the write side adds to a writing transaction",
    "all": "fanout, latency, overhead",
    "window": "a sorted, limited window (books.latest) under commits that change it",
    "storm": "N connected sessions subscribe books.all at the same moment",
    "events": "events of one stream to N subscribers, beside row changes; sustained rates",
    "presence": "presence churn across relays: database writes per join, convergence",
    "sockjs": "one session over SockJS's HTTP transports across 2 relays: round trips",
    "notify": "PostgreSQL NOTIFY commit rate and latency as LISTEN connections grow",
    "coordination": "ZooKeeper requests per session step, and what one server sustains",
    "drain": "SIGTERM a relay holding N sessions: parked, resumed exactly on the others",
    "versus": "fan-out beside Socket.IO 4.8 (node:cluster, PostgreSQL LISTEN), same generator",
    "check": "do live updates reach clients?",
}

#: The issue's targets (shared/reference/peers.md "Measured on these machines").
TARGETS = {
    "all_5000_p50_ms": 70.0,
    "deliveries_per_s": 100_000.0,
    "memory_per_session_kib": 16.0,
    "write_overhead_ms": 0.3,
}


def _sessions(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("session counts must be positive")
    return values


#: The shortest ``presence --lease``: above the relays' keepalive period (3 s +-30%,
#: ``relay.server.keepalive``) with a second to spare.
MIN_LEASE = 5.0


def _rates(text: str) -> list[float]:
    """A comma list of rates (per second); "0" alone: none."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if values == [0.0]:
        return []
    if not values or any(not 0 < v <= 1_000_000 for v in values):
        raise argparse.ArgumentTypeError("rates must be above 0 and at most 1,000,000")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="Benchmark ddp-relay (one gunicorn worker unless --workers): fan-out, "
        "latency, memory, write overhead, live windows, subscription storms.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    common.add_argument(
        "--no-deflate",
        dest="deflate",
        action="store_false",
        help="clients do not offer permessage-deflate (default: they do, as browsers)",
    )
    common.add_argument("--out", type=Path, default=None, help="workdir (default: a temp dir)")
    common.add_argument("--json", type=Path, default=None, help="also write results here")
    common.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the relay during the writes: one py-spy and one output file per worker",
    )
    common.add_argument(
        "--concurrency", type=int, default=200, help="sessions the generator opens at once"
    )
    common.add_argument(
        "--ramp-timeout", type=float, default=600.0, help="seconds to open all sessions"
    )
    common.add_argument("--fsync", action="store_true", help="PostgreSQL with fsync on")
    common.add_argument("--quiet", action="store_true", help="print only the results")
    common.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds the worker settles before each PSS reading",
    )
    common.add_argument(
        "--no-live-check",
        dest="live_check",
        action="store_false",
        help="skip the check that a commit reaches clients (dry runs of the harness)",
    )
    # The modes that measure sessions on a relay (fanout, latency, memory; in ``all``:
    # fanout and latency, not the write-side overhead).
    relay = argparse.ArgumentParser(add_help=False)
    relay.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="gunicorn gevent workers of the relay (RELAY_WORKERS; default 1). They share "
        "one listening socket: the kernel spreads the sessions. PSS and relay CPU are "
        "summed over the workers; results.json has each worker's share",
    )
    # The modes that can also measure the relay of an earlier commit (compare.py).
    before = argparse.ArgumentParser(add_help=False)
    before.add_argument(
        "--before",
        metavar="REV",
        nargs="?",
        const=BEFORE_DEFAULT,
        default=None,
        help="also measure the relay code of commit REV (default "
        f"{BEFORE_DEFAULT}: main before shared live queries), extracted with git archive, on "
        "its own database migrated by its own migrations; printed side by side",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def mode(
        name: str, *parents: argparse.ArgumentParser, sessions: list[int] | None = None
    ) -> argparse.ArgumentParser:
        """Command ``name`` (``MODES`` describes it) with the common options, ``parents``'
        and, for a mode that measures sessions, ``--sessions`` (a comma list) first."""
        sub = commands.add_parser(name, parents=[common, *parents], help=MODES[name])
        if sessions is not None:
            sub.add_argument("--sessions", type=_sessions, default=sessions)
        return sub

    fanout = mode("fanout", relay, sessions=[1000, 5000, 10000])
    fanout.add_argument("--writes", type=int, default=20)
    fanout.add_argument("--interval", type=float, default=0.5, help="seconds between writes")

    latency = mode("latency", relay, sessions=[1000])
    latency.add_argument("--rate", type=float, default=100.0, help="commits per second")
    latency.add_argument("--seconds", type=float, default=20.0)

    memory = mode("memory", relay, sessions=[5000])
    memory.add_argument(
        "--connect-only",
        dest="subscribe",
        action="store_false",
        help="sessions connect but do not subscribe (to separate the subscription's share)",
    )

    overhead = mode("overhead")
    overhead.add_argument("--transactions", type=int, default=1000, help="per round")
    overhead.add_argument("--rounds", type=int, default=10)

    everything = mode("all", relay, sessions=[1000, 5000, 10000])
    everything.add_argument("--writes", type=int, default=20)
    everything.add_argument("--interval", type=float, default=0.5)
    everything.add_argument("--rate", type=float, default=100.0)
    everything.add_argument("--seconds", type=float, default=20.0)
    everything.add_argument("--latency-sessions", type=int, default=1000)
    everything.add_argument("--transactions", type=int, default=1000)
    everything.add_argument("--rounds", type=int, default=10)

    notify = mode("notify")
    notify.add_argument("--listeners", type=_sessions, default=[1, 10, 50, 100, 200])
    notify.add_argument("--writers", type=_positive, default=4, help="committing connections")
    notify.add_argument("--seconds", type=float, default=5.0, help="per listener count")
    notify.add_argument("--payload", type=int, default=200, help="bytes per notification")

    coordination = mode("coordination")
    coordination.add_argument("--clients", type=_sessions, default=[1, 4, 16], help="processes")
    coordination.add_argument("--seconds", type=float, default=3.0, help="per client count")
    coordination.add_argument("--sample", type=_positive, default=200, help="sessions counted")
    coordination.add_argument("--servers", type=int, choices=[1, 3], default=1)

    drain = mode("drain", relay, sessions=[5000])
    drain.add_argument("--relays", type=_positive, default=3, help="the first is drained")
    drain.add_argument("--pre-writes", type=int, default=3, help="writes before the SIGTERM")
    drain.add_argument("--interval", type=float, default=0.1, help="seconds between writes")
    drain.add_argument("--graceful-timeout", type=_positive, default=30, help="seconds (relays)")
    drain.add_argument("--resume-timeout", type=float, default=60.0, help="seconds to wait")
    drain.add_argument("--target", type=float, default=5.0, help="seconds: every session resumed")
    drain.add_argument(
        "--reconnect-spread",
        type=float,
        default=0.0,
        help="seconds: each closed session reconnects after a random delay below it (0: at once)",
    )

    sockjs = mode("sockjs", relay)
    sockjs.add_argument("--rounds", type=_positive, default=100, help="calls per way and run")

    window = mode("window", relay, before, sessions=[5000])
    window.add_argument(
        "--distinct",
        type=_sessions,
        default=[1, 500],
        help="distinct queries the sessions spread over (comma list): 1 = all subscribe "
        "books.latest [n]; D > 1 = session s subscribes bench.latest [n, s %% D], the same "
        "window under D distinct parameter lists",
    )
    window.add_argument("--n", type=_positive, default=20, help="window size (limit)")
    window.add_argument(
        "--writes",
        type=int,
        default=20,
        help="commits: inserts of a newest book alternating with removals of the book at "
        "position n (at most 2 (n - 1))",
    )
    window.add_argument("--interval", type=float, default=0.5, help="seconds between commits")
    window.add_argument(
        "--max-wait",
        type=float,
        default=900.0,
        help="seconds to wait after the writes for every session to have every change",
    )

    storm = mode("storm", relay, before, sessions=[10000])
    storm.add_argument(
        "--generators", type=_positive, default=1, help="load generator processes sharing N"
    )
    storm.add_argument(
        "--storm-timeout", type=float, default=600.0, help="seconds for every sub to be ready"
    )

    events = mode("events", relay, sessions=[5000])
    events.add_argument("--events", type=_positive, default=200, help="events published")
    events.add_argument(
        "--renames",
        type=int,
        default=20,
        help="renames of the same book after the events (the row fan-out beside them; 0: "
        "none, and sessions do not subscribe books.all)",
    )
    events.add_argument("--interval", type=float, default=0.5, help="seconds between writes")
    events.add_argument(
        "--max-wait", type=float, default=900.0, help="seconds for every session to have all"
    )
    events.add_argument(
        "--sustain-rates",
        type=_rates,
        default=[1000.0],
        help="events per second asked of one stream, a comma list (each its own sub-run on "
        "the same relay; 0: none)",
    )
    events.add_argument("--sustain-sessions", type=_positive, default=100)
    events.add_argument("--sustain-seconds", type=float, default=10.0)
    events.add_argument(
        "--sustain-batch", type=_positive, default=1, help="events per transaction when sustained"
    )

    presence = mode("presence", relay)
    presence.add_argument("--relays", type=_positive, default=3)
    presence.add_argument("--watchers", type=_positive, default=10, help="per relay")
    presence.add_argument("--rate", type=float, default=1000.0, help="joins (and leaves) a second")
    presence.add_argument("--seconds", type=float, default=15.0, help="of churn")
    presence.add_argument(
        "--hold", type=float, default=0.5, help="seconds a churn session stays after its ready"
    )
    presence.add_argument(
        "--pool",
        type=int,
        default=0,
        help="churn sessions (default: rate x (hold + 1 s), at least crash-sessions per "
        "relay); a join due when none is idle is skipped and counted",
    )
    presence.add_argument(
        "--topics",
        type=_positive,
        default=1,
        help="books the churn spreads over (1: all on the watchers' book)",
    )
    presence.add_argument(
        "--lease", type=float, default=10.0, help="the relays' DDP_PRESENCE_LEASE, seconds"
    )
    presence.add_argument(
        "--crash-sessions",
        type=int,
        default=100,
        help="members on the relay SIGKILLed after the churn (0: no crash)",
    )
    presence.add_argument("--converge-timeout", type=float, default=120.0)

    versus = mode("versus", sessions=[1000, 5000, 10000])
    versus.add_argument(
        "--contenders",
        type=contenders,
        default=contenders("ddp-relay:2,socketio:2"),
        help="name:workers, a comma list (default ddp-relay:2,socketio:2; e.g. add "
        "ddp-relay:1); the first socketio is the reference of the ratios",
    )
    versus.add_argument("--writes", type=int, default=20)
    versus.add_argument("--interval", type=float, default=0.5, help="seconds between writes")
    versus.add_argument(
        "--generators",
        type=int,
        default=0,
        help="load generator processes sharing N (default: one per 10,000 sessions)",
    )
    versus.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of time and CPU against N (default: "
        "versus.png in the workdir when several session counts are measured)",
    )

    mode("check")
    return parser


# -- aggregation and printing -----------------------------------------------------------------


def aggregate(runs: list[RunResult]) -> dict[str, Any]:
    """Medians over runs of each run's figures, plus totals that must be zero."""
    summaries = [r.summary() for r in runs]
    keys = summaries[0].keys() if summaries else []
    out: dict[str, Any] = {k: median([s[k] for s in summaries]) for k in keys}
    out.update(
        runs=len(runs),
        sessions=runs[0].sessions if runs else 0,
        ready_min=min((r.ready for r in runs), default=0),
        failed=sum(r.failed for r in runs),
        missing=sum(r.missing for r in runs),
        duplicates=sum(r.duplicates for r in runs),
        closed_after_ready=sum(r.closed_after_ready for r in runs),
        writes=sum(r.writes for r in runs),
        write_rate=median([r.write_rate for r in runs]),
        ramp_s=median([r.ramp_s for r in runs]),
        relay_cpu_per_write_ms=median([r.relay_cpu_s * 1000 / r.writes for r in runs if r.writes]),
        deliveries_per_cpu_s=median(
            [r.delivered / r.relay_cpu_s for r in runs if r.relay_cpu_s > 0]
        ),
        relay_cpu_share=median([r.relay_cpu_s / r.wall_s for r in runs if r.wall_s]),
        generator_cpu_share=median([r.generator_cpu_s / r.wall_s for r in runs if r.wall_s]),
        postgres_cpu_share=median([r.postgres_cpu_s / r.wall_s for r in runs if r.wall_s]),
        other_cpu_share_max=max((r.other_cpu_share for r in runs if r.wall_s), default=0.0),
        steal_share_max=max((r.steal_share for r in runs if r.wall_s), default=0.0),
        relay_errors=sum(r.relay_errors for r in runs),
        relay_alive=all(r.relay_alive for r in runs),
        workers=runs[0].workers if runs else 1,
        busiest_worker_sessions_share=median([r.busiest_worker_sessions_share for r in runs]),
        busiest_worker_cpu_share=median([r.busiest_worker_cpu_share for r in runs]),
        worker_timeouts=sum(r.worker_timeouts for r in runs),
        all_done=all(r.all_done for r in runs),
        subscribed=all(r.subscribed for r in runs),
    )
    return out


def _ms(value: float) -> str:
    return ms_text(value, "never (lost)")


def _share(value: float) -> str:
    return "n/a" if value != value else f"{value:.0%}"


def print_table(title: str, rows: list[dict[str, Any]], *, writes: bool) -> None:
    """The Markdown table of a mode. With several relay workers a line above it says so and
    a last column gives the busiest worker's share of the sessions (and of the relay CPU);
    with one worker the table is as docs/benchmarks.md quotes it."""
    print(f"\n{title}")
    workers = max((a.get("workers", 1) for a in rows), default=1)
    if workers > 1:
        summed = "PSS and relay CPU are sums" if writes else "PSS is the sum"
        share = "the sessions / of the relay CPU" if writes else "the sessions"
        print(
            f"relay: {workers} gunicorn gevent workers; {summed} over the workers"
            + (" (CPU: % of one core)" if writes else "")
            + f"; busiest worker: the largest share of {share} one worker had"
        )
    if writes:
        print(
            "| sessions | reaches all N p50 / p99 | delivery p50 / p99 | deliveries/s per write "
            "(p50) | deliveries per relay CPU-second | PSS per idle session | lost | dup "
            "| relay CPU per write | CPU relay / generator / postgres |"
            + (" busiest worker: sessions / CPU |" if workers > 1 else "")
        )
        print(
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if workers > 1 else "")
        )
        for a in rows:
            print(
                f"| {a['sessions']:,} | {_ms(a['all_p50_ms'])} / {_ms(a['all_p99_ms'])} "
                f"| {_ms(a['delivery_p50_ms'])} / {_ms(a['delivery_p99_ms'])} "
                f"| {a['deliveries_per_s_p50']:,.0f} | {a['deliveries_per_cpu_s']:,.0f} "
                f"| {a['memory_per_session_bytes'] / 1024:.1f} KiB "
                f"| {a['missing'] + a['failed']} | {a['duplicates']} "
                f"| {a['relay_cpu_per_write_ms']:.1f} ms "
                f"| {a['relay_cpu_share']:.0%} / {a['generator_cpu_share']:.0%} "
                f"/ {a['postgres_cpu_share']:.0%} |"
                + (
                    f" {_share(a['busiest_worker_sessions_share'])} "
                    f"/ {_share(a['busiest_worker_cpu_share'])} |"
                    if workers > 1
                    else ""
                )
            )
        for a in rows:
            if noisy(a["other_cpu_share_max"], a["steal_share_max"]):
                print(
                    f"NOTE: at {a['sessions']:,} sessions the machine was not quiet: other "
                    f"processes used up to {a['other_cpu_share_max']:.0%} of a core and the "
                    f"hypervisor stole up to {a['steal_share_max']:.0%} during the writes"
                )
            if not a["relay_alive"] or a["worker_timeouts"]:
                print(
                    f"NOTE: at {a['sessions']:,} sessions "
                    f"{'the relay worker' if workers == 1 else 'a relay worker'} died "
                    f"({a['worker_timeouts']} gunicorn WORKER TIMEOUT in {a['runs']} runs): "
                    "what it had not delivered counts as lost"
                )
    else:
        what = "subscribed" if all(a["subscribed"] for a in rows) else "connected (no sub)"
        print(
            f"| sessions | PSS per idle {what} session | failed |"
            + (" busiest worker: sessions |" if workers > 1 else "")
        )
        print("|---:|---:|---:|" + ("---:|" if workers > 1 else ""))
        for a in rows:
            print(
                f"| {a['sessions']:,} | {a['memory_per_session_bytes'] / 1024:.1f} KiB "
                f"| {a['failed']} |"
                + (f" {_share(a['busiest_worker_sessions_share'])} |" if workers > 1 else "")
            )


def _clean(value: Any) -> Any:
    """JSON without NaN or infinity (null instead: a write that never reached all)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# -- modes ------------------------------------------------------------------------------------


def measure(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    args: argparse.Namespace,
    *,
    mode: str,
    sessions: int,
    writes: int,
    interval: float,
) -> tuple[dict[str, Any], list[RunResult]]:
    runs = []
    for i in range(args.runs):
        runs.append(
            run_once(
                db,
                workdir,
                cleanup,
                **common_options(args, workdir),
                mode=mode,
                sessions=sessions,
                writes=writes,
                interval=interval,
                label=f"[{mode} {sessions} run {i + 1}/{args.runs}] ",
                subscribe=getattr(args, "subscribe", True),
                workers=getattr(args, "workers", 1),
            )
        )
    return aggregate(runs), runs


def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    cleanup = Cleanup()
    cleanup.install_signal_handlers()
    workdir = make_workdir(args.out)
    results: dict[str, Any] = {
        "command": " ".join(["python -m loadtest.bench", *sys.argv[1:]]),
        "machine": machine(),
        "deflate_offered": args.deflate,
        "workers": getattr(args, "workers", 1),
        "fd_limit": fd_limit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"bench: workdir {workdir} (logs, results.json)", flush=True)
    ok = True
    try:
        db = Database(workdir, cleanup, fsync=args.fsync)
        results["machine"]["postgres"] = db.version()
        if args.command == "check":
            relay = Relay(db.url, workdir, cleanup, max_sessions=10)
            try:
                seconds = live_check(relay)
            finally:
                relay.stop()
            print(f"live updates flow: a committed books.rename arrived in {seconds * 1000:.0f} ms")
            results["check_ms"] = seconds * 1000
            return 0
        big = max(getattr(args, "sessions", [1]))
        if args.command == "presence":
            # One generator holds every session of every relay.
            big = args.relays * args.watchers + (
                args.pool or auto_pool(args.rate, args.hold, args.relays, args.crash_sessions)
            )
        if args.command == "versus":
            # Sessions one process holds: a generator's share, a worker's (uneven: + 10%).
            fewest = min(c.workers for c in args.contenders)
            big = max(
                max(math.ceil(n / (args.generators or math.ceil(n / SESSIONS_PER_GENERATOR))),
                    math.ceil(n * 1.1 / fewest) if fewest > 1 else n)
                for n in args.sessions
            )  # fmt: skip
        if big + 500 > fd_limit():
            raise BenchError(
                f"the file descriptor limit ({fd_limit()}) is too low for {big} sessions "
                "(the relay and the generator each hold one per session): raise `ulimit -n`"
            )
        if args.command in ("window", "storm"):
            ok = compare_command(db, workdir, cleanup, args, results)
        if args.command == "events":
            ok = events_command(db, workdir, cleanup, args, results)
        if args.command == "presence":
            ok = presence_command(db, workdir, cleanup, args, results)
        if args.command == "sockjs":
            ok = sockjs_command(db, workdir, cleanup, args, results)
        if args.command == "notify":
            ok = notify_command(db, workdir, cleanup, args, results)
        if args.command == "coordination":
            ok = coordination_command(db, workdir, cleanup, args, results)
        if args.command == "drain":
            ok = drain_command(db, workdir, cleanup, args, results)
        if args.command == "versus":
            ok = versus_command(db, workdir, cleanup, args, results)
        if args.command in ("fanout", "all"):
            rows = []
            for n in args.sessions:
                agg, runs = measure(
                    db, workdir, cleanup, args,
                    mode="fanout", sessions=n, writes=args.writes, interval=args.interval,
                )  # fmt: skip
                results.setdefault("fanout", []).append(
                    {"aggregate": agg, "runs": [asdict(r) for r in runs]}
                )
                rows.append(agg)
                ok = ok and agg["missing"] + agg["failed"] + agg["duplicates"] == 0
                ok = ok and agg["relay_alive"]
            print_table(
                f"fan-out: {args.writes} writes {args.interval * 1000:.0f} ms apart, "
                f"medians of {args.runs} runs",
                rows,
                writes=True,
            )
        if args.command in ("latency", "all"):
            counts = [args.latency_sessions] if args.command == "all" else args.sessions
            writes = max(1, int(args.rate * args.seconds))
            rows = []
            for n in counts:
                agg, runs = measure(
                    db, workdir, cleanup, args,
                    mode="latency", sessions=n, writes=writes, interval=1.0 / args.rate,
                )  # fmt: skip
                results.setdefault("latency", []).append(
                    {"aggregate": agg, "runs": [asdict(r) for r in runs]}
                )
                rows.append(agg)
                ok = ok and agg["missing"] + agg["failed"] + agg["duplicates"] == 0
                ok = ok and agg["relay_alive"]
            print_table(
                f"latency: {args.rate:g} commits/s for {args.seconds:g} s "
                f"(achieved {median([r['write_rate'] for r in rows]):.1f}/s), "
                f"medians of {args.runs} runs",
                rows,
                writes=True,
            )
        if args.command == "memory":
            rows = []
            for n in args.sessions:
                agg, runs = measure(
                    db, workdir, cleanup, args, mode="memory", sessions=n, writes=0, interval=0.0
                )
                results.setdefault("memory", []).append(
                    {"aggregate": agg, "runs": [asdict(r) for r in runs]}
                )
                rows.append(agg)
                ok = ok and agg["failed"] == 0
            print_table(f"memory, medians of {args.runs} runs", rows, writes=False)
        if args.command in ("overhead", "all"):
            results["overhead"] = overhead(db, workdir, cleanup, args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        results["error"] = str(exc)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        results["error"] = "interrupted"
        return 130
    finally:
        cleanup.run()
        text = json.dumps(_clean(results), indent=2, default=str)
        (workdir / "results.json").write_text(text)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(f"bench: results in {workdir / 'results.json'}", flush=True)
    if not ok:
        print(
            "bench: FAILED: sessions lost writes, failed to subscribe, or ended with a window "
            "(or a chat, or a presence view) unlike the database's",
            file=sys.stderr,
        )
    return 0 if ok else 1


def overhead(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace
) -> dict[str, Any]:
    """Trigger cost per transaction: no listener, a bare LISTEN client, a relay listening."""
    from relay.client import DDPClient

    out: dict[str, Any] = {}
    for case in ("no listener", "bare LISTEN client", "relay listening"):
        rows = []
        relay = client = drain = None
        try:
            if case == "relay listening":
                relay = Relay(db.url, workdir, cleanup, max_sessions=10)
                client = DDPClient(relay.ws_url)
                client.connect()
                client.subscribe("books.all")  # the worker LISTENs on the book channel
            elif case == "bare LISTEN client":
                names = channels(db.url)
                if not names:
                    trigger_overhead(db.url, 10, 1)  # the first write creates the channel
                    names = channels(db.url)
                drain = DrainListener(db.url, names)
                cleanup.push("drain listener", drain.close)
            for _ in range(args.runs):
                rows.append(trigger_overhead(db.url, args.transactions, args.rounds))
        finally:
            if client is not None:
                client.close()
            if relay is not None:
                relay.stop()
            if drain is not None:
                drain.close()
        out[case] = {
            "added_ms": median([r.added_ms for r in rows]),
            "enabled_ms": median([r.enabled_ms for r in rows]),
            "disabled_ms": median([r.disabled_ms for r in rows]),
            "added_cpu_ms": median([r.added_cpu_ms for r in rows]),
            "enabled_cpu_ms": median([r.enabled_cpu_ms for r in rows]),
            "disabled_cpu_ms": median([r.disabled_cpu_ms for r in rows]),
            "triggers": rows[0].triggers if rows else [],
            "functions": rows[-1].functions if rows else {},
            "busy_share_max": max((r.busy_share for r in rows), default=0.0),
            "steal_share_max": max((r.steal_share for r in rows), default=0.0),
            "runs": [asdict(r) for r in rows],
        }
    print(
        f"\nwrite-side overhead: single-row UPDATE transactions back to back, "
        f"{args.transactions} x {args.rounds} rounds per run, medians of {args.runs} runs"
    )
    print(
        "| case | wall: triggers on / off | wall added | backend CPU: on / off "
        "| backend CPU added | cores busy / stolen (max) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for case, row in out.items():
        print(
            f"| {case} | {row['enabled_ms']:.3f} / {row['disabled_ms']:.3f} ms "
            f"| {row['added_ms']:.3f} ms "
            f"| {row['enabled_cpu_ms']:.3f} / {row['disabled_cpu_ms']:.3f} ms "
            f"| {row['added_cpu_ms']:.3f} ms "
            f"| {row['busy_share_max']:.2f} / {row['steal_share_max']:.2f} |"
        )
    triggers = next(iter(out.values()))["triggers"]
    print(f"user triggers on bookstore_book: {', '.join(triggers) or 'NONE (no write side?)'}")
    functions = out["no listener"]["functions"]
    if functions:
        print(
            "PL/pgSQL self time per transaction (track_functions, no listener): "
            + ", ".join(
                f"{name} {calls:g} call(s) {ms:.3f} ms" for name, (calls, ms) in functions.items()
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.runs < 1:
        print("bench: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.command == "window" and not 1 <= args.writes <= max_writes(args.n):
        print(
            f"bench: window --writes must be 1 to {max_writes(args.n)} for --n {args.n} "
            "(each removal takes a book that is in every window and was there from the start)",
            file=sys.stderr,
        )
        return 2
    problem = _beyond_problem(args)
    if problem is not None:
        print(f"bench: {args.command} {problem}", file=sys.stderr)
        return 2
    return run(args)


def _beyond_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of ``events`` or ``presence`` (None: nothing)."""
    if args.command == "events" and (
        args.renames < 0 or args.interval < 0 or args.sustain_seconds <= 0
    ):
        return "--renames and --interval must be at least 0, --sustain-seconds above 0"
    if args.command == "presence":
        if not (args.rate > 0 and args.seconds > 0 and args.hold >= 0 and args.lease > 0):
            return "--rate, --seconds and --lease must be above 0, --hold at least 0"
        if args.lease < MIN_LEASE:
            return (
                f"--lease {args.lease:g}: at least {MIN_LEASE:g} s (a relay renews its lease "
                "every 3 s +-30%: a shorter one expires under live members, and other relays "
                "sweep them)"
            )
        if args.pool < 0 or args.crash_sessions < 0:
            return "--pool and --crash-sessions must be at least 0"
        pool = args.pool or auto_pool(args.rate, args.hold, args.relays, args.crash_sessions)
        if args.crash_sessions > pool // args.relays:
            return (
                f"--crash-sessions {args.crash_sessions}: the first relay has only "
                f"{pool // args.relays} pool sessions (raise --pool)"
            )
    return None
