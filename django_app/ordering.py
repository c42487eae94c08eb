"""How a sorted, limited cursor becomes a live window the relay keeps in memory.

Job: read a ``Cursor``'s ``order_by`` arguments back into ``relay.backend.Order``s (routing
paths, ascending or descending), and build the ``ORDER BY`` that makes PostgreSQL sort
exactly as the relay does (``relay.live.order``), which is how Meteor sorts:

* NULL is lower than any value: first ascending, last descending (PostgreSQL's default is
  the opposite, so every component says ``NULLS FIRST``/``NULLS LAST`` explicitly);
* text compares by code point: ``COLLATE "C"`` (a database collation such as
  ``en_US.UTF-8`` orders ``"a" < "B"``, code points do not), as Python and Mongo do;
* the primary key, ascending, ends every sort (unless it is already in it), so the order
  is total and the window is the same whoever computes it.

What must not live here: running querysets (``django_app.backend``), route conditions
(``django_app.cursor``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import models
from django.db.models import F, OrderBy
from django.db.models.functions import Collate

from django_app.cursor import Cursor, LookupPath, resolve_lookup_path
from relay.backend import Order, Window

__all__ = ["order_expressions", "window_of"]

#: Field types whose values the relay cannot order like the database does.
_UNSORTABLE = (models.JSONField, models.BinaryField)


class _Unsupported(Exception):
    pass


def window_of(cursor: Cursor) -> tuple[Window, tuple[LookupPath, ...]] | None:
    """The window of a sorted and/or sliced cursor and the lookup path of each order
    component (the primary key's last), or None when its ordering cannot be read back
    (``"?"``, expressions, multi-valued or transformed paths, JSON fields): the backend
    then runs the cursor as it is and re-runs it on every change. A cursor that is not
    sliced is not a window (its order means nothing on the wire)."""
    if not cursor.skip and cursor.limit is None:
        return None
    model = cursor.model
    pk = model._meta.pk
    assert pk is not None
    try:
        parsed = [_component(model, item) for item in cursor.ordering]
    except _Unsupported:
        return None
    paths = [path for path, _ in parsed]
    order = [Order(path.key, descending) for path, descending in parsed]
    if pk.attname not in {p.key for p in paths}:
        pk_path = resolve_lookup_path(model, [pk.name])
        assert pk_path is not None
        paths.append(pk_path)
        order.append(Order(pk_path.key))
    return Window(tuple(order), cursor.limit, cursor.skip), tuple(paths)


def _component(model: type[models.Model], item: Any) -> tuple[LookupPath, bool]:
    descending = False
    if isinstance(item, str):
        if item == "?" or not item:
            raise _Unsupported
        if item[0] in "-+":
            descending, item = item[0] == "-", item[1:]
        name = item
    elif isinstance(item, OrderBy) and isinstance(item.expression, F):
        name, descending = _f_name(item.expression), item.descending
    elif isinstance(item, F):
        name = _f_name(item)
    else:
        raise _Unsupported
    path = resolve_lookup_path(model, name.split("__"))
    if path is None or path.many or isinstance(_value_field(path), _UNSORTABLE):
        raise _Unsupported
    return path, descending


def _f_name(expression: Any) -> str:
    return str(expression.name)  # F.name: the field path (absent from the type stubs)


def _value_field(path: LookupPath) -> models.Field[Any, Any]:
    field = path.field
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    return field


def order_expressions(window: Window, paths: Sequence[LookupPath]) -> list[OrderBy]:
    """``order_by`` arguments that sort in the database as the relay sorts in memory."""
    expressions: list[OrderBy] = []
    for component, path in zip(window.order, paths, strict=True):
        name = "__".join([*(hop.name for hop in path.hops), path.field.attname])
        expression: Any = F(name)
        if isinstance(_value_field(path), models.CharField | models.TextField):
            expression = Collate(expression, "C")
        if component.descending:
            expressions.append(expression.desc(nulls_last=True))
        else:
            expressions.append(expression.asc(nulls_first=True))
    return expressions
