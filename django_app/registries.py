"""The registry: every published collection, event stream, publication and method, by name.

Job: one process-wide index that ``ddp.py`` modules fill at import (``DDPConfig.ready``
autodiscovers them) and the backend reads: collections by model, by name and by
change-stream channel, publications and methods by name, and the Meteor mutator names each
collection answers (``/<collection>/insert``, ``update``, ``remove`` and their
``...Async`` aliases), each answered by a ``django_app.mutator.Mutator``. Registering the
same model, collection name, publication or method twice is an error at import time, like
the admin's ``AlreadyRegistered``.

Where it sits: below the declarations that fill it. ``@method`` (``django_app.methods``),
``@publish`` and ``Publication`` (``django_app.publications``) take a registry (default:
``registry`` below) and add themselves to it; the registry knows what it stores only by
the protocols ``RegisteredMethod`` and ``RegisteredPublication``, so it imports neither
module. What must not live here: running anything, touching the database
(``has_method``/``has_publication`` must not), or the declaration API.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import models

from django_app.collection import Collection
from django_app.mutator import MUTATOR_OPERATIONS, Mutator
from django_app.streams import Stream, stream_name_of
from relay.limits.ratelimit import Rule

if TYPE_CHECKING:
    from django_app.context import MethodContext, SubscriptionContext

__all__ = [
    "AlreadyRegistered",
    "RegisteredMethod",
    "RegisteredPublication",
    "Registry",
    "registry",
]

C = TypeVar("C", bound=type[Collection])


class RegisteredMethod(Protocol):
    """What the registry and the backend need of a method: ``Method``, ``Mutator``."""

    @property
    def name(self) -> str: ...

    @property
    def is_atomic(self) -> bool:
        """Whether the backend wraps the call in ``transaction.atomic()``."""
        ...

    def run(self, ctx: MethodContext, params: Sequence[Any]) -> Any:
        """Validate ``params`` and perform the call; returns the method's result."""
        ...


class RegisteredPublication(Protocol):
    """What the registry and the backend need of a publication: ``Publication``."""

    @property
    def name(self) -> str: ...

    @property
    def universal(self) -> bool:
        """Every session runs it unasked; no client may subscribe to it by name."""
        ...

    @property
    def is_static(self) -> bool:
        """Declared cursors only (no publish function): running it reads nothing."""
        ...

    def run(self, ctx: SubscriptionContext, params: Sequence[Any]) -> tuple[list[Any], bool]:
        """Validate ``params`` and run the publication: fresh cursors and counts, and
        whether the function returned anything."""
        ...


class AlreadyRegistered(ImproperlyConfigured):
    """A model, collection, publication or method name was registered twice."""


