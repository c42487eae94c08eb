"""A worker's health reporter, and how the workers of one relay see each other's reports.

Layer: runtime (gevent). Once a second (``REPORT_SECONDS``) the reporter asks its node what
it observes (memory reads only), judges it (``relay.server.health``, pure), sets the
``ddp_relay_ready{check}`` gauge and writes the report to ``<directory>/<pid>.json``
(written aside, then renamed: a reader never sees half a file). ``/readyz``, ``/livez``
and ``/startupz`` are answered by whichever worker gunicorn hands the request to: it
judges itself afresh and reads the other workers' files, so no request does database
work and one worker's answer covers the pod.

The directory belongs to the gunicorn master (``relay.server.gunicorn_conf``): it is made
at start, holds the expected worker count (``workers``), and loses a worker's file when the
master reaps that worker. A file whose process no longer exists is ignored anyway. Without
a directory (the app served by something else than ``gunicorn_conf``) a worker reports on
itself only.

Must not: touch the database, the network or the coordinator (the node's observations
are what they already know), or judge anything itself (``relay.server.health`` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.server import health
from relay.server.health import DatabaseSeen, Observation, Verdict, WorkerReport
from relay.server.periodic import Periodic

if TYPE_CHECKING:
    from prometheus_client import Gauge

log = logging.getLogger(__name__)

#: Seconds between two reports of a worker.
REPORT_SECONDS = 1.0
#: A probe answered by a worker also refreshes its file: at once when a verdict changed
#: since the last report, else at most this often. The other workers then judge it by
#: what it answered, not by what it saw up to a second ago.
REFRESH_SECONDS = 0.25
#: Largest report file read (they are a few hundred bytes).
MAX_REPORT_BYTES = 65_536
#: The file, in the directory, holding the number of workers the master runs.
WORKERS_FILE = "workers"
_SUFFIX = ".json"


class RoundTrips:
    """The outcomes of a worker's database round trips (its keepalive rounds)."""

    __slots__ = ("error", "last_failure", "last_ok")

    def __init__(self) -> None:
        self.last_ok: float | None = None
        self.last_failure: float | None = None
        self.error = ""

    def succeeded(self) -> None:
        self.last_ok = time.monotonic()

    def failed(self, exc: BaseException) -> None:
        self.last_failure = time.monotonic()
        lines = str(exc).strip().splitlines()
        self.error = f"{type(exc).__name__}: {lines[0] if lines else ''}"[: health.REASON_CHARS]

    def seen(self) -> DatabaseSeen:
        return DatabaseSeen(self.last_ok, self.last_failure, self.error)


class Since:
    """When a value last changed, as seen by whoever polls it (monotonic)."""

    __slots__ = ("_since", "_value")

    def __init__(self) -> None:
        self._value: str | None = None
        self._since = 0.0

    def seen(self, value: str, now: float) -> float:
        if value != self._value:
            self._value, self._since = value, now
        return self._since


