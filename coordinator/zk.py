"""The ZooKeeper coordinator: ``Coordinator`` over kazoo.

Job: membership (ephemeral znodes), session records (persistent znodes whose znode
*version* is the compare-and-set token behind every fence), the expiry index of parked
sessions (empty znodes by the minute their window ends, so the leader's sweep reads the
sessions due, not every record) and leader election (ephemeral-sequential candidates;
lowest sequence leads; each watches its predecessor).
Layout: ``coordinator.paths``. Every kazoo exception becomes a ``coordinator.errors`` one.

Threads and greenlets: kazoo calls our state listener and watchers on its callback
thread/greenlet; they only put an event on ``self._events``. One worker (spawned with the
kazoo handler, so a greenlet under ``handler="gevent"``) drains it: it tells our own
listeners, re-creates members and candidacy after a reconnect, and runs the election.

States: SUSPENDED is not LOST. On SUSPENDED nothing is torn down, but leadership is
paused (``is_leader()`` is False) and calls raise ``NotConnectedError`` at once instead of
queueing behind the reconnect. On LOST the ephemerals are gone; when CONNECTED again the
worker re-creates the members registered and re-joins the election.

Security (``coordinator.zksecurity``): with a digest credential kazoo re-sends it on every
(re)connect before any request, and every znode we create, parents included, carries an
ACL for that identity only. On each CONNECTED the worker takes over the coordinator's own
nodes that an unsecured relay left open (``_secure_tree``: the root, its three containers
and, when the sessions container was open, the session records); it never touches what
lies above the root. With TLS the connection is wrapped by kazoo (``use_ssl``); a
certificate that does not verify is a connection that never comes up (kazoo logs why and
retries; the state stays LOST), not an exception.

Writes interrupted by a connection loss: the command retry policy retries briefly and
each retry first re-reads, so a write that did land is recognised as ours (its exact bytes
are there). If the connection does not come back within the retry budget the call raises
``NotConnectedError`` and the outcome is unknown (the caller must treat the session as not
resumable; the record's fence still holds).

Must not: import ``relay`` or Django, block inside a kazoo callback, write per message,
or hold a lock across a ZooKeeper round trip.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    SessionExpiredError,
)
from kazoo.retry import ForceRetryError, KazooRetry, RetryFailedError

from coordinator.base import (
    LeaderCallback,
    Member,
    SessionRecord,
    State,
    StateListener,
    call_quietly,
    check_id,
    check_owner,
    claimed,
)
from coordinator.codec import decode_member, decode_record, encode_member, encode_record
from coordinator.errors import (
    CoordinatorError,
    NotConnectedError,
    SessionExists,
    SessionNotFound,
)
from coordinator.paths import DEFAULT_ROOT, Paths
from coordinator.zksecurity import RedactAuth, ZooKeeperSecurity, is_open

__all__ = ["ZooKeeperCoordinator"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATES = {
    KazooState.CONNECTED: State.CONNECTED,
    KazooState.SUSPENDED: State.SUSPENDED,
    KazooState.LOST: State.LOST,
}
# Compare-and-set rounds lost to a concurrent same-epoch write (a re-park) before giving up.
_CAS_ROUNDS = 8
#: The expiry index's granularity: a parked session is listed under the minute its
#: window ends (``<root>/expiry/<expires_at // 60>``).
EXPIRY_BUCKET_SECONDS = 60


def expiry_bucket(when: float) -> int:
    """The index minute of a time (seconds since the epoch)."""
    return int(when // EXPIRY_BUCKET_SECONDS)


_NOT_CONNECTED = (ConnectionLoss, SessionExpiredError, ConnectionClosedError, RetryFailedError)


class ZooKeeperCoordinator:
    """``Coordinator`` on a ZooKeeper ensemble (``hosts``: "h1:2181,h2:2181/chroot")."""

    def __init__(
        self,
        hosts: str,
        root: str = DEFAULT_ROOT,
        handler: Literal["gevent", "threading"] = "gevent",
        session_timeout: float = 10.0,
        op_timeout: float = 5.0,
        security: ZooKeeperSecurity | None = None,
    ) -> None:
        self._paths = Paths(root)
        self._security = security or ZooKeeperSecurity()
        self._op_timeout = op_timeout
        kazoo_handler = _make_handler(handler)
        sleep = kazoo_handler.sleep_func
        self._client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            handler=kazoo_handler,
            connection_retry=KazooRetry(
                max_tries=-1, delay=0.2, backoff=2, max_delay=5, sleep_func=sleep
            ),
            command_retry=KazooRetry(
                max_tries=3, delay=0.2, backoff=2, max_delay=1, sleep_func=sleep
            ),
            auth_data=self._security.auth_data(),
            default_acl=self._security.acl(),
            logger=_kazoo_logger(),
            **self._security.tls_kwargs(),
        )
        self._handler = kazoo_handler
        self._timeout_exc: type[BaseException] = kazoo_handler.timeout_exception
        _serialize_submissions(self._client, kazoo_handler.lock_object())
        self._events: Any = kazoo_handler.queue_impl()
        self._lock: Any = kazoo_handler.lock_object()
        self._listeners: list[StateListener] = []
        self._members: dict[str, Member] = {}
        self._leader_cb: LeaderCallback | None = None
        self._want_leader = False
        self._token = uuid.uuid4().hex
        self._candidate: str | None = None  # our election node's name, once created
        # The ZooKeeper session our candidate node led in: leadership is valid only while
        # that very session is CONNECTED (a new session after LOST has not won anything).
        self._leading_session: int | None = None
        self._announced = False  # last value given to the leader callback
        self._worker: Any = None
        self._stopped = False
        self._client.add_listener(self._on_kazoo_state)

    # --- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return _STATES.get(self._client.state, State.LOST)

    def start(self, timeout: float = 10.0) -> bool:
        with self._lock:
            if self._stopped:
                raise CoordinatorError("a stopped coordinator cannot be restarted")
            starting = self._worker is None
            if starting:
                self._worker = self._handler.spawn(self._run)
        if starting:
            self._client.start_async().wait(timeout)
        return self.state is State.CONNECTED

    def stop(self) -> None:
        """Close the session: ZooKeeper deletes our member and candidate nodes at once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._candidate = None
        self._events.put(("stop", None))
        if self._worker is not None:
            self._worker.join(self._op_timeout)
        try:
            self._client.stop()
            self._client.close()
        except KazooException as exc:  # pragma: no cover - best effort
            log.warning("kazoo stop failed: %r", exc)
        self._leading_session = None
        if self._announced and self._leader_cb is not None:
            self._announced = False
            self._leader_cb(False)

    def add_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # --- membership ------------------------------------------------------------------

    def register_member(self, member: Member) -> None:
        with self._lock:
            self._members[member.relay_id] = member
        if self.state is not State.CONNECTED:
            return  # the worker creates it on the next CONNECTED
        try:
            self._ensure_member(member)
        except NotConnectedError:
            pass  # disconnected meanwhile: the worker creates it on the next CONNECTED
        except CoordinatorError:
            with self._lock:
                self._members.pop(member.relay_id, None)
            raise

    def members(self) -> list[Member]:
        def op() -> list[Member]:
            names = self._children(self._paths.members)
            found = []
            for name, data in self._get_many([self._paths.member(n) for n in names], names):
                try:
                    found.append(decode_member(name, data))
                except CoordinatorError as exc:
                    log.warning("%s", exc)
            return sorted(found, key=lambda m: m.relay_id)

        return self._attempt(op)

    # --- sessions --------------------------------------------------------------------

    def create_session(self, session_id: str, owner: str) -> SessionRecord:
        record = SessionRecord(session_id=session_id, owner=owner, epoch=1)
        data = encode_record(record)
        path = self._paths.session(session_id)
        tried = False

        def op() -> SessionRecord:
            nonlocal tried
            try:
                if tried:  # a lost reply: did our create land?
                    current = self._read(session_id)
                    if current is not None and current[0] == data:
                        return record
                tried = True
                self._wait(self._client.create_async(path, data, makepath=True))
                return record
            except NodeExistsError as exc:
                raise SessionExists(session_id) from exc

        return self._attempt(op)

    def get_session(self, session_id: str) -> SessionRecord | None:
        check_id("session id", session_id)

        def op() -> SessionRecord | None:
            current = self._read(session_id)
            return None if current is None else decode_record(session_id, current[0])

        return self._attempt(op)

    def claim_session(
        self,
        session_id: str,
        new_owner: str,
        expected_epoch: int,
        *,
        require_parked: bool = False,
    ) -> SessionRecord:
        check_id("owner", new_owner)

        def change(current: SessionRecord) -> SessionRecord:
            return claimed(current, new_owner, expected_epoch, require_parked=require_parked)

        return self._compare_and_set(session_id, change)

    def park_session(
        self,
        session_id: str,
        owner: str,
        epoch: int,
        cursor: int,
        facts: bytes,
        expires_at: float,
    ) -> SessionRecord:
        record = SessionRecord(session_id, owner, epoch, cursor, True, expires_at, facts)

        def change(current: SessionRecord) -> SessionRecord:
            check_owner(current, owner, epoch)
            return record

        parked = self._compare_and_set(session_id, change)
        self._index_expiry(parked)
        return parked

    def _index_expiry(self, record: SessionRecord) -> None:
        """The record's entry in the expiry index (after the park: an entry whose record
        says otherwise is stale, and the sweep deletes it). Not written (the connection
        went): the park stands, and the next full scan finds the record."""
        path = self._paths.expiry_entry(
            expiry_bucket(record.expires_at), record.session_id, record.epoch
        )

        def op() -> None:
            # Already there: a re-park in the same minute, or our write whose reply was lost.
            with contextlib.suppress(NodeExistsError):
                self._create_with_parents(path)

        try:
            self._attempt(op)
        except CoordinatorError as exc:
            log.warning("session %s parked but not indexed: %s", record.session_id, exc)

    def drop_session(self, session_id: str, owner: str, epoch: int) -> None:
        def may_delete(current: SessionRecord) -> bool:
            check_owner(current, owner, epoch)
            return True

        if not self._delete_if(session_id, may_delete):
            raise SessionNotFound(session_id)

    def expired_sessions(self, now: float) -> list[str]:
        """Reads the records the expiry index says are due (``<root>/expiry``: the minutes
        up to ``now``), pipelined: O(sessions due) per call, and deletes the entries it
        finds stale (their record resumed, re-parked, reaped or dropped, or a name that is
        no entry's) and the minutes it emptied.

        Once per tree, while ``<root>/expiry`` has no ``indexed`` marker (a tree whose
        records were parked before the index existed), it reads every record instead,
        then sets the marker. Never again after: listing the sessions container is
        O(sessions) and, past some 50,000 sessions, larger than ZooKeeper's default 1 MB
        reply (``jute.maxbuffer``). A park whose entry a lost connection kept from being
        written (it is logged) leaves its record to the park store's own expiry: resuming
        it is refused once its window passed; only the znode stays.
        """

        def op() -> list[str]:
            if self._indexed():
                return self._scan_index(now)
            expired = self._scan_all(now)
            with contextlib.suppress(NodeExistsError):
                self._create_with_parents(self._paths.expiry_marker)
            return expired

        return self._attempt(op)

    def _indexed(self) -> bool:
        return self._wait(self._client.exists_async(self._paths.expiry_marker)) is not None

    def _scan_all(self, now: float) -> list[str]:
        names = self._children(self._paths.sessions)
        paths = [self._paths.session(n) for n in names]
        expired = []
        for name, data in self._get_many(paths, names):
            try:
                record = decode_record(name, data)
            except CoordinatorError as exc:
                log.warning("%s", exc)
                continue
            if record.parked and record.expires_at <= now:
                expired.append(name)
        return sorted(expired)

    def _scan_index(self, now: float) -> list[str]:
        paths = self._paths
        last = expiry_bucket(now)
        due = [b for b in self._children(paths.expiry) if b.isdigit() and int(b) <= last]
        entries: list[tuple[str, str, int]] = []  # (entry path, session id, epoch)
        stale = []
        for bucket in due:
            bucket_path = paths.expiry_bucket(int(bucket))
            try:
                names = self._children(bucket_path)
            except NoAuthError:
                # Another identity's (a relay on the old credential mid-rotation): one
                # minute skipped, not the sweep.
                log.error("znode %s is not ours: %s", bucket_path, _FOREIGN)
                continue
            for name in names:
                try:
                    session_id, epoch = paths.expiry_entry_parts(name)
                except ValueError:
                    stale.append(f"{bucket_path}/{name}")
                    continue
                entries.append((f"{bucket_path}/{name}", session_id, epoch))
        ids = sorted({session_id for _, session_id, _ in entries})
        records: dict[str, SessionRecord] = {}
        for name, data in self._get_many([paths.session(i) for i in ids], ids):
            try:
                records[name] = decode_record(name, data)
            except CoordinatorError as exc:
                log.warning("%s", exc)
        expired: set[str] = set()
        for path, session_id, epoch in entries:
            record = records.get(session_id)
            current = (
                record is not None
                and record.parked
                and record.epoch == epoch
                and path.startswith(paths.expiry_bucket(expiry_bucket(record.expires_at)) + "/")
            )
            if not current:
                stale.append(path)
            elif record is not None and record.expires_at <= now:
                expired.add(session_id)  # its entry goes at the next sweep, the record gone
        self._delete_quietly(stale)
        self._delete_quietly([paths.expiry_bucket(int(b)) for b in due])  # if emptied
        return sorted(expired)

    def _create_with_parents(self, path: str) -> None:
        """Create the empty node ``path``, and its missing parents (as ``makepath``).

        Not kazoo's ``makepath``: its asynchronous form creates the parents from a
        completion callback that blocks on a result, which gevent refuses in the event
        loop ("Impossible to call blocking function"): under a burst of parks into a new
        minute every one of them failed. NodeExistsError if ``path`` is there already."""
        try:
            self._wait(self._client.create_async(path, b""))
        except NoNodeError:
            parent = path.rsplit("/", 1)[0]
            if not parent:
                raise
            with contextlib.suppress(NodeExistsError):
                self._create_with_parents(parent)
            self._wait(self._client.create_async(path, b""))

    def _delete_quietly(self, targets: list[str]) -> None:
        """Delete ``targets`` (pipelined), leaving those gone, not empty or not ours."""
        pending = [self._client.delete_async(p) for p in targets]
        for result in pending:
            with contextlib.suppress(NoNodeError, NotEmptyError, NoAuthError):
                self._wait(result)

    def reap_session(self, session_id: str, now: float) -> bool:
        def may_delete(current: SessionRecord) -> bool:
            return current.parked and current.expires_at <= now

        return self._delete_if(session_id, may_delete)

    # --- leadership ------------------------------------------------------------------

    def run_for_leader(self, on_change: LeaderCallback | None = None) -> None:
        with self._lock:
            self._want_leader = True
            self._leader_cb = on_change
        self._events.put(("elect", None))

    def is_leader(self) -> bool:
        leading = self._leading_session
        return (
            leading is not None and self.state is State.CONNECTED and leading == self._session_id()
        )

    # --- kazoo callbacks: enqueue only -----------------------------------------------

    def _on_kazoo_state(self, kazoo_state: str) -> None:
        self._events.put(("state", kazoo_state))

    def _on_watch(self, event: object) -> None:
        self._events.put(("elect", None))

    # --- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            kind, value = self._events.get()
            if kind == "stop":
                return
            try:
                if kind == "state":
                    self._handle_state(_STATES.get(value, State.LOST))
                else:
                    self._elect()
            except NotConnectedError as exc:
                log.info("coordinator: %s; will retry on the next CONNECTED", exc)
            except Exception:  # top of the worker: log, try again later, keep serving
                log.exception("coordinator worker: error handling %s; retrying in 1 s", kind)
                self._handler.spawn(self._enqueue_later, ("elect", None), 1.0)
            self._announce()

    def _enqueue_later(self, event: tuple[str, object], delay: float) -> None:
        self._handler.sleep_func(delay)
        self._events.put(event)

    def _handle_state(self, state: State) -> None:
        with self._lock:
            listeners = list(self._listeners)
            members = list(self._members.values())
            if state is State.LOST:
                self._candidate = None
                self._leading_session = None
        for listener in listeners:
            call_quietly(log, listener, state)
        if state is State.CONNECTED:
            if self._security.digest:
                try:
                    self._secure_tree()
                except NotConnectedError:
                    raise
                except CoordinatorError as exc:
                    log.error("cannot secure the coordinator's znodes: %s", exc)
            for member in members:
                try:
                    self._ensure_member(member)
                except NotConnectedError:
                    raise
                except CoordinatorError as exc:
                    log.error("cannot register member %s: %s", member.relay_id, exc)
            self._elect()

    def _announce(self) -> None:
        now = self.is_leader()
        callback = self._leader_cb
        if now != self._announced and callback is not None:
            self._announced = now
            call_quietly(log, callback, now)

    def _elect(self) -> None:
        """One election round: ensure our candidate node; lead, or watch our predecessor."""
        with self._lock:
            if not self._want_leader or self._stopped:
                return
        if self.state is not State.CONNECTED:
            return
        election = self._paths.election

        def op() -> None:
            children = self._children(election)
            mine = [c for c in children if c.startswith(f"{self._token}-n_")]
            if self._candidate is None or self._candidate not in children:
                if mine:  # created by an attempt whose reply was lost
                    self._candidate = min(mine, key=Paths.sequence)
                else:
                    prefix = self._paths.candidate_prefix(self._token)
                    path = self._wait(
                        self._client.create_async(
                            prefix, b"", ephemeral=True, sequence=True, makepath=True
                        )
                    )
                    self._candidate = str(path).rsplit("/", 1)[1]
                    # Read again: a candidate created between our read and our create
                    # has a lower sequence; the list read before would not show it and
                    # both would lead.
                    children = self._children(election)
                    if self._candidate not in children:
                        raise ForceRetryError()  # our session's node is gone: try anew
            ordered = sorted(children, key=Paths.sequence)
            index = ordered.index(self._candidate)
            self._leading_session = self._session_id() if index == 0 else None
            if index > 0:
                predecessor = f"{election}/{ordered[index - 1]}"
                if self._wait(self._client.exists_async(predecessor, watch=self._on_watch)) is None:
                    self._events.put(("elect", None))  # it went away meanwhile: look again

        self._attempt(op)

    def _secure_tree(self) -> None:
        """Give our ACL to the coordinator's nodes that were created open.

        The root and its containers are checked on every CONNECTED (five pipelined
        reads), and so are the expiry index's minutes (a few: those of the resume window),
        whose children's names are session ids: an open minute would let anyone list
        them (the entries hold nothing and are deleted through their minute). The session
        records only when the sessions container itself was open, i.e. once, by the first
        relay that runs with the credential: before the containers are closed (an
        interrupted pass is redone at the next CONNECTED, the container still being open)
        and again after (records an unsecured relay created meanwhile; once the container
        is closed it cannot create more). Members and election nodes are ephemeral: the
        unsecured relays' ones go when those relays restart. Nodes with another identity's
        ACL are left alone (we could not change them) and logged: every operation on them
        will fail with NoAuth.
        """
        paths = self._paths
        containers = [paths.root, paths.members, paths.sessions, paths.election, paths.expiry]
        sessions_open = False

        def records() -> list[str]:
            return self._open_among([paths.session(n) for n in self._children(paths.sessions)])

        def minutes() -> list[str]:
            try:
                names = self._children(paths.expiry)
            except NoAuthError:
                return []  # the container is another identity's: logged by _open_among
            return self._open_among([paths.expiry_bucket(int(n)) for n in names if n.isdigit()])

        def op() -> None:
            nonlocal sessions_open
            opened = self._open_among(containers)
            sessions_open = sessions_open or paths.sessions in opened
            taken = self._take_over(records()) if sessions_open else 0
            taken += self._take_over(minutes())
            taken += self._take_over(opened)
            taken += self._take_over(records()) if sessions_open else 0
            taken += self._take_over(minutes())
            if taken:
                log.warning(
                    "coordinator: %d open znode(s) under %s now carry the digest ACL",
                    taken,
                    paths.root,
                )

        self._attempt(op)

    def _open_among(self, targets: list[str]) -> list[str]:
        """Those of ``targets`` open to everyone (pipelined reads); foreign ones logged."""
        acl = self._security.acl() or []
        pending = [self._client.get_acls_async(p) for p in targets]
        opened = []
        for path, result in zip(targets, pending, strict=True):
            try:
                acls, _ = self._wait(result)
            except NoNodeError:
                continue  # not created yet (it will be, with our ACL) or gone meanwhile
            except NoAuthError:
                log.error("znode %s is not ours: %s", path, _FOREIGN)
                continue
            if is_open(acls):
                opened.append(path)
            elif not any(entry.id == ours.id for entry in acls for ours in acl):
                # Ours beside another identity is a rotation under way: not an error.
                log.error("znode %s is not ours: %s", path, _FOREIGN)
        return opened

    def _take_over(self, targets: list[str]) -> int:
        """Set our ACL on ``targets`` (pipelined); how many were still there."""
        pending = [self._client.set_acls_async(p, self._security.acl()) for p in targets]
        done = 0
        for result in pending:
            try:
                self._wait(result)
                done += 1
            except NoNodeError:
                continue  # deleted meanwhile (reaped, dropped)
        return done

    # --- helpers ---------------------------------------------------------------------

    def _ensure_member(self, member: Member) -> None:
        path = self._paths.member(member.relay_id)
        data = encode_member(member)

        def op() -> None:
            try:
                self._wait(self._client.create_async(path, data, ephemeral=True, makepath=True))
            except NodeExistsError:
                stat = self._wait(self._client.exists_async(path))
                if stat is not None and stat.ephemeralOwner == self._session_id():
                    return  # ours already (a reconnect within the session)
                if stat is None:
                    raise ForceRetryError() from None
                raise CoordinatorError(
                    f"member {member.relay_id} is registered by another ZooKeeper session"
                ) from None

        self._attempt(op)

    def _compare_and_set(
        self, session_id: str, change: Callable[[SessionRecord], SessionRecord]
    ) -> SessionRecord:
        """Read, ``change`` (may raise FencedError), write back at the read version."""
        check_id("session id", session_id)
        path = self._paths.session(session_id)
        written: bytes | None = None

        def op() -> SessionRecord:
            nonlocal written
            for _ in range(_CAS_ROUNDS):
                current = self._read(session_id)
                if current is None:
                    raise SessionNotFound(session_id)
                data, version = current
                if written is not None and data == written:
                    return decode_record(session_id, data)  # our write landed; reply lost
                new = change(decode_record(session_id, data))
                written = encode_record(new)
                try:
                    self._wait(self._client.set_async(path, written, version=version))
                    return new
                except BadVersionError:
                    written = None
                    continue  # changed under us: re-read; change() decides if we are fenced
                except NoNodeError as exc:
                    raise SessionNotFound(session_id) from exc
            raise CoordinatorError(f"session {session_id}: too much write contention")

        return self._attempt(op)

    def _delete_if(self, session_id: str, may_delete: Callable[[SessionRecord], bool]) -> bool:
        """Delete the record at the version ``may_delete`` approved; False if absent/refused."""
        check_id("session id", session_id)
        path = self._paths.session(session_id)
        tried = False

        def op() -> bool:
            nonlocal tried
            for _ in range(_CAS_ROUNDS):
                current = self._read(session_id)
                if current is None:
                    return tried  # gone: by our delete whose reply was lost, or never there
                data, version = current
                if not may_delete(decode_record(session_id, data)):
                    return False
                try:
                    tried = True
                    self._wait(self._client.delete_async(path, version=version))
                    return True
                except BadVersionError:
                    tried = False
                    continue
                except NoNodeError:
                    return False
            raise CoordinatorError(f"session {session_id}: too much write contention")

        return self._attempt(op)

    def _read(self, session_id: str) -> tuple[bytes, int] | None:
        try:
            data, stat = self._wait(self._client.get_async(self._paths.session(session_id)))
        except NoNodeError:
            return None
        return bytes(data), int(stat.version)

    def _children(self, path: str) -> list[str]:
        try:
            return list(self._wait(self._client.get_children_async(path)))
        except NoNodeError:
            return []

    def _session_id(self) -> int | None:
        client_id = self._client.client_id
        return None if client_id is None else int(client_id[0])

    def _get_many(self, paths: list[str], names: list[str]) -> list[tuple[str, bytes]]:
        """Pipelined gets; nodes that vanished meanwhile are left out."""
        pending = [self._client.get_async(p) for p in paths]
        found = []
        for name, result in zip(names, pending, strict=True):
            try:
                data, _ = self._wait(result)
            except NoNodeError:
                continue
            found.append((name, bytes(data)))
        return found

    def _wait(self, async_result: Any) -> Any:
        # Not ``get(timeout=...)``: under gevent it raises gevent's own Timeout, not the
        # handler's subclass ``_attempt`` catches, and a BaseException that escapes kills
        # the caller's greenlet (a session's teardown, a resume, this worker).
        async_result.wait(self._op_timeout)
        if not async_result.ready():
            raise self._timeout_exc(f"no ZooKeeper reply in {self._op_timeout} s")
        return async_result.get()

    def _attempt(self, op: Callable[[], T]) -> T:
        """Run ``op`` under the command retry policy; translate kazoo errors.

        Not CONNECTED at the start: ``NotConnectedError`` at once. A connection loss in
        the middle: retried briefly (each try re-checks the state), then
        ``NotConnectedError``.
        """
        if self._stopped:
            raise NotConnectedError("coordinator stopped")
        if self.state is not State.CONNECTED:
            raise NotConnectedError(f"ZooKeeper coordinator is {self.state.value}")

        def once() -> T:
            if self.state is not State.CONNECTED:
                raise ForceRetryError()
            return op()

        try:
            result: T = self._client.retry(once)  # a fresh copy of the policy per call
            return result
        except _NOT_CONNECTED as exc:
            raise NotConnectedError(f"ZooKeeper connection lost: {exc!r}") from exc
        except KazooException as exc:
            raise CoordinatorError(f"ZooKeeper error: {exc!r}") from exc
        except self._timeout_exc as exc:
            raise NotConnectedError(f"no ZooKeeper reply in {self._op_timeout} s") from exc


