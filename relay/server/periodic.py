"""A background loop of one worker process: one greenlet that wakes every ``interval``.

Layer: runtime (gevent). The ticker and the housekeeper are ``Periodic``: ``start`` spawns
the one greenlet (idempotent), ``stop`` kills it, and each wake-up calls ``run_round``.
``jitter`` spreads the wake-ups (0.5: +-50 %) so that workers started together do not
wake together.

Must not: let an exception of one round end the loop (it is logged; the next round runs).
"""

from __future__ import annotations

import logging
import random

import gevent

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``run_round`` every ``interval`` seconds (jittered) in one greenlet."""

    __slots__ = ("_greenlet", "interval", "jitter")

    def __init__(self, interval: float, jitter: float = 0.0) -> None:
        self.interval = interval
        self.jitter = jitter
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Start the loop in the background (idempotent)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._forever)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def run_round(self) -> None:
        raise NotImplementedError

    def _forever(self) -> None:
        while True:
            delay = self.interval
            if self.jitter:
                delay *= random.uniform(1 - self.jitter, 1 + self.jitter)
            gevent.sleep(delay)
            if self._greenlet is not gevent.getcurrent():
                # Stopped while asleep: ``kill(block=False)`` only schedules the exit, and
                # a timer due at the same moment must not run one more round after stop.
                return
            try:
                self.run_round()
            except Exception:  # the loop must outlive a failed round
                log.exception("%s round failed", type(self).__name__)
