"""The worker's one ticker: heartbeats and handshake timeouts of every session, once a second.

Layer: runtime (gevent). One greenlet per worker process, once a second, ticks each open
session whose ``tick_due`` has come (``Session.tick``: heartbeat pings, heartbeat and
handshake timeouts, noticing a socket that closed under it; it says when it is next due,
so an idle session costs a comparison per second) and beats the SockJS transports (their
``h`` frames). There is no timer per session: memory per idle session is a product
target.

Must not: keep state about sessions (the hub does), or let one session's failure stop
the others' ticks.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from relay.protocol.ids import session_tag
from relay.server.periodic import Periodic

if TYPE_CHECKING:
    from relay.server.hub import Hub
    from relay.transport import HeartbeatRegistry

log = logging.getLogger(__name__)

#: Seconds between two ticks of the heartbeat/timeout ticker.
TICK_SECONDS = 1.0


class Ticker(Periodic):
    """Ticks the hub's sessions and the SockJS heartbeats every ``interval`` seconds."""

    __slots__ = ("_heartbeats", "_hub")

    def __init__(
        self, hub: Hub, heartbeats: HeartbeatRegistry, interval: float = TICK_SECONDS
    ) -> None:
        super().__init__(interval)
        self._hub = hub
        self._heartbeats = heartbeats

    def tick(self, now: float) -> None:
        """One tick at monotonic time ``now``."""
        self._heartbeats.tick(now)
        for session in self._hub.members():
            if session.tick_due > now:
                continue  # nothing it could do yet (Session.tick says when)
            try:
                session.tick(now)
            except Exception:
                log.exception("tick failed for session %s", session_tag(session.id))

    def run_round(self) -> None:
        self.tick(time.monotonic())
