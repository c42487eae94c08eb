"""The relay node of one worker process: it composes the worker's parts and serves sockets.

Layer: runtime. The composition root (``relay.server.app``) builds one ``Node`` per worker
process. The node wires, once: the work pool, the channel streams and their listener, the
resumer, the hub (``relay.server.hub``: open sessions, readiness, drain), the ticker
(``relay.server.ticker``: heartbeats and handshake timeouts) and the housekeeper
(``relay.server.housekeeper``: leader-only changelog pruning), the keepalive
(``relay.server.keepalive``: every worker's lease, for presence), and the ``SessionContext``
(``relay.server.context``) every session is given. Every socket the worker accepts becomes
a ``Session`` (``adopt``). ``drain()`` turns readiness false, then closes every session as
"going away", for a graceful shutdown. The health reporter (``relay.server.readiness``)
reads what the node's parts already know (draining, the keepalive's database round trips,
the listener's and the coordinator's connections) through ``observe``; so does the metrics
sampler (``relay.server.sampler``: the state gauges, once a second), and the label values
alerts use are created at 0 here (``relay.metrics.precreate``).

Must not: parse DDP or touch sockets, keep session state itself (the hub does), or be
imported by a session (sessions see only their ``SessionContext``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet

import gevent
import gevent.event

from relay import disconnect, logs
from relay.backend import Backend, Handshake, QueryData, QuerySpec
from relay.config import Settings
from relay.httpsession.directory import MOVES, Directory, session_key
from relay.httpsession.handler import Handler
from relay.httpsession.inbox import CHANNEL as INBOX_CHANNEL
from relay.httpsession.inbox import Inbox, MemoryInbox, PostgresInbox
from relay.live.queries import LiveQueries
from relay.live.query import QueryHost
from relay.metrics import Metrics, get_metrics, precreate
from relay.resume.resumer import OUTCOMES, Resumer, build_coordinator, relay_id
from relay.resume.store import ParkStore
from relay.server.context import NodeContext
from relay.server.gate import Gate
from relay.server.health import CoordinatorSeen, ListenerSeen, Observation
from relay.server.housekeeper import Housekeeper
from relay.server.hub import Hub, Member
from relay.server.keepalive import Keepalive
from relay.server.readiness import Reporter, RoundTrips, Since
from relay.server.sampler import Sampler, Sources
from relay.server.session import Session
from relay.server.ticker import Ticker
from relay.server.tracebook import make_book
from relay.server.workpool import WorkPool
from relay.stream.fanout import Streams
from relay.stream.listener import Listener
from relay.transport import HeartbeatRegistry, HttpTransport, Transport

log = logging.getLogger(__name__)

#: The label values of ``ddp_relay_disconnects_total{reason}`` (``relay.disconnect``'s table).
DISCONNECT_NAMES = tuple(
    d.name for d in vars(disconnect).values() if isinstance(d, disconnect.Disconnect)
)

#: Why a SockJS HTTP session over the address's or the worker's connections is refused.
TOO_MANY = "Too many connections"

#: Seconds of silence after which a session that a client resumes elsewhere is taken for
#: gone (an unanswered ping, an HTTP session without a request): ``Node._release_live``.
LOOKS_GONE_SECONDS = 1.0

#: The work pool's owner of live-query refetches: together they hold at most one owner's
#: share of the pool, so a storm of refetches never starves sessions' calls.
REFETCH_OWNER = "relay.live"


class Node:
    """One worker process's relay, composed from its parts."""

    def __init__(self, settings: Settings, backend: Backend, health_dir: str = "") -> None:
        self.settings = settings
        self.backend = backend
        #: The database round trips readiness judges: the keepalive's (ORM work, every
        #: few seconds), so readiness costs no query of its own.
        self.round_trips = RoundTrips()
        self._coordinator_since = Since()
        self._started = False
        # The backend configured logging (Django's LOGGING): throttle what clients cause.
        logs.install()
        self.metrics: Metrics = get_metrics()
        precreate(self.metrics, disconnects=DISCONNECT_NAMES, resumes=OUTCOMES, moves=MOVES)
        self.pool = WorkPool(
            settings.backend_concurrency,
            on_exit=backend.close,
            on_wait=self.metrics.workpool_wait_seconds.observe,
        )
        self.hub = Hub(self.metrics, key_of=session_key)
        self.gate = Gate(settings, self.metrics, backend.rate_limit_rules())
        #: SockJS transports get their ``h`` frames from the same ticker.
        self.sockjs_heartbeats = HeartbeatRegistry()
        self.ticker = Ticker(self.hub, self.sockjs_heartbeats)
        self.listener: Listener | None = None
        self.streams = Streams(backend, self._listen, self._unlisten, self.metrics)
        #: Live queries, one per distinct query of the worker's subscriptions; refetches
        #: share one owner's slots of the work pool.
        self.queries = LiveQueries(
            QueryHost(self._refetch, self.streams, self.metrics),
        )
        self.resumer: Resumer | None = None
        self.housekeeper: Housekeeper | None = None
        self.keepalive: Keepalive | None = None
        #: The worker's SockJS sessions over HTTP, and their requests' handler (None: off).
        self.httpsessions: Directory | None = None
        self.http_handler: Handler | None = None
        if settings.database_url:
            self.listener = Listener(settings.database_url, self.streams, self.metrics)
            if settings.resume_window > 0:
                self.resumer = Resumer(
                    settings,
                    build_coordinator(settings),
                    ParkStore(settings.database_url),
                    self.metrics,
                )
            # Cluster chores are the leader's when a coordinator exists; without one every
            # worker prunes (it is idempotent).
            self.housekeeper = Housekeeper(
                self.pool.run, backend.housekeeping, self.resumer, also=[self._prune_inbox]
            )
            # Urgent: a lease renewal late behind client methods lets other workers sweep
            # this worker's presence while its subscribers are still here.
            self.keepalive = Keepalive(
                functools.partial(self.pool.run, urgent=True), self._keepalive_round
            )
        else:
            log.warning("no RELAY_DATABASE_URL or DATABASE_URL: live updates are off")
        #: The relays' control channel (a table and NOTIFY): HTTP sessions' inbox, and the
        #: request to close a session that a client resumes elsewhere.
        self.inbox: Inbox | None = None
        if settings.database_url:
            self.inbox = PostgresInbox(settings.database_url)
            assert self.listener is not None
            self.listener.controls[INBOX_CHANNEL] = self._on_control
            if self.resumer is not None:
                self.resumer.on_live = self._ask_release
        if settings.sockjs_http:
            self._http_sessions()
        self.context = NodeContext(
            settings,
            self.metrics,
            backend,
            self.pool,
            self.streams,
            self.queries,
            self.resumer,
            self.hub,
            self.gate,
        )
        self.context.traces = make_book(self.context)
        self.health = Reporter(
            self.observe, settings.coordinator_required, self.metrics.ready, health_dir
        )
        if self.listener is not None:
            self.metrics.listener_connected.set(0)  # until it has connected and caught up
        self.sampler = Sampler(
            self.metrics,
            Sources(self.pool, self._subscriptions_open, self.listener, self.resumer),
        )

    @property
    def ready(self) -> bool:
        """False once draining: new sockets are refused and ``/readyz`` answers 503."""
        return self.hub.ready

    @property
    def sessions(self) -> AbstractSet[Member]:
        """The open sessions (the hub's live set; read only)."""
        return self.hub.sessions

    def start(self) -> None:
        self.ticker.start()
        self.health.start()
        try:
            self.sampler.run_round()  # the gauges have values from the first scrape on
        except Exception:
            log.exception("the first metrics round failed")
        self.sampler.start()
        if self.listener is not None:
            self.listener.start()
        if self.housekeeper is not None:
            self.housekeeper.start()
        if self.keepalive is not None:
            self.keepalive.start()
        if self.resumer is not None:
            self.resumer.start()
        if self.keepalive is not None:
            # The first round trip now, not a keepalive interval later: readiness waits
            # for one.
            gevent.spawn(self._first_round)
        self._started = True
        self.health.publish()

    # -- readiness hooks --------------------------------------------------------------------

    def _keepalive_round(self) -> None:
        try:
            self.backend.keepalive()
        except Exception as exc:
            self.round_trips.failed(exc)
            raise
        self.round_trips.succeeded()

    def _first_round(self) -> None:
        try:
            self.pool.run(self._keepalive_round, urgent=True)
        except Exception as exc:  # counted by round_trips; the keepalive retries
            log.warning("first database round trip failed: %s", self.round_trips.error or exc)

    def observe(self, now: float) -> Observation:
        """What readiness needs of this worker at monotonic time ``now`` (no I/O)."""
        listener = None
        if self.listener is not None:
            status = self.listener.status()
            listener = ListenerSeen(
                status.connected, status.connected_once, status.since, status.backfill_started
            )
        coordinator = None
        if self.resumer is not None:
            state = self.resumer.coordinator.state.value
            coordinator = CoordinatorSeen(
                state, self._coordinator_since.seen(state, now), self._coordinator_kind()
            )
        return Observation(
            now=now,
            draining=not self.hub.ready,
            backend_loaded=self._started,
            database=self.round_trips.seen() if self.keepalive is not None else None,
            listener=listener,
            coordinator=coordinator,
        )

    def _coordinator_kind(self) -> str:
        if self.settings.zookeeper:
            return "zookeeper"
        return "sqlite" if self.settings.coordinator_path else "memory"

    def _subscriptions_open(self) -> int:
        return sum(len(s.subs) for s in self.hub.members() if isinstance(s, Session))

    def _refetch(self, specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        return self.pool.run(self.backend.fetch, specs, owner=REFETCH_OWNER)

    def _listen(self, channel: str) -> None:
        # The streams exist before the listener (it feeds them): resolved at call time.
        if self.listener is not None:
            self.listener.listen(channel)

    def _unlisten(self, channel: str) -> None:
        if self.listener is not None:
            self.listener.unlisten(channel)

    # -- SockJS over HTTP (relay.httpsession's Host) ---------------------------------------

    def _http_sessions(self) -> None:
        settings = self.settings
        memory: MemoryInbox | None = None
        inbox = self.inbox
        if inbox is None:
            inbox = memory = MemoryInbox()
        moves = self.metrics.sockjs_moves
        directory = Directory(
            host=self,
            inbox=inbox,
            coordinator=self.resumer.coordinator if self.resumer is not None else None,
            relay_id=self.resumer.relay_id if self.resumer is not None else relay_id(),
            new_transport=self._http_transport,
            count=lambda move: moves.labels(outcome=move).inc(),
            draining=lambda: not self.hub.ready,
        )
        if memory is not None:
            memory.rung = directory.on_ring
        self.sockjs_heartbeats.add(directory)
        requests = self.metrics.transport_requests
        self.httpsessions = directory
        self.http_handler = Handler(
            directory,
            settings.max_message_bytes,
            count=lambda transport: requests.labels(transport=transport).inc(),
            allowed_origins=settings.allowed_origins,
            throttle=self.gate.read_throttle,
        )

    def _on_control(self, payload: str | None) -> None:
        """A notification on the relays' control channel (the listener's greenlet: only
        spawns). ``k <key>``: close the session of that key if it runs here."""
        if payload is not None and payload.startswith("k "):
            gevent.spawn(self._release_live, payload[2:])
        elif self.httpsessions is not None:
            self.httpsessions.on_ring(payload)

    def _prune_inbox(self) -> None:
        """Forget sends that no session took: older than the resume window, their session
        is gone for good (a live one takes its messages within a second)."""
        if self.inbox is not None:
            self.inbox.prune(max(self.settings.resume_window, 60.0))

    def _ask_release(self, session_id: str) -> None:
        if self.inbox is not None:
            self.inbox.ring("k " + session_key(session_id))

    def _release_live(self, key: str) -> None:
        """Close the session of ``key`` if its connection looks gone: a ping of its
        went unanswered for a second, or (over HTTP) no request of its client has been
        here for a second. Never a session that is plainly alive: the ring is anyone's who
        knows the session id, and must not let them take a live session over."""
        now = time.monotonic()
        # By key, not by hashing every session's id: a drained relay gets these rings from
        # every session resuming elsewhere, twice a second each.
        session_id = self.hub.by_key.get(key)
        member = None if session_id is None else self.hub.by_id.get(session_id)
        if isinstance(member, Session):
            ping = member.heartbeat.ping_sent_at
            transport = member.transport
            unanswered = ping is not None and now - ping >= LOOKS_GONE_SECONDS
            idle = isinstance(transport, HttpTransport) and (
                transport.idle_for(now) >= LOOKS_GONE_SECONDS
            )
            if unanswered or idle:
                member.close(disconnect.SUPERSEDED)

    def _http_transport(self, opened: bool) -> HttpTransport:
        settings = self.settings
        transport = HttpTransport(
            heartbeat_interval=settings.sockjs_heartbeat,
            disconnect_delay=settings.sockjs_disconnect_delay,
            response_limit=settings.sockjs_response_limit,
            send_buffer=settings.send_buffer_bytes,
            opened=opened,
        )
        self.sockjs_heartbeats.add(transport)
        return transport

    def refusal(self, handshake: Handshake) -> str | None:
        if not self.hub.ready:
            return disconnect.SHUTDOWN.reason
        if len(self.hub.sessions) >= self.settings.worker_connections or not (
            self.gate.may_open(handshake.remote_addr)
        ):
            return TOO_MANY
        return None

    def _admit(self, transport: HttpTransport, handshake: Handshake) -> bool:
        """Count an HTTP session against its address's and the worker's connections, as
        a socket; False (the transport closed, saying why) when over a limit."""
        refusal = self.refusal(handshake)
        if refusal is None and self.gate.open_socket(handshake.remote_addr):
            return True
        transport.close(3000, refusal or TOO_MANY)
        return False

    def open(self, transport: HttpTransport, handshake: Handshake) -> Session | None:
        if not self._admit(transport, handshake):
            return None
        session = Session(self.context, transport, handshake)
        self._linked(session, handshake.remote_addr).start()
        return session

    def take_over(
        self, transport: HttpTransport, handshake: Handshake, session_id: str, delivered: int
    ) -> Session | None:
        # Admitted first: a session claimed and then refused would be left claimed by a
        # relay that does not serve it.
        if self.resumer is None or not self._admit(transport, handshake):
            return None
        # The SockJS session id the client presented is the credential (as it is for
        # sockjs-node): the session is the same client's, between two of its requests.
        resumed = self.resumer.resume(session_id, delivered, lambda state: True, moved=True)
        if resumed is None:
            self.gate.socket_closed(handshake.remote_addr)
            return None
        session = Session(self.context, transport, handshake)
        self._linked(session, handshake.remote_addr)
        session.take_over(resumed, delivered)
        return session

    def hand_over(self, held: object, transport: HttpTransport) -> tuple[str, int] | None:
        if not isinstance(held, Session):
            return None
        directory = self.httpsessions
        wait = directory.drain_wait if directory is not None else 2.0
        return held.hand_over(wait, transport.hand_over)

    def close(self, held: object) -> None:
        if isinstance(held, Session):
            held.close(disconnect.TRANSPORT_CLOSED)

    def _linked(self, session: Session, address: str) -> Session:
        """Give the session's connection count (``_admit``) back when it ends."""
        session.ended.rawlink(lambda _: self.gate.socket_closed(address))
        return session

    def adopt(self, transport: Transport, handshake: Handshake) -> gevent.event.Event:
        """Serve one socket in the background; the event is set when its session is over."""
        return Session(self.context, transport, handshake).start()

    def drain(self) -> None:
        """Graceful shutdown: not ready any more, then every session closed as going away."""
        self.hub.drain()
        # At once, not at the next report: the other workers answer /readyz for the pod.
        self.health.publish()

    def wait_sessions(self, timeout: float, beat: Callable[[], None] | None = None) -> bool:
        """Wait until every session is torn down (parked or dropped), at most ``timeout``
        seconds; ``beat`` is called meanwhile (gunicorn's liveness notification)."""
        return self.hub.wait_empty(timeout, beat)

    def stop(self) -> None:
        self.drain()
        if self.context.traces is not None:
            self.context.traces.stop()
        self.ticker.stop()
        self.sampler.stop()
        self.health.stop()
        if self.housekeeper is not None:
            self.housekeeper.stop()
        if self.keepalive is not None:
            self.keepalive.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.httpsessions is not None:
            self.httpsessions.close()
        if self.resumer is not None:
            self.resumer.stop()
        if self.inbox is not None:
            self.inbox.close()
        self.pool.close()
