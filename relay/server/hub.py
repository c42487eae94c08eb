"""The open sessions of one worker process: who is open, who is connected, and draining.

Layer: runtime. Sessions report their life to the hub (``opened``, ``connected``, ``closed``,
through their ``SessionContext``); the hub keeps them referenced while open, indexes the
connected ones by id, keeps the sessions gauge, and turns the worker's readiness off and
closes every session as "going away" on ``drain``. The ticker walks its members.

Must not: parse DDP, touch sockets, run backend calls, or start greenlets (it is
bookkeeping only; the ticker and the housekeeper are their own modules).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import gevent

from relay import disconnect

if TYPE_CHECKING:
    from relay.metrics import Metrics


class Member(Protocol):
    """A session as the hub and the ticker see it (``relay.server.session.Session``)."""

    @property
    def id(self) -> str | None:
        """Its DDP session id once connected, else None."""
        ...

    def close(self, reason: disconnect.Disconnect) -> None:
        """Close the socket (idempotent, never blocks); ``closed`` follows later."""
        ...

    #: When the ticker next ticks it (monotonic seconds; it sets the next one).
    tick_due: float

    def tick(self, now: float) -> None:
        """From ``tick_due`` on: heartbeats and the handshake timeout."""
        ...


class Hub:
    """Bookkeeping of a worker's sessions, from socket accepted to torn down."""

    __slots__ = ("_key_of", "_metrics", "by_id", "by_key", "ready", "sessions")

    def __init__(self, metrics: Metrics, key_of: Callable[[str], str] | None = None) -> None:
        self._metrics = metrics
        #: ``key_of(session id)``: the key other relays name a session by (a hash: the id
        #: is a credential), kept in ``by_key`` for the connected sessions.
        self._key_of = key_of
        self.by_key: dict[str, str] = {}
        #: Open sessions (strong references: a session waiting for input is referenced by
        #: nothing else but its socket's watcher). Removed when torn down.
        self.sessions: set[Member] = set()
        #: Connected sessions by DDP session id.
        self.by_id: dict[str, Member] = {}
        #: False once draining: new sockets are refused (``/readyz`` says 503).
        self.ready = True

    def __len__(self) -> int:
        return len(self.sessions)

    def members(self) -> list[Member]:
        """A snapshot of the open sessions (they may close while it is walked)."""
        return list(self.sessions)

    # -- the life of a session (its SessionContext's callbacks) ------------------------------

    def opened(self, session: Member) -> None:
        self.sessions.add(session)
        if not self.ready:
            session.close(disconnect.SHUTDOWN)

    def connected(self, session: Member) -> None:
        session_id = session.id
        assert session_id is not None
        # A session resumed here while its previous socket's session is still tearing down
        # (parking) takes over the id: the gauge counts ids, so it stays len(by_id).
        if self.by_id.get(session_id) is None:
            self._metrics.sessions.inc()
        self.by_id[session_id] = session
        if self._key_of is not None:
            self.by_key[self._key_of(session_id)] = session_id
        self._metrics.sessions_opened.inc()

    def closed(self, session: Member) -> None:
        self.sessions.discard(session)
        session_id = session.id
        # Only the id's current holder is forgotten: the late teardown of a session whose
        # id was resumed meanwhile must not evict (nor uncount) the one that resumed it.
        if session_id is not None and self.by_id.get(session_id) is session:
            del self.by_id[session_id]
            if self._key_of is not None:
                self.by_key.pop(self._key_of(session_id), None)
            self._metrics.sessions.dec()

    # -- shutting down --------------------------------------------------------------------------

    def drain(self) -> None:
        """Graceful shutdown: not ready any more, then every session closed as going away."""
        self.ready = False
        for session in self.members():
            session.close(disconnect.SHUTDOWN)

    def wait_empty(self, timeout: float, beat: Callable[[], None] | None = None) -> bool:
        """Wait until every session is torn down (parked or dropped), at most ``timeout``
        seconds; ``beat`` is called meanwhile (gunicorn's liveness notification)."""
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            if beat is not None:
                beat()
            gevent.sleep(0.1)
        return not self.sessions
