"""Run records the bench harness tests build: one fanout run, one window run, one events
run (with a sustained rate), one presence run.

Must not: hold tests (pytest collects ``test_*`` modules only).
"""

from __future__ import annotations

from typing import Any

from loadtest.bench.events import EventsRun, Phase, SustainRun
from loadtest.bench.presence import PresenceRun
from loadtest.bench.runner import RunResult
from loadtest.bench.window import WindowRun


def fanout_run(
    workers: int, sessions_by_worker: list[int], cpu_by_worker: list[float]
) -> RunResult:
    sessions = sum(sessions_by_worker)
    return RunResult(
        mode="fanout",
        sessions=sessions,
        deflate=True,
        writes_planned=3,
        interval_s=0.5,
        ready=sessions,
        failed=0,
        ramp_s=1.0,
        subscribed=True,
        pss_before=100 * 2**20,
        pss_after=100 * 2**20 + sessions * 20 * 1024,
        rss_before=0,
        rss_after=0,
        writes=3,
        delivered=3 * sessions,
        all_ms=[20.0, 25.0, 30.0],
        first_ms=[1.0, 1.0, 1.0],
        received=[sessions] * 3,
        delivery_p50_ms=10.0,
        delivery_p99_ms=20.0,
        relay_cpu_s=sum(cpu_by_worker),
        generator_cpu_s=0.1,
        postgres_cpu_s=0.01,
        wall_s=2.0,
        other_cpu_share=0.0,
        steal_share=0.0,
        workers=workers,
        worker_pids=list(range(100, 100 + workers)),
        sessions_by_worker=sessions_by_worker,
        relay_cpu_s_by_worker=cpu_by_worker,
    )


def window_run(**changes: Any) -> WindowRun:
    run = WindowRun(
        tree="after",
        revision=None,
        window_kind="cursor",
        sessions=10,
        distinct=1,
        n=20,
        publication="books.latest",
        writes_planned=4,
        interval_s=0.5,
        workers=1,
        ready=10,
        writes=4,
        all_done=True,
        delivered=40,
        all_ms=[5.0, 6.0, 7.0, 8.0],
        received=[10] * 4,
        delivery_p50_ms=4.0,
        delivery_p99_ms=7.0,
        delivery_max_ms=8.0,
        relay_cpu_s=0.02,
        generator_cpu_s=0.01,
        postgres_cpu_s=0.01,
        wall_s=2.0,
        checked=10,
        ramp_s=1.0,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def phase(kind: str = "event", **changes: Any) -> Phase:
    """Three writes that reached all 10 sessions once each."""
    run = Phase(
        kind=kind,
        planned=3,
        interval_s=0.5,
        ready=10,
        writes=3,
        write_rate=2.0,
        all_done=True,
        delivered=30,
        all_ms=[5.0, 6.0, 7.0],
        received=[10] * 3,
        delivery_p50_ms=4.0,
        delivery_p99_ms=7.0,
        delivery_max_ms=7.0,
        relay_cpu_s=0.03,
        generator_cpu_s=0.015,
        writer_cpu_s=0.006,
        postgres_cpu_s=0.012,
        wall_s=1.5,
        other_cpu_share=0.0,
        steal_share=0.0,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def sustain_run(**changes: Any) -> SustainRun:
    """100 events/s for 1 s to 10 sessions, kept up, exact."""
    run = SustainRun(
        rate=100.0,
        seconds=1.0,
        sessions=10,
        phase=phase(planned=100, writes=100, all_ms=[3.0] * 100, received=[10] * 100),
        checked=10,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def events_run(**changes: Any) -> EventsRun:
    """10 sessions, 3 events and 3 renames, every view equal to the history."""
    run = EventsRun(
        tree="after",
        revision=None,
        sessions=10,
        workers=1,
        ready=10,
        events=phase("event"),
        rows=phase("rename", all_ms=[4.0, 5.0, 6.0]),
        history=3,
        max_held=3,
        checked=10,
        ramp_s=1.0,
        pss_before=100 * 2**20,
        pss_after=100 * 2**20 + 10 * 20 * 1024,
        sustain=[sustain_run()],
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def presence_run(**changes: Any) -> PresenceRun:
    """3 relays of 2 watchers, 40 joins and 40 leaves in 2 s, converged, crash converged."""
    run = PresenceRun(
        tree="after",
        revision=None,
        sessions=36,
        workers=1,
        relays=3,
        watchers=2,
        pool=30,
        rate=20.0,
        seconds=2.0,
        hold_s=0.2,
        topics=1,
        lease_s=5.0,
        ready=36,
        joins=40,
        leaves=40,
        started=40,
        churn_s=2.0,
        writes={
            "ddp_presence": {"ins": 40, "upd": 0, "del": 40},
            "ddp_presence_hold": {"ins": 40, "upd": 0, "del": 40},
            "ddp_presence_lease": {"ins": 0, "upd": 9, "del": 0},
            "ddp_pending": {"ins": 80, "upd": 0, "del": 80},
            "ddp_changelog": {"ins": 80, "upd": 0, "del": 0},
            "ddp_channel": {"ins": 0, "upd": 80, "del": 0},
        },
        writes_settled=True,
        changelog_rows=80,
        notifies=80,
        converged=True,
        converge_ms=10.0,
        checked=6,
        members_expected=6,
        members_db=6,
        crash_sessions=3,
        crash_held=3,
        crash_converged=True,
        crash_views_s=4.4,
        crash_db_s=4.5,
        relay_cpu_s=0.32,
        generator_cpu_s=0.1,
        postgres_cpu_s=0.1,
        wall_s=2.5,
        other_cpu_share=0.0,
        steal_share=0.0,
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run
