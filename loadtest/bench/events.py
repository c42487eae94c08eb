"""``events``: server-pushed events to N subscribers of one stream, beside row fan-out.

One run (``run_events``), on a fresh relay (``--workers N``):

1. the live check; a writer child (``eventwriter``: a Django process) creates a fresh
   book, so the book's chat has no history;
2. N sessions from ``eventsgen.js`` subscribe ``chat.byBook [book]`` and (unless
   ``rows`` is off) ``books.all``; PSS before and after;
3. the events: ``events`` calls of ``publish_event`` from the writer, one transaction
   each, ``interval`` apart; every session must get each one once and in order, as an
   ``added`` to its client-side collection ``chat`` (capped at the stream's history: from
   the 101st event on, each also removes the oldest). Latency from PostgreSQL's commit
   timestamp to each receipt; relay CPU from the first event until every session had the
   last, divided by the events;
4. the row comparison, on the same sessions and relay: ``renames`` renames of that book
   through the ORM, ``interval`` apart, measured the same way (``books.all``'s
   ``changed``);
5. every session's ``chat`` must equal the stream's history as the database holds it
   (the last ``history`` events), checked again for up to ``VERIFY_SECONDS``;
6. "events per second one stream sustains" (``run_sustain``), per asked rate, on the same
   relay once the N sessions are gone: ``sustain_sessions`` sessions on a fresh book's
   chat, events published at the rate for ``sustain_seconds``: the achieved publish rate,
   the lag of each event to its last subscriber, and whether it grows (``kept_up``).

Must not: print tables (``beyond``) or parse options (``cli``).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench import figures
from loadtest.bench.eventwriter import EventWriter
from loadtest.bench.figures import quantile
from loadtest.bench.generator import NodeProcess
from loadtest.bench.meter import CpuMeter
from loadtest.bench.runner import finish_profilers, live_check, start_profilers
from loadtest.bench.stack import BenchError, Cleanup, Database, Relay, cpu_seconds, pss_bytes
from loadtest.bench.writer import achieved_rate, commit_times, connect

SCRIPT = Path(__file__).with_name("eventsgen.js")
#: Seconds the final views may take to equal the stream's history after the last write.
VERIFY_SECONDS = 10.0
#: Give up waiting when no planned write arrived for this long.
STALL_SECONDS = 30.0
#: A stream keeps up with a rate when the lag of its last tenth of events is at most this
#: much above the lag of its first tenth (a stream that falls behind accumulates lag).
KEPT_UP_SLACK_MS = 500.0


@dataclass(kw_only=True)
class Phase:
    """One kind of write (``event`` or ``rename``) to the same sessions: its deliveries
    (``figures.take_deliveries``) and the CPU while it ran (``figures.take_usage``)."""

    kind: str
    planned: int
    interval_s: float
    #: Events per transaction (1 for renames and the fan-out).
    batch: int = 1
    ready: int = 0
    writes: int = 0
    write_rate: float = math.nan
    commit_clock: str = ""
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    closed_after_ready: int = 0
    all_done: bool = False
    #: Per write: ms from commit until the last session had it (inf: some never did).
    all_ms: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    delivery_p50_ms: float = math.nan
    delivery_p99_ms: float = math.nan
    delivery_max_ms: float = math.nan
    relay_cpu_s: float = math.nan
    relay_cpu_s_by_worker: list[float] = field(default_factory=list)
    #: The Node.js generator and the writer child together (the CPU meter's
    #: "generators"); ``writer_cpu_s``: the writer's part.
    generator_cpu_s: float = math.nan
    writer_cpu_s: float = math.nan
    postgres_cpu_s: float = math.nan
    wall_s: float = math.nan
    other_cpu_share: float = math.nan
    steal_share: float = math.nan
    # Filled on the run (``take_health``), kept here for the protocol ``take_usage`` reads.
    relay_alive: bool = True
    relay_errors: int = 0
    worker_timeouts: int = 0
    generator_errors: dict[str, int] = field(default_factory=dict)

    @property
    def relay_cpu_per_write_ms(self) -> float:
        return self.relay_cpu_s * 1000 / self.writes if self.writes else math.nan

    @property
    def complete(self) -> bool:
        """Every planned write was made and reached every session exactly once."""
        return (
            self.writes == self.planned
            and self.all_done
            and self.missing == 0
            and self.duplicates == 0
            and self.closed_after_ready == 0
        )

    def summary(self) -> dict[str, float]:
        """The figures the tables take medians of."""
        return {
            "all_p50_ms": quantile(self.all_ms, 0.5),
            "all_p99_ms": quantile(self.all_ms, 0.99),
            "delivery_p50_ms": self.delivery_p50_ms,
            "delivery_p99_ms": self.delivery_p99_ms,
            "delivery_max_ms": self.delivery_max_ms,
            "relay_cpu_per_write_ms": self.relay_cpu_per_write_ms,
            "write_rate": self.write_rate,
            **self.cpu_shares(),
        }

    def cpu_shares(self) -> dict[str, float]:
        """Cores the relay, the generator, the writer and PostgreSQL used meanwhile."""
        generator = self.generator_cpu_s - self.writer_cpu_s
        return {
            f"{name}_cpu_share": seconds / self.wall_s if self.wall_s else math.nan
            for name, seconds in (
                ("relay", self.relay_cpu_s),
                ("generator", generator),
                ("writer", self.writer_cpu_s),
                ("postgres", self.postgres_cpu_s),
            )
        }


def tenths(values: list[float]) -> tuple[float, float]:
    """Medians of the first and of the last tenth of ``values`` (at least one value
    each; NaN when empty)."""
    k = max(1, len(values) // 10)
    return quantile(values[:k], 0.5), quantile(values[-k:], 0.5)


def kept_up(first_ms: float, last_ms: float, slack_ms: float = KEPT_UP_SLACK_MS) -> bool:
    """Did the lag stay flat: the last tenth's at most ``slack_ms`` above the first's? A
    lag that is unknown or infinite (an event never reached everyone) did not."""
    if not (math.isfinite(first_ms) and math.isfinite(last_ms)):
        return False
    return last_ms <= first_ms + slack_ms


@dataclass(kw_only=True)
class SustainRun:
    """One asked rate of ``run_sustain``: ``phase`` holds the deliveries and CPU."""

    rate: float
    seconds: float
    sessions: int
    phase: Phase
    failed: int = 0
    out_of_order: int = 0
    protocol_errors: int = 0
    checked: int = 0
    mismatched: int = 0

    @property
    def lag_tenths_ms(self) -> tuple[float, float]:
        return tenths(self.phase.all_ms)

    @property
    def kept_up(self) -> bool:
        return kept_up(*self.lag_tenths_ms)

    @property
    def exact(self) -> bool:
        return (
            self.failed == 0
            and self.phase.complete
            and self.out_of_order == 0
            and self.protocol_errors == 0
            and self.mismatched == 0
            and self.checked == self.phase.ready
        )

    def summary(self) -> dict[str, float]:
        first, last = self.lag_tenths_ms
        return {
            **self.phase.summary(),
            "lag_first_tenth_ms": first,
            "lag_last_tenth_ms": last,
            "drain_ms": self.phase.all_ms[-1] if self.phase.all_ms else math.nan,
            "deliveries_per_s": (
                self.phase.delivered / self.phase.wall_s if self.phase.wall_s else math.nan
            ),
        }


@dataclass(kw_only=True)
class EventsRun(figures.RelayRun):
    """The figures of one events run (times in ms, CPU in seconds)."""

    events: Phase
    rows: Phase | None = None
    ramp_s: float = 0.0
    pss_before: int = 0
    pss_after: int = 0
    history: int = 0
    out_of_order: int = 0
    #: An ``added`` of an event a session held, a ``removed`` of one it did not.
    protocol_errors: int = 0
    #: The most ``chat`` documents one session held at once (the stream's cap: history).
    max_held: int = 0
    checked: int = 0
    mismatched: int = 0
    mismatch_examples: list[dict[str, Any]] = field(default_factory=list)
    sustain: list[SustainRun] = field(default_factory=list)

    @property
    def memory_per_session(self) -> float:
        return (self.pss_after - self.pss_before) / self.ready if self.ready else math.nan

    @property
    def exact(self) -> bool:
        """Every session subscribed, got every event (and rename) once and in order,
        ended holding the stream's history; every sustain run likewise."""
        return (
            self.failed == 0
            and self.events.complete
            and (self.rows is None or self.rows.complete)
            and self.out_of_order == 0
            and self.protocol_errors == 0
            and self.mismatched == 0
            and self.checked == self.ready
            and self.relay_alive
            and all(s.exact for s in self.sustain)
        )

    def summary(self) -> dict[str, float]:
        out = {f"events_{k}": v for k, v in self.events.summary().items()}
        if self.rows is not None:
            out.update({f"rows_{k}": v for k, v in self.rows.summary().items()})
        out.update(ramp_s=self.ramp_s, memory_per_session_bytes=self.memory_per_session)
        return out


