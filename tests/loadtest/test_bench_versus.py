"""``versus``: contenders, the ratios to the reference, the table, the plot."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from loadtest.bench.floor import send_floor
from loadtest.bench.runner import RELAY, SOCKETIO, RunResult
from loadtest.bench.versus import Contender, contenders, per_run, plot, ratios, table
from tests.loadtest.bench_runs import fanout_run


def run(cpu: float, all_ms: float, ramp_s: float = 1.0) -> RunResult:
    return dataclasses.replace(
        fanout_run(2, [500, 500], [cpu / 2, cpu / 2]),
        all_ms=[all_ms] * 3,
        ramp_s=ramp_s,
        sustained_per_s=2_000.0,
    )


def test_contenders_are_name_and_workers_with_a_reference() -> None:
    assert contenders("ddp-relay:2, socketio:2,ddp-relay:1") == [
        Contender(RELAY, 2),
        Contender(SOCKETIO, 2),
        Contender(RELAY, 1),
    ]
    assert contenders("ddp-relay,socketio") == [Contender(RELAY, 2), Contender(SOCKETIO, 2)]
    for bad in ("ddp-relay:2", "socketio:2", "nats:2,socketio", "ddp-relay:0,socketio",
                "ddp-relay:x,socketio", "ddp-relay,ddp-relay:2,socketio"):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            contenders(bad)


def test_figures_of_a_run() -> None:
    figures = per_run(run(cpu=0.3, all_ms=40.0, ramp_s=2.5))
    # 3 writes to 1,000 sessions on 0.3 s of CPU: 100 us per delivery.
    assert figures["cpu_us_per_delivery"] == pytest.approx(100.0)
    assert figures["all_p50_ms"] == 40.0 and figures["subscribe_s"] == 2.5
    assert figures["cpu_share"] == pytest.approx(0.15)
    assert figures["memory_per_session"] == 20 * 1024


def test_ratios_pair_the_runs_by_index() -> None:
    mine = [run(0.3, 40.0, 2.0), run(0.3, 60.0, 4.0)]
    reference = [run(0.6, 80.0, 1.0), run(0.3, 60.0, 2.0)]
    got = ratios(mine, reference)
    assert got["all_p50_ms"] == [0.5, 1.0]
    assert got["cpu_us_per_delivery"] == [0.5, 1.0]
    assert got["subscribe_s"] == [2.0, 2.0]
    assert got["memory_per_session"] == [1.0, 1.0]


def test_the_table_gives_each_contender_its_ratios_to_the_reference() -> None:
    relay, sio = Contender(RELAY, 2), Contender(SOCKETIO, 2)
    lines = table(1000, {relay: [run(0.3, 40.0), run(0.3, 50.0)], sio: [run(0.6, 80.0)] * 2},
                  sio, 7.5)  # fmt: skip
    assert "alone costs 7.5 us" in lines[0]
    rows = [line for line in lines if line.startswith("| ddp") or line.startswith("| Socket")]
    assert rows[0].startswith("| ddp-relay, 2 workers | 45.0 ms (40.0 ms-50.0 ms) |")
    assert "| 2,000 | 100.0 us |" in rows[0]
    assert rows[0].endswith("| 0.56x (0.50x-0.62x) / 0.50x / 1.00x / 1.00x |")
    assert rows[1].endswith("| (the reference) |")


def test_a_lost_write_is_in_the_table() -> None:
    relay, sio = Contender(RELAY, 2), Contender(SOCKETIO, 2)
    lossy = dataclasses.replace(run(0.3, 40.0), missing=2)
    lines = table(1000, {relay: [lossy], sio: [run(0.6, 80.0)]}, sio, 7.5)
    assert any("LOST OR DUPLICATED: 2" in line for line in lines)


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    relay, sio = Contender(RELAY, 2), Contender(SOCKETIO, 2)
    by_n = {n: {relay: [run(0.3, 40.0)], sio: [run(0.6, 80.0)]} for n in (1000, 2000)}
    path = tmp_path / "versus.png"
    plot(path, [1000, 2000], by_n)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_send_floor_is_a_cpu_time_per_send() -> None:
    floor = send_floor(20, rounds=3, pause=0.01)
    assert 0 < floor < 10_000
