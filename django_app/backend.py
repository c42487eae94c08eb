"""``DjangoBackend``: the relay's ``relay.backend.Backend``, implemented with Django.

Job: the seam the relay calls (by dotted path, ``RELAY_BACKEND``): identify a session's
user from the Django session cookie, run publications (visibility rules applied, rows
serialized, routes built) and run methods and mutators inside ``transaction.atomic()``
with the current invocation set, so ``MeteorIdField`` draws the client's ids. Like
Django's request signals, every call starts and ends by closing unusable or expired
connections (``close_old_connections()``), so a broken connection is replaced, not reused.

Errors: ``DDPError`` (a ``ClientError``) passes through to the client; a Django
``ValidationError`` escaping a method becomes ``DDPError(400, messages)``; anything else
propagates (the relay logs it and answers 500).

What must not live here: sockets, gevent, DDP framing, or anything of the relay's
runtime: this module may only import django, ``relay.backend`` and ``relay.protocol``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import import_module
from typing import Any

import django
from django.apps import apps
from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.core import checks
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import connections, transaction
from django.utils.crypto import constant_time_compare

from django_app.checks import TAG
from django_app.collection import apply_visibility
from django_app.context import MethodContext, SubscriptionContext, method_invocation
from django_app.cursor import conditions_for_rule
from django_app.exceptions import DDPError, NotFound
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from relay.backend import (
    ANONYMOUS,
    CallContext,
    Document,
    Handshake,
    Identity,
    MethodOutcome,
    Route,
    SubscriptionData,
)
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
        """The user of the Django session named by the session cookie, else anonymous."""
        session_key = handshake.cookies.get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return ANONYMOUS
        with _db_call():
            engine = import_module(settings.SESSION_ENGINE)
            user = _session_user(engine.SessionStore(session_key))
            if user is None or not user.is_authenticated:
                return ANONYMOUS
            return Identity(user=user, user_id=str(user.pk))

    def has_publication(self, name: str) -> bool:
        return bool(self.registry.has_publication(name))

    def has_method(self, name: str) -> bool:
        return bool(self.registry.has_method(name))

    def subscribe(self, ctx: CallContext, name: str, params: Sequence[Any]) -> SubscriptionData:
        """Run publication ``name``: initial documents plus one route per cursor."""
        publication = self.registry.get_publication(name)
        if publication is None:
            raise NotFound(f"Subscription '{name}' not found")
        with _db_call():
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
                    else cursor.conditions + visibility
                )
                routes.append(Route(collection.channel, collection.collection_name, conditions))
            return SubscriptionData(documents=tuple(documents), routes=tuple(routes))

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        """Run method (or mutator) ``name`` as the invocation seeded by ``ctx.random_seed``."""
        method = self.registry.get_method(name)
        if method is None:
            raise DDPError(404, f"Method '{name}' not found")
        with _db_call():
            invocation = MethodContext(
                user=_user_of(ctx.identity),
                user_id=ctx.identity.user_id,
                session_id=ctx.session_id,
                handshake=ctx.handshake,
                random_seed=ctx.random_seed,
                method=name,
            )
            try:
                with method_invocation(invocation):
                    if method.is_atomic:
                        with transaction.atomic():
                            result = method.run(invocation, params)
                    else:
                        result = method.run(invocation, params)
            except ValidationError as exc:
                raise DDPError.from_validation_error(exc) from exc
            return MethodOutcome(result=result)

    def close(self) -> None:
        """Close this thread's database connections (the worker is stopping)."""
        connections.close_all()


def _session_user(session: Any) -> Any:
    """The user a Django session is logged in as, verified like ``auth.get_user``, or None.

    Read-only on purpose: ``get_user`` flushes a session whose auth hash does not verify and
    cycles the key of one signed with a ``SECRET_KEY_FALLBACKS`` secret, which deletes the
    session the browser's cookie names. A WebSocket handshake cannot send a new cookie
    back, so it only reads; the next HTTP request does the housekeeping.
    """
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not hasattr(user, "get_session_auth_hash"):
        return user
    session_hash = session.get(HASH_SESSION_KEY)
    if not session_hash:
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if any(constant_time_compare(session_hash, h) for h in hashes):
        return user
    return None


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
