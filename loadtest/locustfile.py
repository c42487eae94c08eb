"""Locust load test: simulated Meteor clients of the example bookstore over DDP.

Run it against a relay on this machine (``make run`` serves one on 127.0.0.1:8000), from the
repository root, headless and bounded in users and time::

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 50 -r 25 -t 30s \\
        -H http://127.0.0.1:8000 --only-summary

Add ``--csv OUT/prefix`` for CSV files. Environment:

* ``LOADTEST_SOCKJS=1``: connect over SockJS (``/sockjs/<server>/<session>/websocket``)
  instead of the raw WebSocket (``/websocket``);
* ``LOADTEST_CHECK_LIVE=1``: also fail a write whose effect is not in the client's cache
  when it completes (the write fence; see ``loadtest/scenario.py``).

``-H`` is the relay's HTTP base; the WebSocket URL is derived from it (locust's ``-H``
overrides every User's ``host``, so nothing else is read). Only loopback hosts are accepted:
a load test is not something to point at another machine by accident. Set
``LOADTEST_ALLOW_REMOTE=1`` to load a remote relay you own.

Every DDP request is reported with request type ``DDP`` under these names: ``connect``,
``books.all``, ``books.rename``, ``books.create``, ``books.remove``,
``books.byAuthorEmail`` and ``unsub books.byAuthorEmail``; and every stamped rename a
user's subscription receives (its own and the others') with request type ``LIVE``, name
``commit-to-client`` (``loadtest/live.py``). What each task does, and the
checks that turn a completed request into a failure, are in ``loadtest/scenario.py``.
Everything it changes is undone, so the seeded data stays as it was.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from locust import between, task

# locust puts this file's directory on sys.path, and the current directory; make the
# `loadtest` package importable from any directory too (relay/ is pip-installed).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.scenario import BookstoreScenario, env_flag  # noqa: E402
from loadtest.users import DDPUserBase  # noqa: E402


class DDPUser(DDPUserBase):
    """One Meteor-like client: connects, subscribes ``books.all``, then runs the tasks."""

    wait_time = between(0.5, 2)

    scenario: BookstoreScenario | None = None

    def on_start(self) -> None:
        self.scenario = BookstoreScenario(
            self.checked_host(),
            sockjs=env_flag(os.environ, "LOADTEST_SOCKJS"),
            check_live=env_flag(os.environ, "LOADTEST_CHECK_LIVE"),
            report=self.report,
            live_report=self.report_live,
        )
        self.scenario.connect()  # a failure is reported; the next task tries again

    def on_stop(self) -> None:
        if self.scenario is not None:
            self.scenario.cleanup()
            self.scenario.close()

    @task(3)
    def rename_book(self) -> None:
        if self.scenario is not None:
            self.scenario.rename_book()

    @task(2)
    def create_and_remove_book(self) -> None:
        if self.scenario is not None:
            self.scenario.create_and_remove()

    @task(2)
    def resubscribe_by_author(self) -> None:
        if self.scenario is not None:
            self.scenario.resubscribe_by_author()
