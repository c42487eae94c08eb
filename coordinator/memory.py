"""The embedded coordinator: the in-process twin of ``coordinator.zk``.

Job: the single-node default and the relay's unit tests. It passes the same contract
suite as the ZooKeeper implementation (``tests/coordinator/test_contract.py``): the same
records, epochs, fences and errors. Several ``MemoryCoordinator`` objects sharing one
``MemoryStore`` behave like several relays on one ensemble (members, election), which is
how the contract tests exercise membership and leadership.

It is always CONNECTED (until ``stop``; ``simulate_state`` lets tests pretend otherwise).
Thread- and greenlet-safe: one lock per store, held only for dict work, never while a
callback runs.

Must not: do I/O, sleep, or pretend to be cross-process. State lives in this process
only, so it cannot coordinate several gunicorn workers: a multi-worker single node needs
a shared backend (e.g. SQLite or PostgreSQL) implementing the same protocol.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from coordinator.base import (
    LeaderCallback,
    Member,
    SessionRecord,
    State,
    StateListener,
    check_id,
    check_owner,
    claimed,
)
from coordinator.errors import CoordinatorError, NotConnectedError, SessionExists, SessionNotFound

__all__ = ["MemoryCoordinator", "MemoryStore"]


@dataclass(eq=False)
class MemoryStore:
    """The shared "ensemble": what every coordinator attached to it sees."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    members: dict[str, tuple[Member, MemoryCoordinator]] = field(default_factory=dict)
    candidates: list[MemoryCoordinator] = field(default_factory=list)

    def leader(self) -> MemoryCoordinator | None:
        return self.candidates[0] if self.candidates else None


