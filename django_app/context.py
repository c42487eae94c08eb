"""What publications and methods receive as ``ctx``, and the current method invocation.

Job: ``SubscriptionContext`` (user, session, and the low-level publish API a publication
written as code uses: ``added``/``changed``/``removed``/``ready``/``error``/``stop``/
``on_stop``/``observe``, Meteor's ``this.added``... over the relay's
``relay.backend.PublicationSink``) and ``MethodContext`` (user, session, and for methods the
``randomSeed`` stream that makes server ids equal the client stub's ids, the caller's
credential, Meteor's ``setUserId``: ``ctx.set_user``, and ``this.unblock()``:
``ctx.unblock``), plus the context variable that
tells code deep inside a method (``MeteorIdField``'s default, later the change stream)
which invocation it runs in.

Where it sits: above the registry, which ``MethodContext.new_id(Book)`` asks for the
model's collection name; the modules below the registry (``django_app.mutator``) name
these classes in annotations only. What must not live here: running methods,
transactions or registry lookups beyond naming a model's collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import models

from django_app.exceptions import DDPError
from django_app.registries import registry
from django_app.serializer import pk_to_wire
from relay.backend import ClientError, DecodedChange, Handshake, PublicationSink
from relay.protocol.alea import RandomStream, collection_stream_name
from relay.protocol.ids import id_stringify

if TYPE_CHECKING:
    from django_app.models import LoginToken

__all__ = [
    "MethodContext",
    "PublicationHooks",
    "SubscriptionContext",
    "current_method",
    "method_invocation",
]

_current: ContextVar[MethodContext | None] = ContextVar("ddp_method_invocation", default=None)


@dataclass(frozen=True, slots=True)
class PublicationHooks:
    """What the backend gives a publication's context for the low-level API: the relay's
    sink, a wrapper for callbacks that run later in the relay's work pool (database
    connection hygiene), and how to read a channel's change-stream position (in the
    publication's snapshot)."""

    sink: PublicationSink
    wrap: Callable[[Callable[..., None]], Callable[..., None]]
    position_of: Callable[[str], tuple[int, str]]
    #: Queues a callback for when the publication's read-only snapshot has ended, before
    #: its documents are fetched (``SubscriptionContext.after_snapshot``).
    after_snapshot: Callable[[Callable[[], None]], None] | None = None


