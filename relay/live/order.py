"""Sort keys in Meteor's order: a live window's documents ranked as the database ranks them.

Layer: pure (standard library and ``relay.backend`` only; no I/O, no gevent, no clock). A
window's known prefix comes from the database (``ORDER BY`` the window's paths, strings
``COLLATE "C"``) and is then maintained here from the change stream, so this order must be
the database's and minimongo's on every value our columns hold: None (SQL NULL) lower than
any value (first ascending, LAST descending), strings by code point, numbers (int, float
and Decimal mixed) by value, then bool, date, aware datetime and UUID naturally. NaN sorts
above every number, as PostgreSQL sorts it (the fetch's order is the one to agree with).

A key is a flat tuple of ``(tag, value)`` pairs, one per order component, so Python
compares keys in C: the tag settles None against a value without ever comparing them,
and a descending component negates its value when the type allows it exactly (numbers,
dates, datetimes, UUIDs); only the rest (strings) pay for a reversing wrapper.

Must not: know about documents, windows or subscribers; coerce values between types (the
values of one position have one type, the routing types ``DecodedChange.routing`` uses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeAlias
from uuid import UUID

from relay.backend import Order

#: A document's position in a window's order; keys of distinct documents never compare
#: equal because a window's order ends with the primary key.
SortKey: TypeAlias = tuple[Any, ...]

_Encode: TypeAlias = Callable[[Any], tuple[Any, Any]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)

# Tags: ascending None < value < NaN; descending NaN < value < None.
_NONE_FIRST = (0, None)
_NONE_LAST = (1, None)
_NAN_HIGH = (2, 0)
_NAN_FIRST = (-1, 0)


class _Reversed:
    """A value whose order is turned around, for descending values that cannot be negated.

    Only ever compared with another ``_Reversed`` of the same position (keys are compared
    with keys of the same order), so the comparisons do not check the other side's type.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return bool(other.value < self.value)

    def __le__(self, other: _Reversed) -> bool:
        return bool(other.value <= self.value)

    def __gt__(self, other: _Reversed) -> bool:
        return bool(other.value > self.value)

    def __ge__(self, other: _Reversed) -> bool:
        return bool(other.value >= self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"_Reversed({self.value!r})"


def _ascending(value: Any) -> tuple[Any, Any]:
    if value is None:
        return _NONE_FIRST
    kind = type(value)
    if kind is str or kind is int:
        return (1, value)
    if isinstance(value, UUID):
        return (1, value.int)  # an int compares in C; UUID's own __lt__ is Python code
    if (kind is float and value != value) or (isinstance(value, Decimal) and value.is_nan()):
        return _NAN_HIGH
    return (1, value)


def _descending(value: Any) -> tuple[Any, Any]:
    if value is None:
        return _NONE_LAST
    kind = type(value)
    if kind is int or kind is bool:
        return (0, -value)
    if kind is str:
        return (0, _Reversed(value))
    if kind is float:
        return _NAN_FIRST if value != value else (0, -value)
    if isinstance(value, Decimal):
        # copy_negate is exact; unary minus would round to the context's precision.
        return _NAN_FIRST if value.is_nan() else (0, value.copy_negate())
    if isinstance(value, datetime):
        # A timedelta is exact (microseconds) and compares across time zones.
        return (0, (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH) - value)
    if isinstance(value, date):
        return (0, -value.toordinal())
    if isinstance(value, UUID):
        return (0, -value.int)
    if isinstance(value, int | float):
        return (0, -value)
    return (0, _Reversed(value))


@lru_cache(maxsize=256)
def sort_keyer(order: tuple[Order, ...]) -> Callable[[Sequence[Any]], SortKey]:
    """The key function of ``order``: sort values (one per component) -> ``SortKey``.

    Build it once per window and call it per document: ``sort_key`` looks it up each time.
    """
    encoders: tuple[_Encode, ...] = tuple(
        _descending if part.descending else _ascending for part in order
    )
    width = len(encoders)

    def key(values: Sequence[Any]) -> SortKey:
        if len(values) != width:
            raise ValueError(f"{len(values)} sort values for an order of {width} components")
        flat: list[Any] = []
        for value, encode in zip(values, encoders, strict=True):
            flat += encode(value)
        return tuple(flat)

    return key


def sort_key(values: Sequence[Any], order: tuple[Order, ...]) -> SortKey:
    """The key ranking a document whose ``order`` paths hold ``values`` (Meteor's order).

    Raises ``ValueError`` when there are not exactly as many values as components.
    """
    return sort_keyer(order)(values)
