"""Cluster chores of the relays, run by the coordinator's leader only, about once a minute.

Layer: runtime (gevent). One greenlet per worker process wakes at a jittered interval (workers
started together do not wake together) and, when this relay leads the cluster, prunes the
changelog (the backend's ``housekeeping``, on the work pool: it is ORM work) and forgets
parked sessions whose resume window passed (the resumer's ``housekeeping``), then runs the
``also`` chores in its own greenlet (the SockJS inbox's prune). Without a coordinator every
worker does it: every chore is idempotent.

Must not: run a chore on a non-leader when a coordinator exists, run ORM work outside the
work pool, or die on a failed chore (it is logged and retried next round).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from relay.server.periodic import Periodic

log = logging.getLogger(__name__)

#: Seconds between two runs of the housekeeping, on average (jittered by +-50 %).
HOUSEKEEPING_SECONDS = 60.0


class Leadership(Protocol):
    """The coordinator's view (``relay.resume.resumer.Resumer``): who leads, and its chores."""

    def is_leader(self) -> bool: ...

    def housekeeping(self) -> None: ...


class Housekeeper(Periodic):
    """Runs ``chore`` through ``run`` (the work pool), then the leader's own chores."""

    __slots__ = ("_also", "_chore", "_leadership", "_run")

    def __init__(
        self,
        run: Callable[[Callable[[], None]], None],
        chore: Callable[[], None],
        leadership: Leadership | None,
        interval: float = HOUSEKEEPING_SECONDS,
        also: Sequence[Callable[[], None]] = (),
    ) -> None:
        super().__init__(interval, jitter=0.5)
        self._run = run
        self._chore = chore
        self._leadership = leadership
        #: More chores, run here (not in the pool): they do their own I/O.
        self._also = list(also)

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
        for chore in self._also:
            try:
                chore()
            except Exception:
                log.exception("housekeeping failed")
        return True

    def run_round(self) -> None:
        self.run_once()