class Registry:
    """Collections, publications and methods of one project (normally the ``registry``)."""

    def __init__(self) -> None:
        self._by_model: dict[type[models.Model], Collection] = {}
        self._by_name: dict[str, Collection] = {}
        self._by_channel: dict[str, Collection] = {}
        self._publications: dict[str, RegisteredPublication] = {}
        self._methods: dict[str, RegisteredMethod] = {}
        self._rate_limit_rules: list[Rule] = []
        self._streams: dict[str, Stream] = {}

    # -- registration -------------------------------------------------------------------

    def register(self, collection_class: C) -> C:
        """Class decorator: publish ``collection_class.model`` with these options."""
        if not (isinstance(collection_class, type) and issubclass(collection_class, Collection)):
            raise TypeError("registry.register() takes a Collection subclass")
        collection = collection_class()
        model = collection.model
        if model in self._by_model:
            raise AlreadyRegistered(
                f"{model._meta.label} is already published by {self._by_model[model]!r};"
                " one Collection per model."
            )
        if collection.collection_name in self._by_name:
            raise AlreadyRegistered(
                f"Collection name {collection.collection_name!r} is already used by"
                f" {self._by_name[collection.collection_name]!r}."
            )
        taken = [st for st in self._streams.values() if st.collection == collection.collection_name]
        if taken:
            raise AlreadyRegistered(
                f"Collection name {collection.collection_name!r} is used by {taken[0]!r}."
            )
        clash = sorted(n for n in self._methods if self._mutator_parts(n, collection) is not None)
        if clash:
            raise AlreadyRegistered(f"Methods {clash} clash with the mutators of {collection!r}.")
        self._by_model[model] = collection
        self._by_name[collection.collection_name] = collection
        self._by_channel[collection.channel] = collection
        return collection_class

    def add_stream(self, stream: Stream) -> Stream:
        """Record an event stream (``django_app.streams``); returns it, so a ``ddp.py``
        module writes ``chat = registry.add_stream(Stream("chat"))``."""
        if not isinstance(stream, Stream):
            raise TypeError("add_stream() takes a django_app.streams.Stream")
        if stream.name in self._streams:
            raise AlreadyRegistered(f"Stream {stream.name!r} is already registered.")
        if stream.collection in self._by_name:
            raise AlreadyRegistered(
                f"Stream {stream.name!r} publishes in {stream.collection!r}, the name of"
                f" {self._by_name[stream.collection]!r}."
            )
        self._streams[stream.name] = stream
        return stream

    def add_publication(self, publication: RegisteredPublication) -> None:
        """Record a publication (``Publication`` and ``@publish`` call this)."""
        if publication.name in self._publications:
            raise AlreadyRegistered(f"Publication {publication.name!r} is already registered.")
        self._publications[publication.name] = publication

    def add_method(self, method: RegisteredMethod) -> None:
        """Record a method (``@method`` calls this)."""
        if method.name in self._methods or self._mutator(method.name) is not None:
            raise AlreadyRegistered(f"Method {method.name!r} is already registered.")
        self._methods[method.name] = method

    def add_rate_limit_rule(self, rule: Rule) -> Rule:
        """Apply Meteor's ``DDPRateLimiter.addRule`` ``rule`` to every method and
        subscription (relays read the rules when a worker starts; per relay process)."""
        if not isinstance(rule, Rule):
            raise TypeError("add_rate_limit_rule() takes a relay.limits.Rule")
        self._rate_limit_rules.append(rule)
        return rule

    def remove_rate_limit_rule(self, rule: Rule) -> None:
        """Forget ``rule`` (e.g. the accounts default, Meteor's ``removeDefaultRateLimit``)."""
        self._rate_limit_rules.remove(rule)

    @property
    def rate_limit_rules(self) -> tuple[Rule, ...]:
        return tuple(self._rate_limit_rules)

    def unregister(self, model: type[models.Model]) -> None:
        """Forget the collection of ``model`` (tests)."""
        collection = self._by_model.pop(model)
        del self._by_name[collection.collection_name]
        del self._by_channel[collection.channel]

    @contextmanager
    def isolated(self) -> Iterator[Registry]:
        """Within the block, registrations are undone on exit (tests)."""
        saved = (
            dict(self._by_model),
            dict(self._by_name),
            dict(self._by_channel),
            dict(self._publications),
            dict(self._methods),
            list(self._rate_limit_rules),
            dict(self._streams),
        )
        try:
            yield self
        finally:
            (
                self._by_model,
                self._by_name,
                self._by_channel,
                self._publications,
                self._methods,
                self._rate_limit_rules,
                self._streams,
            ) = saved

    # -- lookups ------------------------------------------------------------------------

    @property
    def collections(self) -> tuple[Collection, ...]:
        return tuple(self._by_model.values())

    @property
    def publications(self) -> tuple[RegisteredPublication, ...]:
        return tuple(self._publications.values())

    @property
    def methods(self) -> tuple[RegisteredMethod, ...]:
        """The registered methods (mutators excluded)."""
        return tuple(self._methods.values())

    def get_collection(self, name: str) -> Collection | None:
        return self._by_name.get(name)

    def get_collection_for_channel(self, channel: str) -> Collection | None:
        """The collection whose changes are published on change-stream ``channel``."""
        return self._by_channel.get(channel)

    def get_stream(self, name: str) -> Stream | None:
        return self._streams.get(name)

    def get_stream_for_channel(self, channel: str) -> Stream | None:
        """The stream whose events are published on ``channel``."""
        name = stream_name_of(channel)
        return None if name is None else self._streams.get(name)

    @property
    def streams(self) -> tuple[Stream, ...]:
        return tuple(self._streams.values())

    def get_collection_for_model(self, model: type[models.Model]) -> Collection | None:
        return self._by_model.get(model)

    def collection_for_model(self, model: type[models.Model]) -> Collection:
        """The collection of ``model``; ``ImproperlyConfigured`` if it is not published."""
        collection = self._by_model.get(model)
        if collection is None:
            raise ImproperlyConfigured(
                f"{model._meta.label} is not a published collection: declare a Collection for"
                " it in a ddp.py module and decorate it with @registry.register."
            )
        return collection

    def get_publication(self, name: str) -> RegisteredPublication | None:
        return self._publications.get(name)

    def get_method(self, name: str) -> RegisteredMethod | None:
        """A registered method, or the mutator ``name`` designates, or None."""
        return self._methods.get(name) or self._mutator(name)

    def has_publication(self, name: str) -> bool:
        """A publication clients may subscribe to by name (not a universal one)."""
        publication = self._publications.get(name)
        return publication is not None and not publication.universal

    @property
    def universal_publications(self) -> tuple[str, ...]:
        """The names of the universal publications, in registration order."""
        return tuple(n for n, p in self._publications.items() if p.universal)

    def has_method(self, name: str) -> bool:
        return name in self._methods or self._split_mutator(name) is not None

    # -- mutators -----------------------------------------------------------------------

    def _split_mutator(self, name: str) -> tuple[Collection, str] | None:
        if not name.startswith("/"):
            return None
        collection_name, _, suffix = name[1:].rpartition("/")
        collection = self._by_name.get(collection_name)
        operation = MUTATOR_OPERATIONS.get(suffix)
        if collection is None or operation is None:
            return None
        return collection, operation

    @staticmethod
    def _mutator_parts(name: str, collection: Collection) -> str | None:
        prefix = f"/{collection.collection_name}/"
        if name.startswith(prefix) and name[len(prefix) :] in MUTATOR_OPERATIONS:
            return MUTATOR_OPERATIONS[name[len(prefix) :]]
        return None

    def _mutator(self, name: str) -> Mutator | None:
        found = self._split_mutator(name)
        if found is None:
            return None
        return Mutator(name, *found)


#: The project's registry, filled by the ``ddp.py`` modules of the installed apps.
registry: Final = Registry()
