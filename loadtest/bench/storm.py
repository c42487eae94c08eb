"""``storm``: N sessions subscribe ``books.all`` at the same moment (a reconnect storm).

One run (``run_storm``):

1. a fresh relay of the tree (``--workers N``), the live check and, with several
   workers, the warm-up (``runner.warm_up_workers``); a probe client counts the
   documents ``books.all`` sends (what every storm session must get before ``ready``);
2. ``generators`` ``stormgen.js`` processes open N sessions between them (connect only,
   ``concurrency`` at a time, untimed);
3. ``go`` to every generator: each sends ``sub books.all`` on all its sessions at once and
   timestamps each ``ready``. Subscriptions per second = ready sessions / (last ``ready``
   - first ``sub`` sent), over the relay and per worker (divided by the workers); the
   distribution of the ``ready`` times after the first ``sub``, and of each session's
   own wait; CPU of the relay, generators and PostgreSQL during the storm.

No live query of ``books.all`` exists when the storm starts (the probe and the checks
have closed), so a relay that single-flights runs it once for the storm, and one that
does not runs it per session.

Must not: print tables (``report``) or parse options (``cli``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench import figures
from loadtest.bench.generator import NodeProcess, split
from loadtest.bench.meter import CpuMeter
from loadtest.bench.runner import (
    finish_profilers,
    live_check,
    quantile,
    start_profilers,
    warm_up_workers,
)
from loadtest.bench.stack import BenchError, Cleanup, Database, Relay
from loadtest.bench.trees import Tree

SCRIPT = Path(__file__).with_name("stormgen.js")
PUBLICATION = "books.all"


@dataclass(kw_only=True)
class StormRun(figures.RelayRun):
    """The figures of one storm (times in ms, CPU in seconds)."""

    generators: int
    expected_docs: int = 0
    connected: int = 0
    #: Sessions whose ``ready`` came after a number of documents other than the probe's.
    docs_wrong: int = 0
    timed_out: bool = False
    connect_s: float = 0.0
    #: From the first ``sub`` sent to the last ``ready`` received.
    span_ms: float = float("nan")
    #: From the first to the last ``sub`` sent (the generators' own pace).
    send_ms: float = float("nan")
    #: Per ready session: ms from the storm's first ``sub`` to its ``ready``, sorted.
    ready_ms: list[float] = field(default_factory=list)
    #: Per ready session: ms from its own ``sub`` to its ``ready``, sorted.
    wait_ms: list[float] = field(default_factory=list)

    @property
    def subs_per_s(self) -> float:
        return self.ready * 1000 / self.span_ms if self.span_ms > 0 else math.nan

    @property
    def subs_per_s_per_worker(self) -> float:
        return self.subs_per_s / self.workers

    @property
    def complete(self) -> bool:
        """Every session connected, subscribed and got the whole snapshot; nothing died."""
        return (
            self.connected == self.sessions
            and self.ready == self.sessions
            and self.docs_wrong == 0
            and not self.timed_out
            and self.relay_alive
        )

    def summary(self) -> dict[str, float]:
        """The figures ``report`` takes medians of."""
        return {
            "subs_per_s": self.subs_per_s,
            "subs_per_s_per_worker": self.subs_per_s_per_worker,
            "span_ms": self.span_ms,
            "send_ms": self.send_ms,
            "ready_p50_ms": quantile(self.ready_ms, 0.5),
            "ready_p90_ms": quantile(self.ready_ms, 0.9),
            "ready_p99_ms": quantile(self.ready_ms, 0.99),
            "ready_max_ms": max(self.ready_ms, default=math.nan),
            "wait_p50_ms": quantile(self.wait_ms, 0.5),
            "wait_p99_ms": quantile(self.wait_ms, 0.99),
            "relay_cpu_per_sub_ms": (
                self.relay_cpu_s * 1000 / self.ready if self.ready else math.nan
            ),
            **self.cpu_shares(),
            "postgres_cpu_s": self.postgres_cpu_s,
        }


def merge(storms: list[dict[str, Any]], result: StormRun) -> None:
    """Fill ``result`` from the generators' ``storm`` events (epoch ms, merged)."""
    sent = [float(s["firstSent"]) for s in storms if s["firstSent"] is not None]
    last_sent = [float(s["lastSent"]) for s in storms if s["lastSent"] is not None]
    ready_at = sorted(float(t) for s in storms for t in s["readyAt"])
    result.connected = sum(int(s["connected"]) for s in storms)
    result.ready = sum(int(s["ready"]) for s in storms)
    result.failed = result.sessions - result.ready
    result.docs_wrong = sum(int(s["docsWrong"]) for s in storms)
    result.timed_out = any(bool(s["timedOut"]) for s in storms)
    errors: dict[str, int] = {}
    for storm in storms:
        for kind, count in (storm.get("errors") or {}).items():
            errors[kind] = errors.get(kind, 0) + int(count)
    result.generator_errors = errors
    if not sent:
        return
    first = min(sent)
    result.send_ms = max(last_sent) - first
    result.ready_ms = [t - first for t in ready_at]
    result.wait_ms = sorted(float(w) for s in storms for w in s["subToReady"])
    if ready_at:
        result.span_ms = ready_at[-1] - first


