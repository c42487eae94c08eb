"""The bookstore's publications and methods for live windows, counts and tags.

``books.latest`` (a sorted, limited window), ``books.countByAuthor`` (a live count),
``books.byTag`` (a many-to-many filter), ``books.setTags``, ``books.create`` with
``published`` and ``tags``, the book mutators writing them, and the migrations that made
``Book.tags`` a many-to-many (run on data, both ways).

Liveness is the relay's job; here each test checks what the relay is given to keep a
subscription live without a query: the spec (window, count, route conditions) and the
changes the write side publishes for each write, decoded and routed as a relay does.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import random
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from bookstore.ddp import MAX_LATEST, MAX_TAGS
from bookstore.models import Author, Book, Tag
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from hypothesis import given
from hypothesis import strategies as st

from django_app.backend import DjangoBackend
from django_app.registries import Registry
from django_app.triggers import sync_triggers
from relay.backend import (
    ClientError,
    Condition,
    CountOf,
    DecodedChange,
    Order,
    Route,
    Window,
)
from relay.protocol.alea import RandomStream
from relay.protocol.ids import id_stringify
from relay.stream.routing import matches
from tests.django_app.changestream_helpers import BOOKS, flush_now, tx_changes
from tests.django_app.publishing import Subscribed, subscribe

AUTHORS = ("leguin", "pratchett", "jemisin")


def error_of(call: Any) -> tuple[Any, Any]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.error, info.value.reason


def tag_names(book_id: str) -> list[str]:
    return sorted(Book.objects.get(pk=book_id).tags.values_list("name", flat=True))


def book_changes(backend: DjangoBackend, book_id: str) -> list[DecodedChange]:
    """The changes of ``book_id`` this transaction published so far, decoded as relays do."""
    flush_now()
    decoded = [backend.decode_change(BOOKS, c) for c in tx_changes(BOOKS) if c.pk == book_id]
    return [d for d in decoded if d is not None]


def latest_order(books: list[Book]) -> list[str]:
    """Meteor's sort for ``{published: -1}``: newest first, undated last, ties by _id."""
    return [
        b.pk
        for b in sorted(
            books,
            key=lambda b: (
                b.published is None,
                -b.published.toordinal() if b.published is not None else 0,
                b.pk,
            ),
        )
    ]


# -- books.latest ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_latest_is_a_window_newest_first(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(backend, make_ctx(), "books.latest", [3])
    assert [d.id for d in data.documents] == ["stone-sky", "obelisk-gate", "fifth-season"]
    (spec,) = data.specs
    assert spec.route == Route("ddp_bookstore_book", "bookstore.book", ())
    assert spec.window == Window((Order("published", True), Order("id")), limit=3)
    assert spec.count is None
    (fetched,) = data.data
    # The sort values of each fetched row, for the relay to place live changes in memory.
    assert fetched.keys is not None
    assert list(fetched.keys[:3]) == [
        (dt.date(2017, 8, 15), "stone-sky"),
        (dt.date(2016, 8, 16), "obelisk-gate"),
        (dt.date(2015, 8, 4), "fifth-season"),
    ]
    doc = data.documents[0].fields
    assert doc["tags"] == ["broken earth", "fantasy"]
    assert sorted(doc) == [
        "authorId",
        "details",
        "price",
        "published",
        "ratings",
        "tags",
        "title",
        "updatedAt",
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("seed", range(3))
def test_latest_sorts_as_meteor_does(
    backend: DjangoBackend, make_ctx: Any, seeded: str, seed: int
) -> None:
    """Random books with few distinct dates (many ties) and no date: the window is the
    brute-force sort's prefix for every n, ids compared by code point."""
    rng = random.Random(seed)
    dates = [None, dt.date(1999, 1, 1), dt.date(2017, 8, 15), dt.date(2030, 5, 5)]
    alphabet = "aAbBzZ09_-"
    for _ in range(40):
        book_id = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6)))
        if Book.objects.filter(pk=book_id).exists():
            continue
        Book.objects.create(
            id=book_id,
            title=f"t{book_id}",
            author_id=rng.choice(AUTHORS),
            published=rng.choice(dates),
            price=Decimal(1),
        )
    # Compared as wire ids: Meteor's idStringify sends "--b" as "---b".
    expected = [id_stringify(i) for i in latest_order(list(Book.objects.all()))]
    for n in (1, 2, 7, 10, len(expected) - 1, len(expected), MAX_LATEST):
        got = [d.id for d in subscribe(backend, make_ctx(), "books.latest", [n]).documents]
        assert got == expected[:n], n


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([0], f"n must be between 1 and {MAX_LATEST}"),
        ([-1], f"n must be between 1 and {MAX_LATEST}"),
        ([MAX_LATEST + 1], f"n must be between 1 and {MAX_LATEST}"),
        (["5"], "Match failed"),
        ([5.5], "Match failed"),
        ([True], "Match failed"),
        ([None], "Match failed"),
        ([], "Match failed"),
        ([5, 6], "Match failed"),
    ],
)
def test_latest_refuses_bad_sizes(
    backend: DjangoBackend, make_ctx: Any, params: list[Any], reason: str
) -> None:
    assert error_of(lambda: subscribe(backend, make_ctx(), "books.latest", params)) == (
        400,
        reason,
    )


