"""``DjangoBackend``: the relay's ``relay.backend.Backend``, implemented with Django.

Job: the seam the relay calls (by dotted path, ``RELAY_BACKEND``): identify a session's
user from its handshake (the ``DDP_AUTHENTICATORS``: the Django session cookie by
default), check a credential again (``verify``), name the null publications every session
runs (``universal_publications``), run publications (visibility rules applied, rows
serialized, routes built, change-stream positions read in the same snapshot), run
methods and mutators inside ``transaction.atomic()`` with the current invocation set, so
``MeteorIdField`` draws the client's ids, report the change-stream positions a method's
writes produced (the write fence) and the session's new identity when the method logged
it in or out (``ctx.set_user``), and decode change-stream changes for the relay's
listener without touching the database. Like Django's request signals, every call starts
and ends by closing unusable or expired connections (``close_old_connections()``), so a
broken connection is replaced, not reused.

Identities (``django_app.accounts.identity``): a logged-in session's credential is the key
of its ``LoginToken`` row and its revocation route is that row on the token channel;
the identity a method sets is built after the method's transaction committed, so the
token row and the channel position it carries are both committed.

Snapshots: ``subscribe`` runs the publish function, its querysets and the read of the
channels' positions in ONE transaction, ``REPEATABLE READ, READ ONLY`` (so publish
functions must not write): the documents are exactly the state after those positions.
Called inside a transaction the caller opened (tests), it uses that one as it is.

Write fence: after an atomic method (the default) commits, ``MethodOutcome.writes`` lists
the ``(channel, seq)`` its transaction published. A method declared ``atomic=False``
may commit several transactions: every INSERT/UPDATE/DELETE/MERGE/WITH/COPY/CALL
statement it runs on the default database is observed (a statement outside any
transaction is run in a one-statement transaction of its own so its id can be read), and
the positions of all of them are reported. Not observed: writes to other databases, and
writes hidden in a plain ``SELECT`` of a function. Called inside a transaction the caller
opened, nothing is committed yet and ``writes`` is empty.

Errors: ``DDPError`` (a ``ClientError``) passes through to the client; a Django
``ValidationError`` escaping a method becomes ``DDPError(400, messages)``; anything else
propagates (the relay logs it and answers 500).

What must not live here: sockets, gevent, DDP framing, or anything of the relay's
runtime: this module may only import django, ``relay.backend``, ``relay.limits`` (the pure
rate-limit rules) and ``relay.protocol``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import django
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.exceptions import EmptyResultSet, ImproperlyConfigured, ValidationError
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.query import QuerySet

from django_app import changes, events, presence, signals
from django_app.accounts.users import USER_PUBLICATION
from django_app.checks import TAG
from django_app.collection import Collection, apply_visibility
from django_app.conf import ddp_settings
from django_app.context import (
    MethodContext,
    PublicationHooks,
    SubscriptionContext,
    method_invocation,
)
from django_app.cursor import Cursor, LookupPath, conditions_for_rule
from django_app.exceptions import DDPError, NotFound
from django_app.ordering import order_expressions, window_of
from django_app.publications import Count
from django_app.registries import RegisteredPublication, Registry
from django_app.registries import registry as default_registry
from django_app.serializer import pk_to_wire
from django_app.streams import StreamCursor
from relay.backend import (
    ANONYMOUS,
    CallContext,
    Condition,
    CountOf,
    DecodedChange,
    Document,
    Handshake,
    Identity,
    MethodOutcome,
    PublicationSink,
    QueryData,
    QuerySpec,
    Route,
    StreamOf,
    SubscriptionPlan,
    TraceOrders,
    Window,
    WritePosition,
)
from relay.limits.ratelimit import Rule
from relay.protocol.changestream import Change
from relay.protocol.ids import id_stringify

__all__ = ["DjangoBackend"]

logger = logging.getLogger("django_app.backend")


class DjangoBackend:
    """The Django implementation of ``relay.backend.Backend``.

    ``DjangoBackend()`` sets Django up if needed (``DJANGO_SETTINGS_MODULE`` names the
    settings) and refuses to start when the ``ddp`` system checks report errors, since
    the relay does not run ``manage.py check`` itself. ``registry`` is for tests.
    """

    def __init__(self, *, registry: Registry | None = None) -> None:
        if not apps.ready:
            django.setup()
        self.registry = registry if registry is not None else default_registry
        _run_checks()

    # -- Backend protocol ---------------------------------------------------------------

    def authenticate(self, handshake: Handshake) -> Identity:
        """The identity the first of ``DDP_AUTHENTICATORS`` recognises (by default the
        user of the Django session the cookie names), else anonymous."""
        from django_app.accounts.authenticators import authenticate  # see _new_identity

        with _db_call():
            identity = authenticate(handshake)
        return ANONYMOUS if identity is None else identity

    def verify(self, identity: Identity) -> Identity | None:
        """``identity`` read afresh from its credential (the token row exists, has not
        expired, and its user is active): fresh user and position; else None. An identity
        without a credential verifies as itself when anonymous, else None (nothing could
        prove it again)."""
        from django_app.accounts.identity import identity_of_credential  # see _new_identity

        if identity.credential is None:
            return identity if identity.user_id is None else None
        with _db_call():
            return identity_of_credential(identity.credential)

    def universal_publications(self) -> Sequence[str]:
        """The users null publication (when accounts are on and it is registered), then
        the project's own (``@publish(None)``)."""
        names: tuple[str, ...] = ()
        if ddp_settings.ACCOUNTS and self.registry.has_publication(USER_PUBLICATION):
            names = (USER_PUBLICATION,)
        return names + self.registry.universal_publications

    def rate_limit_rules(self) -> Sequence[Rule]:
        """The rules ``registry.add_rate_limit_rule`` added (the accounts default among
        them unless removed: ``django_app/ddp.py``)."""
        return self.registry.rate_limit_rules

    def has_publication(self, name: str) -> bool:
        return bool(self.registry.has_publication(name))

    def has_method(self, name: str) -> bool:
        return bool(self.registry.has_method(name))

    def subscribe(
        self, ctx: CallContext, name: str, params: Sequence[Any], sink: PublicationSink
    ) -> SubscriptionPlan:
        """Run publication ``name``'s function: one ``QuerySpec`` per cursor or count
        (not run yet: ``fetch`` reads them), keyed by what selects their rows, so
        identical queries are shared by the relay whoever subscribes. A publish function
        runs in one ``REPEATABLE READ, READ ONLY`` snapshot, the position its
        ``ctx.observe`` calls read included; a static publication (declared cursors, no
        function) opens none: it reads nothing (a reconnect storm of ``books.all`` costs
        no database round trip per subscription)."""
        publication = self.registry.get_publication(name)
        if publication is None:
            raise NotFound(f"Subscription '{name}' not found")
        conn = connections[DEFAULT_DB_ALIAS]
        with _db_call():
            if publication.is_static:
                return self._plan(publication, ctx, params, sink, nullcontext())
            lazy = _Lazy()
            try:
                return self._plan(publication, ctx, params, sink, _lazy_snapshot(conn, lazy), lazy)
            except BaseException:
                # Whatever the function made of it (it may have caught the error), a
                # connection found dead at its first query is replaced and the function
                # run again, if it published nothing yet: else the client gets the error.
                if not (lazy.stale and lazy.ctx is not None and not lazy.ctx.used_api):
                    raise
            conn.close()
            return self._plan(publication, ctx, params, sink, _snapshot(conn))

    def _plan(
        self,
        publication: RegisteredPublication,
        ctx: CallContext,
        params: Sequence[Any],
        sink: PublicationSink,
        snapshot: AbstractContextManager[None],
        lazy: _Lazy | None = None,
    ) -> SubscriptionPlan:
        """Run ``publication`` in ``snapshot``, then its ``after_snapshot`` callbacks;
        ``lazy``, the lazy snapshot's state, learns the publication's context."""
        after: list[Callable[[], None]] = []
        with snapshot:
            user = _user_of(ctx.identity)
            sub_ctx = SubscriptionContext(
                user=user,
                user_id=ctx.identity.user_id,
                session_id=ctx.session_id,
                handshake=ctx.handshake,
                hooks=PublicationHooks(sink, _in_db_call, _position_of, after.append),
            )
            if lazy is not None:
                lazy.ctx = sub_ctx
            items, returned = publication.run(sub_ctx, params)
            specs = [self._spec(item, user) for item in items]
        for callback in after:
            callback()
        return SubscriptionPlan(specs, auto_ready=returned or not sub_ctx.used_api)

    def _spec(self, item: Cursor | Count | StreamCursor, user: Any) -> QuerySpec:
        """The shareable spec of one cursor, count or stream, for ``user``."""
        if isinstance(item, StreamCursor):
            return _stream_spec(item)
        count = item if isinstance(item, Count) else None
        cursor = item.cursor if isinstance(item, Count) else item
        collection = self.registry.collection_for_model(cursor.model)
        rule = collection.visible(user)
        visibility = conditions_for_rule(cursor.model, rule)
        conditions = (
            None
            if cursor.conditions is None or visibility is None
            else _routable(collection, cursor.conditions + visibility)
        )
        window = window_of(cursor) if count is None else None
        paths: tuple[LookupPath, ...] = ()
        if window is not None:
            base = apply_visibility(_unwindowed(cursor.queryset), rule)
            window_spec, paths = window
            if any(p.key not in collection.routing_keys for p in paths):
                conditions = None  # sorted on what changes do not carry: re-read per change
            source = _Source(collection, base, window_spec, paths, None)
        else:
            window_spec = None
            if cursor.skip or cursor.limit is not None:
                conditions = None  # a slice whose order cannot be read back: re-read
            base = apply_visibility(cursor.queryset, rule)
            count_of = None
            if count is not None:
                count_of = CountOf(count.collection, id_stringify(count.id), count.field)
            source = _Source(collection, base, None, (), count_of)
        route = Route(
            collection.channel,
            collection.collection_name,
            conditions,
            doc_id=_one_document(collection, conditions) if count is None else None,
        )
        return QuerySpec(
            key=source.key(conditions),
            route=route,
            window=window_spec,
            count=source.count,
            source=source,
        )

    def fetch(self, specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        """Read the specs' rows in ONE ``REPEATABLE READ, READ ONLY`` snapshot, with
        their channels' positions read in it: the rows are exactly the state after them."""
        with _db_call(), _snapshot(connections[DEFAULT_DB_ALIAS]):
            read = [_source_of(spec).read() for spec in specs]
            positions = changes.positions({spec.route.channel for spec in specs})
        return [
            QueryData(documents=docs, keys=keys, complete=complete, positions=positions)
            for docs, keys, complete in read
        ]

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        """Run method (or mutator) ``name`` as the invocation seeded by ``ctx.random_seed``;
        ``writes`` are the change-stream positions its committed writes published."""
        method = self.registry.get_method(name)
        if method is None:
            raise DDPError(404, f"Method '{name}' not found")
        with _db_call():
            conn = connections[DEFAULT_DB_ALIAS]
            invocation = MethodContext(
                user=_user_of(ctx.identity),
                user_id=ctx.identity.user_id,
                session_id=ctx.session_id,
                handshake=ctx.handshake,
                random_seed=ctx.random_seed,
                method=name,
                credential=ctx.identity.credential,
                unblock=ctx.unblock,
            )
            txids: set[int] = set()
            try:
                with method_invocation(invocation):
                    if method.is_atomic:
                        with transaction.atomic():
                            result = method.run(invocation, params)
                            txid = changes.current_txid()
                        if txid is not None:
                            txids.add(txid)
                    else:
                        recorder = _TxidRecorder(conn)
                        with conn.execute_wrapper(recorder):
                            result = method.run(invocation, params)
                        txids = recorder.txids
            except ValidationError as exc:
                raise DDPError.from_validation_error(exc) from exc
            identity = _new_identity(invocation)
            close = invocation.closing
            if not txids or conn.in_atomic_block:
                return MethodOutcome(result=result, identity=identity, close=close)
            writes = tuple(WritePosition(c, seq) for c, seq in changes.published_by(txids))
            return MethodOutcome(result=result, writes=writes, identity=identity, close=close)

    def connection_hooks(self) -> bool:
        """Whether anything listens to ``django_app.signals.connection_opened`` or
        ``connection_closed`` (no receivers: the relay skips the calls)."""
        return bool(
            signals.connection_opened.has_listeners() or signals.connection_closed.has_listeners()
        )

    def connection_opened(self, ctx: CallContext, resumed: bool) -> None:
        """Send ``connection_opened``; a receiver's ``DDPError`` refuses the session."""
        with _db_call():
            signals.connection_opened.send(
                sender=DjangoBackend, connection=_connection(ctx), resumed=resumed
            )

    def connection_closed(self, ctx: CallContext, parked: bool) -> None:
        """Send ``connection_closed`` (errors of receivers are logged, not raised)."""
        with _db_call():
            for receiver, outcome in signals.connection_closed.send_robust(
                sender=DjangoBackend, connection=_connection(ctx), parked=parked
            ):
                if isinstance(outcome, Exception):
                    logger.error(
                        "connection_closed receiver %r failed",
                        receiver,
                        exc_info=(type(outcome), outcome, outcome.__traceback__),
                    )

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        """The change as the relay routes it (see ``Collection.decode_change``; an event
        stream's: ``Stream.decode``); None for a channel nothing registered publishes
        on. No database access."""
        collection = self.registry.get_collection_for_channel(channel)
        if collection is not None:
            return collection.decode_change(change)
        stream = self.registry.get_stream_for_channel(channel)
        if stream is not None:
            return stream.decode(change)
        return None

    def housekeeping(self) -> None:
        """Periodic cluster chores the relay runs: prune the changelog past its retention
        (``DDP_CHANGELOG_RETENTION``) and delete expired login tokens (relays close the
        sessions that held them). Idempotent, so several relays may run it at once."""
        from django_app.accounts.tokens import delete_expired  # see _new_identity

        with _db_call():
            changes.prune()
            delete_expired()
            presence.housekeeping()

    def keepalive(self) -> None:
        """Every few seconds on every worker: renew this worker's presence lease and
        release the presence of workers whose lease expired (``django_app.presence``)."""
        with _db_call():
            presence.keepalive()

    def trace_orders(self) -> TraceOrders:
        """The session traces running now (``relay.backend.TraceBackend``)."""
        from django_app.tracing import trace_orders  # models: see _new_identity

        with _db_call():
            return trace_orders()

    def save_trace(
        self,
        trace_id: str,
        relay: str,
        session_id: str,
        first: int,
        frames: Sequence[Mapping[str, Any]],
        stats: Mapping[str, int],
    ) -> None:
        """Store one batch of a traced session's frames (``django_app.tracing``)."""
        from django_app.tracing import save_trace  # models: see _new_identity

        with _db_call():
            save_trace(trace_id, relay, session_id, first, frames, stats)

    def close(self) -> None:
        """Release this worker's presence, then close this thread's database connections
        (the worker is stopping)."""
        try:
            with _db_call():
                presence.release_all()
        except Exception:
            logger.exception("releasing this worker's presence failed; its lease will expire")
        connections.close_all()


class _Source:
    """A spec's query, kept by the relay (opaque to it) to be read again: the collection,
    the queryset (visibility applied, no window), and the window or count to read."""

    __slots__ = ("collection", "count", "paths", "queryset", "window")

    def __init__(
        self,
        collection: Collection,
        queryset: QuerySet[Any],
        window: Window | None,
        paths: tuple[LookupPath, ...],
        count: CountOf | None,
    ) -> None:
        self.collection = collection
        self.queryset = queryset
        self.window = window
        self.paths = paths
        self.count = count

    def key(self, conditions: tuple[Condition, ...] | None) -> str:
        """Equal for two sources that always read the same rows: the collection, what
        selects the rows, and the window or count.

        What selects them: a routable query's conditions (its cursor's lookups and the
        visibility rule, normalised: a routable queryset has no filter of its own, so
        they are its WHERE clause) without compiling anything; else the SQL and its
        parameters (a compile costs about 0.1 ms)."""
        if conditions is not None:
            selects: Any = ("conditions", conditions)
        else:
            qs = self.queryset
            if not qs.query.is_sliced:
                qs = qs.order_by()  # the order of a set is not part of what it is
            try:
                sql, params = qs.query.sql_with_params()
            except EmptyResultSet:
                sql, params = "<empty>", ()
            selects = ("sql", sql, tuple(map(repr, params)))
        text = repr((self.collection.collection_name, selects, self.window, self.count))
        return hashlib.sha256(text.encode()).hexdigest()

    def read(self) -> tuple[list[Document], list[tuple[Any, ...]] | None, bool]:
        """The rows now (inside the caller's snapshot): documents, window keys, complete."""
        collection = self.collection
        name = collection.collection_name
        if self.count is not None:
            # DISTINCT: a filter across a many-to-many joins a row once per match.
            ids = self.queryset.order_by().values_list("pk", flat=True).distinct()
            return [Document(name, id_stringify(pk_to_wire(pk)), {}) for pk in ids], None, True
        # A clone: a queryset caches its rows, and a refetch must read them again.
        qs = collection.prepare_queryset(self.queryset.all())
        window = self.window
        if window is None:
            return [_document(collection, instance) for instance in qs], None, True
        qs = qs.order_by(*order_expressions(window, self.paths))
        capacity = window.capacity
        rows = list(qs if capacity is None else qs[:capacity])
        keys = [collection.values_of(row, [o.path for o in window.order]) for row in rows]
        complete = capacity is None or len(rows) < capacity
        return [_document(collection, row) for row in rows], keys, complete


class _StreamSource:
    """A stream key's spec source: its recent events, read back from the changelog."""

    __slots__ = ("cursor",)

    def __init__(self, cursor: StreamCursor) -> None:
        self.cursor = cursor

    def read(self) -> tuple[list[Document], list[tuple[Any, ...]] | None, bool]:
        return events.history(self.cursor), None, True


def _stream_spec(cursor: StreamCursor) -> QuerySpec:
    """One stream key's spec: shared by every subscriber of the key and history."""
    stream = cursor.stream
    text = repr(("stream", cursor.channel, stream.collection, cursor.history))
    return QuerySpec(
        key=hashlib.sha256(text.encode()).hexdigest(),
        route=Route(cursor.channel, stream.collection, ()),
        stream=StreamOf(cursor.history),
        source=_StreamSource(cursor),
    )


def _source_of(spec: QuerySpec) -> _Source | _StreamSource:
    source = spec.source
    if not isinstance(source, _Source | _StreamSource):
        raise TypeError(f"not a spec of this backend: {spec!r}")
    return source


def _document(collection: Collection, instance: models.Model) -> Document:
    raw_id, fields = collection.serialize(instance)
    return Document(collection.collection_name, id_stringify(raw_id), fields)


def _unwindowed(qs: QuerySet[Any]) -> QuerySet[Any]:
    """``qs`` without its slice and ordering (the window is applied by ``_Source``)."""
    qs = qs.all()
    qs.query.clear_limits()
    qs.query.clear_ordering(force=True)
    return qs


def _in_db_call(callback: Callable[..., None]) -> Callable[..., None]:
    """A publication's later callback, with a database call's connection hygiene."""

    def run(*args: Any) -> None:
        with _db_call():
            callback(*args)

    return run


def _position_of(channel: str) -> tuple[int, str]:
    return changes.positions([channel]).get(channel, (0, ""))


def _connection(ctx: CallContext) -> SubscriptionContext:
    """What connection hooks receive: the session's user, id and handshake."""
    return SubscriptionContext(
        user=_user_of(ctx.identity),
        user_id=ctx.identity.user_id,
        session_id=ctx.session_id,
        handshake=ctx.handshake,
    )


def _one_document(collection: Collection, conditions: tuple[Condition, ...] | None) -> str | None:
    """The wire id of the one document a route can hold when its only condition is an
    exact primary-key lookup (a user's own document), else None."""
    if conditions is None or len(conditions) != 1:
        return None
    (condition,) = conditions
    if condition.op != "exact" or condition.path != collection.pk_field.attname:
        return None
    if condition.value is None:
        return None
    return id_stringify(pk_to_wire(condition.value))


_warned: set[tuple[str, str]] = set()


def _routable(
    collection: Collection, conditions: tuple[Condition, ...]
) -> tuple[Condition, ...] | None:
    """``conditions``, or None when one tests a path changes do not carry (not declared
    in ``Collection.related``): the relay could never see it match."""
    missing = sorted({c.path for c in conditions} - collection.routing_keys)
    if not missing:
        return conditions
    for path in missing:
        if (collection.collection_name, path) not in _warned:
            _warned.add((collection.collection_name, path))
            logger.warning(
                "%r: lookups on %r are not routable (live updates re-run the publication);"
                " add it to the collection's related = [...] to route them in memory",
                collection,
                path,
            )
    return None


@contextmanager
def _snapshot(conn: BaseDatabaseWrapper) -> Iterator[None]:
    """One ``REPEATABLE READ, READ ONLY`` transaction (or the caller's, if it has one)."""
    if conn.in_atomic_block:
        yield
        return
    # A health check (SELECT 1) must not be the transaction's first statement.
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with transaction.atomic(using=conn.alias):
        with conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


class _StaleConnection(OperationalError):
    """The connection failed its health check at a lazy snapshot's first statement."""


@dataclass
class _Lazy:
    """What ``subscribe`` learns of a ``_lazy_snapshot``: whether its connection was
    found dead (``stale``), and the publication's context (did it publish already?)."""

    stale: bool = False
    ctx: SubscriptionContext | None = None


@contextmanager
def _lazy_snapshot(conn: BaseDatabaseWrapper, lazy: _Lazy) -> Iterator[None]:
    """``_snapshot``, begun at the first statement the block runs through Django's
    cursors: a publish function that only builds querysets (most do, and the users null
    publication of a logged-out session reads nothing) costs no round trip at all. The
    snapshot is the same: PostgreSQL takes a ``REPEATABLE READ`` transaction's snapshot
    at its first statement, not at its BEGIN, and every statement of the block runs in
    that transaction.

    Django's health check (``SELECT 1``, when ``CONN_HEALTH_CHECKS``) would be the
    transaction's first statement: it is made at that first statement, outside the
    transaction; a connection that fails it raises ``_StaleConnection`` and says so in
    ``lazy`` (the caller replaces the connection and runs the block again in
    ``_snapshot``, whatever the block did with the error). A block that ran no statement
    leaves the connection unchecked as it found it: Django checks it at its next use
    (``after_snapshot`` callbacks write, and must not meet a dead connection unchecked).
    A statement run on the raw DB-API connection, bypassing Django's cursors, is not
    seen: the block's transaction then starts there, in the connection's default
    isolation level.
    """
    if conn.in_atomic_block:
        yield
        return
    wrapper: Any = conn  # health_check_* and Database: not in django-stubs
    check = wrapper.health_check_enabled and not wrapper.health_check_done
    began = False

    def begin(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal began
        if not began:
            began = True
            try:
                _begin_snapshot(conn.connection, wrapper.Database.Error if check else None)
            except _StaleConnection:
                lazy.stale = True
                raise
        return execute(sql, params, many, context)

    # Django checks when atomic() turns autocommit off: a round trip even for a block that
    # reads nothing. begin() checks instead, at the first statement.
    checked = wrapper.health_check_done
    wrapper.health_check_done = True
    try:
        with transaction.atomic(using=conn.alias), conn.execute_wrapper(begin):
            yield
    finally:
        if not began:
            wrapper.health_check_done = checked


def _begin_snapshot(raw: Any, check: type[Exception] | None) -> None:
    """On the DB-API connection ``raw`` (autocommit off, no statement run yet): the health
    check, outside the transaction, unless ``check`` is None (else: the DB-API's error
    class); then the snapshot's isolation."""
    if raw.info.transaction_status != 0:  # not IDLE (psycopg2 and 3 alike: 0)
        return  # a raw statement began the transaction: too late to set it
    if check is not None:
        try:
            raw.autocommit = True
            try:
                with raw.cursor() as cursor:
                    cursor.execute("SELECT 1")
            finally:
                raw.autocommit = False
        except check as exc:
            raise _StaleConnection(f"the database connection is gone: {exc}") from exc
    with raw.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


class _TxidRecorder:
    """``execute_wrapper``: the ids of the transactions a non-atomic method wrote in."""

    WRITES = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "COPY", "CALL"})

    def __init__(self, conn: BaseDatabaseWrapper) -> None:
        self.conn = conn
        self.txids: set[int] = set()

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        words = str(sql).lstrip().split(None, 1)
        if not words or words[0].upper() not in self.WRITES:
            return execute(sql, params, many, context)
        if self.conn.in_atomic_block or not self.conn.get_autocommit():
            result = execute(sql, params, many, context)
            self._record()
            return result
        with transaction.atomic(using=self.conn.alias):
            result = execute(sql, params, many, context)
            self._record()
        return result

    def _record(self) -> None:
        # The raw DB-API cursor: this query must not go through the wrappers again.
        with self.conn.connection.cursor() as cursor:
            cursor.execute("SELECT txid_current_if_assigned()")
            row = cursor.fetchone()
        if row is not None and row[0] is not None:
            self.txids.add(int(row[0]))


