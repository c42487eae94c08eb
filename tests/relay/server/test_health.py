"""relay.server.health: each check, the pod's verdicts and the report format, against
brute-force models (hypothesis) and the cases an operator would ask about."""

from __future__ import annotations

import contextlib
import itertools
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.server import health
from relay.server.health import (
    CHECKS,
    COORDINATOR_GRACE_SECONDS,
    DEGRADED,
    LISTENER_BACKFILL_SECONDS,
    LIVENESS_SECONDS,
    NOT_READY,
    POSTGRES_STALE_SECONDS,
    READY,
    REPORT_STALE_SECONDS,
    Check,
    CoordinatorSeen,
    DatabaseSeen,
    ListenerSeen,
    Observation,
    WorkerReport,
)

NOW = 10_000.0
times = st.floats(min_value=NOW - 60, max_value=NOW, allow_nan=False)
maybe_times = st.none() | times

databases = st.none() | st.builds(DatabaseSeen, maybe_times, maybe_times, st.text(max_size=300))
listeners = st.none() | st.builds(ListenerSeen, st.booleans(), st.booleans(), times, maybe_times)
coordinators = st.none() | st.builds(
    CoordinatorSeen, st.sampled_from(["connected", "suspended", "lost"]), times
)
observations = st.builds(
    Observation,
    st.just(NOW),
    st.booleans(),
    st.booleans(),
    databases,
    listeners,
    coordinators,
)


# -- each check, against its model ----------------------------------------------------------------


@given(databases)
def test_postgres_is_ok_only_after_a_recent_round_trip_that_did_not_fail_since(
    seen: DatabaseSeen | None,
) -> None:
    check = health.check_postgres(NOW, seen)
    if seen is None:
        expected = True
    else:
        last_ok, failure = seen.last_ok, seen.last_failure
        expected = (
            last_ok is not None
            and (failure is None or failure <= last_ok)
            and NOW - last_ok <= POSTGRES_STALE_SECONDS
        )
    assert check.ok is expected
    assert len(check.reason) <= health.REASON_CHARS


@given(listeners)
def test_listener_is_ok_when_connected_and_not_stuck_in_a_backfill(
    seen: ListenerSeen | None,
) -> None:
    check = health.check_listener(NOW, seen)
    if seen is None:
        assert check.ok and check.details["lag_seconds"] is None
        return
    backfilling = seen.backfill_started
    expected = seen.connected and (
        backfilling is None or NOW - backfilling <= LISTENER_BACKFILL_SECONDS
    )
    assert check.ok is expected
    lag = check.details["lag_seconds"]
    if not seen.connected:
        assert lag is None
    elif backfilling is None:
        assert lag == 0.0
    else:
        assert lag == pytest.approx(NOW - backfilling, abs=1e-3)


@given(coordinators, st.booleans())
def test_coordinator_is_ok_when_connected_or_briefly_suspended(
    seen: CoordinatorSeen | None, required: bool
) -> None:
    check = health.check_coordinator(NOW, seen, required)
    expected = (
        seen is None
        or seen.state == "connected"
        or (seen.state == "suspended" and NOW - seen.since < COORDINATOR_GRACE_SECONDS)
    )
    assert check.ok is expected
    assert check.details["required"] is required


@given(observations, st.booleans())
def test_a_worker_has_started_once_its_backend_is_loaded_and_its_listener_connected(
    seen: Observation, required: bool
) -> None:
    report = health.judge(42, seen, required)
    assert report.pid == 42 and report.at == NOW
    assert list(report.checks) == list(CHECKS)
    assert report.started is (
        seen.backend_loaded and (seen.listener is None or seen.listener.connected_once)
    )
    assert report.checks["draining"].ok is (not seen.draining)


def test_the_reasons_say_what_is_wrong() -> None:
    down = health.check_postgres(NOW, DatabaseSeen(NOW - 3, NOW - 1, "OperationalError: boom"))
    assert down.reason == "failing: OperationalError: boom"
    assert health.check_postgres(NOW, DatabaseSeen(None, None)).reason == "no round trip yet"
    stale = health.check_postgres(NOW, DatabaseSeen(NOW - 20, None))
    assert stale.reason == "no round trip for 20.0s"
    lost = health.check_listener(NOW, ListenerSeen(False, True, NOW - 2.5, None))
    assert lost.reason == "disconnected for 2.5s"
    first = health.check_listener(NOW, ListenerSeen(False, False, NOW - 1, None))
    assert first.reason == "not connected yet (1.0s)"
    stuck = health.check_listener(NOW, ListenerSeen(True, True, NOW - 60, NOW - 12))
    assert stuck.reason == "backfilling for 12.0s"
    zk = health.check_coordinator(NOW, CoordinatorSeen("lost", NOW - 7), True)
    assert zk.reason == "zookeeper lost for 7.0s"