# -- books.countByAuthor --------------------------------------------------------------------


def count_of(data: Subscribed) -> dict[str, Any]:
    (doc,) = data.documents
    assert doc.collection == "counts"
    return {"_id": doc.id, **doc.fields}


@pytest.mark.django_db
def test_count_by_author_equals_count_star_through_writes(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    def check() -> None:
        for author in AUTHORS:
            data = subscribe(backend, make_ctx(), "books.countByAuthor", [author])
            assert count_of(data) == {
                "_id": author,
                "count": Book.objects.filter(author_id=author).count(),
            }

    check()
    data = subscribe(backend, make_ctx(), "books.countByAuthor", ["pratchett"])
    (spec,) = data.specs
    assert spec.count == CountOf("counts", "pratchett", "count")
    assert spec.route.conditions == (Condition("author_id", "exact", "pratchett"),)
    routes = {
        a: subscribe(backend, make_ctx(), "books.countByAuthor", [a]).routes[0] for a in AUTHORS
    }

    doc = {"title": "Mort", "authorId": "pratchett", "price": "7.99"}
    new_id = backend.call(make_ctx("c1"), "books.create", [doc]).result
    check()
    (created,) = book_changes(backend, new_id)
    assert [a for a in AUTHORS if matches(routes[a].conditions or (), created.routing)] == [
        "pratchett"
    ]

    backend.call(make_ctx(), "books.setAuthor", [new_id, "leguin"])
    check()
    moved = book_changes(backend, new_id)[-1]
    # The relay moves it from one count to the other, from the change alone.
    assert [a for a in AUTHORS if matches(routes[a].conditions or (), moved.routing)] == ["leguin"]

    backend.call(make_ctx(), "books.remove", [new_id])
    check()
    assert book_changes(backend, new_id)[-1].op == "d"


@pytest.mark.django_db
def test_count_for_an_unknown_author_is_zero(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(backend, make_ctx(), "books.countByAuthor", ["nobody"])
    assert count_of(data) == {"_id": "nobody", "count": 0}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ([""], "Invalid author id"),
        (["x" * 18], "Invalid author id"),
        ([5], "Match failed"),
        ([], "Match failed"),
    ],
)
def test_count_by_author_refuses_bad_ids(
    backend: DjangoBackend, make_ctx: Any, params: list[Any], reason: str
) -> None:
    assert error_of(lambda: subscribe(backend, make_ctx(), "books.countByAuthor", params)) == (
        400,
        reason,
    )


# -- books.byTag ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_by_tag_follows_the_many_to_many(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    def members(name: str) -> set[str]:
        return {d.id for d in subscribe(backend, make_ctx(), "books.byTag", [name]).documents}

    assert members("hainish") == {"left-hand", "dispossessed"}
    assert members("discworld") == {"guards-guards", "small-gods", "going-postal"}
    assert members("nope") == set()
    route = subscribe(backend, make_ctx(), "books.byTag", ["hainish"]).routes[0]
    # Routed in memory: the change of a book carries its tag names.
    assert route.conditions == (Condition("tags__name", "exact", "hainish", many=True),)

    backend.call(make_ctx(), "books.setTags", ["lathe", ["hainish", "science fiction"]])
    assert members("hainish") == {"left-hand", "dispossessed", "lathe"}
    entered = book_changes(backend, "lathe")[-1]
    assert entered.fields["tags"] == ["hainish", "science fiction"]
    assert matches(route.conditions or (), entered.routing)

    backend.call(make_ctx(), "books.setTags", ["lathe", []])
    assert members("hainish") == {"left-hand", "dispossessed"}
    left = book_changes(backend, "lathe")[-1]
    assert left.fields["tags"] == []
    assert not matches(route.conditions or (), left.routing)

    # Renaming a tag republishes its books (the tag table's triggers): they leave.
    Tag.objects.filter(name="hainish").update(name="Hainish")
    assert members("hainish") == set()
    for book_id in ("left-hand", "dispossessed"):
        renamed = book_changes(backend, book_id)[-1]
        assert "Hainish" in renamed.fields["tags"]
        assert not matches(route.conditions or (), renamed.routing)


