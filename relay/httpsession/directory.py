"""The worker's SockJS HTTP sessions, and how a request on any relay reaches its session.

Layer: runtime (gevent). ``Directory`` keeps this process's SockJS sessions that run over
HTTP (``relay.transport.http.HttpTransport``), by key: a hash of the client's SockJS
session id (the id is a credential: whoever knows it may read the session, so it never
leaves this process's memory). Each is registered in the coordinator under ``sx-<key>``
(``record_id``), owned by this relay at an epoch, exactly as a DDP session is. Then:

- a receiving request (``receive``) for a session held here attaches to it (a relay that
  drains answers any other with an ``h`` frame, so that the client's next request
  goes elsewhere, and takes nothing over); one for a
  session held by another live relay asks that relay to hand it over (``"r <key>"`` on the
  inbox's channel), waits for the record to be parked (at most ``move_wait`` seconds),
  claims it (compare-and-set on the epoch: two relays can never both take it) and takes
  the DDP session over through the ``Host`` (``relay.server.node``): resumed from its
  parked state, without ``connected``, with the messages the client was not given. A
  session whose holder died is started anew under the same id (the client sees a second
  ``o``, treats its session as lost and reconnects: its ``connect`` resumes if it can);
- a send (``send``) for a session held here is delivered at once, after anything an
  earlier send left in the inbox (order; to a session closed here but remembered for
  its close frame: accepted and dropped); one held elsewhere goes into the inbox
  (``relay.httpsession.inbox``), whose ring makes the holder take it;
- a hand-over request for a session held here (``on_ring``) lets its queued messages run,
  parks it (its DDP session, then its record, with the DDP session id and how many
  messages the client was given) and forgets it. A session with a receiving request
  still attached here is not handed over but closed: that request's client is gone, and
  what it received is unknown; the client's new SockJS session resumes exactly by
  ``receivedCount``.

Blocking work (coordinator, inbox) never runs in the listener's greenlet: rings spawn.
Per session one lock orders taking from the inbox, delivering, and handing over.

Must not: frame anything (``relay.transport.http``), run DDP (the ``Host``'s sessions), or
keep a SockJS session id anywhere but in memory.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import gevent
import gevent.lock

from coordinator import Coordinator, CoordinatorError, FencedError, SessionExists, SessionRecord
from relay.backend import Handshake
from relay.httpsession.inbox import Inbox, InboxError
from relay.protocol.sockjs import ANOTHER_CONNECTION, HEARTBEAT, encode_close
from relay.transport.base import Inbound
from relay.transport.http import HttpTransport

__all__ = ["MOVES", "Directory", "Host", "Move", "Unavailable", "record_id", "session_key"]

log = logging.getLogger(__name__)

#: What a request for an HTTP session held elsewhere came to (``ddp_relay_sockjs_moves_total``).
Move = Literal[
    "relayed",  # a send went through the inbox to the relay holding its session
    "handed_over",  # this relay parked a session for another to take
    "taken_over",  # this relay took a session over from another
    "refused",  # the holder did not hand it over in time: the request got 2010
    "closed",  # the holder closed it instead (a receiving request was still attached)
    "lost",  # its holder died without handing it over: started anew
]
MOVES: tuple[Move, ...] = get_args(Move)

#: The close frame a receiving request gets while another one holds the session.
_ANOTHER = encode_close(*ANOTHER_CONNECTION)
#: Seconds between hand-over requests while waiting for the holder.
_RING_EVERY = 0.5
#: Seconds between two reads of the record while waiting for the holder.
_LOOK_EVERY = 0.05
#: Waits before the inbox is read again after a failure; then the session is closed.
_TAKE_RETRIES = (0.1, 0.5, 1.0)


class Unavailable(Exception):
    """The coordinator or the inbox cannot be reached: the request gets 503 (not 404:
    the session may well exist)."""


def session_key(session_id: str) -> str:
    """The key of a SockJS session id: what the cluster knows it by."""
    return hashlib.blake2b(session_id.encode("utf-8", "replace"), digest_size=16).hexdigest()


def record_id(key: str) -> str:
    """The coordinator record of the session ``key``."""
    return "sx-" + key


class Host(Protocol):
    """What the directory needs of the worker: DDP sessions on HTTP transports."""

    def refusal(self, handshake: Handshake) -> str | None:
        """Why a new session from this client would be refused now (its address's or the
        worker's connections are full, the worker drains), or None. Counts nothing."""
        ...

    def open(self, transport: HttpTransport, handshake: Handshake) -> Any:
        """Serve a new DDP session on ``transport``; its handle."""
        ...

    def hand_over(self, held: Any, transport: HttpTransport) -> tuple[str, int] | None:
        """Park ``held`` for another relay: its DDP session id ("" before ``connect``)
        and the count of messages the client was given; None when it could not be."""
        ...

    def take_over(
        self, transport: HttpTransport, handshake: Handshake, session_id: str, delivered: int
    ) -> Any | None:
        """Resume the DDP session ``session_id`` on ``transport``, without ``connected``;
        its handle, or None when it cannot be resumed."""
        ...

    def close(self, held: Any) -> None:
        """Close ``held`` the ordinary way (it parks; its client resumes by itself)."""
        ...


@dataclass(eq=False)
class Entry:
    """One session held here."""

    key: str
    transport: HttpTransport
    held: Any
    #: The coordinator record's epoch; None: not registered (coordinator unavailable).
    epoch: int | None
    lock: gevent.lock.Semaphore = field(default_factory=gevent.lock.Semaphore)
    #: Being handed over (or closed for a move): no more deliveries here.
    moving: bool = False


class Directory:
    """This worker's SockJS HTTP sessions. ``coordinator`` None: this process only."""

    #: Seconds a receiving request waits for another relay to hand its session over.
    move_wait: float = 3.0
    #: Seconds a session waits for its queued messages before it is handed over.
    drain_wait: float = 2.0
    #: Seconds a handed-over record stays claimable (the taker is already waiting).
    record_window: float = 60.0

    def __init__(
        self,
        *,
        host: Host,
        inbox: Inbox,
        coordinator: Coordinator | None,
        relay_id: str,
        new_transport: Callable[[bool], HttpTransport],
        count: Callable[[Move], None] = lambda move: None,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.host = host
        self.inbox = inbox
        self.coordinator = coordinator
        self.relay_id = relay_id
        #: Makes a transport: opened (True) for a session taken over.
        self.new_transport = new_transport
        self.count = count
        #: True once this relay drains: it takes no session (new or held elsewhere).
        self.draining = draining
        self._local: dict[str, Entry] = {}
        #: Keys a request of this process is taking over right now (one at a time).
        self._taking: set[str] = set()

    def __len__(self) -> int:
        return len(self._local)

    # -- requests ---------------------------------------------------------------------------

    def receive(self, session_id: str, handshake: Handshake) -> HttpTransport | str:
        """The transport a receiving request streams from, or the one frame it gets
        instead (``c[2010,...]``: another request holds the session; ``h``: ask again
        elsewhere, this relay drains)."""
        key = session_key(session_id)
        for _ in range(3):
            entry = self._local.get(key)
            if entry is not None:
                transport = entry.transport
                if entry.moving or transport.receiving_now:
                    return _ANOTHER
                if transport.closed and transport.close_frame() is None:
                    self._forget(entry, drop=True)  # ended without a frame to serve
                    continue
                return transport
            if self.draining():
                # Not here: an empty answer, and the client's next request goes to
                # another relay (sockjs-client ignores an ``h`` before ``o``).
                return HEARTBEAT
            if self.coordinator is None:
                refusal = self.host.refusal(handshake)
                if refusal is not None:
                    return encode_close(3000, refusal)
                return self._open(key, handshake, None)
            try:
                record = self.coordinator.get_session(record_id(key))
                if record is None:
                    refusal = self.host.refusal(handshake)
                    if refusal is not None:
                        # Nothing registered, nothing kept: told why, and gone.
                        return encode_close(3000, refusal)
                    try:
                        created = self.coordinator.create_session(record_id(key), self.relay_id)
                    except SessionExists:
                        continue  # another request created it meanwhile: look again
                    return self._open(key, handshake, created.epoch)
                if key in self._taking:
                    return _ANOTHER  # a request of this process is taking it already
                self._taking.add(key)
                try:
                    taken = self._take(key, record, handshake)
                finally:
                    self._taking.discard(key)
            except CoordinatorError as exc:
                log.warning("sockjs session directory unavailable (%s): serving it here", exc)
                return self._open(key, handshake, None)
            if taken is not None:
                return taken
        return _ANOTHER

    def send(self, session_id: str, texts: list[Inbound]) -> bool:
        """Deliver a send's messages to the session, wherever it is; False when there is
        no such session (the request gets 404); ``Unavailable`` when the coordinator or
        the inbox cannot say or take them (503)."""
        key = session_key(session_id)
        entry = self._local.get(key)
        if entry is not None and not entry.moving:
            if entry.transport.closed:
                # Accepted and dropped, as sockjs-node does: the client's next receiving
                # request gets the close frame, and it reconnects (re-sending its methods).
                return True
            with entry.lock:
                if not entry.moving:
                    # A send that went through another relay came first: its messages too.
                    earlier = self._take_inbox(key)
                    if earlier is None:
                        self.host.close(entry.held)
                        raise Unavailable("the inbox cannot be read")
                    entry.transport.deliver([*earlier, *texts])
                    return True
        if self.coordinator is None:
            return False
        try:
            if self.coordinator.get_session(record_id(key)) is None:
                return False
            self.inbox.put(key, texts)
        except (CoordinatorError, InboxError) as exc:
            raise Unavailable(str(exc)) from exc
        self.count("relayed")
        return True

    # -- the inbox's channel ------------------------------------------------------------------

    def on_ring(self, payload: str | None) -> None:
        """A notification on the inbox's channel (None: the listener reconnected, some may
        have been missed). Only spawns: the listener's greenlet must not block."""
        if payload is None:
            for key in list(self._local):
                gevent.spawn(self._drain, key)
            return
        op, _, key = payload.partition(" ")
        if key not in self._local:
            return
        if op == "s":
            gevent.spawn(self._drain, key)
        elif op == "r":
            gevent.spawn(self._release, key)

    # -- housekeeping -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Never: the heartbeat registry ticks the directory for as long as it runs."""
        return False

    def heartbeat(self, now: float) -> None:
        """Forget the sessions that ended and whose close frame was served long enough."""
        for entry in [e for e in self._local.values() if e.transport.expired(now)]:
            self._forget(entry, drop=True)

    # -- internals ----------------------------------------------------------------------------

    def _open(self, key: str, handshake: Handshake, epoch: int | None) -> HttpTransport:
        transport = self.new_transport(False)
        self._local[key] = Entry(key, transport, None, epoch)
        self._local[key].held = self.host.open(transport, handshake)
        return transport

    def _take(
        self, key: str, record: SessionRecord | None, handshake: Handshake
    ) -> HttpTransport | str | None:
        """Take the session held by another relay; None: it is gone (look again)."""
        assert self.coordinator is not None
        rid = record_id(key)
        deadline = time.monotonic() + self.move_wait
        rang = 0.0
        members: set[str] = set()
        while record is not None:
            if record.parked:
                try:
                    claimed = self.coordinator.claim_session(
                        rid, self.relay_id, record.epoch, require_parked=True
                    )
                except FencedError:
                    self.count("refused")
                    return _ANOTHER  # another request took it first: it holds it now
                return self._arrive(key, claimed, handshake)
            if record.owner not in members:
                members = {m.relay_id for m in self.coordinator.members()}
            if record.owner not in members:
                # Its holder died with it: the same id starts anew here.
                try:
                    claimed = self.coordinator.claim_session(rid, self.relay_id, record.epoch)
                except FencedError:
                    return _ANOTHER
                self.count("lost")
                with _quietly("inbox"):
                    self.inbox.drop(key)
                return self._open(key, handshake, claimed.epoch)
            now = time.monotonic()
            if now >= deadline:
                self.count("refused")
                return _ANOTHER
            if now - rang >= _RING_EVERY:
                rang = now
                with _quietly("inbox"):
                    self.inbox.ring("r " + key)
            gevent.sleep(_LOOK_EVERY)
            record = self.coordinator.get_session(rid)
        self.count("closed")
        return None

    def _arrive(self, key: str, claimed: SessionRecord, handshake: Handshake) -> HttpTransport:
        """Hold a session claimed from its former holder."""
        session_id = claimed.facts.decode("ascii", "replace")
        transport = self.new_transport(True)
        entry = Entry(key, transport, None, claimed.epoch)
        with entry.lock:
            self._local[key] = entry
            try:
                if session_id:
                    entry.held = self.host.take_over(
                        transport, handshake, session_id, claimed.cursor
                    )
                else:  # handed over before its connect: the session starts here
                    entry.held = self.host.open(transport, handshake)
            except Exception:
                log.exception("taking a sockjs session over failed")
                entry.held = None
            if entry.held is None:
                # Its DDP session cannot go on: the client is told it lost the session.
                del self._local[key]
                transport.close(*ANOTHER_CONNECTION)
                transport.start(lambda texts: None, lambda: None)
                return self._open(key, handshake, claimed.epoch)
            # Anything sent while it moved.
            transport.deliver(self._take_inbox(key) or [])
        self.count("taken_over")
        return transport

    def _take_inbox(self, key: str) -> list[Inbound] | None:
        """What the inbox holds for ``key`` (retried a few times); None when it cannot
        be read: the caller closes the session rather than lose or reorder a send (the
        client reconnects, resumes, and re-sends what was not answered)."""
        for delay in (*_TAKE_RETRIES, None):
            try:
                return list(self.inbox.take(key))
            except InboxError as exc:
                if delay is None:
                    log.warning("could not read the sockjs inbox: %s", exc)
                    return None
                gevent.sleep(delay)
        return None

    def _drain(self, key: str) -> None:
        entry = self._local.get(key)
        if entry is None:
            return
        with entry.lock:
            if entry.moving:
                return
            texts = self._take_inbox(key)
            if texts is None:
                self.host.close(entry.held)
            elif texts and not entry.transport.closed:
                entry.transport.deliver(texts)

    def _release(self, key: str) -> None:
        """Another relay asked for the session: hand it over, or close it."""
        entry = self._local.get(key)
        if entry is None or entry.moving:
            return
        with entry.lock:
            if entry.moving or self._local.get(key) is not entry:
                return
            entry.moving = True
            moved = None
            if not entry.transport.receiving_now and entry.epoch is not None:
                moved = self.host.hand_over(entry.held, entry.transport)
            if moved is None or self.coordinator is None or entry.epoch is None:
                self.host.close(entry.held)
                self._forget(entry, drop=True)
                self.count("closed")
                return
            session_id, delivered = moved
            try:
                self.coordinator.park_session(
                    record_id(key),
                    self.relay_id,
                    entry.epoch,
                    delivered,
                    session_id.encode("ascii"),
                    time.time() + self.record_window,
                )
            except CoordinatorError as exc:
                # Its DDP session is parked: the client's next SockJS session resumes it.
                log.warning("could not hand a sockjs session over: %s", exc)
                self._forget(entry, drop=True)
                self.count("closed")
                return
            self._forget(entry, drop=False)
            self.count("handed_over")

    def _forget(self, entry: Entry, *, drop: bool) -> None:
        if self._local.get(entry.key) is entry:
            del self._local[entry.key]
        if drop:
            # Not in the caller's greenlet: the ticker calls this, and it must not block.
            gevent.spawn(self._drop, entry.key, entry.epoch)

    def _drop(self, key: str, epoch: int | None) -> None:
        if self.coordinator is not None and epoch is not None:
            with _quietly("coordinator"):
                self.coordinator.drop_session(record_id(key), self.relay_id, epoch)
        with _quietly("inbox"):
            self.inbox.drop(key)

    def close(self) -> None:
        """The worker stops: forget every session held here (their DDP sessions parked
        as the worker drained), so that no record outlives this process."""
        for entry in list(self._local.values()):
            self._forget(entry, drop=False)
            self._drop(entry.key, entry.epoch)


class _quietly:
    """Best effort: a failure is logged, not raised (expiry and housekeeping clean up)."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, Exception):
            log.warning("sockjs sessions: %s failed: %s", self.what, exc)
            return True
        return False
