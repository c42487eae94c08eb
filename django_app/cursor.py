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
``Cursor(Book, tags__name="x")``,                routable when changes carry the path (declared
``Cursor(Author, books__title="x")``             in ``related`` or published): it is a
                                                 ``Condition(..., many=True)``, holding when
                                                 ANY of the row's values passes
``Cursor(Book, tags__name="x", tags__color=1)``  NOT routable: one filter() wants the SAME
                                                 tag to pass both (so does a path twice)
``Cursor(Book, title__icontains="x")``           NOT routable (lookup not supported)
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
    "Hop",
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

    Sorted and limited, Meteor's ``find({}, {sort, skip, limit})``:
    ``Cursor(Book).order_by("-published")[:20]`` (or a queryset that is only ordered and
    sliced: ``Cursor(Book.objects.order_by("-published")[:20])``) is a live window kept
    in memory by the relay (``django_app.ordering`` says how it sorts: NULL lowest, text
    by code point, ties by primary key).
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
        #: The sort (``order_by`` arguments) and slice of a window; () and (0, None): none.
        self.ordering: tuple[Any, ...] = ()
        self.skip = 0
        self.limit: int | None = None
        query = base.query
        if not (query.has_filters() or query.combinator or query.extra):
            # Only ordered and sliced: a window the relay can keep, read back exactly.
            if query.order_by or query.is_sliced:
                self.ordering = tuple(query.order_by) or tuple(self.model._meta.ordering)
                self.skip = query.low_mark
                self.limit = None if query.high_mark is None else query.high_mark - query.low_mark
                base = base.all()
                base.query.clear_limits()
                base.query.clear_ordering(force=True)
            self.conditions: tuple[Condition, ...] | None = conditions_for_lookups(
                self.model, lookups
            )
        else:
            self.conditions = None
        self.queryset: QuerySet[Any] = base.filter(**lookups) if lookups else base
        self._windowed()

    def _windowed(self) -> None:
        """Apply the sort and slice to ``queryset`` (what a plain read of it returns)."""
        if self.ordering:
            self.queryset = self.queryset.order_by(*self.ordering)
        if self.skip or self.limit is not None:
            high = None if self.limit is None else self.skip + self.limit
            self.queryset = self.queryset.all()
            self.queryset.query.set_limits(self.skip, high)

    def order_by(self, *ordering: Any) -> Cursor:
        """A copy sorted by ``ordering`` (``QuerySet.order_by`` arguments: field names,
        ``"-field"``, ``F("field").desc()``)."""
        if self.skip or self.limit is not None:
            raise TypeError("Cannot reorder a Cursor once a slice has been taken.")
        clone = self._base_copy()
        clone.ordering = ordering
        clone._windowed()
        return clone

    def __getitem__(self, k: slice) -> Cursor:
        """A copy limited to ``[start:stop]`` (no step, no negative bounds)."""
        if not isinstance(k, slice) or k.step is not None:
            raise TypeError("A Cursor takes a slice [start:stop] only.")
        start, stop = k.start or 0, k.stop
        if start < 0 or (stop is not None and stop < start):
            raise ValueError("Negative or reversed slices are not supported.")
        clone = self._base_copy()
        clone.skip = self.skip + start
        if stop is None:
            clone.limit = self.limit if self.limit is None else max(0, self.limit - start)
        else:
            clone.limit = stop - start if self.limit is None else min(stop, self.limit) - start
            clone.limit = max(0, clone.limit)
        clone._windowed()
        return clone

    def _base_copy(self) -> Cursor:
        clone = copy.copy(self)
        qs = self.queryset.all()
        qs.query.clear_limits()
        qs.query.clear_ordering(force=True)
        clone.queryset = qs
        return clone

    def fresh(self) -> Cursor:
        """A copy whose queryset has not been evaluated (querysets cache their rows)."""
        clone = copy.copy(self)
        clone.queryset = self.queryset.all()
        return clone

    def __repr__(self) -> str:
        window = ""
        if self.ordering or self.skip or self.limit is not None:
            window = f" order_by{self.ordering!r}[{self.skip}:{self.limit}]"
        return f"<Cursor {self.model._meta.label} {self.lookups!r}{window}>"