def _measure(
    gen: NodeProcess,
    writer: EventWriter,
    db: Database,
    pids: list[int],
    phase: Phase,
    *,
    book: str,
    prefix: str,
    first: int,
    max_wait: float,
) -> dict[str, Any]:
    """Make ``phase``'s writes, wait for every session to have them (bounded), fill its
    figures; returns the generator's report (its counters)."""
    meter = CpuMeter(pids, [gen.pid, writer.pid], db)
    writer_cpu = cpu_seconds(writer.pid)
    published = writer.publish(
        phase.kind, book, prefix, phase.planned, phase.interval_s, batch=phase.batch
    )
    xids = [int(x) for x in published["xids"]]
    client = [float(t) for t in published["commits"]]
    phase.writes = len(xids)
    phase.all_done = gen.wait_all(first + phase.writes, stall=STALL_SECONDS, limit=max_wait)
    figures.take_usage(phase, meter.stop())
    phase.writer_cpu_s = cpu_seconds(writer.pid) - writer_cpu
    conn = connect(db.url)
    try:
        server = commit_times(conn, xids)
    finally:
        conn.close()
    commits = server if server else client
    phase.commit_clock = "server" if server else "client"
    phase.write_rate = achieved_rate(sorted(set(client))) * phase.batch
    gen.command({"cmd": "report", "commits": [t * 1000 for t in commits], "first": first})
    report = gen.wait_for("report", 120)
    figures.take_deliveries(phase, report)
    return report


