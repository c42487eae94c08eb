"""Reconnects as the chaos tests count them: per client, and per relay from its metrics files.

Its job: ``ChaosClient``, a ``WireClient`` that records for every reconnect its cause (the
chaos step under way, ``Phase.name``, or what ``drop()`` said), whether the session was
resumed or new, and its latency; ``read_resume_counters``, the relay's own
``ddp_relay_resumes_total{outcome}`` read from its Prometheus multiprocess files (which
outlive the relay, even a SIGKILLed one). Used by ``tests/e2e/test_chaos.py`` and
``tests/e2e/test_zk_outage.py``.

What it must not do: start or break servers (the tests and the ``cluster`` fixture do), or
decide which outcomes are right.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.convergence import WireClient


class Phase:
    """The chaos step under way: a lost socket is attributed to it."""

    name = "setup"


class ChaosClient(WireClient):
    """A WireClient that records, per reconnect, its cause, outcome and latency."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_cause: str | None = None
        self.loss_cause: str | None = None
        self._opened_at = 0.0
        #: (cause, "resumed" | "new", seconds from socket loss to ``connected``, seconds
        #: from the new socket's WebSocket handshake to ``connected``, old id, new id)
        self.events: list[tuple[str, str, float, float, str | None, str | None]] = []

    def _open_socket(self) -> Any:
        ws = super()._open_socket()
        self._opened_at = time.monotonic()
        return ws

    def _reconnect(self) -> Any:
        with self._lock:
            if self.loss_cause is None:
                self.loss_cause = self.pending_cause or Phase.name
                self.pending_cause = None
        return super()._reconnect()

    def _on_connected(self, msg: dict[str, Any]) -> None:
        reconnect = self._lost_at is not None
        before = self.session
        super()._on_connected(msg)
        if reconnect:
            after = msg.get("session")
            outcome = "resumed" if after == before else "new"
            cause = self.loss_cause or "?"
            server = time.monotonic() - self._opened_at
            self.events.append(
                (cause, outcome, self.reconnect_latencies[-1], server, before, after)
            )
            self.loss_cause = None

    def settled(self) -> bool:
        """Connected, not reconnecting, not waiting for quiescence."""
        with self._lock:
            return self._up and self._lost_at is None and self._subs_reviving is None

    def drop(self, cause: str) -> bool:
        """Shut the TCP socket from the client side (no close frame, no ``disconnect``)."""
        with self._send_lock:
            ws = self._ws
            if ws is None or not self._up or ws.sock is None:
                return False
            with self._lock:
                self.pending_cause = cause
            with contextlib.suppress(OSError):
                ws.sock.shutdown(socket.SHUT_RDWR)
        return True


def read_resume_counters(metrics_dir: Path) -> Counter[str]:
    """``ddp_relay_resumes_total`` by outcome, from a relay's multiprocess files (they
    outlive the relay, even a SIGKILLed one, until its next start wipes them)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    counts: Counter[str] = Counter()
    if not metrics_dir.is_dir() or not any(metrics_dir.glob("*.db")):
        return counts
    collector = MultiProcessCollector(None, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    for metric in collector.collect():  # type: ignore[no-untyped-call]
        if metric.name != "ddp_relay_resumes":
            continue
        for sample in metric.samples:
            if sample.name == "ddp_relay_resumes_total":
                counts[sample.labels["outcome"]] += int(sample.value)
    return counts
