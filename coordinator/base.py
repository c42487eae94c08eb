"""The coordinator interface: types and the ``Coordinator`` protocol both backends implement.

Job: say what the cluster coordinator holds and what each call guarantees, so the relay
can be written (and tested) against ``coordinator.memory`` and run on ``coordinator.zk``.
It holds small, slow-changing facts only:

- relay membership (one ephemeral ``Member`` per relay process; gone when it dies);
- per DDP session: owner relay, fencing epoch, message cursor, parked flag, expiry and an
  opaque ``facts`` blob (the relay's pointer to its parked state, under 64 KiB);
- leader election for cluster housekeeping (reaping expired parked sessions).

Write rate, per DDP connection, O(1) and never per message: ``create_session`` once when
the session starts, ``park_session`` once when its socket goes away, ``claim_session``
once when a reconnect resumes it, ``drop_session`` or ``reap_session`` once at the end.
Messages, subscriptions and mergebox state never touch the coordinator.

Fencing: ``claim_session`` is a compare-and-set on the epoch (it becomes epoch + 1), and
``park_session`` / ``drop_session`` only succeed for the owner *at that epoch*. So two
relays can never both resume one session, and a slow old owner that parks after a
reconnect already claimed the session gets ``FencedError`` instead of overwriting it.

The checks and record changes every backend makes the same way live here too, so the
backends agree on them to the message: ``check_owner`` (the fence of park and drop),
``claimed`` (the fence and the new record of a claim) and ``call_quietly`` (how a
backend's worker runs user callbacks).

Must not: import kazoo, ``relay``, Django, or do I/O (beyond ``call_quietly`` logging a
failed callback to the logger it is given). Backends live in sibling modules.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from coordinator.errors import FencedError

__all__ = [
    "MAX_FACTS_BYTES",
    "Coordinator",
    "LeaderCallback",
    "Member",
    "SessionRecord",
    "State",
    "StateListener",
    "call_quietly",
    "check_id",
    "check_owner",
    "claimed",
]

#: Upper bound for ``SessionRecord.facts``. ZooKeeper's hard limit is just under 1 MB per
#: znode and it is meant for kilobytes; the parked state itself lives elsewhere.
MAX_FACTS_BYTES = 64 * 1024

T = TypeVar("T")

_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a usable relay or session id, else raise ``ValueError``.

    Ids become znode names, so: 1-128 characters from ``A-Z a-z 0-9 _ . : @ -``, and not
    ``.`` or ``..``. Meteor session ids (17 alphanumerics) pass.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"invalid {kind} {value!r}: 1-128 characters of [A-Za-z0-9_.:@-]")
    return value


class State(enum.Enum):
    """Connection state of a coordinator, mirroring kazoo's ``KazooState``."""

    CONNECTED = "connected"
    """Connected with a live session: reads, writes, membership and leadership are valid."""

    SUSPENDED = "suspended"
    """Connection dropped, the session may still be alive (ZooKeeper decides).

    Nothing is lost yet: ephemeral nodes and leadership may survive a reconnect, so do not
    tear anything down. But do not trust leadership (pause leader-only duties) and do not
    start resumes: calls raise ``NotConnectedError``. New DDP sessions keep working
    without a record. SUSPENDED is not LOST.
    """

    LOST = "lost"
    """No session: never connected yet, or the session expired.

    Every ephemeral (membership, election node) is gone. The coordinator re-creates what it
    was asked to hold (members, candidacy) by itself once CONNECTED again. Calls raise
    ``NotConnectedError``. Persistent session records are unaffected.
    """


StateListener = Callable[[State], None]
"""Called with each new State. Must only enqueue (never block, never call the coordinator)."""

LeaderCallback = Callable[[bool], None]
"""Called with True when leadership is gained, False when lost or paused. Must only enqueue."""


