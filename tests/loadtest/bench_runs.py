"""Run records the bench harness tests build: one fanout run, one window run.

Must not: hold tests (pytest collects ``test_*`` modules only).
"""

from __future__ import annotations

from typing import Any

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
