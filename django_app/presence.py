"""Presence: who is on a topic ("on this book", "in this room"), across every relay.

Job: ``present(ctx, topic)``, called by a publication function: the subscribing session
(its user, or the anonymous session itself) is present on ``topic`` for as long as that
subscription runs, and the publication gets back the cursor of everyone present there
(one document per member in the collection ``DDP_PRESENCE_COLLECTION``: ``topic`` and
``userId``, None for an anonymous session). Plus the lease chores the relay runs
(``keepalive``, ``housekeeping``, ``release_all``).

Where the state lives and why: in PostgreSQL, as rows, written on join and leave only
(never per message): ``ddp_presence`` (published: one row per member and topic, so join
and leave reach every relay's subscribers through the change stream, in order, resumed
and backfilled like any row) and ``ddp_presence_hold`` (private: one row per
subscription run holding a member present, tagged with the relay worker that runs it).
A session present twice (two tabs of one user, a re-run after login) holds two rows; the
member leaves with the last. A subscription's stop, unsubscribe, re-run, or its
session's socket closing (the relay stops every subscription of a session it parks; a
resume re-runs them, so the member returns) releases its hold at once. A relay worker
that dies releases nothing: each worker renews a lease (``ddp_presence_lease``) every few
seconds, and any other worker deletes the holds of an expired lease
(``DDP_PRESENCE_LEASE``), so presence converges that long after a crash.

Per join: one transaction, an advisory lock on the member's row, a hold inserted and the
presence row inserted if new; per leave the same with deletes. The lock makes join and
leave of one member on two relays serial, so the row exists exactly while a hold does.

What must not live here: the publication (the application's ``ddp.py`` declares it) or
the relay's periodic scheduling (``relay.server.keepalive``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from django_app.conf import ddp_settings
from django_app.cursor import Cursor
from django_app.exceptions import DDPError
from relay.protocol.alea import random_id

if TYPE_CHECKING:
    from django_app.context import SubscriptionContext

__all__ = ["MAX_TOPIC_LENGTH", "housekeeping", "keepalive", "present", "release_all"]

log = logging.getLogger(__name__)

#: The longest topic name, in characters.
MAX_TOPIC_LENGTH: Final = 200
#: Holds of dead workers removed per statement (short transactions).
_SWEEP_BATCH: Final = 1000

#: This process's worker identity: its holds live on this lease.
OWNER: Final = random_id()

_lock = threading.Lock()
#: When this process last renewed its lease (monotonic seconds; 0: never).
_renewed_at = 0.0
#: Holds whose release failed (the database was away): retried by ``keepalive``.
_unreleased: set[str] = set()
#: Holds being joined, and whether their subscription stopped meanwhile.
_joining: dict[str, bool] = {}

_LOCK_MEMBER = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_RENEW = (
    "INSERT INTO ddp_presence_lease (owner, expires_at)"
    " VALUES (%s, clock_timestamp() + make_interval(secs => %s))"
    " ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at"
)
_HOLD = "INSERT INTO ddp_presence_hold (token, presence_id, owner) VALUES (%s, %s, %s)"
_PRESENT = (
    "INSERT INTO ddp_presence (id, topic, user_id, since) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)
_UNHOLD = "DELETE FROM ddp_presence_hold WHERE token = %s RETURNING presence_id"
_ABSENT = (
    "DELETE FROM ddp_presence p WHERE p.id = ANY(%s)"
    " AND NOT EXISTS (SELECT 1 FROM ddp_presence_hold h WHERE h.presence_id = p.id)"
)


def present(ctx: SubscriptionContext, topic: str) -> Cursor:
    """Make the subscribing session present on ``topic`` until the subscription stops,
    and return the cursor of everyone present on it (this session included).

    A logged-in session is present as its user (one document however many sessions the
    user has there), an anonymous one as itself. Raises ``DDPError(400)`` for a topic
    that is not a non-empty string of at most ``MAX_TOPIC_LENGTH`` characters."""
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise DDPError(400, f"A presence topic is 1 to {MAX_TOPIC_LENGTH} characters")
    member = f"u:{ctx.user_id}" if ctx.user_id is not None else f"s:{ctx.session_id}"
    presence_id = _presence_id(topic, member)
    token = random_id()
    user_id = ctx.user_id
    # The publication function runs in a read-only snapshot: the join is written right
    # after it, before the subscription's documents are read, so they include this one.
    using = DEFAULT_DB_ALIAS  # the presence tables live where the change stream does
    ctx.after_snapshot(lambda: _join(token, presence_id, topic, user_id, using))
    ctx.on_stop(lambda: _release(token, using))
    # Imported here: the backend imports this module before Django's apps are ready.
    from django_app.models import Presence

    return Cursor(Presence, topic=topic)


def keepalive(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Renew this worker's lease, retry failed releases, and release what the workers
    whose lease expired held. Every worker, every few seconds; idempotent."""
    _renew(using)
    with _lock:
        pending = list(_unreleased)
    if pending:
        _leave(pending, using)
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT owner FROM ddp_presence_lease WHERE expires_at < clock_timestamp()"
            " AND owner <> %s LIMIT 100",
            [OWNER],
        )
        dead = [str(owner) for (owner,) in cursor.fetchall()]
    for owner in dead:
        _sweep(owner, using)


