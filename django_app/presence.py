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
from django.db.backends.utils import CursorWrapper
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
#: When this process last renewed its lease (monotonic seconds; 0: never, or swept).
_renewed_at = 0.0
#: Holds whose release failed (the database was away): retried by ``keepalive``.
_unreleased: set[str] = set()
#: The holds this process has written and not released, by token: written again if its
#: lease lapsed and another worker swept them while their subscriptions still run.
_live: dict[str, _Hold] = {}

_LOCK_MEMBER = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
#: Renew the lease; returns its expiry before (None: there was no lease row).
_RENEW = (
    "WITH old AS (SELECT expires_at FROM ddp_presence_lease WHERE owner = %s)"
    " INSERT INTO ddp_presence_lease (owner, expires_at)"
    " VALUES (%s, clock_timestamp() + make_interval(secs => %s))"
    " ON CONFLICT (owner) DO UPDATE SET expires_at = EXCLUDED.expires_at"
    " RETURNING (SELECT expires_at FROM old), (SELECT expires_at FROM old) < clock_timestamp()"
)
_HOLD = (
    "INSERT INTO ddp_presence_hold (token, presence_id, owner) VALUES (%s, %s, %s)"
    " ON CONFLICT (token) DO NOTHING"
)
_PRESENT = (
    "INSERT INTO ddp_presence (id, topic, user_id, since) VALUES (%s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING"
)
_UNHOLD = "DELETE FROM ddp_presence_hold WHERE token = %s RETURNING presence_id"
_ABSENT = (
    "DELETE FROM ddp_presence p WHERE p.id = ANY(%s)"
    " AND NOT EXISTS (SELECT 1 FROM ddp_presence_hold h WHERE h.presence_id = p.id)"
)


class _Hold:
    """One subscription run's hold on a member's presence, and how far it got: ``new``
    (``present`` was called), ``joining`` (being written), ``held``, ``stopping`` (its
    subscription stopped while it was being written) or ``released``. Its join and its
    release share it, so whichever order the relay runs them in, nothing is left held."""

    __slots__ = ("presence_id", "state", "token", "topic", "user_id")

    def __init__(self, presence_id: str, topic: str, user_id: str | None) -> None:
        self.token = random_id()
        self.presence_id = presence_id
        self.topic = topic
        self.user_id = user_id
        self.state = "new"


def present(ctx: SubscriptionContext, topic: str) -> Cursor:
    """Make the subscribing session present on ``topic`` until the subscription stops,
    and return the cursor of everyone present on it (this session included).

    A logged-in session is present as its user (one document however many sessions the
    user has there), an anonymous one as itself. Raises ``DDPError(400)`` for a topic
    that is not a non-empty string of at most ``MAX_TOPIC_LENGTH`` characters."""
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise DDPError(400, f"A presence topic is 1 to {MAX_TOPIC_LENGTH} characters")
    member = f"u:{ctx.user_id}" if ctx.user_id is not None else f"s:{ctx.session_id}"
    hold = _Hold(_presence_id(topic, member), topic, ctx.user_id)
    using = DEFAULT_DB_ALIAS  # the presence tables live where the change stream does
    # Registered first: a publication that stops itself after ``present`` releases a
    # hold that was never written, and its join then does nothing.
    ctx.on_stop(lambda: _release(hold, using))
    # The publication function runs in a read-only snapshot: the join is written right
    # after it, before the subscription's documents are read, so they include this one.
    ctx.after_snapshot(lambda: _join(hold, using))
    # Imported here: the backend imports this module before Django's apps are ready.
    from django_app.models import Presence

    return Cursor(Presence, topic=topic)


def keepalive(*, using: str = DEFAULT_DB_ALIAS) -> None:
    """Renew this worker's lease (writing its holds again if it had lapsed: another
    worker may have swept them), retry failed releases, and release what the workers
    whose lease expired held. Every worker, every few seconds; idempotent."""
    if _renew(using):
        _rewrite_live(using)
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
    with _lock:
        _live.clear()
    _sweep(OWNER, using)


# -- internals -----------------------------------------------------------------------


