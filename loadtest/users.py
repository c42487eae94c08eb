"""What every locust user of the load tests shares: the loopback guard and reporting.

:class:`DDPUserBase` is an abstract locust ``User`` (locust does not run it by itself, and
importing it into a locustfile adds no user class): ``checked_host()`` refuses a host that
is not loopback unless ``LOADTEST_ALLOW_REMOTE=1``, ``report`` fires locust's
``events.request`` with request type ``DDP`` (the scenarios' ``Report``), and
``report_live`` with the type it is given (``LIVE`` for commit-to-client latencies,
``loadtest/live.py``).

Must not: hold a scenario's steps (``scenario.py``, ``reconnect.py`` do).
"""

from __future__ import annotations

import logging
import os

from locust import User
from locust.exception import StopUser

from loadtest.scenario import CONNECT, DEFAULT_HOST, env_flag, is_loopback

logger = logging.getLogger(__name__)


class DDPUserBase(User):
    abstract = True
    host = DEFAULT_HOST

    def checked_host(self) -> str:
        """locust's ``-H``, or stop this user (reported as a failed ``connect``)."""
        host = self.host or DEFAULT_HOST
        if not is_loopback(host) and not env_flag(os.environ, "LOADTEST_ALLOW_REMOTE"):
            error = ValueError(f"{host} is not a loopback host (set LOADTEST_ALLOW_REMOTE=1)")
            self.report(CONNECT, 0.0, 0, error)
            logger.error("%s", error)
            raise StopUser()
        return host

    def report(
        self, name: str, response_time: float, length: int, exception: BaseException | None
    ) -> None:
        self.report_live("DDP", name, response_time, length, exception)

    def report_live(
        self,
        request_type: str,
        name: str,
        response_time: float,
        length: int,
        exception: BaseException | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time,
            response_length=length,
            exception=exception,
            context={},
        )