class Reporter(Periodic):
    """Reports the worker's health every ``interval`` seconds and answers for the pod."""

    __slots__ = (
        "_coordinator_required",
        "_gauge",
        "_last",
        "_observe",
        "_pod_started",
        "directory",
    )

    def __init__(
        self,
        observe: Callable[[float], Observation],
        coordinator_required: bool,
        gauge: Gauge | None = None,
        directory: str = "",
        interval: float = REPORT_SECONDS,
    ) -> None:
        super().__init__(interval)
        self._observe = observe
        self._coordinator_required = coordinator_required
        self._gauge = gauge
        self.directory = directory
        self._last: WorkerReport | None = None
        self._pod_started = False

    def own(self) -> WorkerReport:
        """This worker's report, judged now."""
        return health.judge(
            os.getpid(), self._observe(time.monotonic()), self._coordinator_required
        )

    def publish(self, report: WorkerReport | None = None) -> WorkerReport:
        """Judge this worker now (or take ``report``, just judged), and tell the gauge and
        the other workers."""
        report = self.own() if report is None else report
        self._last = report
        if self._gauge is not None:
            for name in health.CHECKS:
                self._gauge.labels(check=name).set(1 if report.checks[name].ok else 0)
        if self.directory:
            try:
                write_report(self.directory, report)
            except OSError as exc:
                # The others then see this worker's report go stale: not ready, as it
                # should be when its state cannot be shared.
                log.warning("cannot write the health report: %s", exc)
        return report

    def run_round(self) -> None:
        self.publish()

    def reports(self) -> list[WorkerReport]:
        """This worker's report and the other live workers'."""
        own = self.own()
        last = self._last
        if last is None or own.at - last.at >= REFRESH_SECONDS or _verdicts(own) != _verdicts(last):
            self.publish(own)
        if not self.directory:
            return [own]
        return [own, *read_reports(self.directory, exclude=own.pid)]

    def readiness(self) -> Verdict:
        reports = self.reports()
        started = None
        if not self._pod_started:
            # Until this worker has once seen every worker started; after that a worker
            # being replaced does not pull the pod out of rotation (its absence is not a
            # failure, and its successor's first report is judged like any other).
            started = health.startup(reports, self._expected())
            self._pod_started = started.ok
        return health.readiness(reports, time.monotonic(), self._coordinator_required, started)

    def liveness(self) -> Verdict:
        return health.liveness(self.reports(), time.monotonic())

    def startup(self) -> Verdict:
        return health.startup(self.reports(), self._expected())

    def _expected(self) -> int:
        return expected_workers(self.directory) if self.directory else 1


def _verdicts(report: WorkerReport) -> tuple[bool, ...]:
    return (report.started, *(check.ok for check in report.checks.values()))


# -- the directory ------------------------------------------------------------------------------


def write_report(directory: str, report: WorkerReport) -> None:
    path = os.path.join(directory, f"{report.pid}{_SUFFIX}")
    aside = os.path.join(directory, f".{report.pid}.tmp")
    with open(aside, "wb") as f:
        f.write(health.encode(report))
    os.replace(aside, path)


def read_reports(directory: str, exclude: int = 0) -> list[WorkerReport]:
    """The reports in ``directory`` of processes that exist, but ``exclude``'s."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        log.warning("cannot read the health reports: %s", exc)
        return []
    for entry in entries:
        stem, suffix = entry.name[: -len(_SUFFIX)], entry.name[-len(_SUFFIX) :]
        if suffix != _SUFFIX or not stem.isdigit() or int(stem) in (0, exclude):
            continue
        if not process_exists(int(stem)):
            continue
        try:
            with open(entry.path, "rb") as f:
                report = health.decode(f.read(MAX_REPORT_BYTES))
        except FileNotFoundError:
            continue  # its worker was reaped meanwhile
        except (OSError, ValueError) as exc:
            log.warning("ignoring the health report %s: %s", entry.name, exc)
            continue
        if report.pid == int(stem):
            found.append(report)
    return found


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def make_directory() -> str:
    """A new, private directory for one gunicorn master's workers."""
    return tempfile.mkdtemp(prefix="ddp-relay-health-")


def set_expected_workers(directory: str, count: int) -> None:
    aside = os.path.join(directory, f".{WORKERS_FILE}.tmp")
    with open(aside, "w") as f:
        f.write(str(count))
    os.replace(aside, os.path.join(directory, WORKERS_FILE))


def expected_workers(directory: str) -> int:
    """The worker count the master runs (1 when it did not say)."""
    try:
        with open(os.path.join(directory, WORKERS_FILE)) as f:
            return max(1, int(f.read(32)))
    except (OSError, ValueError):
        return 1


def forget(directory: str, pid: int) -> None:
    """Drop a dead worker's report (the master's ``child_exit``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, f"{pid}{_SUFFIX}"))


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
