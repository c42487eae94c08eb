"""The worker's own lease chores: every few seconds, on every worker process.

Layer: runtime (gevent). One greenlet per worker process wakes about every
``KEEPALIVE_SECONDS`` and runs the backend's ``keepalive`` on the work pool (it is ORM
work): the worker renews what it holds on a lease (presence) and releases what workers
whose lease expired held. Unlike the housekeeper, it runs on every worker, leader or not:
a lease is per worker.

Must not: run ORM work outside the work pool, or die on a failed round (logged, retried).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.server.periodic import Periodic

log = logging.getLogger(__name__)

#: Seconds between two renewals, on average (jittered by +-30 %): a few per lease.
KEEPALIVE_SECONDS = 3.0


class Keepalive(Periodic):
    """Runs ``chore`` through ``run`` (the work pool) every ``interval`` seconds."""

    __slots__ = ("_chore", "_run")

    def __init__(
        self,
        run: Callable[[Callable[[], None]], None],
        chore: Callable[[], None],
        interval: float = KEEPALIVE_SECONDS,
    ) -> None:
        super().__init__(interval, jitter=0.3)
        self._run = run
        self._chore = chore

    def run_round(self) -> None:
        try:
            self._run(self._chore)
        except Exception:
            log.exception("keepalive failed")
