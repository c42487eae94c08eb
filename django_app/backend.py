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

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import django
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from django_app import changes, signals
from django_app.accounts.users import USER_PUBLICATION
from django_app.checks import TAG
from django_app.collection import Collection, apply_visibility
from django_app.conf import ddp_settings
from django_app.context import MethodContext, SubscriptionContext, method_invocation
from django_app.cursor import conditions_for_rule
from django_app.exceptions import DDPError, NotFound
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.serializer import pk_to_wire
from relay.backend import (
    ANONYMOUS,
    CallContext,
    Condition,
    DecodedChange,
    Document,
    Handshake,
    Identity,
    MethodOutcome,
    Route,
    SubscriptionData,
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
        """The users null publication (when accounts are on and it is registered)."""
        if ddp_settings.ACCOUNTS and self.registry.has_publication(USER_PUBLICATION):
            return (USER_PUBLICATION,)
        return ()

    def rate_limit_rules(self) -> Sequence[Rule]:
        """The rules ``registry.add_rate_limit_rule`` added (the accounts default among
        them unless removed: ``django_app/ddp.py``)."""
        return self.registry.rate_limit_rules

    def has_publication(self, name: str) -> bool:
        return bool(self.registry.has_publication(name))

    def has_method(self, name: str) -> bool:
        return bool(self.registry.has_method(name))

    def subscribe(self, ctx: CallContext, name: str, params: Sequence[Any]) -> SubscriptionData:
        """Run publication ``name``: initial documents, one route per cursor, and the
        position of each route's channel, all from one database snapshot."""
        publication = self.registry.get_publication(name)
        if publication is None:
            raise NotFound(f"Subscription '{name}' not found")
        with _db_call(), _snapshot(connections[DEFAULT_DB_ALIAS]):
            user = _user_of(ctx.identity)
            sub_ctx = SubscriptionContext(
                user=user,
                user_id=ctx.identity.user_id,
                session_id=ctx.session_id,
                handshake=ctx.handshake,
            )
            documents: list[Document] = []
            routes: list[Route] = []
            for cursor in publication.cursors(sub_ctx, params):
                collection = self.registry.collection_for_model(cursor.model)
                rule = collection.visible(user)
                for instance in apply_visibility(cursor.queryset, rule):
                    raw_id, fields = collection.serialize(instance)
                    documents.append(
                        Document(collection.collection_name, id_stringify(raw_id), fields)
                    )
                visibility = conditions_for_rule(cursor.model, rule)
                conditions = (
                    None
                    if cursor.conditions is None or visibility is None
                    else _routable(collection, cursor.conditions + visibility)
                )
                routes.append(
                    Route(
                        collection.channel,
                        collection.collection_name,
                        conditions,
                        doc_id=_one_document(collection, conditions),
                    )
                )
            positions = changes.positions(route.channel for route in routes)
            return SubscriptionData(
                documents=tuple(documents), routes=tuple(routes), positions=positions
            )

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
        """The change as the relay routes it (see ``Collection.decode_change``); None for
        a channel no registered collection publishes on. No database access."""
        collection = self.registry.get_collection_for_channel(channel)
        if collection is None:
            return None
        return collection.decode_change(change)

    def housekeeping(self) -> None:
        """Periodic cluster chores the relay runs: prune the changelog past its retention
        (``DDP_CHANGELOG_RETENTION``) and delete expired login tokens (relays close the
        sessions that held them). Idempotent, so several relays may run it at once."""
        from django_app.accounts.tokens import delete_expired  # see _new_identity

        with _db_call():
            changes.prune()
            delete_expired()

    def close(self) -> None:
        """Close this thread's database connections (the worker is stopping)."""
        connections.close_all()


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
