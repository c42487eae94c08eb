"""The reconnect storm: many clients lose their sockets at the same moment and come back
with session resumption, as after a balancer restart or a network blip.

Each simulated user holds one :class:`DroppableClient` (``relay.client.DDPClient`` with
Meteor's reconnect and resume on) subscribed to ``books.all``. Every ``period`` seconds,
on the same wall-clock boundary for all users (:func:`next_storm`), each one shuts its
TCP socket without a close frame or ``disconnect`` (a dead network, not a goodbye); the
client reconnects after Meteor's 10 ms first retry and sends ``connect`` with its session
and ``receivedCount``. All users reconnect within milliseconds of each other: the storm.

Each reconnect is reported as request ``resume`` (type ``DDP``): its response time is the
client's own figure, socket loss to ``connected``. It fails when the relay answered with a
new session (resumption refused: the client resyncs everything), when the client saw a
cache violation after it, or when it did not reconnect within the timeout.

Must not: import locust or gevent (the locustfile wraps this), or judge the relay's
metrics (the relay counts ``ddp_relay_resumes_total{outcome}`` itself).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from loadtest.scenario import SUB_ALL, Report, ScenarioError, ddp_url
from relay.client import DDPClient

logger = logging.getLogger(__name__)

RESUME = "resume"
CONNECT = "connect"
#: Seconds between two storms (every user drops its socket on the same boundary).
DEFAULT_PERIOD = 10.0


def next_storm(now: float, period: float) -> float:
    """The first multiple of ``period`` (a wall-clock time) strictly after ``now``."""
    if not period > 0:
        raise ValueError(f"period must be positive, not {period!r}")
    return (now // period + 1) * period


class DroppableClient(DDPClient):
    """A DDPClient whose socket can be cut from the client side, like a dead network."""

    def drop(self) -> bool:
        """Shut the TCP socket (no close frame, no ``disconnect``); False when there is
        no open socket to cut (still reconnecting, or closed)."""
        with self._send_lock:
            ws = self._ws
            if ws is None or not self._up or ws.sock is None:
                return False
            with contextlib.suppress(OSError):
                ws.sock.shutdown(socket.SHUT_RDWR)
        return True

    def counts(self) -> tuple[int, int, int]:
        """``(reconnects, resumes, resyncs)`` so far, read together."""
        with self._lock:
            return self.reconnects, self.resumes, self.resyncs


class StormScenario:
    """One user of the storm: connect, subscribe, then drop and resume on each boundary."""

    def __init__(self, host: str, *, sockjs: bool, report: Report, timeout: float = 10.0) -> None:
        self.url = ddp_url(host, sockjs=sockjs)
        self.sockjs = sockjs
        self.report = report
        self.timeout = timeout
        self.client: DroppableClient | None = None

    def connect(self) -> bool:
        """Open a resuming connection subscribed to ``books.all``; False (reported) on failure."""
        self.close()
        client = DroppableClient(
            self.url,
            sockjs=self.sockjs,
            timeout=self.timeout,
            auto_reconnect=True,
            resume=True,
            keep_received=False,
        )
        try:
            client.connect()
            client.subscribe(SUB_ALL)
        except Exception as exc:
            self.report(CONNECT, 0.0, 0, exc)
            with contextlib.suppress(Exception):
                client.close()
            return False
        self.client = client
        return True

    def storm(self) -> None:
        """Cut the socket now and report how the reconnect went."""
        client = self.client
        if client is None or client.closed.is_set():
            if client is not None:
                self.report(CONNECT, 0.0, 0, ConnectionError("connection closed for good"))
            self.connect()
            return
        before = client.counts()
        violations = len(client.violations)
        if not client.drop():
            return  # still reconnecting from the last storm: not a new sample
        try:
            client.wait_for(lambda: client.reconnects > before[0], self.timeout)
        except TimeoutError:
            self.report(RESUME, self.timeout * 1000, 0, TimeoutError("no connected in time"))
            return
        latency_ms = client.reconnect_latencies[-1] * 1000
        self.report(RESUME, latency_ms, 0, self.judge(client, before, violations))

    @staticmethod
    def judge(
        client: DroppableClient, before: tuple[int, int, int], violations: int
    ) -> ScenarioError | None:
        """Why the reconnect since ``before`` failed, or None."""
        _, resumes, _ = client.counts()
        if resumes == before[1]:
            return ScenarioError("resumption refused: the relay gave a new session")
        if len(client.violations) > violations:
            return ScenarioError(f"cache violations: {client.violations[violations:]}")
        return None

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> StormScenario:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