class SubscriptionContext:
    """The ``ctx`` of a publication: who subscribes, from which session, and the
    low-level publish API (below).

    ``user`` is a Django user (``AnonymousUser`` when logged out) and ``user_id`` its
    primary key as a string, or None.

    The low-level API, Meteor's ``this.added``... (documents are this subscription's own,
    merged with what its returned cursors publish): ``added(collection, id, fields)``,
    ``changed(collection, id, fields, cleared=())``, ``removed(collection, id)``,
    ``ready()``, ``error(err)``, ``stop()``, ``on_stop(callback)`` and
    ``observe(Model, callback)``: ``callback(changes)`` runs for every commit on the
    model after the publication's snapshot, in commit order, with the commit's
    ``relay.backend.DecodedChange``s of that model (``op`` "i"/"u"/"d", wire ``id``,
    published ``fields``, routing ``values``), so a custom publication stays live without
    polling. Callbacks run later in the relay's work pool and may use the ORM.
    ``collection`` may be a model (its collection's name) or a name; ``id`` a primary
    key or a wire id. A publication that calls any of these and returns nothing is ready
    when it calls ``ready()``.
    """

    def __init__(
        self,
        *,
        user: Any,
        user_id: str | None,
        session_id: str,
        handshake: Handshake | None = None,
        hooks: PublicationHooks | None = None,
    ) -> None:
        self.user = user
        self.user_id = user_id
        self.session_id = session_id
        #: The HTTP request that opened the DDP socket (headers, cookies, remote address).
        self.handshake = handshake
        self._hooks = hooks
        #: The publication used the low-level API (it then marks itself ready).
        self.used_api = False

    # -- the low-level publish API -------------------------------------------------------

    def _sink(self) -> PublicationSink:
        if self._hooks is None:
            raise RuntimeError("this context belongs to no relay subscription")
        self.used_api = True
        return self._hooks.sink

    def added(
        self, collection: str | type[models.Model], id: Any, fields: Mapping[str, Any]
    ) -> None:
        self._sink().added(_collection_name(collection), _wire_id(id), fields)

    def changed(
        self,
        collection: str | type[models.Model],
        id: Any,
        fields: Mapping[str, Any],
        cleared: Sequence[str] = (),
    ) -> None:
        self._sink().changed(_collection_name(collection), _wire_id(id), fields, cleared)

    def removed(self, collection: str | type[models.Model], id: Any) -> None:
        self._sink().removed(_collection_name(collection), _wire_id(id))

    def ready(self) -> None:
        self._sink().ready()

    def error(self, error: ClientError | str | int, reason: str | None = None) -> None:
        """Stop with an error the client sees in ``nosub`` (a ``DDPError``, or its code
        and reason)."""
        if not isinstance(error, ClientError):
            error = DDPError(error, reason)
        self._sink().error(error)

    def stop(self) -> None:
        self._sink().stop()

    @property
    def stopped(self) -> bool:
        return self._hooks is not None and self._hooks.sink.stopped

    def on_stop(self, callback: Callable[[], None]) -> None:
        hooks = self._hooks
        sink = self._sink()
        assert hooks is not None
        sink.on_stop(hooks.wrap(callback))

    def after_snapshot(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the publication function's read-only snapshot is over and
        before the subscription's documents are read: where a publication writes
        (``django_app.presence`` joins there, so a subscriber sees itself at once).
        Without a relay subscription, at once."""
        hooks = self._hooks
        if hooks is None or hooks.after_snapshot is None:
            callback()
        else:
            hooks.after_snapshot(callback)

    def observe(
        self, model: type[models.Model], callback: Callable[[Sequence[DecodedChange]], None]
    ) -> None:
        """Call ``callback(changes)`` for each commit on ``model`` from now on."""
        hooks = self._hooks
        sink = self._sink()
        assert hooks is not None
        collection = registry.collection_for_model(model)
        sink.observe(
            collection.channel,
            collection.collection_name,
            hooks.wrap(callback),
            hooks.position_of(collection.channel),
        )

    @property
    def client_address(self) -> str | None:
        """The client's IP address (Meteor's ``connection.clientAddress``): the socket's
        peer, or what ``RELAY_FORWARDED_COUNT`` trusted proxies forwarded; None when
        unknown."""
        address = self.handshake.remote_addr if self.handshake is not None else ""
        return address or None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={self.session_id!r} user_id={self.user_id!r}>"


def _collection_name(collection: str | type[models.Model]) -> str:
    if isinstance(collection, str):
        return collection
    return registry.collection_for_model(collection).collection_name


def _wire_id(value: Any) -> str:
    """A document's ``_id`` (a primary key, or an instance) as the wire id DDP carries."""
    if isinstance(value, models.Model):
        value = value.pk
    return id_stringify(pk_to_wire(value))


