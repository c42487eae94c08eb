"""The relay node of one worker process: its sessions, work pool, backend and ticker.

Layer: L3. The composition root (``relay.server.app``) builds one ``Node`` per worker process;
every socket the worker accepts becomes a ``Session`` served here. One ticker greenlet
drives heartbeats and handshake timeouts for all sessions (no timer per session: memory
per idle session is a product target). ``drain()`` closes every session as "going away"
for a graceful shutdown; readiness turns false first.

Must not: parse DDP or touch sockets directly.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import gevent
import gevent.event

from relay import disconnect
from relay.backend import Backend, Handshake
from relay.config import Settings
from relay.metrics import Metrics, get_metrics
from relay.resume.resumer import Resumer, build_coordinator
from relay.resume.store import ParkStore
from relay.server.session import Session
from relay.server.workpool import WorkPool
from relay.stream.fanout import Attachment, Streams
from relay.stream.listener import Listener
from relay.transport import HeartbeatRegistry, Transport

log = logging.getLogger(__name__)

#: Seconds between two ticks of the heartbeat/timeout ticker.
TICK_SECONDS = 1.0
#: Seconds between two runs of the backend's housekeeping (changelog pruning), jittered.
HOUSEKEEPING_SECONDS = 60.0


class Node:
    """All the DDP sessions of one worker process."""

    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics: Metrics = get_metrics()
        self.pool = WorkPool(settings.backend_concurrency, on_exit=backend.close)
        #: Open sessions (strong references: a session waiting for input is referenced by
        #: nothing else but its socket's watcher). Removed when torn down.
        self.sessions: set[Session] = set()
        self.by_id: dict[str, Session] = {}
        #: SockJS transports get their ``h`` frames from the same ticker.
        self.sockjs_heartbeats = HeartbeatRegistry()
        self.ready = True
        self._ticker: gevent.Greenlet | None = None
        self._housekeeper: gevent.Greenlet | None = None
        self.listener: Listener | None = None
        self.streams = Streams(backend, self._listen, self._unlisten, self.metrics)
        self.streams.on_resync = self._resync
        self.resumer: Resumer | None = None
        if settings.database_url:
            self.listener = Listener(settings.database_url, self.streams, self.metrics)
            if settings.resume_window > 0:
                self.resumer = Resumer(
                    settings,
                    build_coordinator(settings),
                    ParkStore(settings.database_url),
                    self.metrics,
                )
        else:
            log.warning("no RELAY_DATABASE_URL or DATABASE_URL: live updates are off")

    def start(self) -> None:
        if self._ticker is None:
            self._ticker = gevent.spawn(self._tick_forever)
        if self.listener is not None:
            self.listener.start()
            self._housekeeper = gevent.spawn(self._housekeeping_forever)
        if self.resumer is not None:
            self.resumer.start()

    def _housekeeping_forever(self) -> None:
        # Cluster chores run on the coordinator's leader only (changelog pruning, expired
        # parked sessions). Without a coordinator every worker prunes: it is idempotent.
        while True:
            gevent.sleep(HOUSEKEEPING_SECONDS * random.uniform(0.5, 1.5))
            if self.resumer is not None and not self.resumer.is_leader():
                continue
            try:
                self.pool.run(self.backend.housekeeping)
            except Exception:
                log.exception("housekeeping failed")
            if self.resumer is not None:
                self.resumer.housekeeping()

    def _listen(self, channel: str) -> None:
        if self.listener is not None:
            self.listener.listen(channel)

    def _unlisten(self, channel: str) -> None:
        if self.listener is not None:
            self.listener.unlisten(channel)

    def _resync(self, channel: str, attachments: list[Attachment]) -> None:
        for att in attachments:
            self.metrics.resyncs.inc()
            att.session.request_resync(att.sub_id)

    def adopt(self, transport: Transport, handshake: Handshake) -> gevent.event.Event:
        """Serve one socket in the background; the event is set when its session is over."""
        return Session(self, transport, handshake).start()

    def session_opened(self, session: Session) -> None:
        self.sessions.add(session)
        if not self.ready:
            session.close(disconnect.SHUTDOWN)

    def session_connected(self, session: Session) -> None:
        assert session.id is not None
        self.by_id[session.id] = session
        self.metrics.sessions.inc()
        self.metrics.sessions_opened.inc()

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.id is not None and self.by_id.pop(session.id, None) is session:
            self.metrics.sessions.dec()

    def _tick_forever(self) -> None:
        while True:
            gevent.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.sockjs_heartbeats.tick(now)
            for session in list(self.sessions):
                try:
                    session.tick(now)
                except Exception:
                    log.exception("tick failed for session %s", session.id)

    def drain(self) -> None:
        """Graceful shutdown: not ready any more, then every session closed as going away."""
        self.ready = False
        for session in list(self.sessions):
            session.close(disconnect.SHUTDOWN)

    def wait_sessions(self, timeout: float, beat: Callable[[], None] | None = None) -> bool:
        """Wait until every session is torn down (parked or dropped), at most ``timeout``
        seconds; ``beat`` is called meanwhile (gunicorn's liveness notification)."""
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            if beat is not None:
                beat()
            gevent.sleep(0.1)
        return not self.sessions

    def stop(self) -> None:
        self.drain()
        for greenlet in (self._ticker, self._housekeeper):
            if greenlet is not None:
                greenlet.kill(block=False)
        if self.listener is not None:
            self.listener.stop()
        if self.resumer is not None:
            self.resumer.stop()
        self.pool.close()
