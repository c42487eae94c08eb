"""relay.server.readiness: reports shared through the master's directory, dead workers'
ignored, broken files survived, and the reporter's answers for the pod."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

from relay.server import health, readiness
from relay.server.health import (
    REPORT_STALE_SECONDS,
    Check,
    CoordinatorSeen,
    ListenerSeen,
    Observation,
    WorkerReport,
)
from relay.server.readiness import Reporter, RoundTrips, Since


def report(pid: int, at: float, ok: bool = True, started: bool = True) -> WorkerReport:
    checks = {name: Check(ok, "fine" if ok else "broken") for name in health.CHECKS}
    return WorkerReport(pid, at, started, checks)


@pytest.fixture
def other_worker() -> Iterator[int]:
    """The pid of a process that exists while the test runs (a stand-in worker)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reports_of_live_processes_are_read_back(tmp_path: Path, other_worker: int) -> None:
    now = time.monotonic()
    readiness.write_report(str(tmp_path), report(other_worker, now))
    readiness.write_report(str(tmp_path), report(os.getpid(), now))
    assert readiness.read_reports(str(tmp_path), exclude=os.getpid()) == [report(other_worker, now)]
    assert len(readiness.read_reports(str(tmp_path))) == 2
    assert not list(tmp_path.glob(".*.tmp"))  # written aside, then renamed
    readiness.forget(str(tmp_path), other_worker)
    readiness.forget(str(tmp_path), other_worker)  # twice is fine (child_exit after a crash)
    assert readiness.read_reports(str(tmp_path), exclude=os.getpid()) == []


def test_dead_workers_broken_files_and_strangers_are_ignored(
    tmp_path: Path, other_worker: int
) -> None:
    now = time.monotonic()
    readiness.write_report(str(tmp_path), report(dead_pid(), now, ok=False))
    (tmp_path / f"{other_worker}.json").write_bytes(b"\xff not json")
    (tmp_path / "notes.json").write_text("{}")
    (tmp_path / "0.json").write_text("{}")
    assert readiness.read_reports(str(tmp_path)) == []
    # A file named for one pid claiming another is not that worker's report.
    (tmp_path / f"{other_worker}.json").write_bytes(health.encode(report(os.getpid(), now)))
    assert readiness.read_reports(str(tmp_path)) == []
    assert readiness.read_reports(str(tmp_path / "missing")) == []


def test_the_expected_worker_count(tmp_path: Path) -> None:
    assert readiness.expected_workers(str(tmp_path)) == 1  # the master did not say
    readiness.set_expected_workers(str(tmp_path), 4)
    assert readiness.expected_workers(str(tmp_path)) == 4
    (tmp_path / readiness.WORKERS_FILE).write_text("many")
    assert readiness.expected_workers(str(tmp_path)) == 1


def test_the_master_directory_is_new_and_removed() -> None:
    first, second = readiness.make_directory(), readiness.make_directory()
    try:
        assert first != second and os.path.isdir(first)
        assert oct(os.stat(first).st_mode & 0o777) == "0o700"
    finally:
        readiness.remove_directory(first)
        readiness.remove_directory(second)
    assert not os.path.exists(first)


class Worker:
    """What a node tells its reporter, as plain attributes."""

    def __init__(self) -> None:
        self.draining = False
        self.listener = ListenerSeen(True, True, 0.0, None)
        self.coordinator = CoordinatorSeen("connected", 0.0)

    def observe(self, now: float) -> Observation:
        return Observation(now, self.draining, True, None, self.listener, self.coordinator)


