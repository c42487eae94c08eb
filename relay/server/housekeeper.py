"""Cluster chores of the relays, run by the coordinator's leader only, about once a minute.

Layer: L3 (gevent). One greenlet per worker process wakes at a jittered interval (workers
started together do not wake together) and, when this relay leads the cluster, prunes the
changelog (the backend's ``housekeeping``, on the work pool: it is ORM work) and forgets
parked sessions whose resume window passed (the resumer's ``housekeeping``). Without a
coordinator every worker does it: both chores are idempotent.

Must not: run a chore on a non-leader when a coordinator exists, run ORM work outside the
work pool, or die on a failed chore (it is logged and retried next round).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Protocol

import gevent

log = logging.getLogger(__name__)

#: Seconds between two runs of the housekeeping, on average (jittered by +-50 %).
HOUSEKEEPING_SECONDS = 60.0


class Leadership(Protocol):
    """The coordinator's view (``relay.resume.resumer.Resumer``): who leads, and its chores."""

    def is_leader(self) -> bool: ...

    def housekeeping(self) -> None: ...


class Housekeeper:
    """Runs ``chore`` through ``run`` (the work pool), then the leader's own chores."""

    __slots__ = ("_chore", "_greenlet", "_leadership", "_run", "interval")

    def __init__(
        self,
        run: Callable[[Callable[[], None]], None],
        chore: Callable[[], None],
        leadership: Leadership | None,
        interval: float = HOUSEKEEPING_SECONDS,
    ) -> None:
        self._run = run
        self._chore = chore
        self._leadership = leadership
        self.interval = interval
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the loop in the background (idempotent)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._forever)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def run_once(self) -> bool:
        """One round of chores; False when skipped because another relay leads."""
        leadership = self._leadership
        if leadership is not None and not leadership.is_leader():
            return False
        try:
            self._run(self._chore)
        except Exception:
            log.exception("housekeeping failed")
        if leadership is not None:
            leadership.housekeeping()
        return True

    def _forever(self) -> None:
        while True:
            gevent.sleep(self.interval * random.uniform(0.5, 1.5))
            try:
                self.run_once()
            except Exception:  # the leader's own chores; the loop must outlive them
                log.exception("housekeeping failed")
