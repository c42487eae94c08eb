"""``loadtest.bench.drain`` without a server: how the generator's report fills a run, the
throughputs and what makes a run exact or within the 5 s target, when the drain is over,
reading the relays' outcome counters from Prometheus multiprocess files (the drained
relay's workers are gone by then), the paced writer, and the printed lines.

The real run is in tests/e2e/test_bench_drain_smoke.py.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from loadtest.bench import cli, drain
from loadtest.bench.drain import DrainRun
from loadtest.bench.stack import BenchError
from loadtest.bench.writer import Writer

SIGTERM_MS = 1_000_000.0


def _report(**overrides: Any) -> dict[str, Any]:
    """A generator ``report`` of 100 sessions all resumed (times in epoch ms)."""
    report: dict[str, Any] = {
        "event": "report",
        "sessions": 100,
        "ready": 100,
        "relays": 3,
        "live": 0,
        "reconnecting": 0,
        "resumed": 100,
        "new": 0,
        "failed": 0,
        "lost": 0,
        "closed": 100,
        "lostBeforeArm": 0,
        "closeCodes": {"1001": 100},
        "closeReasons": {"Relay shutting down": 100},
        "firstClose": SIGTERM_MS + 50,
        "lastClose": SIGTERM_MS + 250,
        "firstReconnect": SIGTERM_MS + 55,
        "lastResumed": SIGTERM_MS + 2055,
        "resumedByRelay": [0, 50, 50],
        "retries": 0,
        "gap": {"count": 100, "p50": 300.0, "p90": 900.0, "p99": 1800.0, "max": 2000.0},
        "handshake": {"count": 100, "p50": 250.0, "p99": 1700.0},
        "writes": 40,
        "delivered": 4000,
        "missing": 0,
        "merged": 0,
        "duplicates": 0,
        "outOfOrder": 0,
        "foreign": 0,
        "exactSessions": 100,
        "receivedPerWrite": [100] * 40,
        "views": {"checked": 100, "mismatched": 0, "examples": []},
        "errors": {},
    }
    report.update(overrides)
    return report


def _run(**overrides: Any) -> DrainRun:
    run = DrainRun(
        tree="after",
        revision=None,
        sessions=100,
        workers=1,
        relays=3,
        pre_writes=3,
        interval_s=0.1,
        graceful_timeout_s=30,
    )
    drain.take_report(run, _report(**overrides), SIGTERM_MS)
    run.a_exit_ms = 1500.0
    run.a_outcomes = {"parked": 100}
    return run


# -- the report and the figures -------------------------------------------------------------------


def test_report_fills_the_run_relative_to_the_sigterm() -> None:
    run = _run()
    assert (run.ready, run.failed, run.closed, run.resumed, run.not_resumed) == (
        100,
        0,
        100,
        100,
        0,
    )
    assert (run.first_close_ms, run.last_close_ms) == (50.0, 250.0)
    assert (run.first_reconnect_ms, run.last_resumed_ms) == (55.0, 2055.0)
    assert run.close_codes == {"1001": 100}
    assert run.resumed_by_relay == [0, 50, 50]
    assert (run.gap_p50_ms, run.gap_p99_ms, run.handshake_p50_ms) == (300.0, 1800.0, 250.0)
    assert run.views_mismatched == 0 and run.exact_sessions == 100


def test_throughputs() -> None:
    run = _run()
    assert run.park_s == pytest.approx(0.25)
    assert run.parking_rate == pytest.approx(400.0)  # 100 closed in 0.25 s
    assert run.parked == 100
    assert run.parks_done_rate == pytest.approx(100 / 1.5)
    assert run.resume_span_s == pytest.approx(2.0)
    assert run.resume_rate == pytest.approx(50.0)
    summary = run.summary()
    assert summary["resume_span_s"] == pytest.approx(2.0)
    assert summary["a_exit_s"] == pytest.approx(1.5)


def test_unknown_times_stay_unknown() -> None:
    run = _run(firstClose=None, lastClose=None, firstReconnect=None, lastResumed=None, resumed=0)
    assert math.isnan(run.park_s) and math.isnan(run.parking_rate)
    assert math.isnan(run.resume_span_s) and math.isnan(run.resume_rate)
    assert not run.exact and not run.within_target


def test_every_session_resumed_exactly_within_the_target() -> None:
    run = _run()
    assert run.exact and run.within_target and run.complete


def test_merged_writes_keep_a_run_exact() -> None:
    # A resume sends each book's latest title once: the view is exact, the figure reported.
    run = _run(merged=7)
    assert run.exact


@pytest.mark.parametrize(
    "overrides",
    [
        {"resumed": 99, "new": 1},  # one session got a new id: not resumed
        {"resumed": 99, "failed": 1},  # one could not reconnect
        {"missing": 1},
        {"duplicates": 1},
        {"outOfOrder": 1},
        {"views": {"checked": 100, "mismatched": 1, "examples": []}},
        {"ready": 99},
    ],
)
def test_anything_short_of_every_session_exactly_is_not_exact(overrides: dict[str, Any]) -> None:
    run = _run(**overrides)
    assert not run.exact and not run.within_target and not run.complete


def test_exact_but_slow_misses_the_target() -> None:
    run = _run(lastResumed=SIGTERM_MS + 55 + 5001)
    assert run.exact and not run.within_target


def test_a_dead_survivor_is_not_complete() -> None:
    run = _run()
    run.relay_alive = False
    assert run.exact and not run.complete


def test_failed_reconnects_are_told_from_failed_ramps() -> None:
    run = _run(ready=98, failed=5, resumed=95)
    assert run.failed == 2  # never subscribed on A
    assert run.reconnect_failed == 3


# -- when the drain is over -------------------------------------------------------------------


def _status(**counts: int) -> dict[str, Any]:
    status = {"live": 0, "reconnecting": 0, "resumed": 0, "new": 0, "failed": 0, "lost": 0}
    status.update(counts)
    return status


def test_settled_when_every_session_is_decided() -> None:
    assert drain.settled(_status(resumed=97, new=1, failed=1, lost=1), 100)
    assert not drain.settled(_status(resumed=99, reconnecting=1), 100)
    assert not drain.settled(_status(resumed=99, live=1), 100)  # A has not closed it yet
    assert not drain.settled(_status(resumed=99), 100)


def test_max_writes_covers_the_wait_and_the_tail() -> None:
    limit = drain.max_writes(3, 0.1, 60.0)
    assert limit >= 3 + (60.0 + drain.TAIL_S) / 0.1


# -- the relays' counters -----------------------------------------------------------------------


def _write(path: Path, samples: list[tuple[str, str, dict[str, str], float]]) -> None:
    untyped: Any = MmapedDict  # prometheus_client has no annotations here
    db = untyped(str(path))
    try:
        for metric, name, labels, value in samples:
            key = mmap_key(metric, name, list(labels), list(labels.values()), "help")
            db.write_value(key, value, 0.0)
    finally:
        db.close()


def test_outcomes_are_summed_over_every_worker_file_gone_or_not(tmp_path: Path) -> None:
    resumes = "ddp_relay_resumes"
    _write(
        tmp_path / "counter_101.db",
        [
            (resumes, drain.RESUMES, {"outcome": "parked"}, 60.0),
            (resumes, drain.RESUMES, {"outcome": "park_failed"}, 1.0),
            ("ddp_relay_disconnects", drain.DISCONNECTS, {"reason": "shutdown"}, 61.0),
        ],
    )
    _write(tmp_path / "counter_102.db", [(resumes, drain.RESUMES, {"outcome": "parked"}, 39.0)])
    _write(
        tmp_path / "histogram_102.db",
        [
            ("ddp_relay_resume_seconds", drain.RESUME_SECONDS_SUM, {}, 2.0),
            ("ddp_relay_resume_seconds", drain.RESUME_SECONDS_BUCKET, {"le": "0.25"}, 5.0),
            ("ddp_relay_resume_seconds", drain.RESUME_SECONDS_BUCKET, {"le": "0.5"}, 3.0),
        ],
    )
    outcomes = drain.counts(drain.labelled(tmp_path, drain.RESUMES, "outcome"))
    assert outcomes == {"park_failed": 1, "parked": 99}
    assert drain.counts(drain.labelled(tmp_path, drain.DISCONNECTS, "reason")) == {"shutdown": 61}
    sums = drain.labelled(tmp_path, drain.RESUME_SECONDS_SUM, "")
    n = drain.labelled(tmp_path, drain.RESUME_SECONDS_BUCKET, "le")  # per bucket: summed
    assert drain.mean_ms(sums.values(), n.values()) == pytest.approx(250.0)


def test_no_files_no_counts(tmp_path: Path) -> None:
    assert drain.labelled(tmp_path, drain.RESUMES, "outcome") == {}
    assert math.isnan(drain.mean_ms([], []))


def test_merge_counts() -> None:
    merged = drain.merge_counts([{"resumed": 3, "not_parked": 1}, {"resumed": 2}])
    assert merged == {"not_parked": 1, "resumed": 5}
    assert drain.counts({"a": 0.2, "b": 2.6}) == {"b": 3}


# -- the paced writer ---------------------------------------------------------------------------


class _FakeWriter:
    def __init__(self, fail_at: int | None = None) -> None:
        self.commits: list[float] = []
        self.titles: list[tuple[str, int]] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def write(self, title: str, index: int) -> float:
        if index == self.fail_at:
            raise RuntimeError("gone")
        with self.lock:
            self.titles.append((title, index))
            self.commits.append(time.time())
        return self.commits[-1]


def test_paced_writer_continues_the_numbering_until_stopped() -> None:
    fake = _FakeWriter()
    paced = drain.PacedWriter(cast(Writer, fake), "p ", 3, 0.01, 1000)
    deadline = time.monotonic() + 5
    while len(fake.titles) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    total = paced.stop()
    assert total == len(fake.titles) >= 5
    assert [i for _, i in fake.titles] == list(range(3, 3 + total))
    assert fake.titles[0] == ("p 3", 3)


def test_paced_writer_stops_at_its_limit() -> None:
    fake = _FakeWriter()
    paced = drain.PacedWriter(cast(Writer, fake), "p ", 0, 0.0, 4)
    deadline = time.monotonic() + 5
    while len(fake.titles) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert paced.stop() == 4


def test_paced_writer_reports_its_failure() -> None:
    fake = _FakeWriter(fail_at=1)
    paced = drain.PacedWriter(cast(Writer, fake), "p ", 0, 0.0, 10)
    time.sleep(0.1)
    with pytest.raises(BenchError, match="writer failed"):
        paced.stop()


# -- what is printed ----------------------------------------------------------------------------


def test_table_has_a_row_per_run_and_the_medians() -> None:
    runs = [_run(), _run(lastResumed=SIGTERM_MS + 55 + 6000, new=1, resumed=99)]
    runs[1].target_outcomes = {"resumed": 99, "not_parked": 1}
    lines = drain.table(runs)
    text = "\n".join(lines)
    assert "| 1 | 0.25 s | 400/s |" in text
    assert "| yes |" in text and "| NO |" in text
    assert any(line.startswith("| median |") for line in lines)
    assert "not_parked" in text
    assert "5 s of the first reconnect" in text


def test_lines_survive_unknown_figures() -> None:
    run = _run(firstClose=None, lastClose=None, firstReconnect=None, lastResumed=None, resumed=0)
    run.a_exit_ms = math.nan
    text = "\n".join(drain.run_lines(run) + drain.table([run]))
    assert "n/a" in text


def test_the_command_s_defaults_are_the_issue_s() -> None:
    args = cli.build_parser().parse_args(["drain"])
    assert (args.sessions, args.relays, args.workers) == ([5000], 3, 1)
    assert (args.interval, args.target, args.reconnect_spread) == (0.1, 5.0, 0.0)
    assert args.graceful_timeout == 30  # the relay's own default: the parks must fit in it