def test_the_reporter_answers_for_every_worker(tmp_path: Path, other_worker: int) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("ready", "test", ["check"], registry=registry)
    worker = Worker()
    reporter = Reporter(worker.observe, True, gauge, str(tmp_path))
    readiness.set_expected_workers(str(tmp_path), 2)
    # The other worker has not reported: the pod has not started, so it is not ready
    # even though this worker is (no ready-then-not-ready flap at a pod's start).
    assert not reporter.startup().ok
    verdict = reporter.readiness()
    assert verdict.status == "not ready" and verdict.reason.startswith("starting: 1 of 2")
    readiness.write_report(str(tmp_path), report(other_worker, time.monotonic()))
    assert reporter.startup().ok
    assert reporter.readiness().status == "ready"
    # Once started, a worker being replaced does not pull the pod out of rotation.
    readiness.forget(str(tmp_path), other_worker)
    assert reporter.readiness().status == "ready"
    readiness.write_report(str(tmp_path), report(other_worker, time.monotonic()))
    # The other worker fails a check: the pod is not ready, whoever is asked.
    readiness.write_report(str(tmp_path), report(other_worker, time.monotonic(), ok=False))
    verdict = reporter.readiness()
    assert verdict.status == "not ready" and f"worker {other_worker}" in verdict.reason
    # Its report goes stale (its loop stopped): not ready, and later not live.
    stale = time.monotonic() - REPORT_STALE_SECONDS - 1
    readiness.write_report(str(tmp_path), report(other_worker, stale))
    assert reporter.readiness().status == "not ready"
    assert reporter.liveness().ok
    readiness.write_report(str(tmp_path), report(other_worker, stale - health.LIVENESS_SECONDS))
    assert not reporter.liveness().ok
    # This worker publishes its own report and gauge.
    worker.coordinator = CoordinatorSeen("lost", 0.0)
    own = reporter.publish()
    assert readiness.read_reports(str(tmp_path), exclude=other_worker) == [own]
    assert registry.get_sample_value("ready", {"check": "coordinator"}) == 0
    assert registry.get_sample_value("ready", {"check": "listener"}) == 1


def test_a_reporter_without_a_directory_speaks_for_itself(tmp_path: Path) -> None:
    worker = Worker()
    reporter = Reporter(worker.observe, False)
    worker.coordinator = CoordinatorSeen("lost", 0.0)
    verdict = reporter.readiness()
    assert verdict.status == "degraded" and verdict.ok
    assert reporter.startup().ok
    worker.draining = True
    assert reporter.readiness().status == "not ready"
    reporter.publish()  # no gauge, no directory: nothing to write, nothing fails


def test_an_unwritable_directory_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = Reporter(Worker().observe, True, directory=str(tmp_path / "gone"))
    reporter.publish()
    assert "cannot write the health report" in caplog.text


def test_round_trips_keep_the_first_line_of_the_error() -> None:
    trips = RoundTrips()
    assert trips.seen() == health.DatabaseSeen(None, None, "")
    trips.failed(OSError("connection refused\nDETAIL: more"))
    assert trips.seen().error == "OSError: connection refused"
    assert trips.seen().last_failure is not None
    trips.failed(RuntimeError("x" * 1000))
    assert len(trips.error) == health.REASON_CHARS
    trips.succeeded()
    assert health.check_postgres(time.monotonic(), trips.seen()).ok


def test_since_tracks_when_a_value_changed() -> None:
    since = Since()
    assert since.seen("connected", 1.0) == 1.0
    assert since.seen("connected", 5.0) == 1.0
    assert since.seen("suspended", 6.0) == 6.0
    assert since.seen("suspended", 9.0) == 6.0


def test_answering_a_probe_refreshes_a_report_whose_verdict_changed(tmp_path: Path) -> None:
    worker = Worker()
    worker.listener = ListenerSeen(False, False, 0.0, None)
    reporter = Reporter(worker.observe, True, directory=str(tmp_path))
    reporter.publish()  # as at the node's start: not connected yet
    (written,) = readiness.read_reports(str(tmp_path))
    assert not written.checks["listener"].ok
    worker.listener = ListenerSeen(True, True, 0.0, None)
    # Well within a reporting interval: the file must not keep saying what is no longer
    # true, or another worker would answer for this one from it.
    assert reporter.readiness().ok
    (written,) = readiness.read_reports(str(tmp_path))
    assert written.checks["listener"].ok and written.started