def _presence_id(topic: str, member: str) -> str:
    # "p" first: 24 hex digits would read as a Mongo ObjectID, which Meteor's id rules
    # send as "-<hex>" and clients that do not parse ids the Meteor way would show.
    return "p" + hashlib.sha256(f"{topic}\0{member}".encode()).hexdigest()[:23]


def _join(hold: _Hold, using: str, *, again: bool = False) -> None:
    """Write ``hold`` (``again``: a held one whose lease lapsed), unless its subscription
    stopped first; a stop that comes while it is written releases it right after."""
    if hold.state != ("held" if again else "new"):
        return  # released before its join ran: nothing to write
    before = hold.state
    hold.state = "joining"
    try:
        lapsed = _write(hold, using, renew=not again)
    except BaseException:
        stopping = hold.state == "stopping"
        hold.state = "released" if stopping else before
        if stopping and again:
            _leave([hold.token], using)
        raise
    if hold.state == "stopping":
        # The subscription stopped while its join was being written.
        hold.state = "released"
        with _lock:
            _live.pop(hold.token, None)
        _leave([hold.token], using)
        return
    hold.state = "held"
    with _lock:
        _live[hold.token] = hold
    if lapsed:
        _rewrite_live(using)


def _write(hold: _Hold, using: str, *, renew: bool) -> bool:
    """The hold and its member's row, in one transaction (both idempotent); True when
    the lease this renewed had lapsed."""
    lease = ddp_settings.PRESENCE_LEASE.total_seconds()
    lapsed = False
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        if renew and time.monotonic() - _renewed_at > lease / 3:
            # No hold without a live lease: another worker would sweep it at once.
            lapsed = _renew_with(cursor)
        cursor.execute(_LOCK_MEMBER, [hold.presence_id])
        cursor.execute(_HOLD, [hold.token, hold.presence_id, OWNER])
        cursor.execute(_PRESENT, [hold.presence_id, hold.topic, hold.user_id, timezone.now()])
    return lapsed


def _rewrite_live(using: str) -> None:
    """This worker's lease had lapsed: another worker may have swept its holds while
    their subscriptions still run. Write them again (idempotent)."""
    with _lock:
        live = list(_live.values())
    for hold in live:
        _join(hold, using, again=True)


def _release(hold: _Hold, using: str) -> None:
    """A subscription's stop: release its hold (after its join, if that is in flight)."""
    state = hold.state
    if state == "joining":
        hold.state = "stopping"
        return
    hold.state = "released"
    if state == "held":
        with _lock:
            _live.pop(hold.token, None)
        _leave([hold.token], using)


def _leave(tokens: Sequence[str], using: str) -> None:
    try:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            ids: set[str] = set()
            for token in sorted(tokens):
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


def _absent(cursor: CursorWrapper, presence_ids: list[str]) -> None:
    """Delete the presence rows no hold keeps any more (locks in sorted order: joins and
    leaves take one of them, so no cycle)."""
    if not presence_ids:
        return
    for presence_id in presence_ids:
        cursor.execute(_LOCK_MEMBER, [presence_id])
    # A statement after the locks: READ COMMITTED reads every hold committed before them.
    cursor.execute(_ABSENT, [presence_ids])


def _renew(using: str) -> bool:
    """Renew this worker's lease; True when it had lapsed or was gone (its holds may
    have been swept by another worker meanwhile)."""
    with connections[using].cursor() as cursor:
        return _renew_with(cursor)


def _renew_with(cursor: CursorWrapper) -> bool:
    global _renewed_at
    cursor.execute(_RENEW, [OWNER, OWNER, ddp_settings.PRESENCE_LEASE.total_seconds()])
    before, lapsed = cursor.fetchone()
    _renewed_at = time.monotonic()
    return before is None or bool(lapsed)


def _sweep(owner: str, using: str) -> None:
    """Release every hold of ``owner`` (a dead worker, or this one stopping), in batches,
    then its lease."""
    global _renewed_at
    if owner == OWNER:
        _renewed_at = 0.0  # its lease goes below: the next join writes one first
    while True:
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute(
                "DELETE FROM ddp_presence_hold WHERE token IN (SELECT token FROM"
                " ddp_presence_hold WHERE owner = %s ORDER BY token LIMIT %s)"
                " RETURNING presence_id",
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
