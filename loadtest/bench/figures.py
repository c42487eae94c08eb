"""What every measured run keeps of the relay, the generator and the machine, filled the
same way by every mode (``runner``, ``window``, ``storm``), and how the tables (``cli``,
``compare``) print a time.

``RelayRun`` is the common part of a window and a storm run (``window.WindowRun``,
``storm.StormRun``): which tree, how many sessions and workers, the CPU of the relay, the
generators and PostgreSQL while it measured (``meter.CpuUsage``), the workers' health and
the profiles. ``take_usage``, ``take_health``, ``take_deliveries`` and ``noise_warning``
also serve ``runner.RunResult``, whose fields (older, quoted by docs/benchmarks.md) keep
their own order and defaults.

Must not: start, stop or wait for anything, or decide what a mode measures.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadtest.bench.meter import CpuUsage
from loadtest.bench.stack import Server


class Measured(Protocol):
    """A run's CPU figures and the relay's health (``RunResult`` and ``RelayRun``)."""

    relay_cpu_s: float
    relay_cpu_s_by_worker: list[float]
    generator_cpu_s: float
    postgres_cpu_s: float
    wall_s: float
    other_cpu_share: float
    steal_share: float
    relay_alive: bool
    relay_errors: int
    worker_timeouts: int


class Delivered(Protocol):
    """A run's figures from the generator's ``report`` (``RunResult``, ``WindowRun``)."""

    ready: int
    delivered: int
    missing: int
    duplicates: int
    closed_after_ready: int
    generator_errors: dict[str, int]
    all_ms: list[float]
    received: list[int]
    delivery_p50_ms: float
    delivery_p99_ms: float
    delivery_max_ms: float


@dataclass(kw_only=True)
class RelayRun:
    """The part of a window or storm run both modes have (times in ms, CPU in seconds);
    ``results.json`` lists these fields first in each run's record."""

    tree: str
    revision: str | None
    sessions: int
    workers: int
    ready: int = 0
    failed: int = 0
    relay_cpu_s: float = float("nan")
    relay_cpu_s_by_worker: list[float] = field(default_factory=list)
    generator_cpu_s: float = float("nan")
    postgres_cpu_s: float = float("nan")
    wall_s: float = float("nan")
    other_cpu_share: float = float("nan")
    steal_share: float = float("nan")
    worker_pids: list[int] = field(default_factory=list)
    sessions_by_worker: list[int] = field(default_factory=list)
    relay_alive: bool = True
    relay_errors: int = 0
    worker_timeouts: int = 0
    generator_errors: dict[str, int] = field(default_factory=dict)
    #: ``--profile``: py-spy's output, one file per worker.
    profiles: list[str] = field(default_factory=list)

    def cpu_shares(self) -> dict[str, float]:
        """Cores the relay, the generators and PostgreSQL used while it measured."""
        return {
            f"{name}_cpu_share": seconds / self.wall_s if self.wall_s else math.nan
            for name, seconds in (
                ("relay", self.relay_cpu_s),
                ("generator", self.generator_cpu_s),
                ("postgres", self.postgres_cpu_s),
            )
        }


def sayer(label: str, quiet: bool) -> Callable[[str], None]:
    """How a run reports its progress: ``bench: <label><text>``, nothing when quiet."""

    def say(text: str) -> None:
        if not quiet:
            print(f"bench: {label}{text}", flush=True)

    return say


def sessions_by_worker(relay: Server, pids: list[int]) -> list[int]:
    """The sessions each worker holds, in the order of ``pids`` (empty: unreadable)."""
    by_worker = relay.sessions_by_worker()
    return [by_worker[pid] for pid in pids] if by_worker else []


def take_usage(result: Measured, usage: CpuUsage) -> None:
    result.relay_cpu_s_by_worker = usage.relay_by_worker
    result.relay_cpu_s = usage.relay  # NaN: a worker died
    result.generator_cpu_s = usage.generators
    result.postgres_cpu_s = usage.postgres
    result.wall_s = usage.wall_s
    result.other_cpu_share = usage.other_share
    result.steal_share = usage.steal_share


def take_health(result: Measured, relay: Server) -> None:
    result.relay_alive = relay.alive()
    result.relay_errors = relay.error_count()
    result.worker_timeouts = relay.timeout_count()


def noisy(other_share: float, steal_share: float) -> bool:
    """Did other processes use, or the hypervisor steal, more than a tenth of a core (on
    average, while a run measured)? Then the machine was not quiet: every table says so."""
    return other_share > 0.1 or steal_share > 0.1


def noise_warning(result: Measured, when: str = "meanwhile: figures are skewed") -> str | None:
    """The warning when the machine was not quiet while the run measured (``when`` ends
    the sentence); None on a quiet machine."""
    if noisy(result.other_cpu_share, result.steal_share):
        return (
            f"WARNING: other processes used {result.other_cpu_share:.0%} of a core and the "
            f"hypervisor stole {result.steal_share:.0%} {when}"
        )
    return None


def _ms_or_nan(value: Any) -> float:
    return float(value) if value is not None else math.nan


def take_deliveries(result: Delivered, report: dict[str, Any]) -> None:
    """The figures of the generator's ``report`` event (loadgen.js, windowgen.js)."""
    result.delivered = int(report["deliveries"])
    result.missing = int(report["missing"])
    result.duplicates = int(report["duplicates"])
    result.closed_after_ready = int(report["closedAfterReady"])
    result.generator_errors = dict(report.get("errors") or {})
    # A write that did not reach every subscribed session never "reached all".
    result.all_ms = [
        float(w["last"]) if w["received"] >= result.ready else math.inf for w in report["perWrite"]
    ]
    result.received = [int(w["received"]) for w in report["perWrite"]]
    result.delivery_p50_ms = _ms_or_nan(report["p50"])
    result.delivery_p99_ms = _ms_or_nan(report["p99"])
    result.delivery_max_ms = _ms_or_nan(report["max"])


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (the same rule as the generator's); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


def ms_text(value: float, never: str = "never") -> str:
    """A time in ms for the tables: ``n/a`` for NaN, ``never`` for infinity (a write
    that did not reach every session), seconds from 10 s on."""
    if value != value:
        return "n/a"
    if math.isinf(value):
        return never
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.1f} ms"