def conditions_for_rule(
    model: type[models.Model], rule: Mapping[str, Any] | Q | None
) -> tuple[Condition, ...] | None:
    """Conditions for a visibility rule, or None when the rule is not routable.

    The rule's lookups are one ``filter()`` call, like a cursor's: see
    ``conditions_for_lookups`` for what that means for multi-valued paths.
    """
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
    relations: set[str] = set()
    for key, value in pairs:
        found = _condition(model, key, value)
        if found is None:
            return None
        condition, relation = found
        if relation is not None:
            # Django joins a multi-valued relation once per filter() call, so every
            # lookup of the call through it must hold for the SAME related row
            # (filter(tags__name="a", tags__color="red")): independent value lists
            # cannot tell that, so the call is not routable.
            if relation in relations:
                return None
            relations.add(relation)
        conditions.append(condition)
    return tuple(conditions)


def conditions_for_lookups(
    model: type[models.Model], lookups: Mapping[str, Any]
) -> tuple[Condition, ...] | None:
    """Translate ``filter(**lookups)`` into route conditions, or None if not routable.

    A lookup across a multi-valued relation (``tags__name="x"``) is a condition with
    ``many=True``: it holds when ANY value of the path does. Two lookups of the call
    through the same multi-valued relation (``tags__name="x", tags__color="red"``, or the
    same path twice) are not routable: Django wants one related row to pass both.
    """
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


def _condition(
    model: type[models.Model], key: str, value: Any
) -> tuple[Condition, str | None] | None:
    """One lookup as a Condition on a normalised path and the multi-valued relation it
    crosses (None: single-valued), or None if not routable."""
    parts = key.split("__")
    op = "exact"
    if parts[-1] in ROUTABLE_LOOKUPS and len(parts) > 1:
        op = parts.pop()
    path = resolve_lookup_path(model, parts, many=True)
    if path is None:
        return None
    value = _plain_value(value, op)
    if value is _UNROUTABLE:
        return None
    if op == "isnull":
        if not isinstance(value, bool):
            return None
    elif op == "in":
        value = tuple(_python_value(path.field, v) for v in value)
    else:
        value = _python_value(path.field, value)
    return Condition(path.key, op, value, many=path.many), path.relation


@dataclass(frozen=True, slots=True)
class Hop:
    """One join of a lookup path: a foreign key crossed forward (from the row holding it
    to the row it points at) or in reverse (from a row to every row pointing at it).

    A many-to-many relation is two hops through its ``through`` table: in reverse along
    the through table's key to the source, then forward along its key to the target.
    """

    #: The foreign key joining the two tables.
    fk: models.ForeignKey[Any, Any]
    #: False: from ``fk``'s model to the row ``fk`` points at; True: the other way.
    reverse: bool
    #: The model the hop starts from and the model it reaches.
    source: type[models.Model]
    target: type[models.Model]
    #: The lookup segment that made this hop (``author``, ``books``, ``tags``).
    name: str

    @property
    def many(self) -> bool:
        """Whether a row may reach several rows (a reverse, non-unique key)."""
        return self.reverse and not self.fk.unique

    @property
    def source_field(self) -> models.Field[Any, Any]:
        """The field of ``source`` whose column the join reads."""
        if self.reverse:
            return self.fk.target_field
        return self.fk

    @property
    def target_field(self) -> models.Field[Any, Any]:
        """The field of ``target`` the join compares it with."""
        if self.reverse:
            return self.fk
        return self.fk.target_field


@dataclass(frozen=True, slots=True)
class LookupPath:
    """A routable lookup path: the key changes carry it under and how the writer reads it.

    ``key`` is the normalised path (``author_id``, ``author__email``, ``tags__name``,
    ``tags`` for the ids of a many-to-many); ``hops`` are the joins crossed from the
    model (empty for a local field); ``field`` is the field whose column holds the value,
    in the last hop's target (a foreign key itself when the path ends on a relation:
    ``author`` -> ``author_id``, ``tags`` -> the through table's key to the tag).

    ``relation`` is set when a hop is multi-valued (a reverse foreign key, a
    many-to-many): the key's prefix up to that relation (``tags``, ``author__books``).
    Such a path has a sorted tuple of distinct values per row, not one value.
    """

    key: str
    hops: tuple[Hop, ...]
    field: models.Field[Any, Any]
    relation: str | None = None

    @property
    def many(self) -> bool:
        return self.relation is not None

    @property
    def base_field(self) -> models.Field[Any, Any]:
        """The field of the model whose value the path starts from (its first join's
        column, or the field itself for a local path)."""
        return self.hops[0].source_field if self.hops else self.field


