"""Chaos on the local cluster: 100 reconnecting clients while writes go on and things break.

The setting (issue: session resumption across the cluster): ``devstack.cluster.Cluster``,
the ``cluster`` fixture of ``tests/fixtures/relays.py`` (embedded PostgreSQL, a 3-node
ZooKeeper ensemble, three relays of two gevent workers, HAProxy in round robin without
stickiness). Through HAProxy:

* 80 ``DDPClient(auto_reconnect=True, resume=True)`` (Meteor 3.5: ``session`` +
  ``receivedCount`` on reconnect), 64 raw WebSocket and 16 SockJS;
* 20 ``DDPClient(auto_reconnect=True, resume=False)``: Meteor before 3.5 (``session`` but
  no ``receivedCount``: always a new session and a full resync), 16 raw and 4 SockJS;

each subscribed to ``books.all`` or ``books.byAuthorEmail`` for one of the seeded authors.
A writer process (``tests/e2e/writer.py``: creates, renames with per-document title
revisions, moves between authors, edits, removes, some transactions rolled back) commits
during the whole chaos phase, which runs, one step after the other (each step waits until
every client is connected again, bounded):

1. ``client_drop``: 20 random clients have their TCP socket shut from the client side
   (no WebSocket close frame, no DDP ``disconnect``);
2. ``haproxy_cut``: HAProxy is SIGKILLed (every connection cut at the balancer) and
   started again by ``Cluster.supervise()`` (the Cluster API has no HAProxy restart of its
   own; ``supervise()`` is what restarts a dead child);
3. ``sigterm_relay0``: relay 0 gets SIGTERM (drain: sessions parked), then is restarted;
4. ``sigkill_relay1``: relay 1 (master and workers) gets SIGKILL, then is restarted;
5. ``zk_kill``: the ZooKeeper leader is SIGKILLed; while the others elect a new leader,
   10 more clients are dropped from the client side (cause ``client_drop_zk``); the node
   is then restarted.

Then the writer stops, every client is reconnected and quiet for 2 s, and the test checks:
every cache equals the database restricted to its subscription (every published field);
no duplicate ``added``, no ``changed``/``removed`` for a missing document, no title
revision or ``updatedAt`` going backwards, no DDP error, no ``nosub``; per cause, the
clients' exact resumes (same session id) versus new sessions; the relays' own
``ddp_relay_resumes_total{outcome}`` per step (read from each relay's
``PROMETHEUS_MULTIPROC_DIR`` files, also those of a killed relay, before its restart wipes
them); resume latency p50/p99 (socket loss to ``connected``) from the clients.

Expected, and asserted: client-dropped, HAProxy-cut and SIGTERM-drained sessions of
resuming clients resume exactly; a SIGKILLed relay's sessions get new sessions; pre-3.5
clients always get new sessions; every cache converges. The ZooKeeper step is reported,
not asserted beyond convergence (a resume during the election may be refused).

Run (the figures in ``docs/resumption.md`` come from this)::

    .venv/bin/python -m pytest tests/e2e/test_chaos.py -m e2e -s

``CHAOS_SEED`` replays the same client choices and writes. No java/ZooKeeper jar or
haproxy (or PostgreSQL): FAILS under CI or ``RELAY_REQUIRE_SERVICES=1``, else skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.cluster import Cluster
from devstack.launch import example_env
from devstack.processes import http_status
from tests.e2e.convergence import (
    ALL,
    EMAILS,
    Sub,
    by_email,
    cache_problems,
    database_state,
    expected_view,
    order_problems,
)
from tests.e2e.reconnects import ChaosClient, Phase, read_resume_counters

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.py"

#: (resume, sockjs) -> how many clients.
KINDS: dict[tuple[bool, bool], int] = {
    (True, False): 64,
    (True, True): 16,
    (False, False): 16,
    (False, True): 4,
}
CLIENT_DROPS = 20
ZK_PHASE_DROPS = 10
#: Meteor's Retry numbers, with the cap lowered so that no wait exceeds 8 s.
RECONNECT_MAX = 8.0
QUIET_SECONDS = 2.0
#: Bounds of the phases; the whole test (cluster start and stop included) stays under
#: 7 minutes even on a loaded CI machine: pytest-timeout kills it at 420 s, the chaos
#: body must end within 360 s (about 80 s on a quiet machine).
RECONNECT_TIMEOUT = 90.0
DRAIN_TIMEOUT = 80.0
TOTAL_LIMIT = 360.0

SUBS: tuple[Sub, ...] = (ALL, by_email(EMAILS[0]), ALL, by_email(EMAILS[1]), by_email(EMAILS[2]))


@dataclass
class Member:
    name: str
    resume: bool
    sockjs: bool
    sub: Sub
    client: ChaosClient | None = None
    report: dict[str, Any] = field(default_factory=dict)

    def start(self, cluster: Cluster) -> None:
        url = cluster.url if self.sockjs else cluster.ws_url
        self.client = ChaosClient(
            url,
            sockjs=self.sockjs,
            timeout=30,
            auto_reconnect=True,
            resume=self.resume,
            reconnect_max=RECONNECT_MAX,
        )
        self.client.connect()
        self.client.subscribe(self.sub.name, *self.sub.params)


# -- helpers -------------------------------------------------------------------------------


class ServerCounters:
    """The relays' resume outcomes summed over relays and over their restarts."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.archived: Counter[str] = Counter()
        self.marks: list[tuple[str, Counter[str]]] = []

    def archive(self, index: int) -> None:
        """Keep a stopped relay's counters before ``restart_relay`` wipes its files."""
        self.archived += read_resume_counters(self.cluster.relays[index].metrics_dir)

    def total(self, skip: int | None = None) -> Counter[str]:
        total = Counter(self.archived)
        for relay in self.cluster.relays:
            if relay.index != skip:
                total += read_resume_counters(relay.metrics_dir)
        return total

    def mark(self, phase: str, total: Counter[str] | None = None) -> None:
        self.marks.append((phase, self.total() if total is None else total))

    def per_phase(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (_, before), (phase, after) in zip(self.marks, self.marks[1:], strict=False):
            delta = Counter(after)
            delta.subtract(before)
            out[phase] = {k: v for k, v in sorted(delta.items()) if v}
        return out


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def all_settled(members: Sequence[Member]) -> Callable[[], bool]:
    return lambda: all(m.client is not None and m.client.settled() for m in members)


def not_settled(members: Sequence[Member]) -> list[str]:
    return [m.name for m in members if m.client is None or not m.client.settled()]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def plan(rng: random.Random) -> list[Member]:
    members: list[Member] = []
    for (resume, sockjs), count in KINDS.items():
        kind = f"{'resume' if resume else 'legacy'}-{'sockjs' if sockjs else 'raw'}"
        for j in range(count):
            members.append(
                Member(f"{kind}-{j}", resume, sockjs, SUBS[(j + len(members)) % len(SUBS)])
            )
    rng.shuffle(members)
    return members


# -- the test ------------------------------------------------------------------------------


def test_chaos(cluster: Cluster, tmp_path: Path) -> None:
    t0 = time.monotonic()
    seed = int(os.environ.get("CHAOS_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"\nchaos: seed {seed} (CHAOS_SEED={seed} to replay)")
    rng = random.Random(seed)
    members = plan(rng)
    assert len(members) == 100
    timings: dict[str, float] = {}
    counters = ServerCounters(cluster)
    Phase.name = "setup"
    stop_file = tmp_path / "stop-writer"
    # On failure the report gets the cluster's layout and log tails (tests/fixtures/relays.py).
    try:
        _run(cluster, members, rng, seed, counters, timings, stop_file, t0, tmp_path)
    finally:
        stop_file.touch()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda m: m.client.close() if m.client is not None else None,
                    members,
                )
            )


def _run(
    cluster: Cluster,
    members: list[Member],
    rng: random.Random,
    seed: int,
    counters: ServerCounters,
    timings: dict[str, float],
    stop_file: Path,
    t0: float,
    tmp_path: Path,
) -> None:
    t = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda m: m.start(cluster), members))
    timings["subscribe"] = time.monotonic() - t
    counters.mark("setup")

    # The writer commits during the whole chaos phase (bounded by --max-seconds).
    writer = subprocess.Popen(
        [
            sys.executable,
            str(WRITER),
            "--seed",
            str(seed),
            "--ops",
            "1000000",
            "--stop-file",
            str(stop_file),
            "--max-seconds",
            "150",
            "--pace-ms",
            "15",
        ],
        env=example_env(cluster.database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _chaos(cluster, members, rng, counters, timings)
    finally:
        stop_file.touch()
        try:
            out, err = writer.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, err = writer.communicate()
    lines = [line for line in out.splitlines() if line.strip()]
    assert writer.returncode == 0 and lines, f"writer failed ({writer.returncode}):\n{err[-4000:]}"
    summary = json.loads(lines[-1])
    assert summary["ok"], summary

    # Drain: every client reconnected and quiet.
    t = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_until(all_settled(members), DRAIN_TIMEOUT, "every client to settle")
    quiet_deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < quiet_deadline:
        newest = max(m.client.last_data for m in members if m.client is not None)
        if time.monotonic() - newest >= QUIET_SECONDS and all_settled(members)():
            break
        time.sleep(0.1)
    timings["drain"] = time.monotonic() - t
    counters.mark("drain")

    books, authors = database_state(cluster.database_url)
    failures: list[str] = []
    for m in members:
        failures += [f"{m.name} [{m.sub}]: {p}" for p in _problems(m, books, authors)]
    report = _report(members, counters, summary, timings, books)
    timings["total"] = time.monotonic() - t0
    report["timings"] = {k: round(v, 1) for k, v in timings.items()}
    text = _summary_text(report)
    print(text)
    (tmp_path / "chaos_report.json").write_text(json.dumps(report, indent=1, default=str))
    if os.environ.get("CHAOS_REPORT"):
        Path(os.environ["CHAOS_REPORT"]).write_text(json.dumps(report, indent=1, default=str))

    failures += _expectation_failures(report)
    assert not failures, f"{len(failures)} problems (seed {seed}):\n" + "\n".join(failures[:40])
    assert timings["total"] < TOTAL_LIMIT, f"chaos took {timings['total']:.0f} s"


def _settle(members: Sequence[Member], what: str) -> float:
    try:
        return wait_until(all_settled(members), RECONNECT_TIMEOUT, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not settled: {not_settled(members)[:10]}") from None


def _drop(members: Sequence[Member], rng: random.Random, count: int, cause: str) -> list[str]:
    chosen = rng.sample(list(members), count)
    dropped = []
    for m in chosen:
        assert m.client is not None
        if m.client.drop(cause):
            dropped.append(m.name)
        time.sleep(rng.random() * 0.1)
    return dropped


def _chaos(
    cluster: Cluster,
    members: list[Member],
    rng: random.Random,
    counters: ServerCounters,
    timings: dict[str, float],
) -> None:
    time.sleep(3)  # writes flowing to every client
    counters.mark("writes")

    # 1. Client-side drops.
    Phase.name = "client_drop"
    t = time.monotonic()
    _drop(members, rng, CLIENT_DROPS, "client_drop")
    _settle(members, "clients dropped from the client side to reconnect")
    time.sleep(1)
    timings["client_drop"] = time.monotonic() - t
    counters.mark("client_drop")

    # 2. Every connection cut at the balancer: HAProxy SIGKILLed, then restarted.
    Phase.name = "haproxy_cut"
    t = time.monotonic()
    assert cluster.haproxy is not None
    cluster.haproxy.kill()
    cluster.haproxy.wait(10)
    time.sleep(0.5)
    cluster.supervise()  # restarts the dead HAProxy (relays and ZooKeeper all run)
    wait_until(lambda: http_status(cluster.url + "/readyz") == 200, 20, "HAProxy to serve again")
    _settle(members, "every client to come back through the new HAProxy")
    time.sleep(1)
    timings["haproxy_cut"] = time.monotonic() - t
    counters.mark("haproxy_cut")

    # 3. SIGTERM relay 0 (drain: sessions parked), then restart it.
    Phase.name = "sigterm_relay0"
    t = time.monotonic()
    proc = cluster.relays[0].proc
    assert proc is not None
    cluster.kill_relay(0, signal.SIGTERM)
    proc.wait(cluster.graceful_timeout + 15)
    counters.archive(0)
    cluster.restart_relay(0)
    _settle(members, "relay 0's clients to reconnect")
    time.sleep(1)
    timings["sigterm_relay0"] = time.monotonic() - t
    counters.mark("sigterm_relay0")

    # 4. SIGKILL relay 1 (master and workers), then restart it.
    Phase.name = "sigkill_relay1"
    t = time.monotonic()
    cluster.kill_relay(1, signal.SIGKILL)
    counters.archive(1)
    cluster.restart_relay(1)
    _settle(members, "relay 1's clients to reconnect")
    time.sleep(1)
    timings["sigkill_relay1"] = time.monotonic() - t
    counters.mark("sigkill_relay1")

    # 5. SIGKILL the ZooKeeper leader; drop clients during the election; restart it.
    Phase.name = "zk_kill"
    t = time.monotonic()
    leader = cluster.zk_leader()
    assert leader is not None
    cluster.kill_zk(leader, signal.SIGKILL)
    _drop(members, rng, ZK_PHASE_DROPS, "client_drop_zk")
    _settle(members, "clients dropped during the ZooKeeper election")
    cluster.restart_zk(leader)
    time.sleep(1)
    timings["zk_kill"] = time.monotonic() - t
    counters.mark("zk_kill")
    Phase.name = "drain"


# -- checks and figures --------------------------------------------------------------------


def _problems(m: Member, books: dict[str, Any], authors: dict[str, Any]) -> list[str]:
    assert m.client is not None
    received, cache = m.client.snapshot()
    out = cache_problems(cache, expected_view(m.sub, books, authors))
    out += [f"violation: {v}" for v in m.client.violations]
    out += [f"order: {p[:300]}" for p in order_problems(received)]
    if m.client.errors:
        out.append(f"DDP errors: {m.client.errors[:3]}")
    if m.client.nosubs:
        out.append(f"nosub: {m.client.nosubs}")
    if not m.client.settled():
        out.append("not connected at the end")
    if m.client.reconnects != len(m.client.events):
        out.append(f"reconnects {m.client.reconnects} but {len(m.client.events)} events")
    m.report = {
        "session": m.client.session,
        "reconnects": m.client.reconnects,
        "resumes": m.client.resumes,
        "resyncs": m.client.resyncs,
        "events": m.client.events,
        "received": len(received),
    }
    return out


def _report(
    members: Sequence[Member],
    counters: ServerCounters,
    writer: dict[str, Any],
    timings: dict[str, float],
    books: dict[str, Any],
) -> dict[str, Any]:
    by_cause: dict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: {"resume": Counter(), "legacy": Counter()}
    )
    latency: dict[str, list[float]] = defaultdict(list)
    handshake: dict[str, list[float]] = defaultdict(list)
    for m in members:
        assert m.client is not None
        kind = "resume" if m.resume else "legacy"
        for cause, outcome, seconds, server, _, _ in m.client.events:
            by_cause[cause][kind][outcome] += 1
            for key in (f"{kind}/{outcome}/all", f"{kind}/{outcome}/{cause}"):
                latency[key].append(seconds)
                handshake[key].append(server)
    lat = {key: _figures(values) for key, values in sorted(latency.items())}
    connect = {key: _figures(values) for key, values in sorted(handshake.items())}
    return {
        "clients": {
            "resume": sum(1 for m in members if m.resume),
            "legacy": sum(1 for m in members if not m.resume),
            "sockjs": sum(1 for m in members if m.sockjs),
        },
        "reconnects": sum(m.client.reconnects for m in members if m.client is not None),
        "resumes": sum(m.client.resumes for m in members if m.client is not None),
        "resyncs": sum(m.client.resyncs for m in members if m.client is not None),
        "violations": sum(len(m.client.violations) for m in members if m.client is not None),
        "by_cause": {
            cause: {kind: dict(c) for kind, c in kinds.items()} for cause, kinds in by_cause.items()
        },
        "latency": lat,
        "connect_to_connected": connect,
        "cached_documents": sum(
            len(docs)
            for m in members
            if m.client is not None
            for docs in m.client.collections.values()
        ),
        "server_outcomes_per_phase": counters.per_phase(),
        "server_outcomes_total": dict(sorted(counters.marks[-1][1].items())),
        "writer": {
            "committed": writer["committed"],
            "rolledBack": writer["rolledBack"],
            "transactions": writer["transactions"],
            "seconds": writer["seconds"],
        },
        "books_at_end": len(books),
        "per_client": {m.name: m.report for m in members},
    }


def _figures(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def _summary_text(report: dict[str, Any]) -> str:
    lines = [
        "chaos summary",
        f"  clients {report['clients']}; reconnects {report['reconnects']} "
        f"(exact resumes {report['resumes']}, new sessions {report['resyncs']}); "
        f"violations {report['violations']}; books at end {report['books_at_end']}; "
        f"documents in the 100 caches {report['cached_documents']}",
        f"  writer: committed {report['writer']['committed']}, rolled back "
        f"{report['writer']['rolledBack']}, {report['writer']['transactions']} transactions "
        f"in {report['writer']['seconds']} s",
        "  client-side outcome per cause (resume=True clients | pre-3.5 clients):",
    ]
    for cause, kinds in report["by_cause"].items():
        lines.append(f"    {cause:16} {kinds['resume']} | {kinds['legacy']}")
    lines.append("  relay-side ddp_relay_resumes_total{outcome} per step:")
    for phase, outcomes in report["server_outcomes_per_phase"].items():
        lines.append(f"    {phase:16} {outcomes}")
    lines.append(f"    total            {report['server_outcomes_total']}")
    lines.append("  latency, socket loss -> connected (backoff included):")
    for key, figures in report["latency"].items():
        lines.append(f"    {key:30} {figures}")
    lines.append("  latency, new socket open -> connected (the relay's resume decision):")
    for key, figures in report["connect_to_connected"].items():
        lines.append(f"    {key:30} {figures}")
    lines.append(f"  timings (s): {report.get('timings')}")
    return "\n".join(lines)


def _expectation_failures(report: dict[str, Any]) -> list[str]:
    out = []
    by_cause = report["by_cause"]
    for cause in ("client_drop", "haproxy_cut", "sigterm_relay0"):
        got = by_cause.get(cause, {}).get("resume", {})
        if got.get("new"):
            out.append(f"{cause}: {got['new']} resuming clients got a new session ({got})")
        if not got.get("resumed"):
            out.append(f"{cause}: no exact resume at all ({got})")
    got = by_cause.get("sigkill_relay1", {}).get("resume", {})
    if got.get("resumed"):
        out.append(f"sigkill_relay1: {got['resumed']} sessions of a SIGKILLed relay resumed")
    if not got.get("new"):
        out.append(f"sigkill_relay1: no client lost its session ({got})")
    for cause, kinds in by_cause.items():
        if kinds["legacy"].get("resumed"):
            out.append(f"{cause}: pre-3.5 clients resumed ({kinds['legacy']})")
    for cause in ("setup", "writes", "?"):
        if cause in by_cause:
            out.append(f"reconnects outside any chaos step ({cause}): {by_cause[cause]}")
    return out
