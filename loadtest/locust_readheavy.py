"""Locust, read-heavy: many idle subscribers, a few writers, and how long each write takes
to reach every subscriber.

``LOADTEST_WRITERS`` users (default 2, spawned first: locust's ``fixed_count``) rename
random books of the example bookstore about once a second, each rename stamped with its
send time; every other user is an ``IdleSubscriber``: it connects, subscribes
``books.all`` and then only listens (checking its connection every 5 s). Every stamped
change a subscriber receives is reported with request type ``LIVE``, name
``commit-to-client`` (``loadtest/live.py``: from the writer's send to the subscriber's
receive, an upper bound of commit-to-client). So with ``-u 1000`` and two writers, each
rename is about 1000 ``LIVE`` samples: the fan-out latency distribution users feel.

    .venv/bin/locust -f loadtest/locust_readheavy.py --headless -u 200 -r 50 -t 60s \\
        -H http://127.0.0.1:8000 --only-summary

Environment: ``LOADTEST_WRITERS``, ``LOADTEST_SOCKJS``, ``LOADTEST_ALLOW_REMOTE`` (as in
``locustfile.py``). Renames are undone, so the seeded data stays as it was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import between, constant, task

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.scenario import BookstoreScenario, env_flag  # noqa: E402
from loadtest.users import DDPUserBase  # noqa: E402


def _writers() -> int:
    value = os.environ.get("LOADTEST_WRITERS", "2").strip() or "2"
    count = int(value)
    if count < 0:
        raise ValueError(f"LOADTEST_WRITERS must be 0 or more, not {value!r}")
    return count


class _BookstoreUser(DDPUserBase):
    abstract = True
    scenario: BookstoreScenario | None = None
    listening_only = False

    def on_start(self) -> None:
        self.scenario = BookstoreScenario(
            self.checked_host(),
            sockjs=env_flag(os.environ, "LOADTEST_SOCKJS"),
            report=self.report,
            live_report=self.report_live,
            keep_received=not self.listening_only,
        )
        self.scenario.connect()  # a failure is reported; the next task tries again

    def on_stop(self) -> None:
        if self.scenario is not None:
            self.scenario.cleanup()
            self.scenario.close()


class Writer(_BookstoreUser):
    """Renames a random book and back, about once a second."""

    fixed_count = _writers()
    wait_time = between(0.5, 1.5)

    @task
    def rename_book(self) -> None:
        if self.scenario is not None:
            self.scenario.rename_book()


class IdleSubscriber(_BookstoreUser):
    """Subscribes ``books.all`` and listens; reports the stamped changes it receives."""

    listening_only = True
    wait_time = constant(5)

    @task
    def listen(self) -> None:
        if self.scenario is not None:
            self.scenario.ensure_connected()
