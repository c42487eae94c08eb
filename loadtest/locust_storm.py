"""Locust, reconnect storm: every user cuts its socket on the same boundary, every
``LOADTEST_STORM_PERIOD`` seconds (default 10), and comes back with session resumption.

Each ``StormUser`` holds a resuming connection subscribed to ``books.all``
(``loadtest/reconnect.py``). On each boundary of wall-clock time they all shut their TCP
sockets at once, without a goodbye, and reconnect 10 ms later (Meteor's first retry) with
their session and ``receivedCount``, through whatever the balancer picks. Each reconnect
is a ``resume`` request: its time is socket loss to ``connected``; it fails when the relay
answered with a new session (resumption refused) or the cache broke a merge rule. The
relays' side is on the dashboard's "Is resumption working?" row.

    .venv/bin/locust -f loadtest/locust_storm.py --headless -u 300 -r 100 -t 60s \\
        -H http://127.0.0.1:8000 --only-summary

Combine with writers, so resumed sessions also get the changes they missed:
``-f loadtest/locust_storm.py,loadtest/locust_readheavy.py``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from locust import constant, task

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.reconnect import DEFAULT_PERIOD, StormScenario, next_storm  # noqa: E402
from loadtest.scenario import env_flag  # noqa: E402
from loadtest.users import DDPUserBase  # noqa: E402


def _period() -> float:
    value = os.environ.get("LOADTEST_STORM_PERIOD", "").strip()
    period = float(value) if value else DEFAULT_PERIOD
    if not period > 0:
        raise ValueError(f"LOADTEST_STORM_PERIOD must be positive, not {value!r}")
    return period


class StormUser(DDPUserBase):
    """One resuming client that drops its socket with everybody else."""

    scenario: StormScenario | None = None
    period = _period()
    # The task itself waits for the boundary (below): locust runs a task right after
    # on_start, and every user must drop on the same one.
    wait_time = constant(0)

    def on_start(self) -> None:
        self.scenario = StormScenario(
            self.checked_host(), sockjs=env_flag(os.environ, "LOADTEST_SOCKJS"), report=self.report
        )
        self.scenario.connect()

    def on_stop(self) -> None:
        if self.scenario is not None:
            self.scenario.close()

    @task
    def storm(self) -> None:
        now = time.time()
        time.sleep(next_storm(now, self.period) - now)  # a greenlet sleep under locust
        if self.scenario is not None:
            self.scenario.storm()
