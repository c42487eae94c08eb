"""What publications and methods receive as ``ctx``, and the current method invocation.

Job: ``SubscriptionContext`` and ``MethodContext`` (user, session, and for methods the
``randomSeed`` stream that makes server ids equal the client stub's ids, the caller's
credential and Meteor's ``setUserId``: ``ctx.set_user``), plus the context variable that
tells code deep inside a method (``MeteorIdField``'s default, later the change stream)
which invocation it runs in.

Where it sits: above the registry, which ``MethodContext.new_id(Book)`` asks for the
model's collection name; the modules below the registry (``django_app.mutator``) name
these classes in annotations only. What must not live here: running methods,
transactions or registry lookups beyond naming a model's collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from django.db import models

from django_app.registries import registry
from relay.backend import Handshake
from relay.protocol.alea import RandomStream, collection_stream_name

if TYPE_CHECKING:
    from django_app.models import LoginToken

__all__ = [
    "MethodContext",
    "SubscriptionContext",
    "current_method",
    "method_invocation",
]

_current: ContextVar[MethodContext | None] = ContextVar("ddp_method_invocation", default=None)


class SubscriptionContext:
    """The ``ctx`` of a publication: who subscribes, from which session.

    ``user`` is a Django user (``AnonymousUser`` when logged out) and ``user_id`` its
    primary key as a string, or None.
    """

    def __init__(
        self,
        *,
        user: Any,
        user_id: str | None,
        session_id: str,
        handshake: Handshake | None = None,
    ) -> None:
        self.user = user
        self.user_id = user_id
        self.session_id = session_id
        #: The HTTP request that opened the DDP socket (headers, cookies, remote address).
        self.handshake = handshake

    @property
    def client_address(self) -> str | None:
        """The client's IP address (Meteor's ``connection.clientAddress``): the socket's
        peer, or what ``RELAY_FORWARDED_COUNT`` trusted proxies forwarded; None when
        unknown."""
        address = self.handshake.remote_addr if self.handshake is not None else ""
        return address or None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={self.session_id!r} user_id={self.user_id!r}>"


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

    @property
    def credential(self) -> str | None:
        """The key of the token row the session is logged in with, or None."""
        return self._credential

    def set_user(self, user: Any, token: LoginToken | None = None) -> None:
        """Log the session in as ``user`` with ``token`` (its ``LoginToken`` row, or None
        for a login nothing can revoke live), or out when ``user`` is None (Meteor's
        ``setUserId``). Takes effect for the session when the method returns."""
        from django.contrib.auth.models import AnonymousUser  # needs the app registry

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