def _verify(gen: NodeProcess, writer: EventWriter, book: str) -> dict[str, Any]:
    """Every session's ``chat`` against the stream's history, until equal or
    ``VERIFY_SECONDS`` passed (a last event may still be on its way)."""
    deadline = time.monotonic() + VERIFY_SECONDS
    while True:
        gen.command({"cmd": "verify", "expected": writer.history(book)})
        verified = gen.wait_for("verified", 60)
        if int(verified["mismatched"]) == 0 or time.monotonic() > deadline:
            return verified
        time.sleep(1.0)


def _counters(report: dict[str, Any]) -> tuple[int, int, int]:
    """(out of order, protocol errors, most documents held) of a generator report."""
    return (
        int(report["outOfOrder"]),
        int(report["badAdded"]) + int(report["badRemoved"]),
        int(report["maxHeld"]),
    )


def _generator(
    relay: Relay,
    workdir: Path,
    cleanup: Cleanup,
    options: dict[str, Any],
    ramp_timeout: float,
    name: str,
) -> tuple[NodeProcess, Any]:
    log = open(workdir / f"{name}-{relay.port}.log", "w")  # noqa: SIM115
    gen = NodeProcess(
        SCRIPT,
        {"url": relay.ws_url, "rampTimeoutMs": int(ramp_timeout * 1000), **options},
        ramp_timeout=ramp_timeout,
        log=log,
    )
    cleanup.push(name, gen.close)
    return gen, log


