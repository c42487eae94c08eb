"""Publications: named sets of cursors a client subscribes to.

Job: ``@publish("name")`` for publish functions ``(ctx, *params)`` that return a Cursor,
a QuerySet, a ``Count``, or a list of them, and ``Publication("name", cursors=[...])``
for static ones; both register themselves in the registry when declared, like
``Meteor.publish``. ``@publish(None)`` is a universal publication (Meteor's
``Meteor.publish(null, ...)``): every session runs it at connect, no client can
subscribe to it by name. Running one validates the params (400 "Match failed"), calls
the function (awaited when it is ``async def``: ``django_app.coroutines``) and returns
fresh cursors and counts. A function may also publish with the
low-level API of its ``ctx`` (``ctx.added``... ``django_app.context``): then, if it
returns nothing, the client gets ``ready`` when it calls ``ctx.ready()``, as in Meteor.

``Count(cursor, id=...)`` is the ``publish-counts`` use case: one document
``{count: n}`` in a client-side collection (``"counts"`` by default), kept live by the
relay from the change stream, shared by every subscriber of the same count.

Where it sits: above the registry (a publication adds itself to the ``registry=`` it is
given, default the project's ``django_app.registries.registry``), which stores it only as
a ``RegisteredPublication``. What must not live here: visibility rules, serialization or
routes (``django_app.backend`` turns cursors into documents and routes).

Two cursors on one collection in a publication are refused as Meteor refuses them
("Publish function returned multiple cursors for collection X"): the relay merges
documents per subscription, not per cursor, so merging two routes of one collection
would make membership ambiguous. Combine the filters into one cursor instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, Union

from django.db import models
from django.db.models.query import QuerySet

from django_app import coroutines
from django_app.cursor import Cursor
from django_app.exceptions import MatchFailed
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.signature import ParamsValidator
from django_app.streams import StreamCursor

if TYPE_CHECKING:
    from django_app.context import SubscriptionContext

__all__ = ["Count", "Publication", "PublicationResult", "publish"]


class Count:
    """A live count of a cursor's rows, published as ONE document.

    ``Count(Cursor(Book, author_id=author_id), id=author_id)`` publishes
    ``{_id: author_id, count: n}`` in the client-side collection ``counts``; the relay
    keeps ``n`` equal to ``COUNT(*)`` of the cursor (its visibility rule included) from
    the change stream, once for every subscriber of the same count. A cursor whose
    lookups are routable counts in memory (the relay holds the matching ids); otherwise
    every change of the model counts again, once per distinct count.
    """

    def __init__(
        self,
        cursor: Cursor | QuerySet[Any] | type[models.Model],
        *,
        id: str,
        collection: str = "counts",
        field: str = "count",
    ) -> None:
        if not isinstance(cursor, Cursor):
            cursor = Cursor(cursor)
        if cursor.skip or cursor.limit is not None:
            raise TypeError("Count() counts a cursor's rows: give it one that is not sliced")
        for what, value in (("id", id), ("collection", collection), ("field", field)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"Count {what} must be a non-empty string")
        self.cursor = cursor
        self.id = id
        self.collection = collection
        self.field = field
        self.model = cursor.model

    def fresh(self) -> Count:
        return Count(self.cursor.fresh(), id=self.id, collection=self.collection, field=self.field)

    def __repr__(self) -> str:
        return f"<Count {self.collection}/{self.id} of {self.cursor!r}>"


#: What a publish function may return.
PublicationResult = Union[
    Cursor,
    Count,
    QuerySet[Any],
    "models.Manager[Any]",
    type[models.Model],
    Iterable[Union[Cursor, Count, QuerySet[Any], "models.Manager[Any]", type[models.Model]]],
    None,
]

F = TypeVar("F", bound=Callable[..., Any])


class Publication:
    """A registered publication: a publish function, or a static list of cursors.

    ``Publication("books.all", cursors=[Cursor(Author), Book.objects.all()])`` registers
    a publication that takes no parameters. Constructing it registers it in ``registry``
    (default: the project's registry). ``name`` None: a universal publication, named
    for logs and errors only after its function (``module.qualname``) or the models of
    its cursors (``null:bookstore.Notice``).
    """

    def __init__(
        self,
        name: str | None,
        cursors: PublicationResult = None,
        *,
        func: Callable[..., PublicationResult] | None = None,
        registry: Registry | None = None,
    ) -> None:
        if func is not None and cursors is not None:
            raise TypeError("give a Publication either cursors or func, not both")
        #: Every session runs it, unasked; clients cannot subscribe to it by name.
        self.universal = name is None
        if name is None:
            # For logs and errors only: the function, or what the cursors publish.
            if func is not None:
                name = f"{func.__module__}.{func.__qualname__}"
            else:
                name = "null:" + ",".join(_label(item) for item in _normalize(cursors))
        if not isinstance(name, str) or not name:
            raise TypeError("a publication name must be a non-empty string (or None)")
        self.name = name
        self.func = func
        self.static: PublicationResult = cursors
        self.registry: Registry = registry or default_registry
        self._validator = ParamsValidator(func) if func is not None else None
        if cursors is not None:
            _normalize(cursors)  # fail at import on a bad static declaration
        self.registry.add_publication(self)

    @property
    def is_static(self) -> bool:
        """Declared cursors, no publish function: running it reads nothing."""
        return self.func is None

    def cursors(
        self, ctx: SubscriptionContext, params: Sequence[Any]
    ) -> list[Cursor | Count | StreamCursor]:
        """Run the publication for ``ctx``: validated params in, fresh cursors out."""
        return self.run(ctx, params)[0]

    def run(
        self, ctx: SubscriptionContext, params: Sequence[Any]
    ) -> tuple[list[Cursor | Count | StreamCursor], bool]:
        """Run the publication for ``ctx``: its fresh cursors and counts, and whether the
        function returned anything (None from a function that used ``ctx``'s low-level
        API means it marks itself ready)."""
        if self.func is None or self._validator is None:
            if params:
                raise MatchFailed()
            result = self.static
        else:
            result = coroutines.call(self.func, ctx, *self._validator.validate(params))
        items = _normalize(result)
        seen: set[type[models.Model]] = set()
        counts: set[tuple[str, str]] = set()
        streams: set[str] = set()
        for item in items:
            if isinstance(item, StreamCursor):
                if item.stream.collection in streams:
                    raise ValueError(
                        "Publish function returned multiple streams for collection"
                        f" {item.stream.collection}"
                    )
                streams.add(item.stream.collection)
                continue
            if isinstance(item, Count):
                if (item.collection, item.id) in counts:
                    raise ValueError(
                        f"Publish function returned two counts {item.collection}/{item.id}"
                    )
                counts.add((item.collection, item.id))
                continue
            if item.model in seen:
                name = self.registry.collection_for_model(item.model).collection_name
                raise ValueError(
                    f"Publish function returned multiple cursors for collection {name}"
                )
            seen.add(item.model)
        return items, result is not None

    def __repr__(self) -> str:
        return f"<Publication {self.name!r}>"


def _normalize(result: Any) -> list[Cursor | Count | StreamCursor]:
    """Cursors for what a publication returned; querysets are cloned (never cached)."""
    if result is None:
        return []
    if isinstance(result, Cursor | Count | StreamCursor | QuerySet | models.Manager) or _is_model(
        result
    ):
        result = [result]
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise TypeError("Publish function can only return a Cursor or an array of Cursors")
    cursors: list[Cursor | Count | StreamCursor] = []
    for item in result:
        if isinstance(item, Cursor | Count | StreamCursor):
            cursors.append(item.fresh())
        elif isinstance(item, QuerySet | models.Manager) or _is_model(item):
            cursors.append(Cursor(item.all() if isinstance(item, QuerySet) else item))
        else:
            raise TypeError("Publish function can only return a Cursor or an array of Cursors")
    return cursors


def _label(item: Cursor | Count | StreamCursor) -> str:
    if isinstance(item, StreamCursor):
        return item.channel
    return str(item.model._meta.label)


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, models.Model)


def publish(name: str | None, *, registry: Registry | None = None) -> Callable[[F], F]:
    """Decorator: register ``func(ctx, *params)`` as the publication ``name`` (None: a
    universal publication every session gets, Meteor's ``Meteor.publish(null, ...)``).

    ::

        @publish("books.byAuthorEmail")
        def books_by_author(ctx: SubscriptionContext, email: str):
            return [Cursor(Author, email=email), Cursor(Book, author__email=email)]

        @publish("books.latest")
        def latest(ctx: SubscriptionContext, n: int):
            return Cursor(Book).order_by("-published")[:n]
    """

    def decorator(func: F) -> F:
        Publication(name, func=func, registry=registry)
        return func

    return decorator
