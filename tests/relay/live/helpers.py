"""Brute-force models shared by the live-query tests: Meteor's order as a plain comparison,
and a store of documents whose sorted, sliced result is recomputed from scratch.

The models say what the answer must be without any of the tricks the code under test uses
(keys, negation, bisect, a known prefix): compare value by value, sort everything.

Must not: hold tests (pytest collects ``test_*`` modules only), or import relay.live's
key encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from relay.backend import Order, Window


def _is_nan(value: Any) -> bool:
    return (isinstance(value, float) and value != value) or (
        isinstance(value, Decimal) and value.is_nan()
    )


def compare_values(a: Any, b: Any) -> int:
    """-1, 0 or 1: minimongo's ascending order on one position (None lowest; NaN above
    every number, as PostgreSQL sorts it)."""
    if a is None or b is None:
        return (a is not None) - (b is not None)
    if _is_nan(a) or _is_nan(b):
        return _is_nan(a) - _is_nan(b)
    if a < b:
        return -1
    return 1 if b < a else 0


def compare(a: Sequence[Any], b: Sequence[Any], order: Sequence[Order]) -> int:
    """-1, 0 or 1: two documents' sort values compared component by component."""
    for x, y, part in zip(a, b, order, strict=True):
        c = compare_values(x, y)
        if c:
            return -c if part.descending else c
    return 0


def brute_sorted(rows: list[tuple[Any, ...]], order: Sequence[Order]) -> list[tuple[Any, ...]]:
    def by_order(a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        return compare(a, b, order)

    return sorted(rows, key=functools.cmp_to_key(by_order))


@dataclass
class Doc:
    fields: dict[str, Any]
    #: The sort values without the primary key (appended by ``values``).
    values: tuple[Any, ...]
    member: bool


@dataclass
class Store:
    """The database of the model: documents by integer primary key; wire id ``d<pk>``."""

    window: Window | None = None
    docs: dict[int, Doc] = field(default_factory=dict)

    @staticmethod
    def wire(pk: int) -> str:
        return f"d{pk}"

    def values(self, pk: int) -> tuple[Any, ...]:
        return (*self.docs[pk].values, pk)

    def full(self) -> list[str]:
        """Every member's wire id in the window's order (any order without a window)."""
        members = [self.values(pk) for pk, doc in self.docs.items() if doc.member]
        if self.window is None:
            return [self.wire(v[-1]) for v in members]
        return [self.wire(v[-1]) for v in brute_sorted(members, self.window.order)]

    def fields(self, wire_id: str) -> dict[str, Any]:
        return self.docs[int(wire_id[1:])].fields

    def fetch(self) -> tuple[list[tuple[str, dict[str, Any], tuple[Any, ...] | None]], bool]:
        """What ``Backend.fetch`` would read: the first ``capacity`` rows, and whether
        fewer than that matched."""
        full = self.full()
        capacity = None if self.window is None else self.window.capacity
        rows = full if capacity is None else full[:capacity]
        entries = [
            (i, self.fields(i), self.values(int(i[1:])) if self.window else None) for i in rows
        ]
        return entries, capacity is None or len(full) < capacity

    def expected_view(self) -> list[str]:
        full = self.full()
        if self.window is None:
            return full
        skip, limit = self.window.skip, self.window.limit
        return full[skip:] if limit is None else full[skip : skip + limit]


def apply_effects(
    copy: dict[str, Any], effects: Sequence[tuple[str, Any]], *, strict: bool = True
) -> None:
    """What a subscriber's mergebox does with effects: at most one per id, and (strict) no
    removal of a document it does not hold."""
    ids = [doc_id for doc_id, _fields in effects]
    assert len(ids) == len(set(ids)), f"two effects for one id: {effects!r}"
    for doc_id, fields in effects:
        if fields is None:
            assert not strict or doc_id in copy, f"removed {doc_id!r}, never added"
            copy.pop(doc_id, None)
        else:
            copy[doc_id] = fields
