"""The embedded coordinator for one node: ``Coordinator`` over one SQLite file.

Job: the single-node default. Every gunicorn worker of a node opens the same database
file (e.g. ``.state/coordinator.sqlite``), so a reconnect that lands on another worker
process of the same node resumes too, which the in-process ``coordinator.memory`` cannot
do. It passes the shared contract suite (``tests/coordinator/test_contract.py``).

Storage: WAL mode, standard library ``sqlite3`` only. Every write is one short
``BEGIN IMMEDIATE`` transaction (the database's single writer lock), and every fenced
write is also a compare-and-set in SQL (``UPDATE ... WHERE session_id=? AND epoch=?``;
no row changed means ``FencedError``), so two processes can never both claim a session.

Membership: a member is a row with a heartbeat timestamp, refreshed by this process's
worker every ``min(member_ttl, leader_ttl) / 3`` s. A row without a heartbeat for
``member_ttl`` s is gone (the ephemeral semantics of a killed process); ``stop()``
deletes its rows at once. Leadership: one lease row (holder, expires_at), taken when
absent or expired, renewed by the same worker, released by ``stop()``. A leader whose
renewals stop (SIGKILL, a stalled process) is replaced after ``leader_ttl``; it stops
believing it leads when its own lease runs out, by its monotonic clock.

States: CONNECTED while the file can be opened and written; SUSPENDED when it cannot
(calls raise ``NotConnectedError`` at once, leadership pauses, members are kept and
re-announced when writes work again); LOST before ``start()`` and after ``stop()``.

Threads and greenlets: the worker is a ``threading.Thread``, a greenlet under gevent's
monkey-patching. Waits for the writer lock sleep with ``time.sleep`` (cooperative under
gevent), not inside SQLite. One connection per coordinator, used under a lock; listener
and leader callbacks run on the worker, never under that lock.

Must not: import kazoo, ``relay`` or Django, share a connection across ``fork()``
(create and start one per worker process), or be used on a network file system (SQLite
locking there is unreliable): it coordinates the processes of one host only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
from coordinator.errors import (
    CoordinatorError,
    FencedError,
    NotConnectedError,
    SessionExists,
    SessionNotFound,
)

__all__ = ["SQLiteCoordinator"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
_LEASE = "leader"
# SQLite's own busy wait: blocks the thread (and, under gevent, the whole hub), so it is
# kept short; longer waits for the writer lock are Python sleeps, up to ``busy_timeout``.
_SQLITE_BUSY_WAIT = 0.01
_SQLITE_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    cursor     INTEGER NOT NULL,
    parked     INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    facts      BLOB NOT NULL
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS sessions_parked_expiry ON sessions (parked, expires_at)",
    """CREATE TABLE IF NOT EXISTS members (
    relay_id   TEXT PRIMARY KEY,
    address    TEXT NOT NULL,
    started_at REAL NOT NULL,
    holder     TEXT NOT NULL,
    heartbeat  REAL NOT NULL
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_SESSION_COLUMNS = "session_id, owner, epoch, cursor, parked, expires_at, facts"


class _Busy(Exception):
    """The writer lock stayed taken for ``busy_timeout``: nothing was written."""


class SQLiteCoordinator:
    """``Coordinator`` on a SQLite file shared by the processes of one node."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        member_ttl: float = 10.0,
        leader_ttl: float = 10.0,
        busy_timeout: float = 5.0,
    ) -> None:
        if member_ttl <= 0 or leader_ttl <= 0 or busy_timeout <= 0:
            raise ValueError("member_ttl, leader_ttl and busy_timeout must be > 0")
        self._path = Path(path)
        self._member_ttl = member_ttl
        self._leader_ttl = leader_ttl
        self._busy_timeout = busy_timeout
        self._interval = min(member_ttl, leader_ttl) / 3
        self._token = uuid.uuid4().hex  # this coordinator's identity in members and lease
        # _lock guards the fields below (never held across I/O or a callback);
        # _db_lock serialises use of the connection (held across SQLite calls only).
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._db_file: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._state = State.LOST
        self._state_events: list[State] = []
        self._listeners: list[StateListener] = []
        self._members: dict[str, Member] = {}
        self._want_leader = False
        self._leader_cb: LeaderCallback | None = None
        self._lease_until = 0.0  # time.monotonic() until which our lease is surely valid
        self._announced = False  # last value given to the leader callback
        self._started = False
        self._stopped = False
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def start(self, timeout: float = 10.0) -> bool:
        with self._lock:
            if self._stopped:
                raise CoordinatorError("a stopped coordinator cannot be restarted")
            if self._started:
                return self._state is State.CONNECTED
            self._started = True
        deadline = time.monotonic() + timeout
        while True:
            if self._tick():
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        worker = threading.Thread(target=self._run, name="sqlite-coordinator", daemon=True)
        self._worker = worker
        worker.start()
        return self._state is State.CONNECTED

    def stop(self) -> None:
        """Delete this process's members and release the lease at once; close the file."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._state = State.LOST
            self._lease_until = 0.0
        self._wake.set()
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(self._busy_timeout + 1.0)
        with self._db_lock:
            try:
                if self._db is not None:
                    self._write_locked(self._withdraw_locked)
            except (_Busy, sqlite3.Error) as exc:
                log.warning("sqlite coordinator: could not withdraw at stop: %r", exc)
            self._close_locked()
        if self._announced and self._leader_cb is not None:
            self._announced = False
            call_quietly(log, self._leader_cb, False)

    def add_listener(self, listener: StateListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # --- membership ------------------------------------------------------------------

    def register_member(self, member: Member) -> None:
        with self._lock:
            self._members[member.relay_id] = member
            stopped = self._stopped
        if stopped or self._state is not State.CONNECTED:
            return  # the worker writes it on the next successful tick
        try:
            self._write(lambda db: self._claim_member(db, member, time.time()))
        except NotConnectedError:
            pass  # the worker writes it once the file is writable again
        except CoordinatorError:
            with self._lock:
                self._members.pop(member.relay_id, None)
            raise

    def members(self) -> list[Member]:
        since = time.time() - self._member_ttl
        rows = self._read(
            lambda db: db.execute(
                "SELECT relay_id, address, started_at FROM members WHERE heartbeat > ? "
                "ORDER BY relay_id",
                (since,),
            ).fetchall()
        )
        return [Member(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    # --- sessions --------------------------------------------------------------------

    def create_session(self, session_id: str, owner: str) -> SessionRecord:
        record = SessionRecord(session_id=session_id, owner=owner, epoch=1)

        def op(db: sqlite3.Connection) -> SessionRecord:
            if _select(db, session_id) is not None:
                raise SessionExists(session_id)
            db.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )
            return record

        return self._write(op)

    def get_session(self, session_id: str) -> SessionRecord | None:
        check_id("session id", session_id)
        return self._read(lambda db: _select(db, session_id))

    def claim_session(
        self,
        session_id: str,
        new_owner: str,
        expected_epoch: int,
        *,
        require_parked: bool = False,
    ) -> SessionRecord:
        check_id("session id", session_id)
        check_id("owner", new_owner)

        def op(db: sqlite3.Connection) -> SessionRecord:
            record = claimed(
                _existing(db, session_id), new_owner, expected_epoch, require_parked=require_parked
            )
            changed = db.execute(
                "UPDATE sessions SET owner = ?, epoch = epoch + 1, parked = 0, expires_at = 0.0 "
                "WHERE session_id = ? AND epoch = ? AND (parked = 1 OR NOT ?)",
                (new_owner, session_id, expected_epoch, require_parked),
            ).rowcount
            if changed != 1:  # cannot happen under BEGIN IMMEDIATE; the fence holds anyway
                raise FencedError(f"session {session_id}: epoch moved during the claim")
            return record

        return self._write(op)

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

        def op(db: sqlite3.Connection) -> SessionRecord:
            check_owner(_existing(db, session_id), owner, epoch)
            changed = db.execute(
                "UPDATE sessions SET cursor = ?, facts = ?, parked = 1, expires_at = ? "
                "WHERE session_id = ? AND owner = ? AND epoch = ?",
                (cursor, facts, expires_at, session_id, owner, epoch),
            ).rowcount
            if changed != 1:
                raise FencedError(f"session {session_id}: owner or epoch moved during the park")
            return record

        return self._write(op)

    def drop_session(self, session_id: str, owner: str, epoch: int) -> None:
        check_id("session id", session_id)

        def op(db: sqlite3.Connection) -> None:
            check_owner(_existing(db, session_id), owner, epoch)
            changed = db.execute(
                "DELETE FROM sessions WHERE session_id = ? AND owner = ? AND epoch = ?",
                (session_id, owner, epoch),
            ).rowcount
            if changed != 1:
                raise FencedError(f"session {session_id}: owner or epoch moved during the drop")

        self._write(op)

    def expired_sessions(self, now: float) -> list[str]:
        rows = self._read(
            lambda db: db.execute(
                "SELECT session_id FROM sessions WHERE parked = 1 AND expires_at <= ? "
                "ORDER BY session_id",
                (now,),
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    def reap_session(self, session_id: str, now: float) -> bool:
        check_id("session id", session_id)

        def op(db: sqlite3.Connection) -> bool:
            changed = db.execute(
                "DELETE FROM sessions WHERE session_id = ? AND parked = 1 AND expires_at <= ?",
                (session_id, now),
            ).rowcount
            return changed == 1

        return self._write(op)

    # --- leadership ------------------------------------------------------------------

    def run_for_leader(self, on_change: LeaderCallback | None = None) -> None:
        with self._lock:
            self._want_leader = True
            self._leader_cb = on_change
        self._wake.set()  # the worker takes the lease now if it is free

    def is_leader(self) -> bool:
        return self._state is State.CONNECTED and time.monotonic() < self._lease_until

    # --- the worker ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopped:
                break
            self._tick()
        self._notify()

    def _tick(self) -> bool:
        """One heartbeat: (re)open the file if needed, refresh members and the lease.

        Returns True if the file was written. Then tells listeners and the leader callback
        what changed. Runs on the worker (and in ``start``); never raises.
        """
        started = time.monotonic()
        ok = False
        try:
            with self._db_lock:
                if self._stopped:
                    return False
                self._open_locked()
                leading = self._write_locked(self._heartbeat)
            ok = True
            with self._lock:
                if not self._stopped:
                    self._lease_until = started + self._leader_ttl if leading else 0.0
            self._set_state(State.CONNECTED)
        except _Busy:
            log.warning("sqlite coordinator: %s stayed locked; heartbeat skipped", self._path)
            if time.monotonic() >= self._lease_until:
                self._lease_until = 0.0
        except (sqlite3.Error, OSError, CoordinatorError) as exc:
            log.warning("sqlite coordinator: %s is unusable: %r", self._path, exc)
            with self._db_lock:
                self._close_locked()
            self._set_state(State.SUSPENDED)
        self._notify()
        return ok

    def _heartbeat(self, db: sqlite3.Connection) -> bool:
        """Refresh our members (re-creating any that were reaped) and the lease."""
        now = time.time()
        with self._lock:
            members = list(self._members.values())
            want_leader = self._want_leader
        db.execute("DELETE FROM members WHERE heartbeat <= ?", (now - self._member_ttl,))
        for member in members:
            try:
                self._claim_member(db, member, now)
            except CoordinatorError as exc:  # we were reaped (stalled) and it was re-taken
                log.error("cannot register member %s: %s; dropping it", member.relay_id, exc)
                with self._lock:
                    self._members.pop(member.relay_id, None)
        if not want_leader:
            return False
        db.execute(
            "INSERT INTO lease (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE lease.holder = excluded.holder OR lease.expires_at <= ?",
            (_LEASE, self._token, now + self._leader_ttl, now),
        )
        row = db.execute("SELECT holder FROM lease WHERE name = ?", (_LEASE,)).fetchone()
        return row is not None and row[0] == self._token

    def _claim_member(self, db: sqlite3.Connection, member: Member, now: float) -> None:
        """Insert or refresh ``member``'s row; ``CoordinatorError`` if another live
        coordinator holds that relay id."""
        changed = db.execute(
            "INSERT INTO members (relay_id, address, started_at, holder, heartbeat) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (relay_id) DO UPDATE SET "
            "address = excluded.address, started_at = excluded.started_at, "
            "holder = excluded.holder, heartbeat = excluded.heartbeat "
            "WHERE members.holder = excluded.holder OR members.heartbeat <= ?",
            (
                member.relay_id,
                member.address,
                member.started_at,
                self._token,
                now,
                now - self._member_ttl,
            ),
        ).rowcount
        if changed != 1:
            raise CoordinatorError(
                f"member {member.relay_id} is registered by another live coordinator"
            )

    def _withdraw_locked(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM members WHERE holder = ?", (self._token,))
        db.execute("DELETE FROM lease WHERE name = ? AND holder = ?", (_LEASE, self._token))

    def _set_state(self, state: State) -> None:
        with self._lock:
            if self._stopped or state is self._state:
                return
            self._state = state
            self._state_events.append(state)
        self._wake.set()

    def _notify(self) -> None:
        """Tell listeners each state change in order, then the leader callback (no locks)."""
        with self._lock:
            events, self._state_events = self._state_events, []
            listeners = list(self._listeners)
        for state in events:
            for listener in listeners:
                call_quietly(log, listener, state)
        with self._lock:
            if self._stopped:
                return
            now = self.is_leader()
            callback = self._leader_cb
            if callback is None or now == self._announced:
                return
            self._announced = now
        call_quietly(log, callback, now)

    # --- the database ----------------------------------------------------------------

    def _open_locked(self) -> None:
        """Open (or re-open) the file: after a failure, a fork, or if it was replaced."""
        if self._db is not None:
            try:
                st = os.stat(self._path)
                same = (st.st_dev, st.st_ino) == self._db_file
            except OSError:
                same = False
            if same:
                return
            self._close_locked()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self._path, timeout=_SQLITE_BUSY_WAIT, isolation_level=None, check_same_thread=False
        )
        try:
            self._db = db
            self._retry_busy(lambda: _set_up(db))
            st = os.stat(self._path)
            self._db_file = (st.st_dev, st.st_ino)
        except BaseException:
            self._close_locked()
            raise

    def _close_locked(self) -> None:
        db, self._db, self._db_file = self._db, None, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):  # best effort
                db.close()

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return self._call(op, write=False)

    def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return self._call(op, write=True)

    def _call(self, op: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``op`` (in one ``BEGIN IMMEDIATE`` transaction if ``write``).

        ``NotConnectedError`` at once when not CONNECTED; when the writer lock stays taken
        for ``busy_timeout`` (nothing written); or when the file fails, which also makes
        the state SUSPENDED until the worker manages to write again.
        """
        if self._state is not State.CONNECTED:
            raise NotConnectedError(f"sqlite coordinator is {self._state.value}")
        with self._db_lock:
            if self._stopped:
                raise NotConnectedError("sqlite coordinator is stopped")
            try:
                self._open_locked()  # a cheap stat: never write to a replaced file
                db = self._db
                assert db is not None
                if write:
                    return self._write_locked(op)
                return self._retry_busy(lambda: op(db))
            except _Busy as exc:
                raise NotConnectedError(
                    f"{self._path} stayed locked for {self._busy_timeout} s; nothing was written"
                ) from exc
            except (sqlite3.Error, OSError) as exc:
                log.warning("sqlite coordinator: %s failed: %r", self._path, exc)
                self._close_locked()
                failure = exc
        self._set_state(State.SUSPENDED)
        raise NotConnectedError(f"{self._path} is not usable: {failure!r}") from failure

    def _write_locked(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """One ``BEGIN IMMEDIATE`` transaction; rolled back if ``op`` raises."""
        db = self._db
        if db is None:
            raise sqlite3.OperationalError("no open database")
        self._retry_busy(lambda: db.execute("BEGIN IMMEDIATE"))
        try:
            result = op(db)
            self._retry_busy(lambda: db.execute("COMMIT"))  # WAL: BUSY here is rare
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return result

    def _retry_busy(self, op: Callable[[], T]) -> T:
        """Run ``op``; while SQLite says BUSY, sleep (cooperatively) and retry; ``_Busy``."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                return op()
            except sqlite3.OperationalError as exc:
                if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _SQLITE_BUSY_CODES:
                    raise
                if time.monotonic() + delay > deadline:
                    raise _Busy(str(exc)) from exc
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


def _set_up(db: sqlite3.Connection) -> None:
    mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":
        raise CoordinatorError(f"cannot switch the coordinator database to WAL (got {mode!r})")
    db.execute("PRAGMA synchronous = NORMAL")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        raise CoordinatorError(f"coordinator database has schema v{version}, not v1")
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA:  # IF NOT EXISTS: another process may have raced us
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise


def _row(record: SessionRecord) -> tuple[str, str, int, int, int, float, bytes]:
    return (
        record.session_id,
        record.owner,
        record.epoch,
        record.cursor,
        int(record.parked),
        record.expires_at,
        record.facts,
    )


def _select(db: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    row = db.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    try:
        return SessionRecord(
            session_id=str(row[0]),
            owner=str(row[1]),
            epoch=int(row[2]),
            cursor=int(row[3]),
            parked=bool(row[4]),
            expires_at=float(row[5]),
            facts=bytes(row[6]),
        )
    except (ValueError, TypeError) as exc:
        raise CoordinatorError(f"session {session_id}: unreadable record: {exc}") from exc


def _existing(db: sqlite3.Connection, session_id: str) -> SessionRecord:
    record = _select(db, session_id)
    if record is None:
        raise SessionNotFound(session_id)
    return record