@contextmanager
def _db_call() -> Iterator[None]:
    """Replace unusable/expired connections before and after, as request signals do."""
    _close_old_connections()
    try:
        yield
    finally:
        _close_old_connections()


def _close_old_connections() -> None:
    """``django.db.close_old_connections``, minus connections inside a transaction.

    The relay never calls the backend inside a transaction, but a caller that does (a
    test case, a management command driving the backend) must keep its connection.
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def _new_identity(invocation: MethodContext) -> Identity | None:
    """The identity a method set with ``ctx.set_user`` (read after its commit), else None.

    A login whose token was revoked before this read (a concurrent password change) ends
    logged out: that token could never have been used.
    """
    # The accounts modules are imported where used: they reach the models, and the relay
    # imports this module before Django is set up (DjangoBackend() sets it up).
    from django_app.accounts.identity import identity_of_user

    if not invocation.user_changed:
        return None
    if invocation.user_id is None:
        return ANONYMOUS
    identity = identity_of_user(invocation.user, invocation.credential)
    return ANONYMOUS if identity is None else identity


def _user_of(identity: Identity) -> Any:
    """The Django user of a session: the handshake's, reloaded by id, or anonymous."""
    from django.contrib.auth.models import AnonymousUser  # needs the app registry

    if identity.user is not None:
        return identity.user
    if identity.user_id is None:
        return AnonymousUser()
    # A session resumed elsewhere may carry only the id: load the user again.
    user_model = get_user_model()
    user = user_model._default_manager.filter(pk=identity.user_id).first()
    if user is None or not getattr(user, "is_active", True):
        return AnonymousUser()
    return user


def _run_checks() -> None:
    """Run the ``ddp`` system checks; errors stop the relay, warnings are logged."""
    errors = []
    for message in checks.run_checks(tags=[TAG]):
        if message.is_silenced():
            continue
        if message.is_serious():
            errors.append(str(message))
        else:
            logger.warning("%s", message)
    if errors:
        raise ImproperlyConfigured("DDP system checks failed:\n" + "\n".join(errors))