_FOREIGN = (
    "its ACL is another identity's (the digest credential differs from the one that "
    "created it; see docs/security.md on rotating it)"
)


def _serialize_submissions(client: KazooClient, lock: Any) -> None:
    """One greenlet at a time hands kazoo a request (``KazooClient._call``, which every
    request method goes through).

    kazoo wakes its connection loop with one byte per request on a socketpair. In a burst
    (thousands of sessions parking or resuming at once) the pair fills after a few
    hundred bytes; the greenlet whose write then waits is alone allowed to, and a second
    one gets gevent's ConcurrentObjectUseError, which kazoo reports as a closed
    connection while the request stays queued without its byte: the loop is a request
    behind from then on, and every later request times out. Behind this lock the others
    wait their turn; the lock is never held across a round trip, only a queue append and
    that write."""
    submit = client._call

    def call(request: Any, async_object: Any) -> Any:
        with lock:
            return submit(request, async_object)

    client._call = call


def _kazoo_logger() -> logging.Logger:
    """kazoo's logger for our clients: a child of ``kazoo.client`` (configured the same),
    with the digest credential blanked out of its debug lines."""
    logger = logging.getLogger("kazoo.client.coordinator")
    if not any(isinstance(f, RedactAuth) for f in logger.filters):
        logger.addFilter(RedactAuth())
    return logger


def _make_handler(kind: str) -> Any:
    if kind == "gevent":
        from kazoo.handlers.gevent import SequentialGeventHandler

        return SequentialGeventHandler()
    if kind == "threading":
        from kazoo.handlers.threading import SequentialThreadingHandler

        return SequentialThreadingHandler()
    raise ValueError(f"handler must be 'gevent' or 'threading', not {kind!r}")
