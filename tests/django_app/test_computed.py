"""Computed fields (``@computed``): declared on the collection, computed from the same
values for the initial documents (``serialize``) and for every live change
(``decode_change``), and republished when a value they use changes elsewhere (an author's
name for a book's ``authorName``, a book's title for its author's ``titles``).

These tests never commit: ``flush_now()`` runs the deferred flush and ``tx_changes``
reads what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, models
from django.test.utils import CaptureQueriesContext

from django_app.changes import touch
from django_app.collection import Collection, ComputedField, computed
from django_app.registries import registry
from django_app.triggers import sync_triggers
from relay.backend import DecodedChange
from relay.protocol.changestream import Change
from tests.django_app.changestream_helpers import flush_now, tx_changes


class Books(Collection):
    model = Book
    fields = ["title", "price"]

    @computed("authorName", uses=["author__name"])
    def author_name(self, values: Mapping[str, Any]) -> Any:
        return values["author__name"]

    @computed("label", uses=["title", "price", "author"])
    def label(self, values: Mapping[str, Any]) -> str:
        return f"{values['title']} ({values['price']}) by {values['author']}"


class Authors(Collection):
    model = Author
    fields = ["name"]

    @computed("titles", uses=["books__title"])
    def titles(self, values: Mapping[str, Any]) -> list[str]:
        return [t for t in values["books__title"] if t is not None]

    @computed("bookCount", uses=["books"])
    def book_count(self, values: Mapping[str, Any]) -> int:
        return sum(1 for pk in values["books"] if pk is not None)


@pytest.fixture
def live(db: None) -> Iterator[dict[type[models.Model], Collection]]:
    """The bookstore published with the computed collections, triggers installed, and a
    few rows of our own (independent of the demo seed)."""
    with registry.isolated():
        registry.unregister(Book)
        registry.unregister(Author)
        registry.register(Books)
        registry.register(Authors)
        sync_triggers()
        ann = Author.objects.create(id="ann", name="Ann", email="ann@example.org")
        Author.objects.create(id="bob", name="Bob", email="bob@example.org")
        Book.objects.create(id="b1", title="One", author=ann, price=Decimal("1.50"))
        Book.objects.create(id="b2", title="Two", author=ann, price=Decimal("2.00"))
        yield {
            Book: registry.collection_for_model(Book),
            Author: registry.collection_for_model(Author),
        }


def _new(collection: Collection, seen: int) -> tuple[list[DecodedChange], int]:
    flush_now()
    changes = tx_changes(collection.channel)
    return [collection.decode_change(c) for c in changes[seen:]], len(changes)


def test_uses_become_routing_paths() -> None:
    books, authors = Books(), Authors()
    assert [f.wire_name for f in books.computed_fields] == ["authorName", "label"]
    assert [r.key for r in books.related_paths] == ["author__name", "author_id"]
    assert {"author__name", "author_id", "title", "price"} <= books.routing_keys
    assert [r.key for r in authors.related_paths] == ["books__title", "books"]
    assert authors.related_paths[0].many
    # On an instance, a computed field is its function, bound.
    assert books.author_name({"author__name": "x"}) == "x"
    assert isinstance(Books.__dict__["label"], ComputedField)


def test_computed_fields_decode_exactly_like_the_initial_load(
    live: dict[type[models.Model], Collection],
) -> None:
    for model, collection in live.items():
        touch(model.objects.all())
        flush_now()
        latest = {c.pk: c for c in tx_changes(collection.channel)}
        with CaptureQueriesContext(connection) as queries:
            documents = {
                i.pk: collection.serialize(i)[1]
                for i in collection.prepare_queryset(model.objects.all())
            }
        assert len(queries) == 1  # the paths the functions use come with the rows
        for pk, document in documents.items():
            assert collection.decode_change(latest[pk]).fields == document
    assert live[Book].document(Book.objects.get(pk="b1")) == {
        "_id": "b1",
        "title": "One",
        "price": "1.50",
        "authorName": "Ann",
        "label": "One (1.50) by ann",
    }
    ann = live[Author].document(Author.objects.get(pk="ann"))
    assert (ann["titles"], ann["bookCount"]) == (["One", "Two"], 2)
    bob = live[Author].document(Author.objects.get(pk="bob"))
    assert (bob["titles"], bob["bookCount"]) == ([], 0)  # the LEFT JOIN's NULL, skipped


def test_computed_fields_follow_what_they_use(live: dict[type[models.Model], Collection]) -> None:
    books, authors = live[Book], live[Author]
    _, seen_books = _new(books, 0)
    _, seen_authors = _new(authors, 0)

    Author.objects.filter(pk="ann").update(name="Anne")
    changes, seen_books = _new(books, seen_books)
    assert sorted((c.id, c.fields["authorName"]) for c in changes) == [
        ("b1", "Anne"),
        ("b2", "Anne"),
    ]
    Author.objects.filter(pk="ann").update(email="anne@example.org")  # used by nothing
    changes, seen_books = _new(books, seen_books)
    assert changes == []

    Book.objects.filter(pk="b2").update(title="Deux", author_id="bob")
    (book,), seen_books = _new(books, seen_books)
    assert (book.fields["label"], book.fields["authorName"]) == ("Deux (2.00) by bob", "Bob")
    changes, seen_authors = _new(authors, seen_authors)
    by_id = {c.id: c.fields for c in changes if c.op == "u" and "bookCount" in c.fields}
    assert {k: (v["titles"], v["bookCount"]) for k, v in by_id.items()} == {
        "ann": (["One"], 1),
        "bob": (["Deux"], 1),
    }

    Book.objects.create(id="b3", title="Three", author_id="bob", price=Decimal("3"))
    changes, seen_authors = _new(authors, seen_authors)
    assert [(c.id, c.fields["titles"]) for c in changes] == [("bob", ["Deux", "Three"])]


def test_a_change_without_a_used_value_leaves_the_field_out(
    live: dict[type[models.Model], Collection],
) -> None:
    """Triggers older than the declaration: the field is left out, not computed wrong."""
    decoded = live[Book].decode_change(
        Change("u", "b1", {"title": "One", "price": "1.50", "author_id": "ann"})
    )
    assert decoded.fields == {"title": "One", "price": "1.50", "label": "One (1.50) by ann"}
    assert live[Book].decode_change(Change("d", "b1", {})).fields == {}


def test_a_failing_function_fails_both_ways(live: dict[type[models.Model], Collection]) -> None:
    class Broken(Collection):
        model = Book
        fields = ["title"]

        @computed("x", uses=["title"])
        def x(self, values: Mapping[str, Any]) -> Any:
            raise RuntimeError("boom")

    broken = Broken()
    with pytest.raises(RuntimeError, match="boom"):
        broken.serialize(Book.objects.get(pk="b1"))
    with pytest.raises(RuntimeError, match="boom"):
        broken.decode_change(Change("u", "b1", {"title": "One"}))


def test_subclasses_inherit_and_may_drop_computed_fields() -> None:
    class More(Books):
        @computed("upper", uses=["title"])
        def upper(self, values: Mapping[str, Any]) -> str:
            return str(values["title"]).upper()

    class Fewer(Books):
        label = None  # type: ignore[assignment]

    assert [f.wire_name for f in More().computed_fields] == ["authorName", "label", "upper"]
    assert [f.wire_name for f in Fewer().computed_fields] == ["authorName"]
    assert "author_id" not in Fewer().routing_keys  # only "label" used it


@pytest.mark.parametrize(
    ("name", "uses", "message"),
    [
        ("title", ["title"], "already published"),
        ("_id", ["title"], "'_id' or already published"),
        ("", ["title"], "needs a wire name"),
        ("x", ["nope"], "uses 'nope'"),
        ("x", ["author__name__upper"], "uses 'author__name__upper'"),
        ("x", ["books__x"], "uses 'books__x'"),
    ],
)
def test_bad_computed_fields_fail_at_registration(name: str, uses: list[str], message: str) -> None:
    bad = type(
        "Bad",
        (Collection,),
        {"model": Book, "fields": ["title"], "f": computed(name, uses=uses)(lambda s, v: 1)},
    )
    with pytest.raises(ImproperlyConfigured, match=message):
        bad()


def test_two_computed_fields_cannot_share_a_name() -> None:
    attrs = {
        "model": Author,
        "fields": ["name"],
        "a": computed("x", uses=["name"])(lambda s, v: 1),
        "b": computed("x", uses=["name"])(lambda s, v: 2),
    }
    with pytest.raises(ImproperlyConfigured, match="already published"):
        type("Twice", (Collection,), attrs)()


def test_uses_must_be_a_list() -> None:
    with pytest.raises(TypeError, match="list of lookup paths"):
        computed("x", uses="title")


def test_computed_values_are_the_routing_values(
    live: dict[type[models.Model], Collection],
) -> None:
    """What a function receives is typed like routing: a Decimal, a tuple for a path."""
    seen: list[Mapping[str, Any]] = []

    class Spy(Authors):
        @computed("spy", uses=["books__title", "name"])
        def spy(self, values: Mapping[str, Any]) -> None:
            seen.append(dict(values))

    spy = Spy()
    spy.serialize(Author.objects.get(pk="ann"))
    touch(Author.objects.filter(pk="ann"))
    flush_now()
    change = tx_changes(spy.channel)[-1]
    decoded = spy.decode_change(change)
    assert seen == [{"books__title": ("One", "Two"), "name": "Ann"}] * 2
    assert decoded.routing["books__title"] == ("One", "Two")