# -- the pod -------------------------------------------------------------------------------------


def _checks(oks: tuple[bool, ...], lags: tuple[float | None, ...] = ()) -> dict[str, Check]:
    checks = {
        name: Check(ok, "fine" if ok else f"{name} broken")
        for name, ok in zip(CHECKS, oks, strict=True)
    }
    lag = lags[0] if lags else 0.0
    checks["listener"] = Check(
        checks["listener"].ok, checks["listener"].reason, {"lag_seconds": lag}
    )
    return checks


@st.composite
def pods(draw: st.DrawFn) -> list[WorkerReport]:
    pids = draw(st.lists(st.integers(1, 99_999), unique=True, max_size=5))
    reports = []
    for pid in pids:
        oks = tuple(draw(st.lists(st.booleans(), min_size=4, max_size=4)))
        lag = draw(st.none() | st.floats(0, 100, allow_nan=False))
        at = draw(st.floats(NOW - 3 * LIVENESS_SECONDS, NOW, allow_nan=False))
        reports.append(WorkerReport(pid, at, draw(st.booleans()), _checks(oks, (lag,))))
    return reports


def model_status(reports: list[WorkerReport], required: bool) -> str:
    """Brute force: the worst worker, a stale one counting as not ready."""
    if not reports:
        return NOT_READY
    status = READY
    for report in reports:
        if NOW - report.at > REPORT_STALE_SECONDS:
            return NOT_READY
        for name, check in report.checks.items():
            if check.ok:
                continue
            if name == "coordinator" and not required:
                status = DEGRADED
            else:
                return NOT_READY
    return status


@given(pods(), st.booleans())
def test_the_pod_is_as_ready_as_its_worst_worker(
    reports: list[WorkerReport], required: bool
) -> None:
    verdict = health.readiness(reports, NOW, required)
    assert verdict.status == model_status(reports, required)
    assert verdict.ok is (verdict.status != NOT_READY)
    assert verdict.http_status == ("200 OK" if verdict.ok else "503 Service Unavailable")
    body = verdict.body
    assert body["status"] == verdict.status
    json.dumps(body)  # what /readyz sends
    if not reports:
        return
    assert set(body["workers"]) == {str(r.pid) for r in reports}
    for name in CHECKS:
        merged = body["checks"][name]
        failing = sorted(r.pid for r in reports if not r.checks[name].ok)
        assert merged["ok"] is (not failing)
        assert merged.get("failing_workers", []) == failing
    lags = [r.checks["listener"].details["lag_seconds"] for r in reports]
    expected_lag = None if None in lags else max(lags)
    assert body["checks"]["listener"]["lag_seconds"] == expected_lag
    assert body["checks"]["coordinator"]["required"] is required


@given(pods(), st.booleans(), st.randoms())
def test_the_order_in_which_reports_are_read_does_not_matter(
    reports: list[WorkerReport], required: bool, rnd: random.Random
) -> None:
    shuffled = list(reports)
    rnd.shuffle(shuffled)
    assert health.readiness(shuffled, NOW, required) == health.readiness(reports, NOW, required)


@given(pods(), st.booleans(), st.data())
def test_failing_a_check_never_makes_the_pod_readier(
    reports: list[WorkerReport], required: bool, data: st.DataObject
) -> None:
    if not reports:
        return
    rank = {READY: 0, DEGRADED: 1, NOT_READY: 2}
    before = health.readiness(reports, NOW, required).status
    index = data.draw(st.integers(0, len(reports) - 1))
    name = data.draw(st.sampled_from(CHECKS))
    worse = dict(reports[index].checks)
    worse[name] = Check(False, "broken now", worse[name].details)
    changed = list(reports)
    changed[index] = WorkerReport(reports[index].pid, reports[index].at, True, worse)
    after = health.readiness(changed, NOW, required).status
    assert rank[after] >= rank[before]


