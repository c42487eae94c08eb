"""``Cursor``: what a publication returns, and how its live updates are routed.

Job: pair the queryset a subscription loads at first with the ``relay.backend.Route``
that tells a relay which later changes belong to it, without a query per change
(DESIGN.md invariant I2). What must not live here: running the queryset or serializing
rows (``django_app.backend``), or channel naming (``django_app.channel``).

Which filters are routable (decided in memory by the relay from the change payload) and
which are not (the relay re-evaluates the publication, which is slower):

===============================================  ===========================================
``Cursor(Book)``, ``Book.objects.all()``         routable, no conditions: every row is in
``Cursor(Book, title="x")``                      routable: ``Condition("title", "exact", "x")``
``Cursor(Book, author__email="x")``              routable when the collection declares
                                                 ``related = ["author__email"]``: the writer
                                                 resolves the path once per change
``Cursor(Book, price__gte=10, id__in=[...])``    routable; supported lookups are ``exact``,
                                                 ``in``, ``isnull``, ``gt``, ``gte``, ``lt``,
                                                 ``lte``
``Cursor(Book, title__icontains="x")``           NOT routable (lookup not supported)
``Cursor(Author, books__title="x")``             NOT routable (multi-valued reverse path)
``Cursor(Book, author=F("editor"))``            NOT routable (expressions, subqueries)
``Book.objects.filter(...)``, sliced querysets,  NOT routable: a QuerySet's own filters and
custom default managers that filter               limits cannot be read back reliably
===============================================  ===========================================

A collection's ``visible(user)`` rule is ANDed in the same way: lookups (or a Q that is a
plain AND of lookups) stay routable, anything else makes the route unroutable
(``conditions=None``). A condition may only test what every change carries: the primary
key, the published columns and the collection's declared ``related`` paths; the backend
makes a route that tests anything else unroutable (and logs a warning once).

Condition values are converted like the queryset converts them (``field.to_python``:
``"10"`` for a DecimalField becomes ``Decimal("10")``, a naive datetime becomes aware),
so relays compare them with the Python values ``Collection.decode_change`` produces.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.expressions import Combinable
from django.db.models.query import QuerySet
from django.utils import timezone

from relay.backend import Condition

__all__ = [
    "ROUTABLE_LOOKUPS",
    "Cursor",
    "LookupPath",
    "conditions_for_lookups",
    "conditions_for_rule",
    "resolve_lookup_path",
]

#: The Django lookups a relay can decide in memory.
ROUTABLE_LOOKUPS: Final = frozenset({"exact", "in", "isnull", "gt", "gte", "lt", "lte"})


class Cursor:
    """A queryset to publish plus the lookups that define it (Meteor's cursor).

    ``Cursor(Book, author__email=email)`` or ``Cursor(Book.objects.all(), title="x")``.
    The lookups are applied to the queryset (so ``.queryset`` is what the subscription
    loads) and translated into route conditions when they are routable (see the module
    docstring).
    """

    def __init__(
        self,
        model_or_queryset: type[models.Model] | QuerySet[Any] | models.Manager[Any],
        /,
        **lookups: Any,
    ) -> None:
        if isinstance(model_or_queryset, type) and issubclass(model_or_queryset, models.Model):
            base: QuerySet[Any] = model_or_queryset._default_manager.all()
        elif isinstance(model_or_queryset, models.Manager):
            base = model_or_queryset.all()
        elif isinstance(model_or_queryset, QuerySet):
            base = model_or_queryset
        else:
            raise TypeError(
                f"Cursor() takes a model, manager or queryset, not {type(model_or_queryset)!r}"
            )
        self.model: type[models.Model] = base.model
        self.lookups: dict[str, Any] = lookups
        self.queryset: QuerySet[Any] = base.filter(**lookups) if lookups else base
        self.conditions: tuple[Condition, ...] | None = (
            conditions_for_lookups(self.model, lookups) if _is_unfiltered(base) else None
        )

    def fresh(self) -> Cursor:
        """A copy whose queryset has not been evaluated (querysets cache their rows)."""
        clone = copy.copy(self)
        clone.queryset = self.queryset.all()
        return clone

    def __repr__(self) -> str:
        return f"<Cursor {self.model._meta.label} {self.lookups!r}>"


def _is_unfiltered(qs: QuerySet[Any]) -> bool:
    query = qs.query
    return not (query.has_filters() or query.is_sliced or query.combinator or query.extra)


def conditions_for_rule(
    model: type[models.Model], rule: Mapping[str, Any] | Q | None
) -> tuple[Condition, ...] | None:
    """Conditions for a visibility rule, or None when the rule is not routable."""
    if rule is None:
        return ()
    if isinstance(rule, Q):
        lookups = _plain_and(rule)
        if lookups is None:
            return None
        pairs: Iterable[tuple[str, Any]] = lookups
    else:
        pairs = rule.items()
    conditions: list[Condition] = []
    for key, value in pairs:
        condition = _condition(model, key, value)
        if condition is None:
            return None
        conditions.append(condition)
    return tuple(conditions)


def conditions_for_lookups(
    model: type[models.Model], lookups: Mapping[str, Any]
) -> tuple[Condition, ...] | None:
    """Translate ``filter(**lookups)`` into route conditions, or None if not routable."""
    return conditions_for_rule(model, lookups)


def _plain_and(q: Q) -> list[tuple[str, Any]] | None:
    """The (lookup, value) pairs of a Q that is a plain AND of lookups, else None."""
    if q.negated or (q.connector != Q.AND and len(q.children) > 1):
        return None
    pairs: list[tuple[str, Any]] = []
    for child in q.children:
        if isinstance(child, Q):
            nested = _plain_and(child)
            if nested is None:
                return None
            pairs.extend(nested)
        elif isinstance(child, tuple) and len(child) == 2 and isinstance(child[0], str):
            pairs.append((child[0], child[1]))
        else:
            return None
    return pairs


def _condition(model: type[models.Model], key: str, value: Any) -> Condition | None:
    """One lookup as a Condition on a normalised path, or None if not routable."""
    parts = key.split("__")
    op = "exact"
    if parts[-1] in ROUTABLE_LOOKUPS and len(parts) > 1:
        op = parts.pop()
    path = resolve_lookup_path(model, parts)
    if path is None:
        return None
    value = _plain_value(value, op)
    if value is _UNROUTABLE:
        return None
    if op == "isnull":
        return Condition(path.key, op, value) if isinstance(value, bool) else None
    if op == "in":
        value = tuple(_python_value(path.field, v) for v in value)
    else:
        value = _python_value(path.field, value)
    return Condition(path.key, op, value)


@dataclass(frozen=True, slots=True)
class LookupPath:
    """A routable lookup path: the key changes carry it under and how the writer reads it.

    ``key`` is the normalised path (``author_id``, ``author__email``); ``hops`` are the
    forward foreign keys crossed from the model (empty for a local field); ``field`` is
    the field whose column holds the value (a foreign key itself when the path ends on a
    relation, e.g. ``author`` -> ``author_id``).
    """

    key: str
    hops: tuple[models.ForeignKey[Any, Any], ...]
    field: models.Field[Any, Any]


def resolve_lookup_path(model: type[models.Model], parts: list[str]) -> LookupPath | None:
    """Normalise a lookup path: ``pk`` and ``author`` (a FK) become ``id`` and ``author_id``.

    Paths that cross a multi-valued relation (reverse FK, many-to-many), or end on a
    relation that is not a forward foreign key, are not routable (None).
    """
    opts = model._meta
    resolved: list[str] = []
    hops: list[models.ForeignKey[Any, Any]] = []
    for index, name in enumerate(parts):
        last = index == len(parts) - 1
        if name == "pk":
            field: Any = opts.pk
        else:
            try:
                field = opts.get_field(name)
            except Exception:
                return None
        if field is None or field.many_to_many or field.one_to_many or not field.concrete:
            return None
        if field.is_relation:
            if not isinstance(field, models.ForeignKey):
                return None
            if last:
                resolved.append(field.attname)
                return LookupPath("__".join(resolved), tuple(hops), field)
            next_name = parts[index + 1]
            target = field.target_field
            if index + 1 == len(parts) - 1 and next_name in ("pk", target.name, target.attname):
                resolved.append(field.attname)
                return LookupPath("__".join(resolved), tuple(hops), field)
            resolved.append(field.name)
            hops.append(field)
            opts = field.related_model._meta
            continue
        if not last:
            return None  # a transform such as date__year: not routable
        resolved.append(field.attname)
        return LookupPath("__".join(resolved), tuple(hops), field)
    return None


def _python_value(field: models.Field[Any, Any], value: Any) -> Any:
    """``value`` as the Python type the write side decodes for ``field`` (relays compare
    them): ``"10"`` for a DecimalField becomes ``Decimal("10")``, a naive datetime is made
    aware. Values the field cannot convert are kept (the queryset would refuse them)."""
    if value is None:
        return None
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    try:
        converted = field.to_python(value)
    except (ValidationError, TypeError, ValueError):
        return value
    if (
        isinstance(converted, dt.datetime)
        and isinstance(field, models.DateTimeField)
        and settings.USE_TZ
        and timezone.is_naive(converted)
    ):
        converted = timezone.make_aware(converted, timezone.get_default_timezone())
    return converted


class _Unroutable:
    pass


_UNROUTABLE: Final = _Unroutable()


def _plain_value(value: Any, op: str) -> Any:
    """The value to compare in memory: model instances become their primary key."""
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(value, Combinable | QuerySet):
        return _UNROUTABLE
    if op == "in":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            return _UNROUTABLE
        items = tuple(_plain_value(v, "exact") for v in value)
        return _UNROUTABLE if any(v is _UNROUTABLE for v in items) else items
    return value
