"""What publications and methods receive as ``ctx``, and the current method invocation.

Job: ``SubscriptionContext`` and ``MethodContext`` (user, session, and for methods the
``randomSeed`` stream that makes server ids equal the client stub's ids), plus the context
variable that tells code deep inside a method (``MeteorIdField``'s default, later the
change stream) which invocation it runs in.

Where it sits: above the registry, which ``MethodContext.new_id(Book)`` asks for the
model's collection name; the modules below the registry (``django_app.mutator``) name
these classes in annotations only. What must not live here: running methods,
transactions or registry lookups beyond naming a model's collection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import models

from django_app.registries import registry
from relay.backend import Handshake
from relay.protocol.alea import RandomStream, collection_stream_name

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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} session={self.session_id!r} user_id={self.user_id!r}>"


class MethodContext(SubscriptionContext):
    """The ``ctx`` of a method: the caller plus the invocation's seeded random stream.

    ``random_seed`` is the ``randomSeed`` the client sent (None for seedless calls); the
    stream is created on first use, from a fresh random seed when the client sent none,
    exactly like Meteor's ``DDP.randomStream``. ``new_id(Book)`` draws the next id of
    stream ``/collection/<collection name>``: the id the client's stub generated.
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
    ) -> None:
        super().__init__(user=user, user_id=user_id, session_id=session_id, handshake=handshake)
        self.random_seed = random_seed
        #: The name of the method being run.
        self.method = method
        self._random_stream: RandomStream | None = None

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
