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
``books.byAuthorEmail`` and ``unsub books.byAuthorEmail``. What each task does, and the
checks that turn a completed request into a failure, are in ``loadtest/scenario.py``.
Everything it changes is undone, so the seeded data stays as it was.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from locust import User, between, task
from locust.exception import StopUser

# locust puts this file's directory on sys.path, and the current directory; make the
# `loadtest` package importable from any directory too (relay/ is pip-installed).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from loadtest.scenario import (  # noqa: E402
    CONNECT,
    DEFAULT_HOST,
    BookstoreScenario,
    env_flag,
    is_loopback,
)

logger = logging.getLogger(__name__)


class DDPUser(User):
    """One Meteor-like client: connects, subscribes ``books.all``, then runs the tasks."""

    host = DEFAULT_HOST
    wait_time = between(0.5, 2)

    scenario: BookstoreScenario | None = None

    def on_start(self) -> None:
        host = self.host or DEFAULT_HOST
        if not is_loopback(host) and not env_flag(os.environ, "LOADTEST_ALLOW_REMOTE"):
            error = ValueError(f"{host} is not a loopback host (set LOADTEST_ALLOW_REMOTE=1)")
            self._report(CONNECT, 0.0, 0, error)
            logger.error("%s", error)
            raise StopUser()
        self.scenario = BookstoreScenario(
            host,
            sockjs=env_flag(os.environ, "LOADTEST_SOCKJS"),
            check_live=env_flag(os.environ, "LOADTEST_CHECK_LIVE"),
            report=self._report,
        )
        self.scenario.connect()  # a failure is reported; the next task tries again

    def on_stop(self) -> None:
        if self.scenario is not None:
            self.scenario.cleanup()
            self.scenario.close()

    def _report(
        self, name: str, response_time: float, length: int, exception: BaseException | None
    ) -> None:
        self.environment.events.request.fire(
            request_type="DDP",
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={},
        )

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
