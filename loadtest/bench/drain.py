"""``python -m loadtest.bench drain``: a relay drained under N sessions, resumed elsewhere.

A target of issue #15: a relay drained with SIGTERM while holding 5,000 sessions parks
every one of them, and all of them are resumed exactly on the other relays (round robin)
within 5 s of the first reconnect. One run (``run_drain``):

1. ``relays`` fresh relays (default 3, ``--workers`` each, default 1) on the benchmark's
   database, all with ``RELAY_ZOOKEEPER`` pointing at one throwaway ZooKeeper
   (``coordination.ZooKeeper``, started once per command), so that a session parked by
   one is resumable on any other; ``RELAY_GRACEFUL_TIMEOUT`` = ``--graceful-timeout``
   (30 s, the relay's default: the drain's parks must fit in it) and
   ``RELAY_RESUME_BYTES_PER_ADDRESS=0`` (every generator socket comes from 127.0.0.1,
   which the per-address cap of parked bytes, 32 MiB, would otherwise refuse long before
   5,000 sessions: behind a load balancer they are many addresses); the live check on
   each;
2. one ``draingen.js``: N sessions on the first relay (A) only, each subscribed to
   ``books.all`` and ready; each keeps its DDP session id and its received count as
   Meteor 3.5 counts it (every message but ping and pong, ``connected`` included);
3. ``pre_writes`` renames (``writer.Writer``, one transaction each, ``interval`` apart)
   that every session must have; then the generator is armed and a writer thread goes
   on committing a rename every ``interval`` (100 ms) through the drain and the resumes;
4. SIGTERM to A's gunicorn master: its workers drain (readiness off, every session
   closed with 1001 "going away", parked as it ends: its state in PostgreSQL, its
   ZooKeeper record marked parked) and exit; the generator reconnects each closed
   session at once to the other relays in turn (``connect`` with ``session`` and
   ``receivedCount``, then the same ``sub``, as Meteor 3.5 does; ``--reconnect-spread
   S``: each after a random delay below S seconds instead); ``connected`` with the same
   id is a resume, any other id is not; a reconnect refused, dropped or without
   ``connected`` within 10 s is retried on the next relay, at most 5 times;
5. once every session is resumed, refused or failed (or ``resume_timeout`` after the
   SIGTERM), the writes go on for one more second and stop; every live session's view
   must converge to the database's titles; then the figures.

Reported per run: sessions parked (A's ``ddp_relay_resumes_total{outcome="parked"}``, read
from its Prometheus multiprocess files, which outlive its workers), SIGTERM to the last
socket closed (parking throughput = sessions / that time) and to A's exit (every park
done), first reconnect to last resume (resume throughput), resumed / not resumed /
failed, the other relays' refusals by outcome, each session's gap (its socket closed on
A until ``connected`` on B or C, p50/p99), the ZooKeeper requests the server answered
meanwhile, CPU of A's workers until they exited and of the others until the last
resume; and exactness over the writes for every resumed session: lost, duplicated, out
of order, and ``merged`` (a write the session never got as such because a later rename
of the same book reached it instead: a resume re-runs ``books.all`` against the parked
mergebox and sends each book's latest title once, which keeps the view exact but is not
every write; the example has 10 books, so a session away for more than 10 writes may
see some merged). A run is complete when every session resumed, nothing was lost,
duplicated or out of order and every view equals the database; ``within_target`` adds
the 5 s (``--target``). ``--profile``: py-spy of every relay worker from the SIGTERM
until the drain is over (``profiles/drain-A-<port>.txt``, ``drain-T<i>-<port>.txt``).

Must not: import Django or the relay runtime (the relays are subprocesses), change how
the relays drain or resume (measure them as they are), or parse options (``cli``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench import figures
from loadtest.bench.coordination import ZooKeeper, mntr_delta
from loadtest.bench.generator import NodeProcess
from loadtest.bench.runner import finish_profilers, live_check, median, start_profilers
from loadtest.bench.stack import BenchError, Cleanup, Database, Relay, cpu_seconds
from loadtest.bench.writer import Writer

SCRIPT = Path(__file__).with_name("draingen.js")
#: The issue's target: every session resumed within this many seconds of the first reconnect.
TARGET_S = 5.0
#: Writes go on this long after the last resume (traffic on the resumed sessions).
TAIL_S = 1.0
#: Seconds between two looks at A, the generator and the clock during the drain.
POLL_S = 0.1
#: Seconds between two ``status`` requests to the generator during the drain.
STATUS_EVERY_S = 0.5
#: How long every session's view may take to converge after the last write.
CONVERGE_S = 30.0
#: Reconnect attempts per session (a relay that refuses or drops the socket before
#: ``connected``: the next one is tried after ``RETRY_MS``).
MAX_ATTEMPTS = 5
RETRY_MS = 100
#: Milliseconds a reconnect waits for ``connected`` before it is dropped and retried.
CONNECT_TIMEOUT_MS = 10_000
#: Metric sample names the run reads from the relays' multiprocess files.
RESUMES = "ddp_relay_resumes_total"
DISCONNECTS = "ddp_relay_disconnects_total"
RESUME_SECONDS_SUM = "ddp_relay_resume_seconds_sum"
#: A histogram's buckets in the multiprocess files are per bucket, not cumulative: their
#: sum is its count (the files have no ``_count``).
RESUME_SECONDS_BUCKET = "ddp_relay_resume_seconds_bucket"


@dataclass(kw_only=True)
class DrainRun(figures.RelayRun):
    """The figures of one drain (times in ms after the SIGTERM unless said, CPU in s)."""

    relays: int
    pre_writes: int
    interval_s: float
    graceful_timeout_s: float
    target_s: float = TARGET_S
    #: Each closed session waited a random delay below this before reconnecting (0: none).
    reconnect_spread_s: float = 0.0
    ramp_s: float = math.nan
    relay_ports: list[int] = field(default_factory=list)
    # -- A's side: the drain and the parks
    closed: int = 0
    close_codes: dict[str, int] = field(default_factory=dict)
    close_reasons: dict[str, int] = field(default_factory=dict)
    first_close_ms: float = math.nan
    last_close_ms: float = math.nan
    #: A's master exited: every worker parked its sessions (or hit the graceful timeout).
    a_exit_ms: float = math.nan
    a_exit_code: int | None = None
    #: A's ``ddp_relay_resumes_total`` by outcome (``parked``, ``park_failed``...).
    a_outcomes: dict[str, int] = field(default_factory=dict)
    #: A's ``ddp_relay_disconnects_total`` by reason (``shutdown``: the drain's closes).
    a_disconnects: dict[str, int] = field(default_factory=dict)
    a_cpu_s: float = math.nan
    # -- the other relays: the resumes
    first_reconnect_ms: float = math.nan
    last_resumed_ms: float = math.nan
    resumed: int = 0
    not_resumed: int = 0
    reconnect_failed: int = 0
    lost_before_drain: int = 0
    still_reconnecting: int = 0
    retries: int = 0
    resumed_by_relay: list[int] = field(default_factory=list)
    #: The other relays' ``ddp_relay_resumes_total`` by outcome (``resumed``, refusals).
    target_outcomes: dict[str, int] = field(default_factory=dict)
    #: Their ``ddp_relay_resume_seconds``: the mean time a resume took on the server.
    server_resume_mean_ms: float = math.nan
    #: Per resumed session: its socket closed on A until ``connected`` (the same id).
    gap_p50_ms: float = math.nan
    gap_p90_ms: float = math.nan
    gap_p99_ms: float = math.nan
    gap_max_ms: float = math.nan
    #: Per resumed session: its ``connect`` sent until ``connected`` (the last attempt).
    handshake_p50_ms: float = math.nan
    handshake_p99_ms: float = math.nan
    targets_cpu_s: float = math.nan
    zk_reads: float = math.nan
    zk_writes: float = math.nan
    # -- the writes
    writes: int = 0
    delivered: int = 0
    missing: int = 0
    merged: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    exact_sessions: int = 0
    views_checked: int = 0
    views_mismatched: int = -1
    view_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def park_s(self) -> float:
        """SIGTERM to the last socket A closed (seconds)."""
        return self.last_close_ms / 1000

    @property
    def parking_rate(self) -> float:
        """Sessions closed for parking per second (the brief's N / (SIGTERM to last close))."""
        return self.closed / self.park_s if self.park_s > 0 else math.nan

    @property
    def parked(self) -> int:
        return self.a_outcomes.get("parked", 0)

    @property
    def parks_done_rate(self) -> float:
        """Sessions parked per second until A exited (every park written)."""
        seconds = self.a_exit_ms / 1000
        return self.parked / seconds if seconds > 0 else math.nan

    @property
    def resume_span_s(self) -> float:
        """First reconnect to last resume (seconds)."""
        return (self.last_resumed_ms - self.first_reconnect_ms) / 1000

    @property
    def resume_rate(self) -> float:
        span = self.resume_span_s
        return self.resumed / span if span > 0 else math.nan

    @property
    def exact(self) -> bool:
        """Every session resumed, had every write once and in order, and its view equals
        the database's (merged writes are reported, not a failure: see the module)."""
        return (
            self.ready == self.sessions
            and self.resumed == self.ready
            and self.missing == 0
            and self.duplicates == 0
            and self.out_of_order == 0
            and self.views_mismatched == 0
        )

    @property
    def within_target(self) -> bool:
        return self.exact and self.resume_span_s <= self.target_s

    @property
    def complete(self) -> bool:
        """Exact, and the relays that were not drained lived."""
        return self.exact and self.relay_alive

    def summary(self) -> dict[str, float]:
        """The figures the table takes medians of."""
        return {
            "park_s": self.park_s,
            "parking_rate": self.parking_rate,
            "a_exit_s": self.a_exit_ms / 1000,
            "parks_done_rate": self.parks_done_rate,
            "resume_span_s": self.resume_span_s,
            "resume_rate": self.resume_rate,
            "gap_p50_ms": self.gap_p50_ms,
            "gap_p99_ms": self.gap_p99_ms,
            "server_resume_mean_ms": self.server_resume_mean_ms,
        }


# -- reading what the relays counted -------------------------------------------------------------


def labelled(metrics_dir: Path, sample: str, label: str) -> dict[str, float]:
    """``sample``'s values in every multiprocess file of ``metrics_dir`` (the workers',
    gone or not), summed by the value of ``label`` (no such label: ``""``)."""
    try:
        from prometheus_client.mmap_dict import MmapedDict
    except ImportError:
        return {}
    read: Callable[[str], Iterable[tuple[Any, ...]]] = MmapedDict.read_all_values_from_file
    out: dict[str, float] = {}
    for path in sorted(metrics_dir.glob("*.db")):
        try:
            values = list(read(str(path)))
        except (OSError, ValueError):
            continue
        for key, value, *_ in values:
            try:
                _, name, labels, _ = json.loads(key)
            except (ValueError, TypeError):
                continue
            if name == sample:
                which = str(labels.get(label, ""))
                out[which] = out.get(which, 0.0) + float(value)
    return out


def counts(values: dict[str, float]) -> dict[str, int]:
    """Counter values as whole numbers, zeros left out, sorted by name."""
    return {k: round(v) for k, v in sorted(values.items()) if round(v)}


def merge_counts(tables: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        for key, value in table.items():
            out[key] = out.get(key, 0) + value
    return dict(sorted(out.items()))


def mean_ms(sums: Iterable[float], counts_: Iterable[float]) -> float:
    """A histogram's mean in ms from its ``_sum`` (seconds) and its count (NaN: none)."""
    total, n = sum(sums), sum(counts_)
    return total / n * 1000 if n > 0 else math.nan


# -- the generator's events -------------------------------------------------------------------


def _ms(value: Any) -> float:
    return float(value) if value is not None else math.nan


def since(value: Any, origin_ms: float) -> float:
    """An epoch-ms time of the generator as ms after ``origin_ms`` (None: NaN)."""
    return _ms(value) - origin_ms


def take_report(result: DrainRun, report: dict[str, Any], sigterm_ms: float) -> None:
    """Fill ``result`` from the generator's ``report`` (times relative to the SIGTERM)."""
    result.ready = int(report["ready"])
    result.failed = result.sessions - result.ready
    result.closed = int(report["closed"])
    result.close_codes = {str(k): int(v) for k, v in (report.get("closeCodes") or {}).items()}
    result.close_reasons = {str(k): int(v) for k, v in (report.get("closeReasons") or {}).items()}
    result.first_close_ms = since(report["firstClose"], sigterm_ms)
    result.last_close_ms = since(report["lastClose"], sigterm_ms)
    result.first_reconnect_ms = since(report["firstReconnect"], sigterm_ms)
    result.last_resumed_ms = since(report["lastResumed"], sigterm_ms)
    result.resumed = int(report["resumed"])
    result.not_resumed = int(report["new"])
    result.reconnect_failed = int(report["failed"]) - result.failed
    result.lost_before_drain = int(report["lostBeforeArm"])
    result.still_reconnecting = int(report["reconnecting"])
    result.retries = int(report["retries"])
    result.resumed_by_relay = [int(n) for n in report["resumedByRelay"]]
    gap, handshake = report["gap"], report["handshake"]
    result.gap_p50_ms = _ms(gap["p50"])
    result.gap_p90_ms = _ms(gap["p90"])
    result.gap_p99_ms = _ms(gap["p99"])
    result.gap_max_ms = _ms(gap["max"])
    result.handshake_p50_ms = _ms(handshake["p50"])
    result.handshake_p99_ms = _ms(handshake["p99"])
    result.writes = int(report["writes"])
    result.delivered = int(report["delivered"])
    result.missing = int(report["missing"])
    result.merged = int(report["merged"])
    result.duplicates = int(report["duplicates"])
    result.out_of_order = int(report["outOfOrder"])
    result.exact_sessions = int(report["exactSessions"])
    views = report["views"]
    result.views_checked = int(views["checked"])
    result.views_mismatched = int(views["mismatched"])
    result.view_examples = list(views.get("examples") or [])
    result.generator_errors = {str(k): int(v) for k, v in (report.get("errors") or {}).items()}


def settled(status: dict[str, Any], ready: int) -> bool:
    """Every ready session's drain is over: resumed, refused (a new id), failed or lost;
    none still live on A or reconnecting."""
    done = sum(int(status[k]) for k in ("resumed", "new", "failed", "lost"))
    return int(status["live"]) == 0 and int(status["reconnecting"]) == 0 and done >= ready


def max_writes(pre_writes: int, interval: float, resume_timeout: float) -> int:
    """The most writes a run can commit: the first ones, then one per ``interval`` from the
    SIGTERM until ``resume_timeout`` and the tail after it."""
    return pre_writes + math.ceil((resume_timeout + TAIL_S) / interval) + 2


# -- the writes during the drain -------------------------------------------------------------------


class PacedWriter:
    """A thread committing ``writer``'s renames ``<prefix><i>`` every ``interval`` from
    index ``start`` (late ones go at once) until ``stop()`` or ``limit`` writes."""

    def __init__(self, writer: Writer, prefix: str, start: int, interval: float, limit: int):
        self.writer = writer
        self.prefix = prefix
        self.next = start
        self.interval = interval
        self.limit = limit
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drain-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        try:
            while not self._stop.is_set() and self.next < self.limit:
                self.writer.write(f"{self.prefix}{self.next}", self.next)
                self.next += 1
                due += self.interval
                self._stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> int:
        """Stop after the write under way; how many writes were committed in all."""
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise BenchError(f"the writer failed during the drain: {self.error!r}")
        return len(self.writer.commits)


def _titles(writer: Writer) -> list[str]:
    with writer.conn.cursor() as cur:
        cur.execute("SELECT title FROM bookstore_book")
        titles = [str(row[0]) for row in cur.fetchall()]
    writer.conn.rollback()
    return titles


def _status(gen: NodeProcess) -> dict[str, Any]:
    gen.command({"cmd": "status"})
    return gen.wait_for("status", 30)


def _wait_delivered(gen: NodeProcess, want: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _status(gen)
        if int(status["delivered"]) >= want or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def _converge(gen: NodeProcess, titles: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        gen.command({"cmd": "views", "titles": titles})
        views = gen.wait_for("views", 60)
        if int(views["mismatched"]) == 0 or time.monotonic() > deadline:
            return views
        time.sleep(0.25)


class LastCpu:
    """The CPU seconds of processes that may exit: the last reading each had alive."""

    def __init__(self, pids: list[int]) -> None:
        self.start = {pid: cpu_seconds(pid) for pid in pids}
        self.last = dict(self.start)

    def sample(self) -> None:
        for pid in self.last:
            value = cpu_seconds(pid)
            if value == value:
                self.last[pid] = value

    def used(self) -> float:
        return sum(self.last[pid] - self.start[pid] for pid in self.start)


def run_drain(
    db: Database,
    zk: ZooKeeper,
    workdir: Path,
    cleanup: Cleanup,
    *,
    sessions: int,
    relays: int,
    workers: int,
    pre_writes: int,
    interval: float,
    graceful_timeout: int,
    resume_timeout: float,
    target: float,
    deflate: bool,
    reconnect_spread: float = 0.0,
    concurrency: int,
    ramp_timeout: float,
    settle: float,
    live: bool = True,
    profile_dir: Path | None = None,
    label: str = "",
    quiet: bool = False,
) -> DrainRun:
    say = figures.sayer(label, quiet)
    if relays < 2:
        raise BenchError("drain needs at least 2 relays: one drained, one to resume on")
    result = DrainRun(
        tree="after", revision=None, sessions=sessions, workers=workers, relays=relays,
        pre_writes=pre_writes, interval_s=interval, graceful_timeout_s=graceful_timeout,
        target_s=target, reconnect_spread_s=reconnect_spread,
    )  # fmt: skip
    stack: list[Relay] = []
    gen: NodeProcess | None = None
    writer: Writer | None = None
    paced: PacedWriter | None = None
    log = None
    try:
        env = {
            "RELAY_ZOOKEEPER": zk.hosts,
            "RELAY_GRACEFUL_TIMEOUT": str(graceful_timeout),
            "RELAY_RESUME_BYTES_PER_ADDRESS": "0",
        }
        for _ in range(relays):
            stack.append(
                Relay(db.url, workdir, cleanup, max_sessions=sessions, workers=workers, env=env)
            )
        a, targets = stack[0], stack[1:]
        result.relay_ports = [r.port for r in stack]
        result.worker_pids = [pid for r in stack for pid in r.worker_pids]
        checks = [f"{live_check(r) * 1000:.0f}" for r in stack] if live else []
        say(
            f"{relays} relays on :{', :'.join(str(r.port) for r in stack)} (ZooKeeper "
            f"{zk.hosts}; A = :{a.port})"
            + (f"; live updates in {' / '.join(checks)} ms" if checks else "")
        )
        writer = Writer(db.url)
        prefix = f"drain {secrets.token_hex(3)} "
        limit = max_writes(pre_writes, interval, resume_timeout)
        log = open(workdir / f"draingen-{a.port}.log", "w")  # noqa: SIM115
        started = time.monotonic()
        gen = NodeProcess(
            SCRIPT,
            {
                "urls": [r.ws_url for r in stack], "sessions": sessions,
                "concurrency": concurrency, "deflate": deflate,
                "rampTimeoutMs": int(ramp_timeout * 1000), "prefix": prefix,
                "maxWrites": limit, "resend": True, "maxAttempts": MAX_ATTEMPTS,
                "retryMs": RETRY_MS, "connectTimeoutMs": CONNECT_TIMEOUT_MS,
                "reconnectSpreadMs": round(reconnect_spread * 1000),
            },
            ramp_timeout=ramp_timeout,
            log=log,
        )  # fmt: skip
        cleanup.push("drain generator", gen.close)
        ramped = gen.ramp()
        result.ramp_s = time.monotonic() - started
        result.ready = int(ramped["ready"])
        result.failed = sessions - result.ready
        say(
            f"{result.ready}/{sessions} sessions subscribed on A in {result.ramp_s:.1f} s"
            + (f" ({result.failed} failed: {ramped['errors']})" if result.failed else "")
        )
        if result.failed:
            raise BenchError(f"{result.failed} sessions failed to start: {ramped['errors']}")
        for i in range(pre_writes):
            writer.write(f"{prefix}{i}", i)
            time.sleep(interval)
        status = _wait_delivered(gen, result.ready * pre_writes, 60)
        if int(status["delivered"]) < result.ready * pre_writes:
            raise BenchError(
                f"before the drain, {status['delivered']} of {result.ready * pre_writes} "
                "writes reached the sessions within 60 s"
            )
        time.sleep(settle)
        gen.command({"cmd": "arm"})
        gen.wait_for("armed", 30)
        profilers = []
        if profile_dir is not None:
            seconds = graceful_timeout + resume_timeout
            for name, relay in (
                ("drain-A", a),
                *((f"drain-T{i}", r) for i, r in enumerate(targets)),
            ):
                profilers += start_profilers(profile_dir, name, relay, seconds, cleanup)
        a_cpu = LastCpu(a.worker_pids)
        targets_cpu = LastCpu([pid for r in targets for pid in r.worker_pids])
        zk_before = zk.mntr()
        paced = PacedWriter(writer, prefix, pre_writes, interval, limit)
        sigterm_ms = time.time() * 1000
        os.kill(a.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + resume_timeout
        next_status = 0.0
        done_at: float | None = None
        last_note = time.monotonic()
        while time.monotonic() < deadline:
            a_cpu.sample()
            if math.isnan(result.a_exit_ms) and a.proc.poll() is not None:
                result.a_exit_ms = time.time() * 1000 - sigterm_ms
                result.a_exit_code = a.proc.returncode
            if done_at is None and time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_EVERY_S
                status = _status(gen)
                if settled(status, result.ready):
                    done_at = time.monotonic()
                    targets_cpu.sample()
                elif time.monotonic() - last_note >= 2:
                    last_note = time.monotonic()
                    say(
                        f"  drain: {status['closed']} closed, {status['resumed']} resumed, "
                        f"{status['new']} not resumed, {status['reconnecting']} reconnecting"
                    )
            if done_at is not None and not math.isnan(result.a_exit_ms):
                break
            time.sleep(POLL_S)
        if done_at is None:
            targets_cpu.sample()
        # Traffic on the resumed sessions for a moment longer, then the last write.
        time.sleep(max(0.0, TAIL_S - (time.monotonic() - (done_at or time.monotonic()))))
        committed = paced.stop()
        paced = None
        zk_after = zk.mntr()
        result.zk_reads, result.zk_writes = mntr_delta(zk_before, zk_after)
        result.a_cpu_s = a_cpu.used()
        result.targets_cpu_s = targets_cpu.used()
        if math.isnan(result.a_exit_ms):
            # Not gone within the wait: give it its graceful timeout, then read it.
            try:
                a.proc.wait(graceful_timeout + 5)
                result.a_exit_ms = time.time() * 1000 - sigterm_ms
                result.a_exit_code = a.proc.returncode
            except Exception:
                say("relay A did not exit after its graceful timeout")
        titles = _titles(writer)
        _converge(gen, titles, CONVERGE_S)
        # Which book each write renamed: a write no session got as such (all were away)
        # is told merged from lost by its book, not by what the sessions saw.
        docs = [writer.ids[w % len(writer.ids)] for w in range(committed)]
        gen.command({"cmd": "report", "writes": committed, "titles": titles, "docs": docs})
        take_report(result, gen.wait_for("report", 120), sigterm_ms)
        # The drain is over: the profiles stop now (py-spy writes what it has on SIGINT).
        result.profiles = finish_profilers(profilers, timeout=1.0)
        result.a_outcomes = counts(labelled(a.metrics_dir, RESUMES, "outcome"))
        result.a_disconnects = counts(labelled(a.metrics_dir, DISCONNECTS, "reason"))
        result.target_outcomes = merge_counts(
            counts(labelled(r.metrics_dir, RESUMES, "outcome")) for r in targets
        )
        result.server_resume_mean_ms = mean_ms(
            (sum(labelled(r.metrics_dir, RESUME_SECONDS_SUM, "").values()) for r in targets),
            (sum(labelled(r.metrics_dir, RESUME_SECONDS_BUCKET, "le").values()) for r in targets),
        )
        result.relay_alive = all(r.alive() for r in targets)
        result.relay_errors = sum(r.error_count() for r in stack)
        result.worker_timeouts = sum(r.timeout_count() for r in stack)
        for line in run_lines(result):
            say(line)
        return result
    finally:
        if paced is not None:
            with contextlib.suppress(BenchError):
                paced.stop()
        if gen is not None:
            gen.close()
        for relay in stack:
            relay.stop()
        if writer is not None:
            try:
                writer.restore()
            finally:
                writer.close()
        if log is not None:
            log.close()


# -- what is printed -----------------------------------------------------------------------------


def _s(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f} s"


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}/s"


def run_lines(run: DrainRun) -> list[str]:
    """What one run says once it is over (pure)."""
    return [
        f"drain: {run.closed}/{run.ready} sockets closed by A in {_s(run.park_s)} "
        f"({_rate(run.parking_rate)}; codes {run.close_codes}); A parked {run.parked} "
        f"(outcomes {run.a_outcomes}) and exited after {_s(run.a_exit_ms / 1000)} "
        f"(code {run.a_exit_code}); A's CPU {run.a_cpu_s:.1f} s",
        f"resume: {run.resumed} resumed, {run.not_resumed} NOT resumed, "
        f"{run.reconnect_failed} failed, {run.retries} retries; first reconnect "
        f"{_s(run.first_reconnect_ms / 1000)} after the SIGTERM, last resume "
        f"{_s(run.last_resumed_ms / 1000)}: {_s(run.resume_span_s)} "
        f"({_rate(run.resume_rate)}); gap p50 {figures.ms_text(run.gap_p50_ms)} / p99 "
        f"{figures.ms_text(run.gap_p99_ms)}; by relay {run.resumed_by_relay[1:]}; the other "
        f"relays' outcomes {run.target_outcomes}",
        f"writes: {run.writes}, lost {run.missing}, duplicated {run.duplicates}, out of order "
        f"{run.out_of_order}, merged {run.merged}; views equal to the database "
        f"{run.views_checked - run.views_mismatched}/{run.views_checked}; ZooKeeper "
        f"{run.zk_writes:,.0f} writes / {run.zk_reads:,.0f} reads; tracebacks and errors in "
        f"the relays' logs: {run.relay_errors}",
    ]


def table(runs: list[DrainRun]) -> list[str]:
    """The Markdown table of the runs (one row each, then the medians) (pure)."""
    if not runs:
        return []
    first = runs[0]
    lines = [
        "",
        f"drain: {first.sessions:,} sessions on relay A of {first.relays} "
        f"({first.workers} worker(s) each, ZooKeeper coordinator), SIGTERM to A, reconnects "
        f"round robin to the others"
        + (
            f" (each after a random delay below {first.reconnect_spread_s:g} s)"
            if first.reconnect_spread_s
            else " (at once)"
        )
        + f"; a write every {first.interval_s * 1000:.0f} ms; target: "
        f"all resumed within {first.target_s:g} s of the first reconnect",
        "| run | SIGTERM to last close | parking (closes/s) | A exited (parked/s) "
        "| first reconnect to last resume | resumes/s | resumed / not / failed "
        "| gap p50 / p99 | lost / dup / merged | within target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs):
        lines.append(
            f"| {i + 1} | {_s(run.park_s)} | {_rate(run.parking_rate)} "
            f"| {_s(run.a_exit_ms / 1000)} ({_rate(run.parks_done_rate)}) "
            f"| {_s(run.resume_span_s)} | {_rate(run.resume_rate)} "
            f"| {run.resumed:,} / {run.not_resumed:,} / {run.reconnect_failed:,} "
            f"| {figures.ms_text(run.gap_p50_ms)} / {figures.ms_text(run.gap_p99_ms)} "
            f"| {run.missing} / {run.duplicates} / {run.merged} "
            f"| {'yes' if run.within_target else 'NO'} |"
        )
    m = {key: median([r.summary()[key] for r in runs]) for key in first.summary()}
    if len(runs) > 1:
        lines.append(
            f"| median | {_s(m['park_s'])} | {_rate(m['parking_rate'])} "
            f"| {_s(m['a_exit_s'])} ({_rate(m['parks_done_rate'])}) "
            f"| {_s(m['resume_span_s'])} | {_rate(m['resume_rate'])} | "
            f"| {figures.ms_text(m['gap_p50_ms'])} / {figures.ms_text(m['gap_p99_ms'])} | | |"
        )
    refused = merge_counts(
        {k: v for k, v in r.target_outcomes.items() if k != "resumed"} for r in runs
    )
    if refused:
        lines.append(f"NOTE: resumes refused by the other relays, by outcome: {refused}")
    for i, run in enumerate(runs):
        warning = figures.noise_warning(run)
        if warning:
            lines.append(f"run {i + 1}: {warning}")
    return lines


# -- the command -------------------------------------------------------------------------------


def command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``drain``: ``--runs`` runs per session count on one ZooKeeper; True when every run
    resumed every session exactly (the 5 s target is reported, not required)."""
    zk = ZooKeeper(workdir / "zookeeper", 1, cleanup)
    ok = True
    entries = []
    try:
        for n in args.sessions:
            runs = []
            for i in range(args.runs):
                runs.append(
                    run_drain(
                        db, zk, workdir, cleanup,
                        sessions=n, relays=args.relays, workers=args.workers,
                        pre_writes=args.pre_writes, interval=args.interval,
                        graceful_timeout=args.graceful_timeout,
                        resume_timeout=args.resume_timeout, target=args.target,
                        reconnect_spread=args.reconnect_spread,
                        deflate=args.deflate, concurrency=args.concurrency,
                        ramp_timeout=args.ramp_timeout, settle=args.settle,
                        live=args.live_check,
                        profile_dir=workdir / "profiles" if args.profile else None,
                        label=f"[drain {n} run {i + 1}/{args.runs}] ", quiet=args.quiet,
                    )
                )  # fmt: skip
            for line in table(runs):
                print(line)
            ok = ok and all(r.complete for r in runs)
            entries.append(
                {
                    "sessions": n,
                    "within_target": all(r.within_target for r in runs),
                    "medians": {
                        key: median([r.summary()[key] for r in runs]) for key in runs[0].summary()
                    },
                    "runs": [
                        {
                            **asdict(r),
                            **r.summary(),
                            "parked": r.parked,
                            "exact": r.exact,
                            "within_target": r.within_target,
                        }
                        for r in runs
                    ],
                }
            )
    finally:
        zk.stop()
        results["drain"] = entries
    return ok
