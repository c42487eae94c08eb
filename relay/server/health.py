"""The readiness model of a relay: what a worker observes, what it means, and the pod's verdict.

Layer: core, pure (no clock, no I/O, no gevent: every time is an argument, monotonic
seconds). Three questions, three answers:

- **ready** (``/readyz``): can this pod serve clients correctly? Per worker, four checks:
  ``draining`` (it is shutting down), ``postgres`` (its last database round trip
  succeeded, recently), ``listener`` (its LISTEN connection is up and not stuck in a
  backfill) and ``coordinator`` (its ZooKeeper session is connected; a short SUSPENDED is
  forgiven). The pod is ``ready`` when every worker passes every check, ``degraded`` when
  the only failure is a coordinator that is not required (``RELAY_COORDINATOR_REQUIRED``
  false: sessions then do not resume across pods), else ``not ready``; a worker whose
  report is stale is not ready.
- **live** (``/livez``): only what a restart fixes. A worker whose event loop has not
  reported for ``LIVENESS_SECONDS`` is stuck; PostgreSQL or ZooKeeper being down is not a
  liveness failure.
- **started** (``/startupz``): every expected worker has loaded its backend and made its
  first listener connection.

Reports travel between the workers of a pod as JSON (``encode``/``decode``), so
``decode`` takes anything and raises only ``ValueError``.

Must not: read a clock, a file or a socket (``relay.server.readiness`` does), or import
gevent, kazoo or Django.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

#: The checks of a worker, in the order they are reported.
CHECKS: Final = ("draining", "postgres", "listener", "coordinator")

READY: Final = "ready"
DEGRADED: Final = "degraded"
NOT_READY: Final = "not ready"

#: A worker whose last successful database round trip is older than this is not ready.
#: The round trip is the worker's keepalive (every ~3 s): this is about four missed ones.
POSTGRES_STALE_SECONDS: Final = 15.0
#: A backfill (catching up from the changelog after a gap or a reconnect) running longer
#: than this means the worker's clients see changes late: not ready.
LISTENER_BACKFILL_SECONDS: Final = 10.0
#: A ZooKeeper connection SUSPENDED for less than this is still ready: a leader election
#: takes about a second, and SUSPENDED is not LOST. LOST is not ready at once.
COORDINATOR_GRACE_SECONDS: Final = 5.0
#: A worker reports every second; a report older than this makes the pod not ready.
REPORT_STALE_SECONDS: Final = 5.0
#: A worker whose last report is older than this is stuck (not live). gunicorn's own
#: ``timeout`` (30 s) replaces a worker whose whole loop blocks; this catches the rest
#: before the kubelet's failure threshold restarts the pod.
LIVENESS_SECONDS: Final = 20.0

#: Longest reason kept from an error message (a report stays a small file).
REASON_CHARS: Final = 200

JSON = Any


@dataclass(frozen=True, slots=True)
class DatabaseSeen:
    """The worker's database round trips (monotonic times; None: never)."""

    last_ok: float | None
    last_failure: float | None
    error: str = ""


@dataclass(frozen=True, slots=True)
class ListenerSeen:
    """The worker's LISTEN connection (``relay.stream.listener.ListenerStatus``)."""

    connected: bool
    connected_once: bool
    since: float
    backfill_started: float | None


@dataclass(frozen=True, slots=True)
class CoordinatorSeen:
    """The worker's coordinator: ``state`` is ``coordinator.base.State``'s value
    (``connected``, ``suspended``, ``lost``), ``since`` when it last changed."""

    state: str
    since: float
    kind: str = "zookeeper"


@dataclass(frozen=True, slots=True)
class Observation:
    """What one worker sees of itself at ``now``. None for a part it does not have (no
    database configured, resuming off)."""

    now: float
    draining: bool
    backend_loaded: bool
    database: DatabaseSeen | None
    listener: ListenerSeen | None
    coordinator: CoordinatorSeen | None


