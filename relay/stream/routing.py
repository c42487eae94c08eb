"""Deciding in memory whether a changed document belongs to a subscription.

Layer: pure (no I/O, no gevent). A route's conditions come from the publication
(``relay.backend.Route``); a change carries the values they test, resolved once by the
writer (``DecodedChange.routing``). Membership is decided per local subscription without a
database query (invariant I2); combined with whether the subscription already holds the
document (its mergebox), it tells ``added``, ``changed`` or ``removed``.

A condition with ``many`` tests a path across a multi-valued relation (a reverse foreign
key, a many-to-many: ``tags__name``): the change carries the row's values as a tuple (the
distinct values the writer's LEFT JOIN reaches, None standing for a missing related row
or a NULL value) and the condition holds when ANY of them passes, as Django's JOIN does:
``filter(tags__name="a")`` keeps a book when one of its tags is named "a". ``isnull=True``
(and ``exact`` None) holds when the tuple is empty or holds None, as the LEFT JOIN Django
builds for it does.

Must not: look anything up in the database or know about sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from relay.backend import Condition


def _exact(actual: Any, expected: Any) -> bool:
    return bool(actual == expected)


def _in(actual: Any, expected: Any) -> bool:
    if actual is None:
        return False  # SQL: NULL IN (...) is never true (and Django drops None from the list)
    try:
        return actual in expected
    except TypeError:
        return False


def _isnull(actual: Any, expected: Any) -> bool:
    return (actual is None) is bool(expected)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def test(actual: Any, expected: Any) -> bool:
        if actual is None:
            return False  # SQL: comparisons with NULL are never true
        try:
            return op(actual, expected)
        except TypeError:
            return False

    return test


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "exact": _exact,
    "in": _in,
    "isnull": _isnull,
    "gt": _compare(lambda a, b: a > b),
    "gte": _compare(lambda a, b: a >= b),
    "lt": _compare(lambda a, b: a < b),
    "lte": _compare(lambda a, b: a <= b),
}

SUPPORTED_OPS = frozenset(_OPS)


def matches(conditions: Sequence[Condition], routing: Mapping[str, Any]) -> bool:
    """Whether every condition holds for these routing values (AND; empty means yes).

    A condition whose path the change does not carry does not hold: the writer resolves
    every declared path, so a missing one means the document cannot be shown to belong.
    ``exact`` with None is SQL's ``IS NULL`` (Django turns ``field=None`` into it).
    """
    for cond in conditions:
        if cond.path not in routing:
            return False
        actual = routing[cond.path]
        if cond.many:
            if not _any_holds(cond, actual):
                return False
            continue
        if cond.op == "exact" and cond.value is None:
            if actual is not None:
                return False
            continue
        test = _OPS.get(cond.op)
        if test is None or not test(actual, cond.value):
            return False
    return True


def _any_holds(cond: Condition, actual: Any) -> bool:
    """A ``many`` condition: whether one of the values passes (see the module)."""
    values = actual if isinstance(actual, tuple | list) else (actual,)
    op, expected = cond.op, cond.value
    if (op == "isnull" and expected) or (op == "exact" and expected is None):
        return not values or any(v is None for v in values)
    test = _OPS.get(op)
    if test is None:
        return False
    return any(test(v, expected) for v in values)