def run_events(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    *,
    sessions: int,
    events: int,
    renames: int,
    interval: float,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    settle: float,
    sustain_rates: list[float],
    sustain_sessions: int,
    sustain_seconds: float,
    sustain_batch: int = 1,
    workers: int = 1,
    live: bool = True,
    max_wait: float = 900.0,
    profile_dir: Path | None = None,
    label: str = "",
    quiet: bool = False,
) -> EventsRun:
    say = figures.sayer(label, quiet)
    result = EventsRun(
        tree="after",
        revision=None,
        sessions=sessions,
        workers=workers,
        events=Phase(kind="event", planned=events, interval_s=interval),
        rows=Phase(kind="rename", planned=renames, interval_s=interval) if renames else None,
    )
    relay = Relay(db.url, workdir, cleanup, max_sessions=sessions, workers=workers)
    writer_log = open(workdir / f"eventwriter-{relay.port}.log", "w")  # noqa: SIM115
    gen: NodeProcess | None = None
    gen_log = None
    writer: EventWriter | None = None
    try:
        writer = EventWriter(db.url, cleanup, writer_log)
        pids = relay.worker_pids
        result.worker_pids = list(pids)
        checked = f"live update in {live_check(relay) * 1000:.0f} ms" if live else "no live check"
        book = writer.book()
        say(f"relay on :{relay.port} (workers {', '.join(map(str, pids))}); {checked}; book {book}")
        time.sleep(settle)
        result.pss_before = sum(pss_bytes(pid) for pid in pids)
        token = secrets.token_hex(3)
        started = time.monotonic()
        gen, gen_log = _generator(
            relay, workdir, cleanup,
            {
                "sessions": sessions, "concurrency": concurrency, "deflate": deflate,
                "book": book, "rows": renames > 0, "events": events, "renames": renames,
                "eventPrefix": f"ev {token} ", "renamePrefix": f"{book} {token} ",
            },
            ramp_timeout, "eventsgen",
        )  # fmt: skip
        ramped = gen.ramp()
        result.ramp_s = time.monotonic() - started
        result.ready = int(ramped["ready"])
        result.failed = sessions - result.ready
        subs = "chat.byBook" + (" and books.all" if renames else "")
        say(
            f"{result.ready}/{sessions} sessions subscribed to {subs} in {result.ramp_s:.1f} s"
            + (f" ({result.failed} failed: {ramped['errors']})" if result.failed else "")
        )
        if result.ready == 0:
            raise BenchError(f"no session could subscribe: {ramped['errors']}")
        time.sleep(settle)
        result.pss_after = sum(pss_bytes(pid) for pid in pids)
        result.sessions_by_worker = figures.sessions_by_worker(relay, pids)
        seconds = (events + renames) * interval + 30
        profilers = start_profilers(profile_dir, f"events-{sessions}", relay, seconds, cleanup)
        for phase, prefix, first in (
            (result.events, f"ev {token} ", 0),
            (result.rows, f"{book} {token} ", events),
        ):
            if phase is None:
                continue
            phase.ready = result.ready
            report = _measure(
                gen, writer, db, pids, phase,
                book=book, prefix=prefix, first=first, max_wait=max_wait,
            )  # fmt: skip
            out_of_order, errors, held = _counters(report)
            result.out_of_order, result.protocol_errors = out_of_order, errors
            result.max_held = max(result.max_held, held)
            s = phase.summary()
            say(
                f"{phase.writes} {phase.kind}s at {phase.write_rate:.1f}/s: reached all "
                f"{result.ready} after p50 {s['all_p50_ms']:.0f} / p99 {s['all_p99_ms']:.0f} ms; "
                f"delivery p50 {s['delivery_p50_ms']:.1f} / p99 {s['delivery_p99_ms']:.1f} ms; "
                f"relay CPU {s['relay_cpu_per_write_ms']:.1f} ms per {phase.kind}; lost "
                f"{phase.missing}, duplicates {phase.duplicates}, out of order {out_of_order}"
            )
            warning = figures.noise_warning(phase)
            if warning:
                say(warning)
            time.sleep(min(settle, 1.0))
        result.profiles = finish_profilers(profilers)
        verified = _verify(gen, writer, book)
        result.history = len(writer.history(book))
        result.checked = int(verified["checked"])
        result.mismatched = int(verified["mismatched"])
        result.mismatch_examples = list(verified["examples"])
        say(
            f"views equal to the stream's history ({result.history} events): "
            f"{result.checked - result.mismatched}/{result.ready}; protocol errors "
            f"{result.protocol_errors}; at most {result.max_held} chat documents held"
        )
        gen.close()
        gen = None
        for rate in sustain_rates:
            sustained = run_sustain(
                db, relay, writer, workdir, cleanup,
                rate=rate, seconds=sustain_seconds, sessions=sustain_sessions,
                batch=sustain_batch, deflate=deflate, concurrency=concurrency,
                ramp_timeout=ramp_timeout, max_wait=max_wait, say=say,
            )  # fmt: skip
            result.sustain.append(sustained)
        figures.take_health(result, relay)
        for phase in (result.events, result.rows):
            if phase is not None:
                figures.take_health(phase, relay)
        return result
    finally:
        if gen is not None:
            gen.close()
        if writer is not None:
            try:
                writer.request({"cmd": "cleanup"}, "cleaned", 60)
            except BenchError as exc:
                say(f"could not delete the run's books: {exc}")
            writer.close()
        relay.stop()
        writer_log.close()
        if gen_log is not None:
            gen_log.close()