@dataclass(frozen=True, slots=True)
class Check:
    """One check's verdict; ``details`` are JSON values shown in ``/readyz``."""

    ok: bool
    reason: str
    details: Mapping[str, JSON] = field(default_factory=dict)

    def to_json(self) -> dict[str, JSON]:
        # The verdict last: details read from another worker's file cannot override it.
        return {**self.details, "ok": self.ok, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """One worker's verdicts at monotonic time ``at``."""

    pid: int
    at: float
    started: bool
    checks: Mapping[str, Check]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A pod-level answer: ``status`` and the HTTP status line that goes with it."""

    ok: bool
    status: str
    reason: str
    body: Mapping[str, JSON] = field(default_factory=dict)

    @property
    def http_status(self) -> str:
        return "200 OK" if self.ok else "503 Service Unavailable"


# -- one worker ------------------------------------------------------------------------------


def _age(now: float, then: float) -> float:
    return round(max(0.0, now - then), 3)


def check_draining(draining: bool) -> Check:
    return Check(False, "draining") if draining else Check(True, "serving")


def check_postgres(now: float, seen: DatabaseSeen | None) -> Check:
    if seen is None:
        return Check(True, "not configured", {"age_seconds": None})
    if seen.last_ok is None:
        reason = f"failing: {seen.error}" if seen.last_failure is not None else "no round trip yet"
        return Check(False, reason[:REASON_CHARS], {"age_seconds": None})
    age = _age(now, seen.last_ok)
    if seen.last_failure is not None and seen.last_failure > seen.last_ok:
        return Check(False, f"failing: {seen.error}"[:REASON_CHARS], {"age_seconds": age})
    if age > POSTGRES_STALE_SECONDS:
        return Check(False, f"no round trip for {age:.1f}s", {"age_seconds": age})
    return Check(True, "reachable", {"age_seconds": age})


def check_listener(now: float, seen: ListenerSeen | None) -> Check:
    if seen is None:
        return Check(True, "not configured", {"lag_seconds": None})
    if not seen.connected:
        down = _age(now, seen.since)
        if seen.connected_once:
            return Check(False, f"disconnected for {down:.1f}s", {"lag_seconds": None})
        return Check(False, f"not connected yet ({down:.1f}s)", {"lag_seconds": None})
    if seen.backfill_started is None:
        return Check(True, "connected", {"lag_seconds": 0.0})
    lag = _age(now, seen.backfill_started)
    if lag > LISTENER_BACKFILL_SECONDS:
        return Check(False, f"backfilling for {lag:.1f}s", {"lag_seconds": lag})
    return Check(True, "connected, catching up", {"lag_seconds": lag})


def check_coordinator(now: float, seen: CoordinatorSeen | None, required: bool) -> Check:
    if seen is None:
        return Check(True, "resuming off", {"required": required, "state": None})
    details = {"required": required, "state": seen.state, "kind": seen.kind}
    if seen.state == "connected":
        return Check(True, "connected", details)
    down = _age(now, seen.since)
    if seen.state == "suspended" and down < COORDINATOR_GRACE_SECONDS:
        return Check(True, f"suspended for {down:.1f}s (within the grace)", details)
    return Check(False, f"{seen.kind} {seen.state} for {down:.1f}s", details)


def judge(pid: int, seen: Observation, coordinator_required: bool) -> WorkerReport:
    """The worker's report from what it observed."""
    listener = seen.listener
    started = seen.backend_loaded and (listener is None or listener.connected_once)
    checks = {
        "draining": check_draining(seen.draining),
        "postgres": check_postgres(seen.now, seen.database),
        "listener": check_listener(seen.now, listener),
        "coordinator": check_coordinator(seen.now, seen.coordinator, coordinator_required),
    }
    return WorkerReport(pid, seen.now, started, checks)


def status_of(checks: Mapping[str, Check], coordinator_required: bool) -> str:
    """A worker's status from its checks."""
    if any(not checks[name].ok for name in CHECKS if name != "coordinator"):
        return NOT_READY
    if checks["coordinator"].ok:
        return READY
    return NOT_READY if coordinator_required else DEGRADED


# -- the pod -----------------------------------------------------------------------------------


def readiness(
    reports: Sequence[WorkerReport],
    now: float,
    coordinator_required: bool,
    started: Verdict | None = None,
) -> Verdict:
    """The pod's readiness: every worker's report, aggregated. Reports older than
    ``REPORT_STALE_SECONDS`` count as not ready; no report at all is not ready.

    ``started``, while the pod has not yet started (``startup``), makes it not ready
    whatever the reports say: the first worker to connect must not make the pod ready
    before its siblings have reported (a balancer would see ready, then not ready)."""
    if not reports:
        return Verdict(False, NOT_READY, "no worker has reported", _body(NOT_READY, {}, {}))
    if started is not None and not started.ok:
        verdict = readiness(reports, now, coordinator_required)
        reason = f"starting: {started.reason}"
        body = {**verdict.body, "status": NOT_READY, "reason": reason}
        return Verdict(False, NOT_READY, reason, body)
    ordered = sorted(reports, key=lambda r: r.pid)
    workers: dict[str, JSON] = {}
    statuses: list[str] = []
    reasons: list[str] = []
    for report in ordered:
        age = _age(now, report.at)
        if now - report.at > REPORT_STALE_SECONDS:
            worker_status = NOT_READY
            reasons.append(f"worker {report.pid}: no report for {age:.1f}s")
        else:
            worker_status = status_of(report.checks, coordinator_required)
            reasons.extend(
                f"worker {report.pid}: {name}: {report.checks[name].reason}"
                for name in CHECKS
                if not report.checks[name].ok
            )
        statuses.append(worker_status)
        workers[str(report.pid)] = {"status": worker_status, "age_seconds": age}
    if NOT_READY in statuses:
        status = NOT_READY
    elif DEGRADED in statuses:
        status = DEGRADED
    else:
        status = READY
    checks = {name: _merge(name, ordered, coordinator_required) for name in CHECKS}
    reason = "; ".join(reasons) if reasons else "every worker is ready"
    return Verdict(status != NOT_READY, status, reason, _body(status, checks, workers, reason))


def _merge(name: str, reports: Sequence[WorkerReport], required: bool) -> dict[str, JSON]:
    """One check over the workers: failed if any failed, with the first failure's reason
    and details (``lag_seconds``: the largest, null when any worker's is unknown)."""
    checks = [r.checks[name] for r in reports]
    failing = [(r.pid, c) for r, c in zip(reports, checks, strict=True) if not c.ok]
    if failing:
        pid, shown = failing[0]
        merged = {**shown.to_json(), "reason": f"worker {pid}: {shown.reason}"}
        merged["failing_workers"] = [p for p, _ in failing]
    else:
        merged = checks[0].to_json()
    if name == "listener":
        lags = [c.details.get("lag_seconds") for c in checks]
        numbers = [lag for lag in lags if isinstance(lag, (int, float))]
        merged["lag_seconds"] = max(numbers) if len(numbers) == len(lags) else None
    if name == "coordinator":
        merged["required"] = required
    return merged


def _body(
    status: str,
    checks: Mapping[str, JSON],
    workers: Mapping[str, JSON],
    reason: str = "no worker has reported",
) -> dict[str, JSON]:
    return {"status": status, "reason": reason, "checks": dict(checks), "workers": dict(workers)}


def liveness(reports: Sequence[WorkerReport], now: float) -> Verdict:
    """Live unless some worker has not reported for ``LIVENESS_SECONDS`` (its loop is
    stuck: a restart fixes that; a database that is down is not its business)."""
    stuck = [r for r in sorted(reports, key=lambda r: r.pid) if now - r.at > LIVENESS_SECONDS]
    if stuck:
        reason = "; ".join(
            f"worker {r.pid} has not reported for {_age(now, r.at):.1f}s" for r in stuck
        )
        return Verdict(False, "not live", reason)
    return Verdict(True, "live", "every worker's loop is running")


def startup(reports: Sequence[WorkerReport], expected_workers: int) -> Verdict:
    """Started once at least ``expected_workers`` workers (one at least) have started."""
    started = sum(1 for r in reports if r.started)
    wanted = max(1, expected_workers)
    if started >= wanted:
        return Verdict(True, "started", f"{started} of {wanted} workers started")
    return Verdict(False, "starting", f"{started} of {wanted} workers started")


# -- reports between workers --------------------------------------------------------------------


def encode(report: WorkerReport) -> bytes:
    return json.dumps(
        {
            "pid": report.pid,
            "at": report.at,
            "started": report.started,
            "checks": {
                name: {"ok": c.ok, "reason": c.reason, "details": dict(c.details)}
                for name, c in report.checks.items()
            },
        },
        separators=(",", ":"),
    ).encode()


def decode(data: bytes) -> WorkerReport:
    """A report written by ``encode``; ``ValueError`` for anything else."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, or absurdly deep
        raise ValueError(f"not a report: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("not a report: not an object")
    pid, at, started, checks = (raw.get(k) for k in ("pid", "at", "started", "checks"))
    if type(pid) is not int or pid <= 0:
        raise ValueError("not a report: bad pid")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
        raise ValueError("not a report: bad time")
    if type(started) is not bool or not isinstance(checks, dict):
        raise ValueError("not a report: bad fields")
    decoded: dict[str, Check] = {}
    for name in CHECKS:
        entry = checks.get(name)
        if not isinstance(entry, dict):
            raise ValueError(f"not a report: no {name} check")
        ok, reason, details = entry.get("ok"), entry.get("reason"), entry.get("details")
        if type(ok) is not bool or not isinstance(reason, str) or not isinstance(details, dict):
            raise ValueError(f"not a report: bad {name} check")
        decoded[name] = Check(ok, reason, details)
    return WorkerReport(pid, float(at), started, decoded)