def housekeeping(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Release holds whose worker has no lease at all (a worker that died before its
    first renewal committed, or a lease row deleted by hand). Leader, once a minute."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT owner FROM ddp_presence_hold h WHERE NOT EXISTS"
            " (SELECT 1 FROM ddp_presence_lease l WHERE l.owner = h.owner)"
            " AND h.owner <> %s LIMIT 100",
            [OWNER],
        )
        orphans = [str(owner) for (owner,) in cursor.fetchall()]
    for owner in orphans:
        _sweep(owner, using)


def release_all(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """This worker is stopping: release every hold it has (its sessions left)."""
    _sweep(OWNER, using)


# -- internals -----------------------------------------------------------------------


def _presence_id(topic: str, member: str) -> str:
    return hashlib.sha256(f"{topic}\0{member}".encode()).hexdigest()[:24]


def _join(token: str, presence_id: str, topic: str, user_id: str | None, using: str) -> None:
    global _renewed_at
    with _lock:
        _joining[token] = False
    lease = ddp_settings.PRESENCE_LEASE.total_seconds()
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            if time.monotonic() - _renewed_at > lease / 3:
                # No hold without a live lease: another worker would sweep it at once.
                cursor.execute(_RENEW, [OWNER, lease])
                _renewed_at = time.monotonic()
            cursor.execute(_LOCK_MEMBER, [presence_id])
            cursor.execute(_HOLD, [token, presence_id, OWNER])
            cursor.execute(_PRESENT, [presence_id, topic, user_id, timezone.now()])
    finally:
        with _lock:
            released = _joining.pop(token, False)
    if released:
        # The subscription stopped while its join was being written.
        _leave([token], using)


def _release(token: str, using: str) -> None:
    """A subscription's stop: release its hold (after its join, if that is in flight)."""
    with _lock:
        if token in _joining:
            _joining[token] = True
            return
    _leave([token], using)


def _leave(tokens: Sequence[str], using: str) -> None:
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            ids: set[str] = set()
            for token in tokens:
                cursor.execute(_UNHOLD, [token])
                ids.update(str(pid) for (pid,) in cursor.fetchall())
            _absent(cursor, sorted(ids))
    except Exception:
        log.exception("releasing %d presence holds failed; retried by keepalive", len(tokens))
        with _lock:
            _unreleased.update(tokens)
        return
    with _lock:
        _unreleased.difference_update(tokens)


def _absent(cursor: object, presence_ids: list[str]) -> None:
    """Delete the presence rows no hold keeps any more (locks in sorted order: joins and
    leaves take one of them, so no cycle)."""
    if not presence_ids:
        return
    execute = cursor.execute  # type: ignore[attr-defined]
    for presence_id in presence_ids:
        execute(_LOCK_MEMBER, [presence_id])
    # A statement after the locks: READ COMMITTED reads every hold committed before them.
    execute(_ABSENT, [presence_ids])


def _renew(using: str) -> None:
    global _renewed_at
    with connections[using].cursor() as cursor:
        cursor.execute(_RENEW, [OWNER, ddp_settings.PRESENCE_LEASE.total_seconds()])
    _renewed_at = time.monotonic()


def _sweep(owner: str, using: str) -> None:
    """Release every hold of ``owner`` (a dead worker, or this one stopping), in batches,
    then its lease."""
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(
                "DELETE FROM ddp_presence_hold WHERE token IN (SELECT token FROM"
                " ddp_presence_hold WHERE owner = %s LIMIT %s) RETURNING presence_id",
                [owner, _SWEEP_BATCH],
            )
            rows = cursor.fetchall()
            _absent(cursor, sorted({str(pid) for (pid,) in rows}))
        if len(rows) < _SWEEP_BATCH:
            break
    with connections[using].cursor() as cursor:
        cursor.execute(
            "DELETE FROM ddp_presence_lease WHERE owner = %s"
            " AND NOT EXISTS (SELECT 1 FROM ddp_presence_hold WHERE owner = %s)",
            [owner, owner],
        )
