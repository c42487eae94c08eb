"""Session resumption across relays: parking a session, and taking it back on reconnect.

Layer: runtime. The coordinator (ZooKeeper, a node-local SQLite file, or in-process) holds each
session's owner and epoch; the park store (``relay.resume.store.ParkedStore``: PostgreSQL,
or its in-memory twin) holds its state. Writes per session: one when it connects, one when
it parks, one when it is claimed; none per message. Every decision is counted in
``ddp_relay_resumes_total{outcome}``, with an outcome from ``OUTCOMES``.

- A new session is registered (``created``); if the coordinator is unavailable the
  session works but cannot be resumed later (counted, logged).
- When its socket goes away (not a deliberate ``disconnect``), the session is parked:
  its state is saved, then the record is marked parked with an expiry.
- A ``connect`` naming that session with a ``receivedCount`` is resumed only if the
  record exists and is parked (waiting briefly for a park still under way), is not
  expired, the log reaches back to the client's count, the session accepts what the
  client presented (its ``accept`` judges the parked state: the same credential, see
  ``relay.server.session``), and the compare-and-set claim on its epoch wins; two relays
  can never both resume it.
  Anything else answers with a new session id and the client resyncs. The session id is
  the client's word: one that cannot be a session id is simply ``unknown``.
- Housekeeping (on the coordinator's leader) forgets the records and the stored states
  whose window passed.
- Metrics: a successful resume's duration (``ddp_relay_resume_seconds``); for the parked
  sessions gauge, ``count_parked`` counts the stored states still inside their window
  (the worker's sampler asks it on the leader only), which is why a resumed session's
  stored state is deleted once claimed: the claim made it useless (the record is no
  longer parked) and it would be counted, and held against its address's cap, until it
  expired.

Must not: touch sockets or DDP framing (the session does), or write per message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

import gevent
import psycopg2
import psycopg2.extensions

from coordinator import (
    Coordinator,
    CoordinatorError,
    FencedError,
    Member,
    NotConnectedError,
    SessionExists,
    SessionNotFound,
    State,
)
from coordinator.base import check_id
from relay.config import ConfigError, Settings
from relay.metrics import Metrics
from relay.protocol.ids import session_tag
from relay.resume.parked import ParkedSession
from relay.resume.store import TABLE, ParkedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Seconds a resume waits for a live old owner to finish parking the session (a park is
#: one upsert and one coordinator write, after the session's in-flight method finished).
PARK_WAIT_SECONDS = 2.0
#: Seconds between two requests that the live holder of a session being resumed close it.
ASK_EVERY = 0.5
#: Seconds a coordinator call waits out a suspended connection (a ZooKeeper leader
#: election takes about two) before the session is treated as not resumable.
SUSPENDED_WAIT_SECONDS = 5.0
#: The same, for a resume (the client is waiting: it gets a new session after this).
RESUME_WAIT_SECONDS = 2.0
#: The parked sessions still resumable (the sampler's gauge: the leader asks every few seconds).
COUNT_PARKED = f"SELECT count(*) FROM {TABLE} WHERE expires_at > now()"

#: The label values of ``ddp_relay_resumes_total{outcome}`` (a fixed table: the metric's
#: cardinality never depends on what clients send).
Outcome = Literal[
    "resumed",  # a reconnect took its session back
    "parked",  # a session whose socket went away can be resumed
    "park_fenced",  # ...could not be parked: someone claimed it meanwhile
    "park_failed",  # ...could not be parked: store or coordinator failed
    "park_refused",  # ...not parked: its address parked too many bytes already
    "unregistered",  # a session the coordinator could not record: never resumable
    "unknown",  # resume refused: no such session (never was, dropped, or reaped)
    "owner_gone",  # ...its owner died before parking it
    "not_parked",  # ...its owner did not park it within the wait
    "expired",  # ...its window passed
    "lost",  # ...its state is missing or of a format this code cannot read
    "not_bound",  # ...the client did not present what the session was bound to
    "count",  # ...the client's receivedCount is outside what the log can replay
    "fenced",  # ...another relay claimed it first
    "unavailable",  # ...the coordinator or the store is down or failed
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


@dataclass(frozen=True, slots=True)
class Resumed:
    state: ParkedSession
    epoch: int
    #: Messages sent before the socket died that the client did not receive, in order.
    missed: list[str]


def redacted(exc: BaseException, session_id: str) -> str:
    """``exc``'s text for a log line, with the session id (a credential: whoever has it can
    resume the session) replaced by its tag; coordinator and store errors name it."""
    return str(exc).replace(session_id, session_tag(session_id))


def relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def build_coordinator(settings: Settings) -> Coordinator:
    """The coordinator the settings ask for (imported lazily: kazoo only when needed)."""
    if settings.zookeeper:
        try:
            from coordinator.zk import ZooKeeperCoordinator
        except ModuleNotFoundError as exc:
            if exc.name != "kazoo" and not (exc.name or "").startswith("kazoo."):
                raise
            # kazoo is the ``zookeeper`` extra: say so at start, not with a bare traceback.
            raise ConfigError(
                "RELAY_ZOOKEEPER is set but kazoo is not installed: "
                "pip install 'ddp-relay[zookeeper]'"
            ) from exc
        from coordinator.zksecurity import ZooKeeperSecurity

        security = ZooKeeperSecurity(
            digest=settings.zookeeper_digest,
            tls=settings.zookeeper_tls,
            tls_ca=settings.zookeeper_tls_ca,
            tls_cert=settings.zookeeper_tls_cert,
            tls_key=settings.zookeeper_tls_key,
            tls_verify=settings.zookeeper_tls_verify,
        )
        return ZooKeeperCoordinator(settings.zookeeper, handler="gevent", security=security)
    if settings.coordinator_path:
        from coordinator.sqlite import SQLiteCoordinator

        coord: Coordinator = SQLiteCoordinator(settings.coordinator_path)
        return coord
    from coordinator.memory import MemoryCoordinator, MemoryStore

    return MemoryCoordinator(MemoryStore())


class Resumer:
    #: The waits, per instance so that tests can shorten them (defaults: the constants).
    park_wait: float = PARK_WAIT_SECONDS
    suspended_wait: float = SUSPENDED_WAIT_SECONDS
    resume_wait: float = RESUME_WAIT_SECONDS

    def __init__(
        self,
        settings: Settings,
        coordinator: Coordinator,
        store: ParkedStore,
        metrics: Metrics | None,
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.store = store
        self.metrics = metrics
        self.relay_id = relay_id()
        #: Called with a session id whose resume finds it still live on a live relay,
        #: every ``ASK_EVERY`` s of the wait: that relay is asked to close it if its
        #: connection looks gone (the client is here), so that it parks within the wait
        #: (``relay.server.node``: a ring on the relays' control channel). None: wait.
        self.on_live: Callable[[str], None] | None = None
        #: The connection ``count_parked`` uses (opened on first use, on the leader only).
        self._counter: psycopg2.extensions.connection | None = None

    def start(self) -> None:
        # Never blocks the worker's start: a coordinator that is down is retried in the
        # background, and sessions meanwhile simply cannot be resumed.
        gevent.spawn(self._start)

    def _start(self) -> None:
        try:
            self.coordinator.register_member(Member(self.relay_id, self.relay_id, time.time()))
            self.coordinator.run_for_leader()
            self.coordinator.start(timeout=10.0)
        except Exception:
            log.exception("coordinator did not start; sessions are not resumable for now")

    def stop(self) -> None:
        try:
            self.coordinator.stop()
        except Exception:
            log.exception("coordinator stop failed")
        self.store.close()
        self._close_counter()

    # -- the life of a session ----------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """Call the coordinator, riding out a suspension of up to ``wait`` seconds (default
        ``suspended_wait``; SUSPENDED is not LOST: a ZooKeeper leader election takes about
        two)."""
        deadline = time.monotonic() + (self.suspended_wait if wait is None else wait)
        delay = 0.05
        while True:
            try:
                return fn(*args)
            except NotConnectedError:
                if time.monotonic() + delay > deadline:
                    raise
                gevent.sleep(delay)
                delay = min(delay * 2, 0.5)

    def created(self, session_id: str) -> int | None:
        """Register a new session; its epoch, or None when it cannot be resumed later."""
        try:
            # No waiting here: the client is waiting for `connected`. A session that could
            # not be registered now is registered when it parks.
            return self._call(
                self.coordinator.create_session, session_id, self.relay_id, wait=0.0
            ).epoch
        except (CoordinatorError, OSError) as exc:
            self._count("unregistered")
            log.warning(
                "session %s is not resumable: coordinator unavailable (%s)",
                session_tag(session_id),
                redacted(exc, session_id),
            )
            return None

    def park(self, state: ParkedSession, epoch: int, owner: str = "") -> bool:
        """Park ``state`` for the resume window; False when it could not be (counted).
        ``owner`` is the client's address: its parked bytes are capped
        (``RELAY_RESUME_BYTES_PER_ADDRESS``); past the cap the session is dropped."""
        window = self.settings.resume_window
        try:
            kept = self.store.save(
                state, window, owner=owner, owner_limit=self.settings.resume_bytes_per_address
            )
            if not kept:
                self._count("park_refused")
                self.dropped(state.session_id, epoch)
                return False
            self._call(
                self.coordinator.park_session,
                state.session_id,
                self.relay_id,
                epoch,
                state.sent_count,
                b"",
                time.time() + window,
            )
        except FencedError:
            # Someone claimed it meanwhile (a fast reconnect): theirs now.
            self._count("park_fenced")
            return False
        except Exception as exc:
            self._count("park_failed")
            log.warning(
                "could not park session %s: %s",
                session_tag(state.session_id),
                redacted(exc, state.session_id),
            )
            return False
        self._count("parked")
        return True

    def dropped(self, session_id: str, epoch: int | None) -> None:
        """The client said ``disconnect``: nothing to resume."""
        # Best effort: expiry cleans up whatever this could not.
        with contextlib.suppress(Exception):
            if epoch is not None:
                self.coordinator.drop_session(session_id, self.relay_id, epoch)
        with contextlib.suppress(Exception):
            self.store.delete(session_id)

    def resume(
        self,
        session_id: str,
        received_count: int,
        accept: Callable[[ParkedSession], bool],
        *,
        moved: bool = False,
    ) -> Resumed | None:
        """Take over a parked session, or None (with the reason counted) to start anew.

        ``accept(state)`` decides whether the reconnecting client may have the parked
        state (it runs before the claim, may block, and is called at most once).
        ``moved``: not a reconnect but a session handed over between relays
        (``relay.httpsession``), whose client may not have been given ``connected`` yet."""
        outcome: Resumed | Outcome
        started = time.monotonic()
        try:
            check_id("session id", session_id)
        except ValueError:
            # Not an id this cluster ever gave out (the client says anything it likes):
            # unknown, not a coordinator failure, and not worth a log line.
            self._count("unknown")
            return None
        try:
            outcome = self._resume(session_id, received_count, accept, 0 if moved else 1)
        except FencedError:
            outcome = "fenced"
        except SessionNotFound:
            outcome = "unknown"  # reaped (or dropped) between the read and the claim
        except (NotConnectedError, SessionExists):
            outcome = "unavailable"
        except Exception as exc:
            log.warning(
                "resume of %s failed: %s", session_tag(session_id), redacted(exc, session_id)
            )
            outcome = "unavailable"
        if isinstance(outcome, str):
            self._count(outcome)
            # One line per refused resume (a client starting over is worth knowing why).
            log.info("session %s not resumed: %s", session_tag(session_id), outcome)
            return None
        # Claimed: the stored state is spent (a later park writes a new one).
        with contextlib.suppress(Exception):
            self.store.delete(session_id)
        self._count("resumed")
        if self.metrics is not None:
            self.metrics.resume_seconds.observe(time.monotonic() - started)
        return outcome

    def _resume(
        self,
        session_id: str,
        received_count: int,
        accept: Callable[[ParkedSession], bool],
        floor: int,
    ) -> Resumed | Outcome:
        record = self._call(self.coordinator.get_session, session_id, wait=self.resume_wait)
        deadline = time.monotonic() + self.park_wait
        asked = 0.0
        while record is not None and not record.parked and time.monotonic() < deadline:
            if record.owner not in {m.relay_id for m in self.coordinator.members()}:
                # Read once more: a relay shutting down gracefully parks its sessions and
                # then leaves, possibly between the read above and the membership check.
                again = self.coordinator.get_session(session_id)
                if again == record:
                    return "owner_gone"  # killed before it could park: nothing to resume
                record = again
                continue
            if self.on_live is not None and time.monotonic() - asked >= ASK_EVERY:
                # Again while waiting: the holder closes it only once it looks gone.
                asked = time.monotonic()
                with contextlib.suppress(Exception):
                    self.on_live(session_id)
            gevent.sleep(0.05)  # the old owner is still parking it
            record = self.coordinator.get_session(session_id)
        if record is None:
            return "unknown"
        if not record.parked:
            return "not_parked"
        if record.expires_at < time.time():
            return "expired"
        state = self.store.load(session_id)
        if state is None:
            # Claimed meanwhile by another relay (which deletes the spent state): fenced,
            # not lost.
            again = self.coordinator.get_session(session_id)
            if again is not None and again.epoch != record.epoch:
                return "fenced"
            return "lost"
        missed = state.missed_since(received_count, floor)
        if missed is None:
            return "count"
        if not accept(state):
            return "not_bound"
        claimed = self._call(
            lambda: self.coordinator.claim_session(
                session_id, self.relay_id, record.epoch, require_parked=True
            ),
            wait=self.resume_wait,
        )
        return Resumed(state, claimed.epoch, missed)

    def is_leader(self) -> bool:
        try:
            return self.coordinator.is_leader()
        except Exception:
            return False

    def housekeeping(self) -> None:
        """Forget sessions whose window passed. The node calls it on the coordinator's
        leader only (``Node._housekeeping_forever``)."""
        # Two independent chores: one failing does not hold up the other.
        try:
            now = time.time()
            for session_id in self.coordinator.expired_sessions(now):
                self.coordinator.reap_session(session_id, now)
        except Exception as exc:
            log.warning("session housekeeping failed (coordinator): %s", exc)
        try:
            self.store.delete_expired()
        except Exception as exc:
            log.warning("session housekeeping failed (park store): %s", exc)

    def coordinator_connected(self) -> bool:
        """The coordinator's session is up (SUSPENDED and LOST are not)."""
        try:
            return self.coordinator.state is State.CONNECTED
        except Exception:
            return False

    def count_parked(self) -> int | None:
        """How many parked sessions are still inside their window, cluster-wide (one
        query on a connection of its own); None when the database cannot say."""
        dsn = self.settings.database_url
        if not dsn:
            return None
        try:
            if self._counter is None or self._counter.closed:
                self._counter = psycopg2.connect(dsn, application_name="ddp-relay metrics")
                self._counter.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
            with self._counter.cursor() as cur:
                cur.execute(COUNT_PARKED)
                row = cur.fetchone()
            return int(row[0]) if row is not None else 0
        except psycopg2.Error as exc:
            log.warning("could not count the parked sessions: %s", str(exc).strip())
            self._close_counter()
            return None

    def _close_counter(self) -> None:
        if self._counter is not None:
            with contextlib.suppress(Exception):
                self._counter.close()
            self._counter = None

    def _count(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.resumes.labels(outcome=outcome).inc()
