"""Cursor: the queryset a subscription loads and the route conditions of its live updates."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.db.models import F, Q

from django_app.channel import (
    CHANNEL_MAX_BYTES,
    PARTITION_SUFFIX_BYTES,
    channel_name,
    model_channel,
)
from django_app.collection import apply_visibility
from django_app.cursor import Cursor, conditions_for_rule
from relay.backend import Condition


def test_model_cursor_is_unfiltered() -> None:
    cursor = Cursor(Book)
    assert cursor.model is Book
    assert cursor.conditions == ()
    assert not cursor.queryset.query.has_filters()


def test_lookups_filter_and_route() -> None:
    cursor = Cursor(Book, author__email="x@example.org")
    assert cursor.conditions == (Condition("author__email", "exact", "x@example.org"),)
    assert "email" in str(cursor.queryset.query)


@pytest.mark.parametrize(
    ("lookups", "expected"),
    [
        ({"title": "a"}, [("title", "exact", "a")]),
        ({"title__exact": "a"}, [("title", "exact", "a")]),
        ({"pk": "b1"}, [("id", "exact", "b1")]),
        ({"id__in": ["a", "b"]}, [("id", "in", ("a", "b"))]),
        ({"published__isnull": True}, [("published", "isnull", True)]),
        ({"price__gt": 1, "price__lte": 9}, [("price", "gt", 1), ("price", "lte", 9)]),
        ({"price__gte": 1, "price__lt": 9}, [("price", "gte", 1), ("price", "lt", 9)]),
        ({"author": "a1"}, [("author_id", "exact", "a1")]),
        ({"author_id": "a1"}, [("author_id", "exact", "a1")]),
        ({"author__pk": "a1"}, [("author_id", "exact", "a1")]),
        ({"author__id__in": ["a1"]}, [("author_id", "in", ("a1",))]),
        ({"author__email__in": ["e"]}, [("author__email", "in", ("e",))]),
        ({"author__name__isnull": False}, [("author__name", "isnull", False)]),
    ],
)
def test_routable_lookups(lookups: dict[str, Any], expected: list[tuple[str, str, Any]]) -> None:
    assert Cursor(Book, **lookups).conditions == tuple(Condition(*c) for c in expected)


def test_model_instance_values_become_keys() -> None:
    author = Author(pk="a1", name="A", email="a@example.org")
    assert Cursor(Book, author=author).conditions == (Condition("author_id", "exact", "a1"),)
    assert Cursor(Book, author__in=[author]).conditions == (Condition("author_id", "in", ("a1",)),)


@pytest.mark.parametrize(
    "lookups",
    [
        {"title__icontains": "a"},
        {"title__startswith": "a"},
        {"published__year": 2020},
        {"author__email__iexact": "e"},
        {"title": F("author__name")},
        {"author__in": Author.objects.filter(name="x")},
        {"id__in": "abc"},
        {"published__isnull": "yes"},
    ],
)
def test_unroutable_lookups(lookups: dict[str, Any]) -> None:
    assert Cursor(Book, **lookups).conditions is None


def test_multi_valued_paths_route_when_any_value_passes() -> None:
    assert Cursor(Author, books__title="x").conditions == (
        Condition("books__title", "exact", "x", many=True),
    )
    assert Cursor(Author, books__price__gte="10", name="a").conditions == (
        Condition("books__price", "gte", Decimal("10"), many=True),
        Condition("name", "exact", "a"),
    )
    assert Cursor(Author, books=Book(pk="b1")).conditions == (
        Condition("books", "exact", "b1", many=True),
    )
    assert Cursor(Book, author__books__title="x").conditions == (
        Condition("author__books__title", "exact", "x", many=True),
    )


@pytest.mark.parametrize(
    "lookups",
    [
        {"books__title": "x", "books__price": 1},
        {"books__price__gt": 1, "books__price__lt": 9},
        {"books": "b1", "books__title": "x"},
        {"books__author__name": "a", "books__title": "x"},
    ],
)
def test_one_filter_on_one_multi_valued_relation_twice_is_unroutable(
    lookups: dict[str, Any],
) -> None:
    """Django wants the SAME book to pass both: independent value lists cannot say."""
    assert Cursor(Author, **lookups).conditions is None
    assert conditions_for_rule(Author, lookups) is None
    assert conditions_for_rule(Author, Q(**lookups)) is None


def test_plain_querysets() -> None:
    assert Cursor(Book.objects.all()).conditions == ()
    assert Cursor(Book.objects).conditions == ()
    assert Cursor(Book.objects.filter(title="a")).conditions is None
    # Only sliced (and ordered): a live window, routed like the plain queryset.
    sliced = Cursor(Book.objects.order_by("-price")[:5])
    assert (sliced.conditions, sliced.ordering, sliced.skip, sliced.limit) == (
        (),
        ("-price",),
        0,
        5,
    )
    assert Cursor(Book.objects.filter(title="a"), price=1).conditions is None
    assert Cursor(Book.objects.order_by("-price"), title="a").conditions == (
        Condition("title", "exact", "a"),
    )


def test_cursor_rejects_other_values() -> None:
    with pytest.raises(TypeError, match="model, manager or queryset"):
        Cursor("bookstore.book")  # type: ignore[arg-type]


def test_fresh_clones_the_queryset() -> None:
    cursor = Cursor(Book, title="a")
    fresh = cursor.fresh()
    assert fresh.queryset is not cursor.queryset
    assert fresh.conditions == cursor.conditions


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (None, ()),
        ({}, ()),
        ({"author__email": "e"}, (Condition("author__email", "exact", "e"),)),
        (
            Q(title="a", price__gt=1),
            (Condition("price", "gt", 1), Condition("title", "exact", "a")),
        ),
        (
            Q(title="a") & Q(author="x"),
            (Condition("title", "exact", "a"), Condition("author_id", "exact", "x")),
        ),
        ({"pk__in": []}, (Condition("id", "in", ()),)),
        (Q(title="a") | Q(title="b"), None),
        (~Q(title="a"), None),
        (Q(title__contains="a"), None),
    ],
)
def test_visibility_rules(rule: Any, expected: Any) -> None:
    assert conditions_for_rule(Book, rule) == expected


def test_apply_visibility_keeps_slices() -> None:
    qs = Book.objects.order_by("price")[2:5]
    filtered = apply_visibility(qs, {"author__email": "e"})
    assert (filtered.query.low_mark, filtered.query.high_mark) == (2, 5)
    assert filtered.query.has_filters()
    assert apply_visibility(qs, None) is qs
    assert apply_visibility(qs, Q()) is qs


def test_channel_names() -> None:
    assert model_channel(Book) == "ddp_bookstore_book"
    assert channel_name("bookstore", "book") == ("ddp_bookstore_book", False)


@pytest.mark.parametrize(
    ("app_label", "model_name"),
    [("a" * 40, "b" * 40), ("shop", "bücher"), ("Shop", "Book-Item")],
)
def test_long_or_unsafe_channel_names_are_hashed(app_label: str, model_name: str) -> None:
    name, truncated = channel_name(app_label, model_name)
    assert truncated
    assert len(name.encode()) <= CHANNEL_MAX_BYTES - PARTITION_SUFFIX_BYTES
    assert name.isascii() and name == name.lower() and name.replace("_", "").isalnum()
    assert channel_name(app_label, model_name + "x")[0] != name
