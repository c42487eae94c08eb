"""``window``: live sorted, limited windows (``books.latest``) under commits that change them.

One run (``run_window``):

1. the book pool (``books.BookWriter.prepare``): the previous run's bench books replaced
   by ``3 n + writes`` books dated after every other one;
2. a fresh relay of the tree (this checkout, or ``--before``'s commit) and the live check;
3. N sessions from ``windowgen.js``, each subscribed to ``books.latest`` [n] (one query
   for all: ``distinct`` 1) or to ``bench.latest`` [n, s % distinct] (``distinct``
   queries of the same cost; ``loadtest/bench/trees.py``), PSS before and after;
4. the planned writes (``books.plan_writes``), ``interval`` apart, each its own
   transaction: inserts of a book dated after all (every window's ``added``) alternating
   with deletions of the book at position n (every window's ``removed``; the next book
   shifts in from the relay's buffer);
5. wait until every session had every planned event (bounded), then: relay CPU per
   commit (the workers' CPU from the first write until the last session had the last
   change, divided by the commits), per-delivery latency from PostgreSQL's commit
   timestamp, and exactness: every session's ``bookstore.book`` equals the database's
   top n (checked again for up to ``VERIFY_SECONDS`` while it converges).

Must not: print tables (``report``) or parse options (``cli``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench import figures
from loadtest.bench.books import BookWriter, meteor_id, plan_writes
from loadtest.bench.figures import quantile
from loadtest.bench.generator import NodeProcess
from loadtest.bench.meter import CpuMeter
from loadtest.bench.runner import finish_profilers, live_check, start_profilers
from loadtest.bench.stack import BenchError, Cleanup, Database, Relay, pss_bytes
from loadtest.bench.trees import Tree
from loadtest.bench.writer import achieved_rate, pace

SCRIPT = Path(__file__).with_name("windowgen.js")
#: Seconds the final windows may take to equal the database's after the last event.
VERIFY_SECONDS = 10.0
#: Give up waiting when no planned event arrived for this long.
STALL_SECONDS = 30.0


def subscription(n: int, distinct: int) -> tuple[str, str]:
    """The publication sessions subscribe and how its parameters read, for the tables."""
    if distinct <= 1:
        return "books.latest", f"[{n}]"
    return "bench.latest", f"[{n}, s % {distinct}]"


@dataclass(kw_only=True)
class WindowRun(figures.RelayRun):
    """The figures of one window run (times in ms, CPU in seconds)."""

    window_kind: str
    distinct: int
    n: int
    publication: str
    writes_planned: int
    interval_s: float
    ramp_s: float = 0.0
    pss_before: int = 0
    pss_after: int = 0
    writes: int = 0
    write_rate: float = float("nan")
    commit_clock: str = ""
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    #: An ``added`` of a book the session held, a ``removed``/``changed`` of one it did not.
    protocol_errors: int = 0
    closed_after_ready: int = 0
    all_done: bool = False
    #: Per write: ms from commit until the last session had it (inf: some never did).
    all_ms: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    delivery_p50_ms: float = float("nan")
    delivery_p99_ms: float = float("nan")
    delivery_max_ms: float = float("nan")
    #: Sessions whose final window was compared with the database's, and how many differed.
    checked: int = 0
    mismatched: int = 0
    mismatch_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def relay_cpu_per_commit_ms(self) -> float:
        return self.relay_cpu_s * 1000 / self.writes if self.writes else float("nan")

    @property
    def memory_per_session(self) -> float:
        return (self.pss_after - self.pss_before) / self.ready if self.ready else float("nan")

    @property
    def exact(self) -> bool:
        """Every session subscribed, got every planned change once, and ended equal to
        the database."""
        return (
            self.failed == 0
            and self.missing == 0
            and self.duplicates == 0
            and self.protocol_errors == 0
            and self.closed_after_ready == 0
            and self.mismatched == 0
            and self.checked == self.ready
            and self.writes == self.writes_planned
            and self.relay_alive
        )

    def summary(self) -> dict[str, float]:
        """The figures ``report`` takes medians of."""
        return {
            "relay_cpu_per_commit_ms": self.relay_cpu_per_commit_ms,
            "delivery_p50_ms": self.delivery_p50_ms,
            "delivery_p99_ms": self.delivery_p99_ms,
            "delivery_max_ms": self.delivery_max_ms,
            "all_p50_ms": quantile(self.all_ms, 0.5),
            "all_p99_ms": quantile(self.all_ms, 0.99),
            "ramp_s": self.ramp_s,
            "memory_per_session_bytes": self.memory_per_session,
            **self.cpu_shares(),
            "write_rate": self.write_rate,
        }


def run_window(
    db: Database,
    tree: Tree,
    workdir: Path,
    cleanup: Cleanup,
    *,
    sessions: int,
    distinct: int,
    n: int,
    writes: int,
    interval: float,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    settle: float,
    workers: int = 1,
    live: bool = True,
    max_wait: float = 900.0,
    profile_dir: Path | None = None,
    window_kind: str = "",
    label: str = "",
    quiet: bool = False,
) -> WindowRun:
    say = figures.sayer(label, quiet)
    publication, _ = subscription(n, distinct)
    result = WindowRun(
        tree=tree.label,
        revision=tree.revision,
        window_kind=window_kind,
        sessions=sessions,
        distinct=distinct,
        n=n,
        publication=publication,
        writes_planned=writes,
        interval_s=interval,
        workers=workers,
    )
    writer = BookWriter(db.url)
    relay: Relay | None = None
    gen: NodeProcess | None = None
    gen_log = None
    try:
        first_new = writer.prepare(3 * n + writes)
        order = writer.top_ids(n)
        plan = plan_writes(order, n, writes, [meteor_id() for _ in range((writes + 1) // 2)])
        relay = Relay(db.url, workdir, cleanup, max_sessions=sessions, workers=workers, tree=tree)
        gen_log = open(workdir / f"windowgen-{relay.port}.log", "w")  # noqa: SIM115
        pids = relay.worker_pids
        result.worker_pids = list(pids)
        checked = f"live update in {live_check(relay) * 1000:.0f} ms" if live else "no live check"
        say(f"{tree.label} relay on :{relay.port} (workers {', '.join(map(str, pids))}); {checked}")
        time.sleep(settle)
        result.pss_before = sum(pss_bytes(pid) for pid in pids)
        started = time.monotonic()
        gen = NodeProcess(
            SCRIPT,
            {
                "url": relay.ws_url,
                "sessions": sessions,
                "concurrency": concurrency,
                "deflate": deflate,
                "rampTimeoutMs": int(ramp_timeout * 1000),
                "maxWrites": max(1, writes),
                "name": publication,
                "n": n,
                "distinct": distinct,
            },
            ramp_timeout=ramp_timeout,
            log=gen_log,
        )
        cleanup.push("window generator", gen.close)
        ramped = gen.ramp()
        result.ramp_s = time.monotonic() - started
        result.ready = int(ramped["ready"])
        result.failed = sessions - result.ready
        say(
            f"{result.ready}/{sessions} sessions subscribed to {publication} in "
            f"{result.ramp_s:.1f} s"
            + (f" ({result.failed} failed: {ramped['errors']})" if result.failed else "")
        )
        time.sleep(settle)
        result.pss_after = sum(pss_bytes(pid) for pid in pids)
        result.sessions_by_worker = figures.sessions_by_worker(relay, pids)
        if result.ready == 0:
            raise BenchError(f"no session could subscribe to {publication}: {ramped['errors']}")
        gen.command({"cmd": "plan", "writes": [{"kind": w.kind, "id": w.book_id} for w in plan]})
        gen.wait_for("planned", 30)
        prefix = f"{secrets.token_hex(3)} "
        name = f"window-{tree.label}-{sessions}x{distinct}"
        seconds = len(plan) * interval + 10
        profilers = start_profilers(profile_dir, name, relay, seconds, cleanup)
        meter = CpuMeter(pids, [gen.pid], db)
        pace(
            len(plan),
            interval,
            lambda i: writer.apply(plan[i], first_new, prefix),
            max_seconds=len(plan) * interval * 3 + 30,
        )
        result.writes = len(writer.commits)
        result.all_done = gen.wait_all(result.writes, stall=STALL_SECONDS, limit=max_wait)
        usage = meter.stop()
        result.profiles = finish_profilers(profilers)
        figures.take_usage(result, usage)
        server = writer.server_commit_times()
        commits = server if server else writer.commits
        result.commit_clock = "server" if server else "client"
        result.write_rate = achieved_rate(writer.commits)
        report = gen.report([t * 1000 for t in commits])
        figures.take_deliveries(result, report)
        result.protocol_errors = sum(
            int(report[k]) for k in ("badAdded", "badRemoved", "badChanged")
        )
        _verify(gen, writer, n, result)
        figures.take_health(result, relay)
        s = result.summary()
        say(
            f"{result.writes} commits at {result.write_rate:.1f}/s: relay CPU "
            f"{s['relay_cpu_per_commit_ms']:.1f} ms per commit; delivery p50 "
            f"{s['delivery_p50_ms']:.1f} / p99 {s['delivery_p99_ms']:.1f} / max "
            f"{result.delivery_max_ms:.1f} ms; all sessions had a commit after p50 "
            f"{s['all_p50_ms']:.0f} ms; lost {result.missing}, duplicates {result.duplicates}, "
            f"protocol errors {result.protocol_errors}; windows equal to the database: "
            f"{result.checked - result.mismatched}/{result.ready}"
        )
        warning = figures.noise_warning(result)
        if warning:
            say(warning)
        return result
    finally:
        if gen is not None:
            gen.close()
        if relay is not None:
            relay.stop()
        writer.close()
        if gen_log is not None:
            gen_log.close()


def _verify(gen: NodeProcess, writer: BookWriter, n: int, result: WindowRun) -> None:
    """Compare every session's window with the database's top n, until equal or
    ``VERIFY_SECONDS`` passed (a last shift-in may still be on its way)."""
    deadline = time.monotonic() + VERIFY_SECONDS
    while True:
        expected = writer.top_ids(n)
        gen.command({"cmd": "verify", "expected": {str(n): expected}})
        verified = gen.wait_for("verified", 60)
        result.checked = int(verified["checked"])
        result.mismatched = int(verified["mismatched"])
        result.mismatch_examples = list(verified["examples"])
        if result.mismatched == 0 or time.monotonic() > deadline:
            return
        time.sleep(1.0)
