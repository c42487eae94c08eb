"""``loadtest.bench.figures`` without a server: how every mode fills a run from the CPU
meter, the relay and the generator's report, the noise check, and how tables print a time.

The real runs are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench import figures
from loadtest.bench.meter import CpuUsage
from loadtest.bench.runner import RunResult
from loadtest.bench.storm import StormRun
from loadtest.bench.window import WindowRun
from tests.loadtest.bench_runs import fanout_run as _run
from tests.loadtest.bench_runs import window_run as _a_window

shares = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)


class FakeRelay:
    """What the helpers ask of ``stack.Relay``."""

    def __init__(self, by_worker: dict[int, int], *, alive: bool = True) -> None:
        self.by_worker = by_worker
        self._alive = alive

    def sessions_by_worker(self) -> dict[int, int]:
        return self.by_worker

    def alive(self) -> bool:
        return self._alive

    def error_count(self) -> int:
        return 3

    def timeout_count(self) -> int:
        return 0 if self._alive else 1


def _run_result() -> RunResult:
    return _run(1, [4], [0.1])  # 4 sessions, all ready


def _window() -> WindowRun:
    return _a_window(sessions=4, ready=4)


# -- ms_text ----------------------------------------------------------------------------------


@given(st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_ms_text_is_ms_below_ten_seconds_then_seconds(value: float) -> None:
    text = figures.ms_text(value)
    if value < 10_000:
        assert text == f"{value:.1f} ms"
    else:
        assert text == f"{value / 1000:.2f} s"


def test_ms_text_of_unknown_and_never() -> None:
    assert figures.ms_text(math.nan) == "n/a"
    assert figures.ms_text(math.inf) == "never"
    assert figures.ms_text(math.inf, "never (lost)") == "never (lost)"


# -- noise ------------------------------------------------------------------------------------


@given(shares, shares)
def test_noisy_is_above_a_tenth_of_a_core(other: float, steal: float) -> None:
    assert figures.noisy(other, steal) == (max(other, steal) > 0.1)


@given(shares, shares)
def test_noise_warning_only_on_a_noisy_machine(other: float, steal: float) -> None:
    run = _window()
    run.other_cpu_share, run.steal_share = other, steal
    warning = figures.noise_warning(run, "during the writes")
    if not figures.noisy(other, steal):
        assert warning is None
        return
    assert warning == (
        f"WARNING: other processes used {other:.0%} of a core and the hypervisor stole "
        f"{steal:.0%} during the writes"
    )


def test_noise_warning_says_meanwhile_by_default() -> None:
    run = _window()
    run.other_cpu_share, run.steal_share = 0.25, 0.0
    assert figures.noise_warning(run) == (
        "WARNING: other processes used 25% of a core and the hypervisor stole 0% "
        "meanwhile: figures are skewed"
    )


# -- CPU and health ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_window, _run_result])
def test_take_usage_fills_every_cpu_figure(make: Any) -> None:
    run = make()
    usage = CpuUsage(
        relay_by_worker=[0.5, 0.25],
        generators=0.2,
        postgres=0.1,
        wall_s=2.0,
        other_share=0.05,
        steal_share=0.01,
    )
    figures.take_usage(run, usage)
    assert run.relay_cpu_s_by_worker == [0.5, 0.25]
    assert run.relay_cpu_s == pytest.approx(0.75)
    assert (run.generator_cpu_s, run.postgres_cpu_s, run.wall_s) == (0.2, 0.1, 2.0)
    assert (run.other_cpu_share, run.steal_share) == (0.05, 0.01)


def test_a_dead_worker_makes_the_relay_cpu_unknown() -> None:
    run = _window()
    usage = CpuUsage([0.5, math.nan], 0.2, 0.1, 2.0, 0.0, 0.0)
    figures.take_usage(run, usage)
    assert math.isnan(run.relay_cpu_s)


@pytest.mark.parametrize("alive", [True, False])
def test_take_health(alive: bool) -> None:
    run = _window()
    figures.take_health(run, FakeRelay({}, alive=alive))  # type: ignore[arg-type]
    assert (run.relay_alive, run.relay_errors, run.worker_timeouts) == (alive, 3, 0 if alive else 1)


def test_sessions_by_worker_in_pid_order_or_unknown() -> None:
    relay = FakeRelay({11: 7, 10: 3})
    assert figures.sessions_by_worker(relay, [10, 11]) == [3, 7]  # type: ignore[arg-type]
    assert figures.sessions_by_worker(FakeRelay({}), [10, 11]) == []  # type: ignore[arg-type]


@given(shares, shares, shares, st.sampled_from([0.0, 0.5, 2.0]))
def test_cpu_shares(relay: float, generator: float, postgres: float, wall: float) -> None:
    run = StormRun(tree="after", revision=None, sessions=1, workers=1, generators=1)
    run.relay_cpu_s, run.generator_cpu_s, run.postgres_cpu_s = relay, generator, postgres
    run.wall_s = wall
    got = run.cpu_shares()
    assert list(got) == ["relay_cpu_share", "generator_cpu_share", "postgres_cpu_share"]
    for value, seconds in zip(got.values(), (relay, generator, postgres), strict=True):
        assert math.isnan(value) if not wall else value == pytest.approx(seconds / wall)


def test_sayer(capsys: pytest.CaptureFixture[str]) -> None:
    figures.sayer("[x] ", quiet=False)("hello")
    figures.sayer("[x] ", quiet=True)("not shown")
    assert capsys.readouterr().out == "bench: [x] hello\n"


# -- the generator's report -------------------------------------------------------------------

per_write = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=4),
        st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    ),
    max_size=6,
)
optional_ms = st.none() | st.floats(min_value=0.0, max_value=1e5, allow_nan=False)


@given(per_write, optional_ms, optional_ms, optional_ms, st.sampled_from([_window, _run_result]))
def test_take_deliveries(
    writes: list[tuple[int, float]],
    p50: float | None,
    p99: float | None,
    worst: float | None,
    make: Any,
) -> None:
    run = make()  # 4 sessions ready
    report = {
        "deliveries": sum(received for received, _ in writes),
        "missing": 4 * len(writes) - sum(received for received, _ in writes),
        "duplicates": 1,
        "closedAfterReady": 2,
        "errors": {"closed 1006": 2},
        "perWrite": [
            {"w": w, "received": received, "last": last if received else None}
            for w, (received, last) in enumerate(writes)
        ],
        "p50": p50,
        "p99": p99,
        "max": worst,
    }
    figures.take_deliveries(run, report)
    assert run.delivered == report["deliveries"] and run.missing == report["missing"]
    assert (run.duplicates, run.closed_after_ready) == (1, 2)
    assert run.generator_errors == {"closed 1006": 2}
    assert run.received == [received for received, _ in writes]
    # A write that did not reach every ready session never reached all.
    assert run.all_ms == [last if received >= 4 else math.inf for received, last in writes]
    for got, want in ((run.delivery_p50_ms, p50), (run.delivery_p99_ms, p99)):
        assert math.isnan(got) if want is None else got == want
    assert math.isnan(run.delivery_max_ms) if worst is None else run.delivery_max_ms == worst


def test_take_deliveries_without_errors() -> None:
    run = _window()
    report: dict[str, Any] = {
        "deliveries": 0,
        "missing": 0,
        "duplicates": 0,
        "closedAfterReady": 0,
        "errors": None,
        "perWrite": [],
        "p50": None,
        "p99": None,
        "max": None,
    }
    figures.take_deliveries(run, report)
    assert run.generator_errors == {} and run.all_ms == [] and run.received == []