def test_degraded_only_for_a_coordinator_that_is_not_required() -> None:
    zk_down = [WorkerReport(1, NOW, True, _checks((True, True, True, False)))]
    assert health.readiness(zk_down, NOW, coordinator_required=False).status == DEGRADED
    assert health.readiness(zk_down, NOW, coordinator_required=False).ok
    assert health.readiness(zk_down, NOW, coordinator_required=True).status == NOT_READY
    pg_down = [WorkerReport(1, NOW, True, _checks((True, False, True, False)))]
    assert health.readiness(pg_down, NOW, coordinator_required=False).status == NOT_READY


@given(pods(), st.integers(1, 4))
def test_a_pod_that_has_not_started_is_not_ready_whatever_its_workers_say(
    reports: list[WorkerReport], expected: int
) -> None:
    """The first worker to connect does not make the pod ready before its siblings
    report (a balancer would see ready, then not ready, as a fresh pod's second worker
    reports "not connected yet")."""
    started = health.startup(reports, expected)
    verdict = health.readiness(reports, NOW, True, started)
    unstarted = health.readiness(reports, NOW, True)
    if started.ok:
        assert verdict == unstarted
    else:
        assert not verdict.ok and verdict.status == NOT_READY
        assert verdict.body["status"] == NOT_READY
        assert verdict.body["checks"] == unstarted.body["checks"]
        if reports:
            assert verdict.reason.startswith("starting: ")


def test_one_stale_or_draining_worker_makes_the_pod_not_ready() -> None:
    fine = WorkerReport(1, NOW, True, _checks((True,) * 4))
    stale = WorkerReport(2, NOW - REPORT_STALE_SECONDS - 0.5, True, _checks((True,) * 4))
    verdict = health.readiness([fine, stale], NOW, True)
    assert verdict.status == NOT_READY and "worker 2: no report for 5.5s" in verdict.reason
    draining = WorkerReport(3, NOW, True, _checks((False, True, True, True)))
    verdict = health.readiness([fine, draining], NOW, True)
    assert verdict.status == NOT_READY
    assert verdict.body["checks"]["draining"]["failing_workers"] == [3]
    assert verdict.body["checks"]["draining"]["reason"] == "worker 3: draining broken"
    assert health.readiness([], NOW, True).status == NOT_READY


@given(pods())
def test_live_unless_a_worker_stopped_reporting(reports: list[WorkerReport]) -> None:
    verdict = health.liveness(reports, NOW)
    assert verdict.ok is all(NOW - r.at <= LIVENESS_SECONDS for r in reports)
    # What a restart cannot fix does not matter: every check may fail.
    failing = [WorkerReport(r.pid, r.at, r.started, _checks((False,) * 4)) for r in reports]
    assert health.liveness(failing, NOW).ok is verdict.ok


@given(pods(), st.integers(-2, 8))
def test_started_once_every_expected_worker_has(reports: list[WorkerReport], expected: int) -> None:
    verdict = health.startup(reports, expected)
    assert verdict.ok is (sum(r.started for r in reports) >= max(1, expected))


# -- the format between workers ------------------------------------------------------------------

json_values = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)


@given(
    st.integers(1, 2**22),
    st.floats(0, 1e9, allow_nan=False),
    st.booleans(),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
)
def test_a_report_survives_the_trip_through_a_file(
    pid: int, at: float, started: bool, oks: list[bool], details: dict[str, object]
) -> None:
    checks = {name: Check(ok, f"r{name}", details) for name, ok in zip(CHECKS, oks, strict=True)}
    report = WorkerReport(pid, at, started, checks)
    assert health.decode(health.encode(report)) == report


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_anything_else_is_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):  # anything else fails the test
        health.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b'{"pid": 1, "at": NaN, "started": true, "checks": {}}',
        b'{"pid": true, "at": 1, "started": true, "checks": {}}',
        b'{"pid": -4, "at": 1, "started": true, "checks": {}}',
        b'{"pid": 4, "at": 1, "started": 1, "checks": {}}',
        b'{"pid": 4, "at": 1, "started": true, "checks": {"draining": []}}',
        b"\xff\xfe",
        b"",
    ],
)
def test_hostile_or_broken_reports_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        health.decode(data)


def test_every_combination_of_worker_states_has_one_status() -> None:
    # Exhaustive over one worker: 16 check combinations x 2 coordinator settings.
    for oks in itertools.product([True, False], repeat=4):
        for required in (True, False):
            report = WorkerReport(1, NOW, True, _checks(oks))
            verdict = health.readiness([report], NOW, required)
            assert verdict.status == model_status([report], required)
