"""The worker's metrics sampler: the gauges that describe a state, set once a second.

Layer: runtime (gevent). What changes at every message or call is cheaper to read now and
then than to publish at each change: one greenlet per worker process wakes every
``interval`` and sets, from what the worker's parts already know (no I/O but ``/proc`` and
the leader's one count query):

- the work pool's ``busy`` and ``size``, the open sessions' subscriptions;
- the listener's notification backlog and its lag window (``relay.stream.lag``, taken and
  reset), and, with no listener configured, ``listener_connected`` at 1 (nothing to lose);
- the coordinator's connection (1 while connected, or when none is configured);
- the bytes written to sockets since the last round (``relay.metrics.TALLY``);
- every ``process_every`` rounds, the process's memory, CPU and descriptors (``/proc``);
- every ``parked_every`` rounds, on the coordinator's leader only, the parked sessions of
  the cluster (``Resumer.count_parked``: one query), 0 on every other worker so that the
  sum across workers is the cluster's count.

Must not: block on anything but that count query, hold state of its own beyond the round
counter, or stop on a failed round (``Periodic`` logs it and goes on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.metrics import TALLY, Metrics, read_process, record_process
from relay.server.periodic import Periodic
from relay.stream.lag import LagWindow

log = logging.getLogger(__name__)

#: Seconds between two rounds.
SAMPLE_SECONDS = 1.0
#: Rounds between two reads of ``/proc`` (a descriptor count lists ``/proc/self/fd``).
PROCESS_EVERY = 5
#: Rounds between two counts of the parked sessions (a query, on the leader).
PARKED_EVERY = 5


class ListenerView(Protocol):
    """What the sampler reads of ``relay.stream.listener.Listener``."""

    @property
    def lag(self) -> LagWindow: ...

    @property
    def backlog(self) -> int: ...


class PoolView(Protocol):
    """What the sampler reads of ``relay.server.workpool.WorkPool``."""

    @property
    def busy(self) -> int: ...

    @property
    def size(self) -> int: ...


class ResumerView(Protocol):
    """What the sampler reads of ``relay.resume.resumer.Resumer``."""

    def coordinator_connected(self) -> bool: ...

    def is_leader(self) -> bool: ...

    def count_parked(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """The worker's parts the sampler reads (None: not configured on this worker)."""

    pool: PoolView
    subscriptions: Callable[[], int]
    listener: ListenerView | None = None
    resumer: ResumerView | None = None


class Sampler(Periodic):
    """Sets the state gauges of ``metrics`` from ``sources`` every ``interval`` seconds."""

    __slots__ = ("_metrics", "_parked_every", "_process_every", "_rounds", "_sources")

    def __init__(
        self,
        metrics: Metrics,
        sources: Sources,
        interval: float = SAMPLE_SECONDS,
        *,
        process_every: int = PROCESS_EVERY,
        parked_every: int = PARKED_EVERY,
    ) -> None:
        super().__init__(interval)
        self._metrics = metrics
        self._sources = sources
        self._process_every = max(1, process_every)
        self._parked_every = max(1, parked_every)
        self._rounds = 0

    def run_round(self) -> None:
        """One round; the first one (``sample`` at start) reads everything."""
        metrics, sources = self._metrics, self._sources
        first = self._rounds == 0
        self._rounds += 1
        TALLY.flush(metrics)
        metrics.workpool_busy.set(sources.pool.busy)
        metrics.workpool_size.set(sources.pool.size)
        metrics.subscriptions_open.set(sources.subscriptions())
        listener = sources.listener
        if listener is None:
            metrics.listener_connected.set(1)
        else:
            metrics.notification_backlog.set(listener.backlog)
            for channel_class, seconds, changes in listener.lag.take():
                metrics.listener_lag_seconds.labels(channel_class=channel_class).set(seconds)
                metrics.listener_lag_changes.labels(channel_class=channel_class).set(changes)
        resumer = sources.resumer
        connected = resumer is None or resumer.coordinator_connected()
        metrics.coordinator_connected.set(1 if connected else 0)
        if first or self._rounds % self._process_every == 0:
            try:
                record_process(metrics, read_process())
            except (OSError, ValueError) as exc:  # not Linux, or /proc unreadable
                log.debug("process metrics unavailable: %s", exc)
        if first or self._rounds % self._parked_every == 0:
            self._parked(resumer)

    def _parked(self, resumer: ResumerView | None) -> None:
        if resumer is None or not resumer.is_leader():
            self._metrics.parked_sessions.set(0)
            return
        count = resumer.count_parked()
        if count is not None:  # unknown this round: keep the last count
            self._metrics.parked_sessions.set(count)