@pytest.mark.django_db
def test_tags_all_publishes_names_and_tags_are_not_client_writable(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(backend, make_ctx(), "tags.all", [])
    assert {d.collection for d in data.documents} == {"bookstore.tag"}
    assert sorted(d.fields["name"] for d in data.documents) == sorted(
        Tag.objects.values_list("name", flat=True)
    )
    assert all(list(d.fields) == ["name"] for d in data.documents)
    tag = Tag.objects.get(name="utopia")
    calls: list[tuple[str, list[Any]]] = [
        ("/bookstore.tag/insert", [{"name": "x"}]),
        ("/bookstore.tag/update", [tag.pk, {"$set": {"name": "x"}}]),
        ("/bookstore.tag/remove", [tag.pk]),
    ]
    for name, params in calls:
        denied = partial(backend.call, make_ctx(), name, params)
        assert error_of(denied) == (403, "Access denied")
    assert Tag.objects.filter(name="utopia").exists()


# -- books.setTags --------------------------------------------------------------------------


@pytest.mark.django_db
def test_set_tags_replaces_and_creates_missing_tags(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    before = Book.objects.get(pk="lathe")
    result = backend.call(
        make_ctx("st"), "books.setTags", ["lathe", [" utopia ", "brand new", "utopia"]]
    )
    assert result.result is None
    assert tag_names("lathe") == ["brand new", "utopia"]
    # Created with the id the client's stub would draw from the tag stream.
    assert Tag.objects.get(name="brand new").pk == (
        RandomStream("st").sequence("/collection/bookstore.tag").id()
    )
    assert Tag.objects.filter(name="utopia").count() == 1
    assert Book.objects.get(pk="lathe").updated_at > before.updated_at
    # One change of the book, with the new names, whatever the number of tags.
    changes = book_changes(backend, "lathe")
    assert changes[-1].fields["tags"] == ["brand new", "utopia"]
    # The most tags a book may have, counted after removing duplicates.
    names = [f"t{i:02}" for i in range(MAX_TAGS)]
    backend.call(make_ctx(), "books.setTags", ["lathe", [*names, names[0]]])
    assert tag_names("lathe") == names


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "error"),
    [
        (["nope", ["x"]], (404, "Book not found")),
        (["lathe", ["ok", ""]], (400, "Tag names must not be empty")),
        (["lathe", ["   "]], (400, "Tag names must not be empty")),
        (["lathe", ["x" * 101]], (400, "Tag names have at most 100 characters")),
        (["lathe", [f"t{i}" for i in range(MAX_TAGS + 1)]], (400, "A book has at most 20 tags")),
        (["lathe", "x"], (400, "Match failed")),
        (["lathe", [1]], (400, "Match failed")),
        (["lathe", [None]], (400, "Match failed")),
        (["lathe"], (400, "Match failed")),
        ([["lathe"], ["x"]], (400, "Match failed")),
    ],
)
def test_set_tags_refuses_and_writes_nothing(
    backend: DjangoBackend, make_ctx: Any, seeded: str, params: list[Any], error: Any
) -> None:
    tags, count = tag_names("lathe"), Tag.objects.count()
    assert error_of(lambda: backend.call(make_ctx(), "books.setTags", params)) == error
    assert (tag_names("lathe"), Tag.objects.count()) == (tags, count)