def run_sustain(
    db: Database,
    relay: Relay,
    writer: EventWriter,
    workdir: Path,
    cleanup: Cleanup,
    *,
    rate: float,
    seconds: float,
    sessions: int,
    batch: int,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    max_wait: float,
    say: Any,
) -> SustainRun:
    """``rate`` events a second for ``seconds`` to ``sessions`` subscribers of a fresh
    book's chat (``batch`` events per transaction)."""
    count = max(1, round(rate * seconds))
    phase = Phase(kind="event", planned=count, interval_s=batch / rate, batch=batch)
    run = SustainRun(rate=rate, seconds=seconds, sessions=sessions, phase=phase)
    book = writer.book()
    token = secrets.token_hex(3)
    gen, log = _generator(
        relay, workdir, cleanup,
        {
            "sessions": sessions, "concurrency": concurrency, "deflate": deflate,
            "book": book, "rows": False, "events": count, "renames": 0,
            "eventPrefix": f"ev {token} ", "renamePrefix": "",
        },
        ramp_timeout, f"sustaingen-{rate:g}",
    )  # fmt: skip
    try:
        ramped = gen.ramp()
        phase.ready = int(ramped["ready"])
        run.failed = sessions - phase.ready
        if phase.ready == 0:
            raise BenchError(f"no sustain session could subscribe: {ramped['errors']}")
        report = _measure(
            gen, writer, db, relay.worker_pids, phase,
            book=book, prefix=f"ev {token} ", first=0, max_wait=max_wait,
        )  # fmt: skip
        run.out_of_order, run.protocol_errors, _ = _counters(report)
        verified = _verify(gen, writer, book)
        run.checked, run.mismatched = int(verified["checked"]), int(verified["mismatched"])
        figures.take_health(phase, relay)
        s = run.summary()
        say(
            f"sustain {rate:g} events/s x {seconds:g} s to {phase.ready} sessions: published "
            f"{phase.writes} at {phase.write_rate:.0f}/s; lag to the last subscriber p50 "
            f"{s['all_p50_ms']:.0f} / p99 {s['all_p99_ms']:.0f} ms (first tenth "
            f"{s['lag_first_tenth_ms']:.0f}, last tenth {s['lag_last_tenth_ms']:.0f} ms: "
            f"{'keeps up' if run.kept_up else 'falls behind'}); relay CPU "
            f"{phase.relay_cpu_s / phase.wall_s:.0%} of a core; lost {phase.missing}, "
            f"duplicates {phase.duplicates}, out of order {run.out_of_order}"
        )
        return run
    finally:
        gen.close()
        log.close()