class MemoryCoordinator:
    """``Coordinator`` over a ``MemoryStore`` (a private one unless given)."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self._store = store if store is not None else MemoryStore()
        self._state = State.CONNECTED
        self._listeners: list[StateListener] = []
        self._leader_cb: LeaderCallback | None = None
        self._stopped = False
        self._pending_members: list[Member] = []

    # --- lifecycle -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    def start(self, timeout: float = 10.0) -> bool:
        if self._stopped:
            raise CoordinatorError("a stopped coordinator cannot be restarted")
        return self._state is State.CONNECTED

    def stop(self) -> None:
        with self._store.lock:
            if self._stopped:
                return
            self._stopped = True
            self._state = State.LOST
            for relay_id, (_, owner) in list(self._store.members.items()):
                if owner is self:
                    del self._store.members[relay_id]
            notify = self._withdraw_locked()
        self._fire(notify)

    def add_listener(self, listener: StateListener) -> None:
        self._listeners.append(listener)

    def simulate_state(self, state: State) -> None:
        """Test hook: pretend the connection went SUSPENDED/LOST/CONNECTED.

        LOST removes this coordinator's members and candidacy like an expired ZooKeeper
        session; the next CONNECTED restores them (as ``zk.py`` does).
        """
        calls: list[tuple[LeaderCallback, bool]] = []
        with self._store.lock:
            if self._stopped or state is self._state:
                return
            was_leader = self.is_leader()
            self._state = state
            if state is State.LOST:
                mine = [m for m, owner in self._store.members.values() if owner is self]
                for m in mine:
                    del self._store.members[m.relay_id]
                self._pending_members.extend(mine)
                calls += self._withdraw_locked(keep_callback=True)
            elif state is State.CONNECTED:
                for m in self._pending_members:
                    self._store.members.setdefault(m.relay_id, (m, self))
                self._pending_members = []
                if self._leader_cb is not None and self not in self._store.candidates:
                    self._store.candidates.append(self)
            if self._leader_cb is not None and was_leader != self.is_leader():
                calls.append((self._leader_cb, self.is_leader()))
        for listener in list(self._listeners):
            listener(state)
        self._fire(calls)

    # --- membership ------------------------------------------------------------------

    def register_member(self, member: Member) -> None:
        with self._store.lock:
            if self._state is State.CONNECTED:
                self._store.members[member.relay_id] = (member, self)
            else:  # like zk.py: created on the next CONNECTED
                self._pending_members.append(member)

    def members(self) -> list[Member]:
        with self._store.lock:
            self._check_connected()
            return sorted((m for m, _ in self._store.members.values()), key=_relay_id)

    # --- sessions --------------------------------------------------------------------

    def create_session(self, session_id: str, owner: str) -> SessionRecord:
        record = SessionRecord(session_id=session_id, owner=owner, epoch=1)
        with self._store.lock:
            self._check_connected()
            if session_id in self._store.sessions:
                raise SessionExists(session_id)
            self._store.sessions[session_id] = record
        return record

    def get_session(self, session_id: str) -> SessionRecord | None:
        check_id("session id", session_id)
        with self._store.lock:
            self._check_connected()
            return self._store.sessions.get(session_id)

    def claim_session(
        self,
        session_id: str,
        new_owner: str,
        expected_epoch: int,
        *,
        require_parked: bool = False,
    ) -> SessionRecord:
        check_id("owner", new_owner)
        with self._store.lock:
            current = self._current(session_id)
            record = claimed(current, new_owner, expected_epoch, require_parked=require_parked)
            self._store.sessions[session_id] = record
            return record

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
        with self._store.lock:
            check_owner(self._current(session_id), owner, epoch)
            self._store.sessions[session_id] = record
            return record

    def drop_session(self, session_id: str, owner: str, epoch: int) -> None:
        with self._store.lock:
            check_owner(self._current(session_id), owner, epoch)
            del self._store.sessions[session_id]

    def expired_sessions(self, now: float) -> list[str]:
        with self._store.lock:
            self._check_connected()
            return sorted(
                sid for sid, r in self._store.sessions.items() if r.parked and r.expires_at <= now
            )

    def reap_session(self, session_id: str, now: float) -> bool:
        check_id("session id", session_id)
        with self._store.lock:
            self._check_connected()
            record = self._store.sessions.get(session_id)
            if record is None or not record.parked or record.expires_at > now:
                return False
            del self._store.sessions[session_id]
            return True

    # --- leadership ------------------------------------------------------------------

    def run_for_leader(self, on_change: LeaderCallback | None = None) -> None:
        with self._store.lock:
            self._leader_cb = on_change if on_change is not None else _ignore
            if self not in self._store.candidates and self._state is State.CONNECTED:
                self._store.candidates.append(self)
            gained = self.is_leader()
        if gained and on_change is not None:
            on_change(True)

    def is_leader(self) -> bool:
        return self._state is State.CONNECTED and self._store.leader() is self

    # --- internals -------------------------------------------------------------------

    def _check_connected(self) -> None:
        if self._state is not State.CONNECTED:
            raise NotConnectedError(f"memory coordinator is {self._state.value}")

    def _current(self, session_id: str) -> SessionRecord:
        check_id("session id", session_id)
        self._check_connected()
        record = self._store.sessions.get(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        return record

    def _withdraw_locked(self, keep_callback: bool = False) -> list[tuple[LeaderCallback, bool]]:
        """Leave the election; return the leadership callbacks to fire after unlocking."""
        calls: list[tuple[LeaderCallback, bool]] = []
        if self not in self._store.candidates:
            return calls
        was_leader = self._store.leader() is self
        self._store.candidates.remove(self)
        if was_leader:
            if self._leader_cb is not None and keep_callback is False:
                calls.append((self._leader_cb, False))
            heir = self._store.leader()
            if heir is not None and heir._leader_cb is not None and heir.is_leader():
                calls.append((heir._leader_cb, True))
        return calls

    @staticmethod
    def _fire(calls: list[tuple[LeaderCallback, bool]]) -> None:
        for callback, value in calls:
            callback(value)


def _relay_id(member: Member) -> str:
    return member.relay_id


def _ignore(_: bool) -> None:
    pass
