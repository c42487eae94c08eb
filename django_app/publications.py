"""Publications: named sets of cursors a client subscribes to.

Job: ``@publish("name")`` for publish functions ``(ctx, *params)`` that return a Cursor,
a QuerySet, or a list of them, and ``Publication("name", cursors=[...])`` for static
ones; both register themselves in the registry when declared, like ``Meteor.publish``.
Running one validates the params (400 "Match failed"), calls the function and returns
fresh cursors.

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

from django_app.cursor import Cursor
from django_app.exceptions import MatchFailed
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.signature import ParamsValidator

if TYPE_CHECKING:
    from django_app.context import SubscriptionContext

__all__ = ["Publication", "PublicationResult", "publish"]

#: What a publish function may return.
PublicationResult = Union[
    Cursor,
    QuerySet[Any],
    "models.Manager[Any]",
    type[models.Model],
    Iterable[Union[Cursor, QuerySet[Any], "models.Manager[Any]", type[models.Model]]],
    None,
]

F = TypeVar("F", bound=Callable[..., Any])


class Publication:
    """A registered publication: a publish function, or a static list of cursors.

    ``Publication("books.all", cursors=[Cursor(Author), Book.objects.all()])`` registers
    a publication that takes no parameters. Constructing it registers it in ``registry``
    (default: the project's registry).
    """

    def __init__(
        self,
        name: str,
        cursors: PublicationResult = None,
        *,
        func: Callable[..., PublicationResult] | None = None,
        registry: Registry | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("a publication name must be a non-empty string")
        if func is not None and cursors is not None:
            raise TypeError("give a Publication either cursors or func, not both")
        self.name = name
        self.func = func
        self.static: PublicationResult = cursors
        self.registry: Registry = registry or default_registry
        self._validator = ParamsValidator(func) if func is not None else None
        if cursors is not None:
            _normalize(cursors)  # fail at import on a bad static declaration
        self.registry.add_publication(self)

    def cursors(self, ctx: SubscriptionContext, params: Sequence[Any]) -> list[Cursor]:
        """Run the publication for ``ctx``: validated params in, fresh cursors out."""
        if self.func is None or self._validator is None:
            if params:
                raise MatchFailed()
            result = self.static
        else:
            self._validator.validate(params)
            result = self.func(ctx, *params)
        cursors = _normalize(result)
        seen: set[type[models.Model]] = set()
        for cursor in cursors:
            if cursor.model in seen:
                name = self.registry.collection_for_model(cursor.model).collection_name
                raise ValueError(
                    f"Publish function returned multiple cursors for collection {name}"
                )
            seen.add(cursor.model)
        return cursors

    def __repr__(self) -> str:
        return f"<Publication {self.name!r}>"


def _normalize(result: Any) -> list[Cursor]:
    """Cursors for what a publication returned; querysets are cloned (never cached)."""
    if result is None:
        return []
    if isinstance(result, Cursor | QuerySet | models.Manager) or _is_model(result):
        result = [result]
    if isinstance(result, str | bytes | dict) or not isinstance(result, Iterable):
        raise TypeError("Publish function can only return a Cursor or an array of Cursors")
    cursors: list[Cursor] = []
    for item in result:
        if isinstance(item, Cursor):
            cursors.append(item.fresh())
        elif isinstance(item, QuerySet | models.Manager) or _is_model(item):
            cursors.append(Cursor(item.all() if isinstance(item, QuerySet) else item))
        else:
            raise TypeError("Publish function can only return a Cursor or an array of Cursors")
    return cursors


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, models.Model)


def publish(name: str, *, registry: Registry | None = None) -> Callable[[F], F]:
    """Decorator: register ``func(ctx, *params)`` as the publication ``name``.

    ::

        @publish("books.byAuthorEmail")
        def books_by_author(ctx: SubscriptionContext, email: str):
            return [Cursor(Author, email=email), Cursor(Book, author__email=email)]
    """

    def decorator(func: F) -> F:
        Publication(name, func=func, registry=registry)
        return func

    return decorator