@dataclass(frozen=True, slots=True)
class Member:
    """One live relay process."""

    relay_id: str
    address: str
    started_at: float

    def __post_init__(self) -> None:
        check_id("relay id", self.relay_id)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What the cluster knows about one DDP session (never per-message data).

    ``epoch`` starts at 1 and grows by one on every successful ``claim_session``.
    ``cursor`` is the outbound message count at park time. ``expires_at`` (Unix time) is
    meaningful only while ``parked``; 0.0 otherwise. ``facts`` is opaque to the
    coordinator: the relay's pointer to its parked state, at most ``MAX_FACTS_BYTES``.
    """

    session_id: str
    owner: str
    epoch: int
    cursor: int = 0
    parked: bool = False
    expires_at: float = 0.0
    facts: bytes = b""

    def __post_init__(self) -> None:
        check_id("session id", self.session_id)
        check_id("owner", self.owner)
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if self.cursor < 0:
            raise ValueError(f"cursor must be >= 0, got {self.cursor}")
        if not isinstance(self.facts, bytes):
            raise ValueError("facts must be bytes")
        if len(self.facts) > MAX_FACTS_BYTES:
            raise ValueError(f"facts is {len(self.facts)} bytes; the limit is {MAX_FACTS_BYTES}")


def check_owner(current: SessionRecord, owner: str, epoch: int) -> SessionRecord:
    """Return ``current`` if ``owner`` holds it at ``epoch``, else raise ``FencedError``.

    The fence of ``park_session`` and ``drop_session``.
    """
    if current.owner != owner or current.epoch != epoch:
        raise FencedError(
            f"session {current.session_id} is owned by {current.owner} at epoch "
            f"{current.epoch}, not {owner} at {epoch}"
        )
    return current


def claimed(
    current: SessionRecord, new_owner: str, expected_epoch: int, *, require_parked: bool
) -> SessionRecord:
    """The record ``claim_session`` writes over ``current``, or ``FencedError``.

    Fenced if ``current`` is not at ``expected_epoch``, or if ``require_parked`` and it is
    not parked. The new record: ``new_owner`` at the next epoch, not parked, no expiry,
    cursor and facts kept.
    """
    if current.epoch != expected_epoch:
        raise FencedError(
            f"session {current.session_id}: epoch is {current.epoch}, expected {expected_epoch}"
        )
    if require_parked and not current.parked:
        raise FencedError(f"session {current.session_id} is not parked")
    return replace(current, owner=new_owner, epoch=current.epoch + 1, parked=False, expires_at=0.0)


def call_quietly(log: logging.Logger, callback: Callable[[T], None], value: T) -> None:
    """Run a user callback; its exceptions go to ``log``, never into the caller (a worker)."""
    try:
        callback(value)
    except Exception:
        log.exception("coordinator callback %r failed", callback)


class Coordinator(Protocol):
    """Cluster coordination, as the relay uses it. Implementations: memory, sqlite, zk.

    Every call except ``start``/``stop``/``add_listener``/``register_member``/
    ``run_for_leader``/``is_leader``/``state`` raises ``NotConnectedError`` when not
    CONNECTED, promptly. All methods are safe to call from several threads or greenlets.
    """

    @property
    def state(self) -> State:
        """The current connection state (cheap; no I/O)."""
        ...

    def start(self, timeout: float = 10.0) -> bool:
        """Begin connecting; wait up to ``timeout`` s. True if CONNECTED by then.

        False is not fatal: it keeps trying in the background and the state listeners
        hear CONNECTED when it arrives.
        """
        ...

    def stop(self) -> None:
        """Withdraw from the election, drop this process's members, disconnect. Idempotent."""
        ...

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(state)`` on every state change, in order. It must only enqueue."""
        ...

    def register_member(self, member: Member) -> None:
        """Announce ``member`` (ephemeral). Desired state: re-created after LOST.

        Never raises ``NotConnectedError``: while not connected it is recorded and created
        on the next CONNECTED.
        """
        ...

    def members(self) -> list[Member]:
        """Live members of the cluster, sorted by relay id."""
        ...

    def create_session(self, session_id: str, owner: str) -> SessionRecord:
        """Record a new session owned by ``owner`` at epoch 1. ``SessionExists`` if taken."""
        ...

    def get_session(self, session_id: str) -> SessionRecord | None:
        """The session's record, or None."""
        ...

    def claim_session(
        self,
        session_id: str,
        new_owner: str,
        expected_epoch: int,
        *,
        require_parked: bool = False,
    ) -> SessionRecord:
        """Take ownership: compare-and-set from ``expected_epoch`` to ``expected_epoch + 1``.

        The new record has ``owner=new_owner``, ``parked=False`` and keeps cursor and
        facts (the parked state to load). ``FencedError`` if the epoch moved (someone else
        claimed first), or if ``require_parked`` and the session is not parked (its owner
        has not handed it over; its facts may be stale). ``SessionNotFound`` if absent.
        """
        ...

    def park_session(
        self,
        session_id: str,
        owner: str,
        epoch: int,
        cursor: int,
        facts: bytes,
        expires_at: float,
    ) -> SessionRecord:
        """Mark the session parked (resumable until ``expires_at``) with cursor and facts.

        Only ``owner`` at ``epoch`` may park; otherwise ``FencedError``. Does not change
        the epoch; parking again (same owner, same epoch) updates the record.
        """
        ...

    def drop_session(self, session_id: str, owner: str, epoch: int) -> None:
        """Delete the record. Only ``owner`` at ``epoch``: else ``FencedError``."""
        ...

    def expired_sessions(self, now: float) -> list[str]:
        """Ids of parked sessions with ``expires_at <= now``, sorted. Housekeeping only.

        The ZooKeeper coordinator finds them through an index written at park time: a
        park whose index entry was lost with the connection is left to the park store's
        own expiry (its resume is refused once the window passed), not listed here."""
        ...

    def reap_session(self, session_id: str, now: float) -> bool:
        """Delete the record if it is (still) parked and expired at ``now``, atomically.

        False if it is gone, was claimed or re-parked meanwhile. For the leader.
        """
        ...

    def run_for_leader(self, on_change: LeaderCallback | None = None) -> None:
        """Join the leader election (desired state: re-joined after LOST).

        ``on_change(True)`` when leadership is gained, ``on_change(False)`` when it is lost
        or paused (SUSPENDED). Leader-only duties must check ``is_leader()`` too.
        """
        ...

    def is_leader(self) -> bool:
        """True while this coordinator leads and is CONNECTED (never while SUSPENDED)."""
        ...