@pytest.mark.django_db
def test_set_tags_on_a_book_removed_meanwhile_is_a_404(
    backend: DjangoBackend, make_ctx: Any, seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bookstore.ddp as bookstore_ddp

    read = bookstore_ddp._book

    def read_then_lose(book_id: str, *, lock: bool = False) -> Book:
        book = read(book_id, lock=lock)
        Book.objects.filter(pk=book_id).delete()
        return book

    monkeypatch.setattr(bookstore_ddp, "_book", read_then_lose)
    assert error_of(lambda: backend.call(make_ctx(), "books.setTags", ["lathe", ["x"]])) == (
        404,
        "Book not found",
    )
    assert Book.objects.filter(pk="lathe").exists()  # the method's writes rolled back


# -- books.create ---------------------------------------------------------------------------

NEW_BOOK = {"title": "Mort", "authorId": "pratchett", "price": "7.99"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("published", "day"),
    [
        (dt.datetime(1987, 11, 12, tzinfo=dt.UTC), dt.date(1987, 11, 12)),
        # The UTC calendar day: 23:30 in New York is the next day in UTC.
        (
            dt.datetime(1987, 11, 12, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
            dt.date(1987, 11, 13),
        ),
        (
            dt.datetime(1987, 11, 12, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            dt.date(1987, 11, 11),
        ),
        (None, None),
    ],
)
def test_create_with_published_and_tags(
    backend: DjangoBackend,
    make_ctx: Any,
    seeded: str,
    published: dt.datetime | None,
    day: dt.date | None,
) -> None:
    doc = {**NEW_BOOK, "published": published, "tags": ["discworld", "death", "death"]}
    new_id = backend.call(make_ctx("cr"), "books.create", [doc]).result
    # Still the first id of the book stream: tags draw from their own stream.
    assert new_id == RandomStream("cr").sequence("/collection/bookstore.book").id()
    book = Book.objects.get(pk=new_id)
    assert book.published == day
    assert tag_names(new_id) == ["death", "discworld"]
    created = book_changes(backend, new_id)[-1]
    assert created.fields["tags"] == ["death", "discworld"]


@pytest.mark.django_db
def test_create_without_published_or_tags(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    new_id = backend.call(make_ctx(), "books.create", [NEW_BOOK]).result
    assert Book.objects.get(pk=new_id).published is None
    assert tag_names(new_id) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"published": "1987-11-12"}, "Match failed"),
        ({"published": 563673600000}, "Match failed"),
        ({"tags": "discworld"}, "Match failed"),
        ({"tags": ["ok", 3]}, "Match failed"),
        ({"tags": [""]}, "Tag names must not be empty"),
        ({"tags": ["x" * 101]}, "Tag names have at most 100 characters"),
        ({"tags": [str(i) for i in range(MAX_TAGS + 1)]}, "A book has at most 20 tags"),
    ],
)
def test_create_refuses_bad_published_or_tags(
    backend: DjangoBackend, make_ctx: Any, seeded: str, extra: dict[str, Any], reason: str
) -> None:
    tags = Tag.objects.count()
    doc = {**NEW_BOOK, **extra}
    assert error_of(lambda: backend.call(make_ctx(), "books.create", [doc])) == (400, reason)
    assert (Book.objects.count(), Tag.objects.count()) == (10, tags)


# -- the book mutators ----------------------------------------------------------------------


