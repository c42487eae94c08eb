"""``python -m loadtest.bench`` without a server: ``--workers`` parsing, the aggregation of
per-worker figures, the result tables, and how ``stack.Relay`` reads each worker's
sessions from the Prometheus multiprocess files and tells whether every worker lives.

The real runs are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from loadtest.bench import cli
from loadtest.bench.stack import Relay
from tests.loadtest.bench_runs import fanout_run

#: The fan-out/latency header as docs/benchmarks.md and earlier runs have it (one worker).
ONE_WORKER_HEADER = (
    "| sessions | reaches all N p50 / p99 | delivery p50 / p99 | deliveries/s per write (p50) "
    "| deliveries per relay CPU-second | PSS per idle session | lost | dup "
    "| relay CPU per write | CPU relay / generator / postgres |"
)

# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fanout", "latency", "memory", "all"])
def test_workers_defaults_to_one(mode: str) -> None:
    assert cli.build_parser().parse_args([mode]).workers == 1


@pytest.mark.parametrize("mode", ["fanout", "latency", "memory", "all"])
def test_workers_option(mode: str) -> None:
    assert cli.build_parser().parse_args([mode, "--workers", "2"]).workers == 2


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_workers_must_be_a_positive_integer(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["fanout", "--workers", value])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["overhead", "check"])
def test_workers_is_not_an_option_of_modes_with_their_own_relay(mode: str) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([mode, "--workers", "2"])


def test_help_says_profile_covers_every_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fanout", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers" in text
    assert "one py-spy and one output file per worker" in text


# -- aggregation and tables -------------------------------------------------------------------


def test_busiest_worker_shares() -> None:
    run = fanout_run(2, [60, 40], [0.3, 0.1])
    assert run.busiest_worker_sessions_share == pytest.approx(0.6)
    assert run.busiest_worker_cpu_share == pytest.approx(0.75)
    unknown = fanout_run(2, [], [])
    assert math.isnan(unknown.busiest_worker_sessions_share)
    assert math.isnan(unknown.busiest_worker_cpu_share)


def test_aggregate_sums_are_taken_over_the_workers() -> None:
    agg = cli.aggregate([fanout_run(2, [60, 40], [0.3, 0.1]), fanout_run(2, [50, 50], [0.2, 0.2])])
    assert agg["workers"] == 2
    assert agg["busiest_worker_sessions_share"] == pytest.approx(0.55)
    assert agg["busiest_worker_cpu_share"] == pytest.approx(0.625)
    assert agg["relay_cpu_per_write_ms"] == pytest.approx(400 / 3)
    assert agg["memory_per_session_bytes"] == pytest.approx(20 * 1024)


def _table(rows: list[dict[str, Any]], writes: bool, capsys: pytest.CaptureFixture[str]) -> str:
    cli.print_table("title", rows, writes=writes)
    return capsys.readouterr().out


def test_one_worker_table_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    out = _table([cli.aggregate([fanout_run(1, [100], [0.3])])], True, capsys)
    lines = out.strip().splitlines()
    assert lines[:3] == ["title", ONE_WORKER_HEADER, "|---:" * 10 + "|"]
    assert "workers" not in out and "busiest" not in out
    memory = _table([cli.aggregate([fanout_run(1, [100], [])])], False, capsys)
    assert memory.strip().splitlines()[1:] == [
        "| sessions | PSS per idle subscribed session | failed |",
        "|---:|---:|---:|",
        "| 100 | 20.0 KiB | 0 |",
    ]


def test_several_workers_table_says_how_many(capsys: pytest.CaptureFixture[str]) -> None:
    out = _table([cli.aggregate([fanout_run(2, [60, 40], [0.3, 0.1])])], True, capsys)
    _, note, header, rule, row = out.strip().splitlines()
    assert note.startswith("relay: 2 gunicorn gevent workers;")
    assert header == ONE_WORKER_HEADER + " busiest worker: sessions / CPU |"
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.endswith("| 60% / 75% |")
    memory = _table([cli.aggregate([fanout_run(2, [60, 40], [])])], False, capsys)
    _, note, header, rule, row = memory.strip().splitlines()
    assert note.startswith("relay: 2 gunicorn gevent workers; PSS is the sum")
    assert header.count("|") == rule.count("|") == row.count("|") == 5
    assert row == "| 100 | 20.0 KiB | 0 | 60% |"


def test_a_dead_worker_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    run = fanout_run(2, [60, 40], [0.3, 0.1])
    run.relay_alive = False
    out = _table([cli.aggregate([run])], True, capsys)
    assert "NOTE: at 100 sessions a relay worker died" in out


# -- stack.Relay without gunicorn -------------------------------------------------------------


class _Running:
    def poll(self) -> None:
        return None


def _relay(tmp_path: Path, pids: list[int]) -> Relay:
    relay = Relay.__new__(Relay)  # the reading side only: no gunicorn
    relay.workers = len(pids)
    relay.worker_pids = pids
    relay.worker_pid = pids[0]
    relay.metrics_dir = tmp_path
    relay.proc = _Running()  # type: ignore[assignment]
    return relay


def _write(path: Path, values: dict[tuple[str, str, str], float]) -> None:
    untyped: Any = MmapedDict  # prometheus_client has no annotations here
    db = untyped(str(path))
    try:
        for (metric, name, help_text), value in values.items():
            db.write_value(mmap_key(metric, name, [], [], help_text), value, 0.0)
    finally:
        db.close()


def test_sessions_per_worker_from_the_multiprocess_files(tmp_path: Path) -> None:
    sessions = ("ddp_relay_sessions", "ddp_relay_sessions", "Open DDP sessions.")
    opened = (
        "ddp_relay_sessions_opened",
        "ddp_relay_sessions_opened_total",
        "DDP sessions connected.",
    )
    _write(tmp_path / "gauge_livesum_101.db", {sessions: 7.0})
    _write(tmp_path / "gauge_livesum_102.db", {sessions: 3.0})
    _write(tmp_path / "gauge_livesum_999.db", {sessions: 50.0})  # not a worker of this relay
    _write(tmp_path / "counter_101.db", {opened: 9.0})
    relay = _relay(tmp_path, [101, 102, 103])
    assert relay.sessions_by_worker() == {101: 7, 102: 3, 103: 0}
    assert relay.opened_by_worker() == {101: 9, 102: 0, 103: 0}


def test_alive_needs_every_worker(tmp_path: Path) -> None:
    assert _relay(tmp_path, [os.getpid(), os.getppid()]).alive()
    gone = 2**22 + 1  # above the default pid_max of 4194304: no such process
    assert not _relay(tmp_path, [os.getpid(), gone]).alive()


# -- window and storm -------------------------------------------------------------------------


def test_window_defaults_are_the_issue_s() -> None:
    args = cli.build_parser().parse_args(["window"])
    assert (args.sessions, args.distinct, args.n, args.writes, args.interval) == (
        [5000], [1, 500], 20, 20, 0.5,
    )  # fmt: skip
    assert args.before is None and args.workers == 1 and args.runs == 3


def test_storm_defaults_are_the_issue_s() -> None:
    args = cli.build_parser().parse_args(["storm"])
    assert (args.sessions, args.generators, args.workers, args.before) == ([10000], 1, 1, None)


@pytest.mark.parametrize("mode", ["window", "storm"])
def test_before_defaults_to_main_before_the_change(mode: str) -> None:
    parse = cli.build_parser().parse_args
    assert parse([mode, "--before"]).before == "49143b3"
    assert parse([mode, "--before", "abc1234"]).before == "abc1234"
    assert parse([mode, "--before", "--runs", "1"]).before == "49143b3"


@pytest.mark.parametrize("mode", ["fanout", "latency", "memory", "all", "overhead", "check"])
def test_before_belongs_to_window_and_storm_only(mode: str) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([mode, "--before"])


@pytest.mark.parametrize(("n", "writes"), [(20, 39), (2, 3), (20, 0)])
def test_window_writes_are_bounded_by_the_window(
    n: int, writes: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["window", f"--n={n}", f"--writes={writes}"]) == 2
    assert "--writes must be 1 to" in capsys.readouterr().err