def resolve_lookup_path(
    model: type[models.Model], parts: list[str], *, many: bool = False
) -> LookupPath | None:
    """Normalise a lookup path: ``pk`` and ``author`` (a FK) become ``id`` and ``author_id``;
    ``tags__pk`` and ``tags__id`` (a many-to-many) become ``tags``.

    Paths may cross forward foreign keys and one-to-one relations both ways and, with
    ``many``, reverse foreign keys and many-to-many relations (``books__title``,
    ``tags__name``, ``books__tags__name``). Anything else is not routable (None): a
    multi-valued path without ``many``, a transform (``published__year``), a generic or
    composite relation, a field that does not exist.
    """
    current = model
    segments: list[str] = []
    hops: list[Hop] = []
    relation: str | None = None
    for index, name in enumerate(parts):
        last = index == len(parts) - 1
        opts = current._meta
        field: Any = opts.pk if name == "pk" else _get_field(opts, name)
        if field is None:
            return None
        if not field.is_relation:
            if not last or not field.concrete:
                return None  # a transform such as date__year, or not a column
            segments.append(field.attname)
            return LookupPath("__".join(segments), tuple(hops), field, relation)
        step = _relation_hops(current, field)
        if step is None:
            return None
        step_hops, end = step
        ends = last or (
            index + 1 == len(parts) - 1 and parts[index + 1] in ("pk", end.name, end.attname)
        )
        if any(h.many for h in step_hops) and relation is None:
            if not many:
                return None
            relation = "__".join([*segments, field.name])
        if ends and not step_hops[-1].reverse:
            # Ends on a forward key (author, tags): the key column itself, no join.
            hops.extend(step_hops[:-1])
            segments.append(field.attname if len(step_hops) == 1 else field.name)
            return LookupPath("__".join(segments), tuple(hops), step_hops[-1].fk, relation)
        hops.extend(step_hops)
        segments.append(field.name)
        if ends:  # a reverse relation (books): the key of the rows reached
            return LookupPath("__".join(segments), tuple(hops), end, relation)
        current = step_hops[-1].target
    return None


def _get_field(opts: Any, name: str) -> Any:
    try:
        return opts.get_field(name)
    except Exception:  # FieldDoesNotExist, and anything a broken name raises
        return None


def _relation_hops(
    model: type[models.Model], field: Any
) -> tuple[list[Hop], models.Field[Any, Any]] | None:
    """The hops of one relation from ``model`` and the field its rows are named by (what
    ``relation=value`` compares), or None for relations a path cannot cross."""
    if isinstance(field, models.ForeignKey):  # forward, OneToOneField included
        return [Hop(field, False, model, field.related_model, field.name)], field.target_field
    if isinstance(field, models.ManyToManyField):
        through: Any = field.remote_field.through
        source = through._meta.get_field(field.m2m_field_name())
        target = through._meta.get_field(field.m2m_reverse_field_name())
        return _through(model, field.name, through, source, target)
    if isinstance(field, models.ManyToManyRel):
        through = field.through
        m2m: Any = field.field
        source = through._meta.get_field(m2m.m2m_reverse_field_name())
        target = through._meta.get_field(m2m.m2m_field_name())
        return _through(model, field.name, through, source, target)
    if isinstance(field, models.ManyToOneRel):  # reverse FK, reverse one-to-one
        fk = field.field
        if not isinstance(fk, models.ForeignKey):
            return None
        target_model = fk.model
        pk = target_model._meta.pk
        assert pk is not None
        return [Hop(fk, True, model, target_model, field.name)], pk
    return None  # generic relations, composite foreign objects


def _through(
    model: type[models.Model], name: str, through: Any, source: Any, target: Any
) -> tuple[list[Hop], models.Field[Any, Any]] | None:
    if not (isinstance(source, models.ForeignKey) and isinstance(target, models.ForeignKey)):
        return None
    hops = [
        Hop(source, True, model, through, name),
        Hop(target, False, through, target.related_model, name),
    ]
    return hops, target.target_field


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