class MethodContext(SubscriptionContext):
    """The ``ctx`` of a method: the caller plus the invocation's seeded random stream.

    ``random_seed`` is the ``randomSeed`` the client sent (None for seedless calls); the
    stream is created on first use, from a fresh random seed when the client sent none,
    exactly like Meteor's ``DDP.randomStream``. ``new_id(Book)`` draws the next id of
    stream ``/collection/<collection name>``: the id the client's stub generated.

    ``credential`` is the key of the ``LoginToken`` row the session is logged in with
    (None when nothing authenticated it, or when it was logged in without a token).
    ``set_user(user, token=None)`` is Meteor's ``this.setUserId``: when the method
    returns (and its transaction committed), the session acts for ``user`` (None: logged
    out), and the relay re-runs every subscription of the session as that user and sends
    only the difference, before the method's ``result`` and ``updated``. ``ctx.user``,
    ``ctx.user_id`` and ``ctx.credential`` change at once. Pass the token row the session
    now holds, so that deleting it logs the session out on every relay; an application's
    own login method does it in one call with ``django_app.accounts.methods.log_in``::

        @method("loginWithPin")
        def login_with_pin(ctx: MethodContext, username: str, pin: str) -> dict[str, Any]:
            user = check_pin(username, pin)  # the application's own check
            if user is None:
                raise DDPError(403, "Incorrect PIN")
            return log_in(ctx, user)  # {id, token, tokenExpires, type}

    ``unblock()`` is Meteor's ``this.unblock()``: the session's later messages (methods and
    subscriptions) may run while this method goes on; without it they wait for its end.
    Idempotent; a method may call ``set_user`` only before it (Meteor's rule: later calls
    may already run as the current user). Outside a relay session (a mutator, a test) it
    changes nothing else.
    """

    def __init__(
        self,
        *,
        user: Any,
        user_id: str | None,
        session_id: str,
        handshake: Handshake | None = None,
        random_seed: str | None = None,
        method: str = "",
        credential: str | None = None,
        unblock: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(user=user, user_id=user_id, session_id=session_id, handshake=handshake)
        self.random_seed = random_seed
        #: The name of the method being run.
        self.method = method
        self._random_stream: RandomStream | None = None
        self._credential = credential
        #: Whether ``set_user`` was called: the backend then reports the new identity.
        self.user_changed = False
        #: Whether ``close_connection`` was called.
        self.closing = False
        self._unblock_hook = unblock
        self._unblocked = False

    @property
    def credential(self) -> str | None:
        """The key of the token row the session is logged in with, or None."""
        return self._credential

    def set_user(self, user: Any, token: LoginToken | None = None) -> None:
        """Log the session in as ``user`` with ``token`` (its ``LoginToken`` row, or None
        for a login nothing can revoke live), or out when ``user`` is None (Meteor's
        ``setUserId``). Takes effect for the session when the method returns."""
        from django.contrib.auth.models import AnonymousUser  # needs the app registry

        if self._unblocked:
            raise DDPError(500, "Can't call set_user (setUserId) in a method after calling unblock")
        if user is None or not getattr(user, "is_authenticated", False):
            if token is not None:
                raise ValueError("set_user(None) logs out: it takes no token")
            self.user, self.user_id, self._credential = AnonymousUser(), None, None
        else:
            if token is not None and token.user_id != user.pk:
                raise ValueError(f"{token!r} is not a token of user {user.pk!r}")
            # The key as text, as Identity.user_id holds it ("42" for 42).
            self.user, self.user_id = user, str(user.pk)
            self._credential = None if token is None else str(token.pk)
        self.user_changed = True

    def unblock(self) -> None:
        """Let the session's later messages run while this method goes on (Meteor's
        ``this.unblock()``); its own ``result`` and ``updated`` still come when it ends.

        After ``set_user`` it does nothing but mark the call (Meteor allows that order):
        the session's new user takes effect when the method returns, and later messages
        must not run as the old user meanwhile, so they keep waiting."""
        if self._unblocked:
            return
        self._unblocked = True
        if self._unblock_hook is not None and not self.user_changed:
            self._unblock_hook()

    @property
    def unblocked(self) -> bool:
        """Whether ``unblock()`` was called."""
        return self._unblocked

    def close_connection(self) -> None:
        """Close the caller's DDP session once this method's ``result`` and ``updated``
        are sent (Meteor's ``this.connection.close()``): it is not resumable, the client
        reconnects with a new session."""
        self.closing = True

    @property
    def random_stream(self) -> RandomStream:
        """The invocation's ``RandomStream``, seeded by ``randomSeed`` (created lazily)."""
        if self._random_stream is None:
            self._random_stream = RandomStream(self.random_seed)
        return self._random_stream

    def new_id(self, collection: str | type[models.Model]) -> str:
        """The next id of this invocation's stream for ``collection`` (a name or a model)."""
        name = collection if isinstance(collection, str) else collection_name_of(collection)
        return str(self.random_stream.sequence(collection_stream_name(name)).id())


def collection_name_of(model: type[models.Model]) -> str:
    """The collection name of ``model``: its registered Collection's, else the default."""
    # The project's registry, read at call time: a model's field may ask before (or
    # without) its ddp.py registering a Collection, and then gets the default name.
    collection = registry.get_collection_for_model(model)
    return collection.collection_name if collection is not None else model._meta.label_lower


def current_method() -> MethodContext | None:
    """The method invocation running in this context (greenlet/thread), or None."""
    return _current.get()


@contextmanager
def method_invocation(ctx: MethodContext) -> Iterator[MethodContext]:
    """Make ``ctx`` the current method invocation for the duration of the block."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