@pytest.mark.django_db
def test_mutators_write_published_and_tags(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    doc = {
        **NEW_BOOK,
        "published": dt.datetime(1987, 11, 12, tzinfo=dt.UTC),
        "tags": ["discworld", "death"],
    }
    new_id = backend.call(make_ctx("mi"), "/bookstore.book/insert", [doc]).result
    assert new_id == RandomStream("mi").sequence("/collection/bookstore.book").id()
    inserted = book_changes(backend, new_id)[-1]
    assert inserted.fields["published"] == dt.datetime(1987, 11, 12, tzinfo=dt.UTC)
    assert inserted.fields["tags"] == ["death", "discworld"]

    modifier = {
        "$set": {"published": dt.datetime(1988, 1, 1, tzinfo=dt.UTC), "tags": ["death"]},
    }
    assert backend.call(make_ctx(), "/bookstore.book/update", [new_id, modifier]).result == 1
    book = Book.objects.get(pk=new_id)
    assert (book.published, tag_names(new_id)) == (dt.date(1988, 1, 1), ["death"])
    updated = book_changes(backend, new_id)[-1]
    assert (updated.fields["published"], updated.fields["tags"]) == (
        dt.datetime(1988, 1, 1, tzinfo=dt.UTC),
        ["death"],
    )
    unset = {"$unset": {"published": 1, "tags": 1}}
    assert backend.call(make_ctx(), "/bookstore.book/update", [new_id, unset]).result == 1
    assert (Book.objects.get(pk=new_id).published, tag_names(new_id)) == (None, [])
    # A document as a subscription sends it agrees with the live changes.
    (document,) = [
        d for d in subscribe(backend, make_ctx(), "books.all", []).documents if d.id == new_id
    ]
    assert document.fields == book_changes(backend, new_id)[-1].fields


# -- the migrations: JSON tag lists to Tag rows and back ------------------------------------

migration_0004 = importlib.import_module("bookstore.migrations.0004_book_tags_data")


def model_names(raw: Any) -> list[str]:
    """A slow restatement of 0004's rule, item by item."""
    out: list[str] = []
    for item in raw if isinstance(raw, list) else [raw]:
        if item is None:
            continue
        if isinstance(item, str):
            text = item.strip()
        else:
            text = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        text = text[:100].strip()
        if text and text not in out:
            out.append(text)
    return out


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=120)
JSON_VALUES = st.recursive(
    JSON_SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(st.lists(JSON_VALUES, max_size=12) | JSON_VALUES)
def test_migration_tag_names_match_the_rule(raw: Any) -> None:
    names = migration_0004.tag_names(raw)
    assert names == model_names(raw)
    assert len(set(names)) == len(names)
    assert all(n and n == n.strip() and len(n) <= 100 for n in names)


@pytest.fixture
def at_0002(transactional_db: None) -> Iterator[MigrationExecutor]:
    """The database migrated back to before tags were rows, then forward again after the
    test. The change-stream triggers follow the app's current models (they read
    ``bookstore_book_tags``): dropped for the test, installed again after."""
    sync_triggers(registry=Registry())
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("bookstore")
    try:
        executor.migrate([("bookstore", "0002_favorite")])
        yield executor
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        sync_triggers()


def test_migrations_turn_json_tags_into_rows_and_back(at_0002: MigrationExecutor) -> None:
    old = at_0002.loader.project_state([("bookstore", "0002_favorite")]).apps
    OldAuthor, OldBook = old.get_model("bookstore", "Author"), old.get_model("bookstore", "Book")
    author = OldAuthor.objects.create(id="a", name="A", email="a@example.org")
    raw_tags: dict[str, Any] = {
        "one": ["b", " a ", "", None, 1.5, {"k": 1}, "x" * 150, "b", "  "],
        "two": ["a", "é", "Z"],
        "none": [],
        "solo": "lonely",
    }
    for book_id, tags in raw_tags.items():
        OldBook.objects.create(id=book_id, title=book_id, author=author, price=1, tags=tags)

    at_0002.loader.build_graph()
    at_0002.migrate(at_0002.loader.graph.leaf_nodes("bookstore"))

    got = {b.pk: tag_names(b.pk) for b in Book.objects.all()}
    assert got == {book_id: sorted(model_names(raw)) for book_id, raw in raw_tags.items()}
    assert got["one"] == sorted(["b", "a", "1.5", '{"k":1}', "x" * 100])
    # One row per distinct name, shared by the books that had it.
    assert Tag.objects.count() == len({n for names in got.values() for n in names})
    assert sorted(Tag.objects.get(name="a").books.values_list("id", flat=True)) == ["one", "two"]
    assert all(len(t.pk) == 17 for t in Tag.objects.all())
    assert Author.objects.get(pk="a").books.count() == 4

    # Back again: each book's list is its names sorted by code point.
    Book.objects.get(pk="none").tags.set([Tag.objects.create(name="late")])
    at_0002.loader.build_graph()
    at_0002.migrate([("bookstore", "0002_favorite")])
    back = at_0002.loader.project_state([("bookstore", "0002_favorite")]).apps
    restored = dict(back.get_model("bookstore", "Book").objects.values_list("id", "tags"))
    assert restored == {
        "one": sorted(got["one"]),
        "two": ["Z", "a", "é"],
        "none": ["late"],
        "solo": ["lonely"],
    }


def test_stats_is_a_custom_publication_that_observes_books(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    sub = subscribe(backend, make_ctx(), "books.stats", [])
    assert not sub.plan.auto_ready and sub.specs == []
    (added, ready) = sub.sink.calls
    assert added[:3] == ("added", "stats", "books") and ready == ("ready",)
    assert added[3]["books"] == Book.objects.count()
    assert added[3]["dearest"] == f"{max(b.price for b in Book.objects.all()):.2f}"
    ((channel, collection, callback, _),) = sub.sink.observers
    assert (channel, collection) == (BOOKS, "bookstore.book")
    Book.objects.filter(pk="lathe").delete()
    callback([])  # what the relay calls after a commit on books
    (changed,) = sub.sink.calls[2:]
    assert changed[:3] == ("changed", "stats", "books")
    assert changed[3]["books"] == Book.objects.count()


def test_site_notices_are_a_universal_publication(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    from bookstore.models import Notice

    (name,) = [n for n in backend.universal_publications() if n == "null:bookstore.Notice"]
    assert not backend.has_publication(name)
    Notice.objects.create(text="Maintenance at noon")
    Notice.objects.create(text="Old news", active=False)
    sub = subscribe(backend, make_ctx(), name, [])
    assert [d.fields["text"] for d in sub.documents] == ["Maintenance at noon"]
    (spec,) = sub.specs
    assert spec.route.conditions is not None  # `active` is carried: routed in memory