def _snapshot_size(relay: Relay) -> int:
    """Documents ``books.all`` sends a new subscriber (a probe client, then closed)."""
    from relay.client import DDPClient

    client = DDPClient(relay.ws_url, timeout=60)
    try:
        client.connect()
        client.subscribe(PUBLICATION)
        return sum(len(docs) for docs in client.collections.values())
    finally:
        client.close()


def run_storm(
    db: Database,
    tree: Tree,
    workdir: Path,
    cleanup: Cleanup,
    *,
    sessions: int,
    workers: int,
    generators: int,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    storm_timeout: float,
    settle: float,
    live: bool = True,
    profile_dir: Path | None = None,
    label: str = "",
    quiet: bool = False,
) -> StormRun:
    say = figures.sayer(label, quiet)
    shares = split(sessions, generators)
    result = StormRun(
        tree=tree.label,
        revision=tree.revision,
        sessions=sessions,
        workers=workers,
        generators=len(shares),
    )
    relay = Relay(db.url, workdir, cleanup, max_sessions=sessions, workers=workers, tree=tree)
    gens: list[NodeProcess] = []
    logs = []
    try:
        pids = relay.worker_pids
        result.worker_pids = list(pids)
        checked = f"live update in {live_check(relay) * 1000:.0f} ms" if live else "no live check"
        if workers > 1:
            warm_up_workers(relay)
        result.expected_docs = _snapshot_size(relay)
        say(
            f"{tree.label} relay on :{relay.port} (workers {', '.join(map(str, pids))}); "
            f"{checked}; {PUBLICATION} sends {result.expected_docs} documents"
        )
        started = time.monotonic()
        for i, share in enumerate(shares):
            log = open(workdir / f"stormgen-{relay.port}-{i}.log", "w")  # noqa: SIM115
            logs.append(log)
            gen = NodeProcess(
                SCRIPT,
                {
                    "url": relay.ws_url,
                    "sessions": share,
                    "concurrency": max(1, concurrency // len(shares)),
                    "deflate": deflate,
                    "rampTimeoutMs": int(ramp_timeout * 1000),
                    "stormTimeoutMs": int(storm_timeout * 1000),
                    "name": PUBLICATION,
                    "params": [],
                    "expectDocs": result.expected_docs,
                },
                ramp_timeout=ramp_timeout,
                log=log,
            )
            cleanup.push(f"storm generator {i}", gen.close)
            gens.append(gen)
        ramped = [gen.ramp() for gen in gens]
        result.connect_s = time.monotonic() - started
        connected = sum(int(r["ready"]) for r in ramped)
        say(f"{connected}/{sessions} sessions connected in {result.connect_s:.1f} s")
        if connected == 0:
            raise BenchError(f"no session could connect: {ramped[0]['errors']}")
        time.sleep(settle)
        result.sessions_by_worker = figures.sessions_by_worker(relay, pids)
        # Stopped (SIGINT) when the storm is over; the duration is only a bound.
        name = f"storm-{tree.label}-{sessions}"
        profilers = start_profilers(profile_dir, name, relay, 600, cleanup)
        meter = CpuMeter(pids, [gen.pid for gen in gens], db)
        for gen in gens:
            gen.command({"cmd": "go"})
        last_note = [time.monotonic()]

        def progress(event: dict[str, Any]) -> None:
            if event.get("event") == "storming" and time.monotonic() - last_note[0] >= 10:
                last_note[0] = time.monotonic()
                say(f"  storm: {event['ready']} ready, {event['failed']} failed (one generator)")

        storms = [gen.wait_for("storm", storm_timeout + 60, progress) for gen in gens]
        usage = meter.stop()
        result.profiles = finish_profilers(profilers, timeout=0.1)
        merge(storms, result)
        figures.take_usage(result, usage)
        figures.take_health(result, relay)
        s = result.summary()
        say(
            f"{result.ready}/{sessions} subscribed in {result.span_ms / 1000:.2f} s: "
            f"{s['subs_per_s']:.0f} subscriptions/s ({s['subs_per_s_per_worker']:.0f} per "
            f"worker); ready after p50 {s['ready_p50_ms']:.0f} / p99 {s['ready_p99_ms']:.0f} ms; "
            f"CPU relay {result.relay_cpu_s:.1f} s, postgres {result.postgres_cpu_s:.1f} s"
            + (f"; {result.docs_wrong} got a wrong snapshot" if result.docs_wrong else "")
        )
        warning = figures.noise_warning(result)
        if warning:
            say(warning)
        return result
    finally:
        for gen in gens:
            gen.close()
        relay.stop()
        for log in logs:
            log.close()
