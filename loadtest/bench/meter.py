"""CPU time of the benchmark's processes over a measured interval, from ``/proc``.

``CpuMeter.start`` reads the CPU seconds so far of the relay workers, the load
generators, every PostgreSQL process, this driver and the whole machine (with the time
the hypervisor stole); ``stop`` reads them again and returns the differences
(``CpuUsage``): per relay worker, the generators and PostgreSQL summed, the wall time,
and the share of a core that other processes used or the hypervisor stole meanwhile
(the noise check every table prints). A process gone in between reads NaN.

Must not: start, stop or wait for anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from loadtest.bench.stack import Database, cpu_seconds, machine_cpu_seconds


@dataclass(frozen=True)
class CpuUsage:
    """CPU seconds used during the interval, and the interval's wall time."""

    relay_by_worker: list[float]
    generators: float
    postgres: float
    wall_s: float
    #: Cores used by processes that are not the benchmark's, on average.
    other_share: float
    #: Cores the hypervisor gave to other guests, on average.
    steal_share: float

    @property
    def relay(self) -> float:
        """Summed over the workers; NaN when a worker died."""
        return sum(self.relay_by_worker)


def _postgres(db: Database) -> dict[int, float]:
    out = {}
    for pid in db.postgres_pids():
        value = cpu_seconds(pid)
        if value == value:  # a backend that exited meanwhile reads NaN
            out[pid] = value
    return out


class CpuMeter:
    """One measured interval: ``CpuMeter(...)`` starts it, ``stop()`` ends it."""

    def __init__(self, relay_pids: Sequence[int], generator_pids: Sequence[int], db: Database):
        self.relay_pids = list(relay_pids)
        self.generator_pids = list(generator_pids)
        self.db = db
        self._relay = [cpu_seconds(pid) for pid in self.relay_pids]
        self._generators = [cpu_seconds(pid) for pid in self.generator_pids]
        self._postgres = _postgres(db)
        self._driver = cpu_seconds(os.getpid())
        self._machine = machine_cpu_seconds()
        self._started = time.monotonic()

    def stop(self) -> CpuUsage:
        wall = time.monotonic() - self._started
        relay = [cpu_seconds(pid) - t for pid, t in zip(self.relay_pids, self._relay, strict=True)]
        generators = sum(
            cpu_seconds(pid) - t
            for pid, t in zip(self.generator_pids, self._generators, strict=True)
        )
        after = _postgres(self.db)
        # Processes alive at both readings; a backend started meanwhile: all of its time.
        postgres = sum(t - self._postgres.get(pid, 0.0) for pid, t in after.items())
        driver = cpu_seconds(os.getpid()) - self._driver
        busy, steal = machine_cpu_seconds()
        ours = postgres + sum(d for d in (*relay, generators, driver) if d == d)
        return CpuUsage(
            relay_by_worker=relay,
            generators=generators,
            postgres=postgres,
            wall_s=wall,
            other_share=max(0.0, (busy - self._machine[0]) - ours) / wall if wall > 0 else 0.0,
            steal_share=(steal - self._machine[1]) / wall if wall > 0 else 0.0,
        )
