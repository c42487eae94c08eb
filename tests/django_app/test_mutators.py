"""Meteor collection mutators: /<collection>/insert, update, remove (and ...Async), including
published many-to-many arrays (ids, or names of a unique field)."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import threading
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from bookstore.ddp import BookCollection
from bookstore.models import Author, Book, Tag
from django.db import connections
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from django_app import Collection
from django_app.backend import DjangoBackend
from django_app.modifiers import MAX_ARRAY_INDEX, MAX_OPERATIONS, MAX_PADDING, MAX_VALUE_BYTES
from django_app.registries import Registry
from relay.backend import ClientError, Identity
from relay.protocol.alea import RandomStream

pytestmark = pytest.mark.django_db

INSERT = "/bookstore.book/insert"
UPDATE = "/bookstore.book/update"
REMOVE = "/bookstore.book/remove"
DOC = {"title": "Mort", "authorId": "pratchett", "price": "7.99"}
NOT_BY_ID = "Not permitted. Untrusted code may only {} documents by ID."
NO_REPLACE = (
    "Access denied. In a restricted collection you can only update documents, not replace"
    " them. Use a Mongo update operator, such as '$set'."
)


def tag_names(book_id: str) -> list[str]:
    return sorted(Book.objects.get(pk=book_id).tags.values_list("name", flat=True))


def error_of(call: Any) -> tuple[Any, Any]:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.error, info.value.reason


@pytest.mark.parametrize("name", [INSERT, "/bookstore.book/insertAsync"])
def test_insert_without_id_uses_the_seeded_stream(
    backend: DjangoBackend, make_ctx: Any, seeded: str, name: str
) -> None:
    stream = RandomStream("xyz123").sequence("/collection/bookstore.book")
    expected = stream.id()
    assert backend.call(make_ctx("xyz123"), name, [DOC]).result == expected
    book = Book.objects.get(pk=expected)
    assert (book.title, book.author_id, book.price) == ("Mort", "pratchett", Decimal("7.99"))


def test_insert_with_id_and_ejson_values(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    doc = {
        "_id": "mort",
        **DOC,
        "price": 7,
        "published": dt.datetime(1987, 11, 12, tzinfo=dt.UTC),
        "tags": ["discworld", "death", "discworld"],
    }
    assert backend.call(make_ctx("s"), INSERT, [doc]).result == "mort"
    book = Book.objects.get(pk="mort")
    assert book.published == dt.date(1987, 11, 12)
    assert book.price == Decimal("7.00")
    assert tag_names("mort") == ["death", "discworld"]
    # "death" was created (its id from the tag stream), "discworld" reused.
    assert Tag.objects.filter(name="discworld").count() == 1
    assert Tag.objects.get(name="death").pk == (
        RandomStream("s").sequence("/collection/bookstore.tag").id()
    )


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({**DOC, "_id": 5}, (400, "Meteor requires document _id fields to be non-empty strings")),
        ({**DOC, "_id": ""}, (400, "Meteor requires document _id fields to be non-empty strings")),
        ({**DOC, "_id": "lathe"}, (400, "_id: Book with this Id already exists.")),
        ({**DOC, "unknown": 1}, (400, "Unknown field 'unknown'")),
        ({**DOC, "author_id": "leguin"}, (400, "Unknown field 'author_id'")),
        ({**DOC, "price": "cheap"}, (400, "price: Expected a decimal number.")),
        ({"title": "No author", "price": 1}, (400, "authorId: This field cannot be null.")),
        (
            {**DOC, "authorId": "nobody"},
            (400, "authorId: author instance with id 'nobody' is not a valid choice."),
        ),
    ],
)
def test_insert_validation(
    backend: DjangoBackend, make_ctx: Any, seeded: str, doc: dict[str, Any], error: Any
) -> None:
    assert error_of(lambda: backend.call(make_ctx("s"), INSERT, [doc])) == error
    assert Book.objects.count() == 10


@pytest.mark.parametrize(
    "doc",
    [
        {**DOC, "title": "nul\x00title"},
        {**DOC, "title": "lone \ud800"},
        {**DOC, "price": float("inf")},
        {**DOC, "tags": [{"x": float("nan")}]},
    ],
)
def test_values_postgresql_cannot_store_are_a_400_not_a_500(
    backend: DjangoBackend, make_ctx: Any, seeded: str, doc: dict[str, Any]
) -> None:
    assert error_of(lambda: backend.call(make_ctx("s"), INSERT, [doc])) == (400, "Match failed")
    bad = {k: v for k, v in doc.items() if k not in DOC or DOC[k] is not v}
    update = ["lathe", {"$set": bad}]
    assert error_of(lambda: backend.call(make_ctx("s"), UPDATE, update)) == (400, "Match failed")
    assert Book.objects.count() == 10


@pytest.mark.parametrize("params", [[], ["doc"], [None]])
def test_insert_needs_a_document(backend: DjangoBackend, make_ctx: Any, params: list[Any]) -> None:
    assert error_of(lambda: backend.call(make_ctx(), INSERT, params)) == (400, "Match failed")


@pytest.mark.parametrize("selector", ["lathe", {"_id": "lathe"}])
def test_update_set_and_unset(
    backend: DjangoBackend, make_ctx: Any, seeded: str, selector: Any
) -> None:
    before = Book.objects.get(pk="lathe")
    modifier = {
        "$set": {"title": "Lathe", "authorId": "jemisin", "price": "1.5"},
        "$unset": {"published": ""},
    }
    assert backend.call(make_ctx(), UPDATE, [selector, modifier]).result == 1
    book = Book.objects.get(pk="lathe")
    assert (book.title, book.author_id, book.price, book.published) == (
        "Lathe",
        "jemisin",
        Decimal("1.50"),
        None,
    )
    assert book.updated_at > before.updated_at
    assert (
        backend.call(
            make_ctx(), "/bookstore.book/updateAsync", ["lathe", {"$unset": {"tags": 1}}]
        ).result
        == 1
    )
    assert tag_names("lathe") == []


def test_update_missing_document_is_zero(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    assert backend.call(make_ctx(), UPDATE, ["nope", {"$set": {"title": "x"}}]).result == 0


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ([{"title": "x"}, {"$set": {"title": "y"}}], (403, NOT_BY_ID.format("update"))),
        (
            [{"_id": "lathe", "title": "x"}, {"$set": {"title": "y"}}],
            (403, NOT_BY_ID.format("update")),
        ),
        ([True, {"$set": {"title": "y"}}], (403, NOT_BY_ID.format("update"))),
        (
            ["lathe", {"title": "replaced"}],
            (
                403,
                NO_REPLACE,
            ),
        ),
        (
            ["lathe", {}],
            (
                403,
                NO_REPLACE,
            ),
        ),
        (
            ["lathe", {"$set": {"title": "y"}}, {"upsert": True}],
            (403, "Access denied. Upserts not allowed in a restricted collection."),
        ),
        (
            ["lathe", {"$rename": {"title": "name"}}],
            (403, "Access denied. Operator $rename not allowed in a restricted collection."),
        ),
        (
            ["lathe", {"$push": {"tags": "x"}}],
            (
                400,
                "Field 'tags' is a set of related rows, kept sorted: $push is not supported"
                " there; use $set, $addToSet, $pull or $pullAll of values",
            ),
        ),
        (
            ["lathe", {"$set": {"tags.0": "x"}}],
            (400, "Nested field updates are only supported in JSON fields: 'tags.0'"),
        ),
        (
            ["lathe", {"$set": {"title.x": "x"}}],
            (400, "Nested field updates are only supported in JSON fields: 'title.x'"),
        ),
        (["lathe", {"$set": {"_id.x": "x"}}], (400, "The _id of a document cannot be changed")),
        (["lathe", {"$set": {"_id": "x"}}], (400, "The _id of a document cannot be changed")),
        (["lathe", {"$set": {"nope": 1}}], (400, "Unknown field 'nope'")),
        (["lathe", {"$unset": {"title": 1}}], (400, "Field 'title' cannot be unset")),
        (["lathe", {"$set": {"title": ""}}], (400, "title: This field cannot be blank.")),
        (["lathe", {"$set": "title"}], (400, "Match failed")),
        (["lathe"], (400, "Match failed")),
        (["lathe", {"$set": {"title": "y"}}, "options"], (400, "Match failed")),
    ],
)
def test_update_errors(
    backend: DjangoBackend, make_ctx: Any, seeded: str, params: list[Any], error: Any
) -> None:
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, params)) == error
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"


def test_remove(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    assert backend.call(make_ctx(), REMOVE, ["lathe"]).result == 1
    assert (
        backend.call(make_ctx(), "/bookstore.book/removeAsync", [{"_id": "small-gods"}]).result == 1
    )
    assert backend.call(make_ctx(), REMOVE, ["lathe"]).result == 0
    assert Book.objects.count() == 8
    assert error_of(lambda: backend.call(make_ctx(), REMOVE, [{}])) == (
        403,
        NOT_BY_ID.format("remove"),
    )
    assert error_of(lambda: backend.call(make_ctx(), REMOVE, [])) == (400, "Match failed")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("/bookstore.author/insert", [{"name": "X", "email": "x@example.org"}]),
        ("/bookstore.author/insertAsync", [{"name": "X", "email": "x@example.org"}]),
        ("/bookstore.author/update", ["leguin", {"$set": {"name": "X"}}]),
        ("/bookstore.author/remove", ["leguin"]),
        ("/bookstore.author/removeAsync", ["leguin"]),
    ],
)
def test_collections_without_allow_rules_deny(
    backend: DjangoBackend, make_ctx: Any, seeded: str, name: str, params: list[Any]
) -> None:
    assert error_of(lambda: backend.call(make_ctx("s"), name, params)) == (403, "Access denied")
    assert Author.objects.filter(pk="leguin", name="Ursula K. Le Guin").exists()
    assert Author.objects.count() == 3


@pytest.fixture
def ruled() -> tuple[DjangoBackend, list[tuple[Any, ...]]]:
    """Authors writable by staff only, visible only with a .org address; calls recorded."""
    calls: list[tuple[Any, ...]] = []
    reg = Registry()

    @reg.register
    class Authors(Collection):
        model = Author
        rename = {"email": "mail"}

        def visible(self, user: Any) -> Any:
            return {"email__in": ["ursula.leguin@example.org", "nk.jemisin@example.org"]}

        def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("insert", doc))
            return bool(user.is_staff)

        def allow_update(
            self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
        ) -> bool:
            calls.append(("update", doc, fields, modifier))
            return bool(user.is_staff)

        def allow_remove(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("remove", doc))
            return bool(user.is_staff)

    return DjangoBackend(registry=reg), calls


def test_rules_see_meteor_style_arguments(ruled: Any, make_ctx: Any, seeded: str) -> None:
    from django.contrib.auth.models import User

    backend, calls = ruled
    staff = User.objects.create(username="staff", is_staff=True)
    as_staff = make_ctx("seed", Identity(staff, str(staff.pk)))
    new_id = RandomStream("seed").sequence("/collection/bookstore.author").id()
    assert (
        backend.call(
            as_staff,
            "/bookstore.author/insert",
            [{"name": "Iain Banks", "mail": "iain@example.org"}],
        ).result
        == new_id
    )
    assert calls[-1] == (
        "insert",
        {"_id": new_id, "name": "Iain Banks", "mail": "iain@example.org"},
    )

    modifier = {"$set": {"name": "U. K. Le Guin", "mail": "ukl@example.org"}}
    assert backend.call(as_staff, "/bookstore.author/update", ["leguin", modifier]).result == 1
    assert calls[-1] == (
        "update",
        {"_id": "leguin", "name": "Ursula K. Le Guin", "mail": "ursula.leguin@example.org"},
        ["name", "mail"],
        modifier,
    )
    assert Author.objects.get(pk="leguin").email == "ukl@example.org"
    # No longer visible (the rule wants two addresses), so later writes find nothing.
    assert backend.call(as_staff, "/bookstore.author/remove", ["leguin"]).result == 0
    # Pratchett was never visible: updates and removes see no document.
    assert backend.call(as_staff, "/bookstore.author/update", ["pratchett", modifier]).result == 0
    assert backend.call(as_staff, "/bookstore.author/remove", ["jemisin"]).result == 1
    assert calls[-1] == (
        "remove",
        {"_id": "jemisin", "name": "N. K. Jemisin", "mail": "nk.jemisin@example.org"},
    )


def test_rules_deny_and_integrity_errors(ruled: Any, make_ctx: Any, seeded: str) -> None:
    from django.contrib.auth.models import User

    backend, _ = ruled
    user = User.objects.create(username="plain")
    as_user = make_ctx("seed", Identity(user, str(user.pk)))
    assert error_of(lambda: backend.call(as_user, "/bookstore.author/remove", ["jemisin"])) == (
        403,
        "Access denied",
    )
    assert error_of(
        lambda: backend.call(
            make_ctx(), "/bookstore.author/update", ["jemisin", {"$set": {"name": "x"}}]
        )
    ) == (403, "Access denied")
    staff = User.objects.create(username="staff", is_staff=True)
    as_staff = make_ctx("seed", Identity(staff, str(staff.pk)))
    error, reason = error_of(
        lambda: backend.call(
            as_staff,
            "/bookstore.author/insert",
            [{"name": "Dup", "mail": "nk.jemisin@example.org"}],
        )
    )
    assert (error, reason) == (400, "mail: Author with this Email already exists.")


# -- published many-to-many arrays ----------------------------------------------------------


def test_update_sets_tags_by_name_after_the_row(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    before = Book.objects.get(pk="lathe")
    modifier = {"$set": {"title": "Lathe", "tags": ["utopia", "new one"]}}
    assert backend.call(make_ctx("t"), UPDATE, ["lathe", modifier]).result == 1
    book = Book.objects.get(pk="lathe")
    assert (book.title, tag_names("lathe")) == ("Lathe", ["new one", "utopia"])
    assert book.updated_at > before.updated_at
    # Only tags: the row is saved too (updatedAt), the relation replaced.
    assert backend.call(make_ctx(), UPDATE, ["lathe", {"$set": {"tags": []}}]).result == 1
    assert tag_names("lathe") == []
    assert Book.objects.get(pk="lathe").updated_at > book.updated_at
    # Unlinked tags stay: other books may use them, and a tag is a row of its own.
    assert Tag.objects.filter(name="new one").exists()


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ("fantasy", "tags: Expected an array."),
        ({"a": 1}, "tags: Expected an array."),
        (["ok", None], "tags: None: Null is not allowed in this array."),
        (["ok", 5], "tags: 5: Expected a string."),
        ([dt.datetime(2020, 1, 1, tzinfo=dt.UTC)], None),
        ([""], "tags: '': This field cannot be blank."),
        (["x" * 101], None),
    ],
)
def test_bad_tag_arrays_are_400_and_write_nothing(
    backend: DjangoBackend, make_ctx: Any, seeded: str, tags: Any, reason: str | None
) -> None:
    tags_before, count_before = tag_names("lathe"), Tag.objects.count()
    for call in (
        lambda: backend.call(make_ctx("s"), INSERT, [{**DOC, "tags": tags}]),
        lambda: backend.call(make_ctx(), UPDATE, ["lathe", {"$set": {"title": "T", "tags": tags}}]),
    ):
        error, got = error_of(call)
        assert error == 400
        if reason is not None:
            assert got == reason
        else:
            assert got.startswith("tags: ")
    assert (Book.objects.count(), Tag.objects.count()) == (10, count_before)
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"
    assert tag_names("lathe") == tags_before


def test_a_tag_created_concurrently_is_taken_not_a_conflict(
    backend: DjangoBackend, make_ctx: Any, seeded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another transaction created the tag between the lookup and the insert: the insert
    fails the unique constraint in its savepoint, and the winner's row is linked."""
    from django.db.models import QuerySet

    Tag.objects.create(name="raced")
    first = QuerySet.first
    missed: list[str] = []

    def miss_once(self: QuerySet[Any]) -> Any:
        if self.model is Tag and not missed:
            missed.append("raced")
            return None  # as if the other transaction had not committed yet
        return first(self)

    monkeypatch.setattr(QuerySet, "first", miss_once)
    assert backend.call(make_ctx(), UPDATE, ["lathe", {"$set": {"tags": ["raced"]}}]).result == 1
    assert missed == ["raced"]
    assert tag_names("lathe") == ["raced"]
    assert Tag.objects.filter(name="raced").count() == 1


def test_allow_update_sees_the_whole_modifier_arrays_included(make_ctx: Any, seeded: str) -> None:
    calls: list[tuple[Any, ...]] = []
    reg = Registry()

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title", "tags__name"]
        rename = {"tags__name": "tags"}

        def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("insert", doc))
            return "forbidden" not in doc.get("tags", [])

        def allow_update(
            self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
        ) -> bool:
            calls.append(("update", doc, fields, modifier))
            return "forbidden" not in modifier.get("$set", {}).get("tags", [])

    backend = DjangoBackend(registry=reg)
    modifier = {"$set": {"tags": ["forbidden"]}, "$unset": {"title": 1}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", modifier])) == (
        403,
        "Access denied",
    )
    assert calls[-1] == (
        "update",
        {"_id": "lathe", "title": "The Lathe of Heaven", "tags": ["science fiction"]},
        ["tags", "title"],
        modifier,
    )
    ok = {"$set": {"tags": ["fine"]}}
    assert backend.call(make_ctx(), UPDATE, ["lathe", ok]).result == 1
    assert tag_names("lathe") == ["fine"]
    doc = {"title": "T", "tags": ["forbidden"]}
    assert error_of(lambda: backend.call(make_ctx("s"), INSERT, [doc])) == (403, "Access denied")
    assert calls[-1][1]["tags"] == ["forbidden"]
    assert not Tag.objects.filter(name="forbidden").exists()


def by_ids_backend() -> DjangoBackend:
    """Books publishing ``tags`` as the tags' ids, tags publishing ``books`` (the reverse
    side) as the books' ids; both writable."""
    reg = Registry()

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title", "author_id", "price", "tags"]

        def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
            return True

        def allow_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            return True

    @reg.register
    class Tags(Collection):
        model = Tag
        fields = ["name", "books"]

        def allow_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            return True

    return DjangoBackend(registry=reg)


def test_many_to_many_ids_either_side(make_ctx: Any, seeded: str) -> None:
    backend = by_ids_backend()
    fantasy, utopia = Tag.objects.get(name="fantasy"), Tag.objects.get(name="utopia")
    modifier = {"$set": {"tags": [utopia.pk, fantasy.pk, utopia.pk]}}
    assert backend.call(make_ctx(), UPDATE, ["lathe", modifier]).result == 1
    assert tag_names("lathe") == ["fantasy", "utopia"]
    doc = {"_id": "mort", "title": "Mort", "author_id": "pratchett", "price": "1", "tags": []}
    assert backend.call(make_ctx(), INSERT, [doc]).result == "mort"
    assert tag_names("mort") == []
    # The reverse side: the tag's books, by id.
    books = {"$set": {"books": ["mort", "lathe"]}}
    assert backend.call(make_ctx(), "/bookstore.tag/update", [utopia.pk, books]).result == 1
    assert sorted(utopia.books.values_list("id", flat=True)) == ["lathe", "mort"]
    assert backend.call(make_ctx(), "/bookstore.tag/update", [utopia.pk, {"$unset": {"books": 1}}])
    assert not utopia.books.exists()


def test_unknown_ids_are_a_400_and_roll_everything_back(make_ctx: Any, seeded: str) -> None:
    backend = by_ids_backend()
    fantasy = Tag.objects.get(name="fantasy")
    modifier = {"$set": {"title": "T", "tags": [fantasy.pk, "nope"]}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", modifier])) == (
        400,
        "tags: No such tag: 'nope'.",
    )
    assert error_of(
        lambda: backend.call(make_ctx(), UPDATE, ["lathe", {"$set": {"tags": [fantasy.pk, 5]}}])
    ) == (400, "tags: 5: Expected a string.")
    book = Book.objects.get(pk="lathe")
    assert (book.title, tag_names("lathe")) == ("The Lathe of Heaven", ["science fiction"])


def test_arrays_that_cannot_be_written_are_a_400_that_says_why(make_ctx: Any, seeded: str) -> None:
    reg = Registry()

    @reg.register
    class Authors(Collection):
        model = Author
        fields = ["name", "books", "books__title"]  # a reverse foreign key, and a path
        rename = {"books__title": "titles"}

        def allow_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            return True

    @reg.register
    class Tags(Collection):
        model = Tag
        fields = ["name", "books__title", "books__author__email"]  # not unique; two hops on

        def allow_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            return True

    backend = DjangoBackend(registry=reg)
    reason = (
        "Field {!r} cannot be written: only a many-to-many field (an array of ids) or a"
        " path through one to a unique field (an array of values) can be"
    )
    tag = Tag.objects.get(name="utopia")
    for name, doc_id, key in [
        ("/bookstore.author/update", "leguin", "books"),
        ("/bookstore.author/update", "leguin", "titles"),
        ("/bookstore.tag/update", tag.pk, "books__title"),
        ("/bookstore.tag/update", tag.pk, "books__author__email"),
    ]:
        params: list[Any] = [doc_id, {"$set": {key: []}}]
        assert error_of(partial(backend.call, make_ctx(), name, params)) == (
            400,
            reason.format(key),
        ), key
    assert Author.objects.get(pk="leguin").books.count() == 4
    assert tag.books.count() == 1


def test_a_relation_with_its_own_through_model_is_refused(make_ctx: Any, db: None) -> None:
    from django.db import models
    from django.test.utils import isolate_apps

    with isolate_apps("bookstore"):

        class Volume(models.Model):
            id = models.CharField(primary_key=True, max_length=10)

            class Meta:
                app_label = "bookstore"

        class Shelf(models.Model):
            id = models.CharField(primary_key=True, max_length=10)
            label = models.CharField(max_length=10, unique=True)
            volumes = models.ManyToManyField(Volume, through="Placement")

            class Meta:
                app_label = "bookstore"

        class Placement(models.Model):
            shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE)
            volume = models.ForeignKey(Volume, on_delete=models.CASCADE)
            position = models.IntegerField()

            class Meta:
                app_label = "bookstore"

        reg = Registry()

        @reg.register
        class Shelves(Collection):
            model = Shelf
            fields = ["label", "volumes"]

            def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
                return True

        backend = DjangoBackend(registry=reg)
        doc = {"_id": "s1", "label": "top", "volumes": ["v1"]}
        # Refused before anything is read or written (the tables do not even exist).
        assert error_of(lambda: backend.call(make_ctx(), "/bookstore.shelf/insert", [doc])) == (
            400,
            "Field 'volumes' cannot be written: its relation has its own through model (write"
            " it in a method)",
        )


# -- Mongo modifiers: the same document as Meteor -------------------------------------------


class ModelError(Exception):
    """What the model refuses, with the DDP error code the mutator answers."""

    def __init__(self, error: int) -> None:
        super().__init__(error)
        self.error = error


def is_index(part: str) -> bool:
    return part.isascii() and part.isdigit()


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def same(a: Any, b: Any) -> bool:
    """jsonb equality: numbers by value, objects without key order, booleans apart."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if is_number(a) and is_number(b):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def find_target(doc: Any, parts: list[str], no_create: bool) -> tuple[Any, Any] | None:
    """minimongo's findModTarget: the container of the last part and its key, creating
    the missing objects (and padding arrays with nulls), or None for no_create."""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not isinstance(doc, dict | list):
            if no_create:
                return None
            raise ModelError(409)
        key: Any
        if isinstance(doc, list):
            if not is_index(part):
                if no_create:
                    return None
                raise ModelError(409)
            key = int(part)
            if no_create and key >= len(doc):
                return None
            while len(doc) < key:
                doc.append(None)
            if not last and len(doc) == key:
                doc.append({})
        else:
            key = part
            if key not in doc:
                if no_create:
                    return None
                if not last:
                    doc[key] = {}
        if last:
            return doc, key
        doc = doc[key]
    raise AssertionError("no parts")


def has(container: Any, key: Any) -> bool:
    return key < len(container) if isinstance(container, list) else key in container


def pull_matches(element: Any, argument: Any) -> bool:
    if isinstance(argument, dict):
        if not isinstance(element, dict):
            return False
        return all(
            k in element
            and (
                same(element[k], v)
                or (isinstance(element[k], list) and any(same(x, v) for x in element[k]))
            )
            for k, v in argument.items()
        )
    return same(element, argument)


def model_modify(doc: dict[str, Any], modifier: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A brute-force Mongo update of a document: minimongo's _modify, with the two
    documented differences (jsonb equality; $addToSet dedupes the array it creates)."""
    keys = [(op, key) for op, spec in modifier.items() for key in spec]
    for (_, p), (_, q) in itertools.permutations(keys, 2):
        pp, qq = p.split("."), q.split(".")
        if qq[: len(pp)] == pp:
            raise ModelError(409)
    doc = copy.deepcopy(doc)
    no_create = {"$unset", "$pull", "$pullAll", "$pop"}
    for op, spec in modifier.items():
        for key, argument in spec.items():
            found = find_target(doc, key.split("."), op in no_create)
            if found is None:
                continue
            container, field = found
            present = has(container, field)
            value = container[field] if present else None
            if op == "$set":
                if isinstance(container, list):
                    while len(container) <= field:
                        container.append(None)
                container[field] = copy.deepcopy(argument)
            elif op == "$unset":
                if key == "details":
                    doc["details"] = {}  # a column is never missing: its default
                elif present:
                    if isinstance(container, list):
                        container[field] = None
                    else:
                        del container[field]
            elif op == "$inc":
                if present and not is_number(value):
                    raise ModelError(409)
                new = Decimal(str(value)) + Decimal(str(argument)) if present else argument
                if isinstance(container, list) and not present:
                    container.append(new)
                else:
                    container[field] = new
            elif op in ("$push", "$addToSet"):
                is_each = isinstance(argument, dict) and "$each" in argument
                each = argument["$each"] if is_each else [argument]
                if present and not isinstance(value, list):
                    raise ModelError(409)
                array: list[Any] = value if isinstance(value, list) else []
                for item in copy.deepcopy(each):
                    if op == "$push" or not any(same(item, e) for e in array):
                        array.append(item)
                if not present:
                    if isinstance(container, list):
                        container.append(array)
                    else:
                        container[field] = array
            else:  # $pull, $pullAll, $pop: no_create, so the path exists up to field
                if not present:
                    continue
                if not isinstance(value, list):
                    raise ModelError(409)
                if op == "$pop":
                    if value:
                        value.pop(0 if argument == -1 else -1)
                elif op == "$pullAll":
                    value[:] = [e for e in value if not any(same(e, a) for a in argument)]
                else:
                    value[:] = [e for e in value if not pull_matches(e, argument)]
    return doc


def details_after(backend: DjangoBackend, make_ctx: Any, before: Any, modifier: Any) -> Any:
    Book.objects.filter(pk="lathe").update(details=before)
    assert backend.call(make_ctx(), UPDATE, ["lathe", modifier]).result == 1
    return Book.objects.get(pk="lathe").details


#: (details before, modifier, details after): Mongo/minimongo semantics, case by case.
METEOR_CASES: list[tuple[Any, dict[str, Any], Any]] = [
    # $set by dotted path creates the objects on the way, keeps the siblings.
    ({}, {"$set": {"details.publisher.city": "Paris"}}, {"publisher": {"city": "Paris"}}),
    (
        {"publisher": {"name": "Ace"}, "n": 1},
        {"$set": {"details.publisher.city": "Paris"}},
        {"publisher": {"name": "Ace", "city": "Paris"}, "n": 1},
    ),
    ({"a": 1}, {"$set": {"details.a": {"b": [1, None]}}}, {"a": {"b": [1, None]}}),
    # Numeric segments: an array's index (padded with nulls), an object's key.
    ({"a": [1, 2]}, {"$set": {"details.a.1": 9}}, {"a": [1, 9]}),
    ({"a": [1]}, {"$set": {"details.a.3": 9}}, {"a": [1, None, None, 9]}),
    ({"a": [1]}, {"$set": {"details.a.2.b": 1}}, {"a": [1, None, {"b": 1}]}),
    ({"a": [{"b": 1}]}, {"$set": {"details.a.0.c": 2}}, {"a": [{"b": 1, "c": 2}]}),
    ({"a": [1, 2]}, {"$set": {"details.a.01": 9}}, {"a": [1, 9]}),
    ({"a": {}}, {"$set": {"details.a.0": 1}}, {"a": {"0": 1}}),
    ({}, {"$set": {"details.a.0": 1}}, {"a": {"0": 1}}),
    # $unset: removes a key, nulls an array element, ignores what is missing.
    ({"a": {"b": 1, "c": 2}}, {"$unset": {"details.a.b": ""}}, {"a": {"c": 2}}),
    ({"a": [1, 2]}, {"$unset": {"details.a.0": 1}}, {"a": [None, 2]}),
    ({"a": 1}, {"$unset": {"details.x.y": 1}}, {"a": 1}),
    ({"a": 1}, {"$unset": {"details.a.y": 1}}, {"a": 1}),
    ({"a": [1]}, {"$unset": {"details.a.5": 1, "details.a.x": 1}}, {"a": [1]}),
    # $inc: adds, or sets what is missing (creating the path).
    ({"n": 1}, {"$inc": {"details.n": 2}}, {"n": 3}),
    ({"n": 1}, {"$inc": {"details.n": -1.5}}, {"n": -0.5}),
    ({}, {"$inc": {"details.stats.views": 1}}, {"stats": {"views": 1}}),
    ({"a": [1, 2]}, {"$inc": {"details.a.1": 10}}, {"a": [1, 12]}),
    ({"a": [1]}, {"$inc": {"details.a.2": 5}}, {"a": [1, None, 5]}),
    # $push, with $each; a missing array is created.
    ({"a": [1]}, {"$push": {"details.a": 2}}, {"a": [1, 2]}),
    ({"a": [1]}, {"$push": {"details.a": [2, 3]}}, {"a": [1, [2, 3]]}),
    ({"a": [1]}, {"$push": {"details.a": {"$each": [1, 2]}}}, {"a": [1, 1, 2]}),
    ({}, {"$push": {"details.log": {"at": 1}}}, {"log": [{"at": 1}]}),
    ({}, {"$push": {"details.log": {"$each": []}}}, {"log": []}),
    # $addToSet: only what is not there yet (objects compared whole).
    ({"a": [1, 2]}, {"$addToSet": {"details.a": 2}}, {"a": [1, 2]}),
    ({"a": [1, 2]}, {"$addToSet": {"details.a": {"$each": [2, 3, 3, 4]}}}, {"a": [1, 2, 3, 4]}),
    (
        {"a": [{"x": 1, "y": 2}]},
        {"$addToSet": {"details.a": {"y": 2, "x": 1}}},
        {"a": [{"x": 1, "y": 2}]},
    ),
    (
        {"a": [{"x": 1}]},
        {"$addToSet": {"details.a": {"x": 1, "y": 2}}},
        {"a": [{"x": 1}, {"x": 1, "y": 2}]},
    ),
    ({"a": [1]}, {"$addToSet": {"details.a": 1.0}}, {"a": [1]}),
    ({}, {"$addToSet": {"details.a": {"$each": ["x", "x"]}}}, {"a": ["x"]}),
    # $pull: by value, or by a query of field values; $pullAll.
    ({"a": [1, 2, 1, 3]}, {"$pull": {"details.a": 1}}, {"a": [2, 3]}),
    ({"a": [[1], [2]]}, {"$pull": {"details.a": [1]}}, {"a": [[2]]}),
    (
        {"a": [{"id": 1, "n": "x"}, {"id": 2}, 2, {"id": [1, 3]}]},
        {"$pull": {"details.a": {"id": 1}}},
        {"a": [{"id": 2}, 2]},
    ),
    (
        {"a": [{"id": 1, "ok": True}, {"id": 1, "ok": False}]},
        {"$pull": {"details.a": {"id": 1, "ok": False}}},
        {"a": [{"id": 1, "ok": True}]},
    ),
    # An object without the queried field does not match: it stays (SQL's NULL must not
    # drop it; found by the brute-force model below).
    ({"a": [{}, {"id": 1}, {"n": 0}]}, {"$pull": {"details.a": {"id": 1}}}, {"a": [{}, {"n": 0}]}),
    ({"a": [1, 2, 3, 2]}, {"$pullAll": {"details.a": [2, 3, 9]}}, {"a": [1]}),
    ({"a": 1}, {"$pull": {"details.b": 1}}, {"a": 1}),
    # $pop: 1 the last, -1 the first; nothing on an empty or missing array.
    ({"a": [1, 2, 3]}, {"$pop": {"details.a": 1}}, {"a": [1, 2]}),
    ({"a": [1, 2, 3]}, {"$pop": {"details.a": -1}}, {"a": [2, 3]}),
    ({"a": []}, {"$pop": {"details.a": 1}}, {"a": []}),
    ({}, {"$pop": {"details.a": 1}}, {}),
    # Several operators and paths in one call, applied in the order sent.
    (
        {"n": 1, "a": [1]},
        {
            "$set": {"details.p.q": "r"},
            "$inc": {"details.n": 1},
            "$push": {"details.a": 2},
            "$unset": {"details.gone": 1},
        },
        {"n": 2, "a": [1, 2], "p": {"q": "r"}},
    ),
    (
        {"a": [1]},
        {"$set": {"details.a.1.b": 1, "details.a.3": "x"}},
        {"a": [1, {"b": 1}, None, "x"]},
    ),
    # The whole field: any JSON.
    ({"a": 1}, {"$set": {"details": {"b": [2]}}}, {"b": [2]}),
    ({"a": 1}, {"$unset": {"details": 1}}, {}),
    ([1, 2], {"$push": {"details": 3}}, [1, 2, 3]),
    (5, {"$inc": {"details": 1}}, 6),
]


@pytest.mark.parametrize(("before", "modifier", "after"), METEOR_CASES)
def test_modifiers_give_the_document_meteor_gives(
    backend: DjangoBackend, make_ctx: Any, seeded: str, before: Any, modifier: Any, after: Any
) -> None:
    assert same(model_modify({"details": before}, modifier)["details"], after), "model"
    got = details_after(backend, make_ctx, before, modifier)
    assert same(got, after), got


#: (details before, modifier, error, reason): Mongo's refusals as Meteor reports them.
METEOR_ERRORS: list[tuple[Any, dict[str, Any], int, str]] = [
    (
        {"a": "x"},
        {"$inc": {"details.a": 1}},
        409,
        "Cannot apply $inc modifier to non-number: 'details.a' is a string",
    ),
    (
        {"a": None},
        {"$inc": {"details.a": 1}},
        409,
        "Cannot apply $inc modifier to non-number: 'details.a' is null",
    ),
    (
        {"a": {}},
        {"$push": {"details.a": 1}},
        409,
        "Cannot apply $push modifier to non-array: 'details.a' is an object",
    ),
    (
        {"a": 1},
        {"$addToSet": {"details.a": 1}},
        409,
        "Cannot apply $addToSet modifier to non-array: 'details.a' is a number",
    ),
    (
        {"a": True},
        {"$pull": {"details.a": 1}},
        409,
        "Cannot apply $pull modifier to non-array: 'details.a' is a boolean",
    ),
    (
        {"a": "s"},
        {"$pop": {"details.a": 1}},
        409,
        "Cannot apply $pop modifier to non-array: 'details.a' is a string",
    ),
    (
        {"a": 5},
        {"$set": {"details.a.b": 1}},
        409,
        "Cannot use the part 'b' of 'details.a.b': 'details.a' is a number",
    ),
    (
        {"a": None},
        {"$set": {"details.a.b.c": 1}},
        409,
        "Cannot use the part 'b' of 'details.a.b.c': 'details.a' is null",
    ),
    (
        {"a": [1]},
        {"$set": {"details.a.b": 1}},
        409,
        "Cannot use the part 'b' of 'details.a.b': 'details.a' is an array, indexed by numbers",
    ),
    (
        {"a": [1, "s"]},
        {"$set": {"details.a.1.b": 1}},
        409,
        "Cannot use the part 'b' of 'details.a.1.b': 'details.a.1' is a string",
    ),
    (
        [1],
        {"$set": {"details.x": 1}},
        409,
        "Cannot use the part 'x' of 'details.x': 'details' is an array, indexed by numbers",
    ),
    (
        {},
        {"$set": {"details.a": 1}, "$inc": {"details.a": 1}},
        409,
        "Updating the path 'details.a' would create a conflict at 'details.a'",
    ),
    (
        {},
        {"$set": {"details.a": {}}, "$inc": {"details.a.n": 1}},
        409,
        "Updating the path 'details.a.n' would create a conflict at 'details.a'",
    ),
    (
        # In the order sent: a.3 pads a with nulls first, so a.1 is null when a.1.b comes.
        {"a": [1]},
        {"$set": {"details.a.3": "x", "details.a.1.b": 1}},
        409,
        "Cannot use the part 'b' of 'details.a.1.b': 'details.a.1' is null",
    ),
    (
        {"s": "x", "n": "y"},
        {"$inc": {"details.n": 1, "details.s": 1}},
        409,
        "Cannot apply $inc modifier to non-number: 'details.n' is a string",
    ),
]


@pytest.mark.parametrize(("before", "modifier", "error", "reason"), METEOR_ERRORS)
def test_mongo_refusals_are_meteor_like_errors_and_write_nothing(
    backend: DjangoBackend,
    make_ctx: Any,
    seeded: str,
    before: Any,
    modifier: Any,
    error: int,
    reason: str,
) -> None:
    with pytest.raises(ModelError) as refused:
        model_modify({"details": before}, modifier)
    assert refused.value.error == error
    Book.objects.filter(pk="lathe").update(details=before, title="Before")
    full = {**modifier, "$set": {**modifier.get("$set", {}), "title": "After"}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", full])) == (error, reason)
    book = Book.objects.get(pk="lathe")
    assert (book.details, book.title) == (before, "Before")


segment = st.sampled_from(["a", "b", "0", "1"])
scalar = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["x", "y", 0.5])
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(segment, inner, max_size=3),
    max_leaves=8,
)
document = st.dictionaries(segment, json_value, max_size=4)
key_path = st.lists(segment, min_size=1, max_size=3).map(lambda p: ".".join(["details", *p]))


def arguments(op: str) -> st.SearchStrategy[Any]:
    if op == "$inc":
        return st.integers(-3, 3) | st.just(0.5)
    if op == "$pop":
        return st.sampled_from([1, -1])
    if op in ("$push", "$addToSet"):
        return json_value | st.lists(json_value, max_size=3).map(lambda e: {"$each": e})
    if op == "$pullAll":
        return st.lists(scalar, max_size=3)
    if op == "$pull":
        return scalar | st.dictionaries(
            segment, st.integers(-3, 3) | st.just("x"), min_size=1, max_size=2
        )
    if op == "$unset":
        return st.just("")
    return json_value


@st.composite
def modifiers(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    ops = ["$set", "$unset", "$inc", "$push", "$addToSet", "$pull", "$pullAll", "$pop"]
    modifier: dict[str, dict[str, Any]] = {}
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        modifier.setdefault(op, {})[draw(key_path)] = draw(arguments(op))
    return modifier


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(before=document, modifier=modifiers())
def test_random_modifiers_agree_with_a_brute_force_model(
    backend: DjangoBackend, make_ctx: Any, seeded: str, before: Any, modifier: Any
) -> None:
    """Whatever the document and modifier, the row becomes what the Python model of
    Mongo's update makes of it, or both refuse with the same error and the row stays."""
    try:
        expected: Any = model_modify({"details": before}, modifier)["details"]
    except ModelError as exc:
        expected = exc
    Book.objects.filter(pk="lathe").update(details=before)
    try:
        result = backend.call(make_ctx(), UPDATE, ["lathe", modifier]).result
    except ClientError as exc:
        event(f"refused {exc.error}")
        assert isinstance(expected, ModelError), (exc.error, exc.reason)
        assert exc.error == expected.error, exc.reason
        assert Book.objects.get(pk="lathe").details == before
        return
    event("applied")
    assert not isinstance(expected, ModelError), expected.error
    assert result == 1
    got = Book.objects.get(pk="lathe").details
    assert same(got, expected), (got, expected)


# -- modifiers on columns: numbers, PostgreSQL arrays, all in one UPDATE ----------------------

AT_MOST_5 = "Ensure this value is less than or equal to 5."


def test_one_call_mixes_operators_on_columns_json_and_relations(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    before = Book.objects.get(pk="lathe")
    Book.objects.filter(pk="lathe").update(ratings=[3], details={"likes": 1})
    modifier = {
        "$set": {"title": "Lathe", "details.publisher.city": "Paris"},
        "$inc": {"price": 0.75, "details.likes": 1},
        "$push": {"ratings": {"$each": [5, 4]}},
        "$addToSet": {"tags": {"$each": ["utopia", "new"]}},
    }
    assert backend.call(make_ctx("t"), UPDATE, ["lathe", modifier]).result == 1
    book = Book.objects.get(pk="lathe")
    assert (book.title, book.price, book.ratings) == ("Lathe", Decimal("11.00"), [3, 5, 4])
    assert book.details == {"likes": 2, "publisher": {"city": "Paris"}}
    assert tag_names("lathe") == ["new", "science fiction", "utopia"]
    assert book.updated_at > before.updated_at
    # The published document is what a Meteor client then holds.
    doc = BookCollection().document(book)
    assert (doc["price"], doc["ratings"], doc["details"]) == (
        "11.00",
        [3, 5, 4],
        {"likes": 2, "publisher": {"city": "Paris"}},
    )


@pytest.mark.parametrize(
    ("before", "modifier", "after"),
    [
        ([1, 2], {"$push": {"ratings": 3}}, [1, 2, 3]),
        ([1, 2], {"$push": {"ratings": {"$each": [2, 2]}}}, [1, 2, 2, 2]),
        ([1, 2], {"$addToSet": {"ratings": {"$each": [2, 3, 3]}}}, [1, 2, 3]),
        ([1, 2, 1], {"$pull": {"ratings": 1}}, [2]),
        ([1, 2, 1], {"$pull": {"ratings": "x"}}, [1, 2, 1]),  # no int equals "x"
        ([1, 2, 1], {"$pull": {"ratings": {"a": 1}}}, [1, 2, 1]),  # no element is an object
        ([1, 2, 3], {"$pullAll": {"ratings": [1, 3, "x"]}}, [2]),
        ([1, 2, 3], {"$pop": {"ratings": 1}}, [1, 2]),
        ([1, 2, 3], {"$pop": {"ratings": -1}}, [2, 3]),
        ([], {"$pop": {"ratings": -1}}, []),
        ([1], {"$set": {"ratings": [5, "4"]}}, [5, 4]),
        ([1], {"$unset": {"ratings": 1}}, []),
    ],
)
def test_array_column_modifiers(
    backend: DjangoBackend, make_ctx: Any, seeded: str, before: Any, modifier: Any, after: Any
) -> None:
    Book.objects.filter(pk="lathe").update(ratings=before)
    assert backend.call(make_ctx(), UPDATE, ["lathe", modifier]).result == 1
    assert Book.objects.get(pk="lathe").ratings == after


@pytest.mark.parametrize(
    ("modifier", "error"),
    [
        (
            {"$inc": {"title": 1}},
            (409, "Cannot apply $inc modifier to non-number: 'title' is a string"),
        ),
        (
            {"$inc": {"published": 1}},
            (409, "Cannot apply $inc modifier to non-number: 'published' is a date"),
        ),
        (
            {"$inc": {"authorId": 1}},
            (400, "Field 'authorId' refers to another row: $inc cannot write it"),
        ),
        (
            {"$push": {"authorId": "x"}},
            (400, "Field 'authorId' refers to another row: $push cannot write it"),
        ),
        (
            {"$inc": {"ratings": 1}},
            (409, "Cannot apply $inc modifier to non-number: 'ratings' is an array"),
        ),
        (
            {"$inc": {"tags": 1}},
            (409, "Cannot apply $inc modifier to non-number: 'tags' is an array"),
        ),
        (
            {"$push": {"price": 1}},
            (409, "Cannot apply $push modifier to non-array: 'price' is a number"),
        ),
        (
            {"$pull": {"title": "x"}},
            (409, "Cannot apply $pull modifier to non-array: 'title' is a string"),
        ),
        (
            {"$inc": {"price": 0.001}},
            (400, "price: Ensure that there are no more than 2 decimal places."),
        ),
        ({"$inc": {"price": 10_000_000}}, (409, "numeric field overflow")),
        (
            {"$set": {"ratings.0": 1}},
            (400, "Nested field updates are only supported in JSON fields: 'ratings.0'"),
        ),
        ({"$push": {"ratings": "x"}}, (400, "ratings: 'x': “x” value must be an integer.")),
        ({"$push": {"ratings": True}}, (400, "ratings: True: Unexpected boolean.")),
        (
            {"$push": {"ratings": 7}},
            (
                400,
                f"ratings: Item 2 in the array did not validate: {AT_MOST_5}",
            ),
        ),
        ({"$set": {"ratings": 5}}, (400, "ratings: Expected an array.")),
        ({"$set": {"ratings": [[1]]}}, None),
        (
            {"$set": {"details.when": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}},
            (400, "details: details.when: Only JSON values can be stored here, not a date"),
        ),
        ({"$set": {"details": {"$x": 1}}}, (400, "details: Key $x must not start with '$'")),
        (
            {"$set": {"details.n": 10**400}},
            (400, "details: details.n: Numbers beyond ±1.798e+308 cannot be stored"),
        ),
        (
            {"$inc": {"details.n": Decimal("1e400")}},
            (400, "details.n: $inc by more than ±1.798e+308 is not allowed"),
        ),
        (
            {"$push": {"details.a": {"b.c": 1}}},
            (400, "details: details.a: Key b.c must not contain '.'"),
        ),
        (
            {"$set": {"details": b"raw"}},
            (400, "details: Only JSON values can be stored here, not binary data"),
        ),
    ],
)
def test_column_modifier_errors_write_nothing(
    backend: DjangoBackend, make_ctx: Any, seeded: str, modifier: Any, error: Any
) -> None:
    Book.objects.filter(pk="lathe").update(ratings=[1])
    full = {**modifier, "$set": {**modifier.get("$set", {}), "title": "After"}}
    if "title" in modifier.get("$inc", {}) or "title" in modifier.get("$pull", {}):
        full = modifier  # the same path twice would be a conflict
    got = error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", full]))
    if error is None:
        assert got[0] == 400
    else:
        assert got == error
    book = Book.objects.get(pk="lathe")
    assert (book.title, book.ratings, book.price, book.details) == (
        "The Lathe of Heaven",
        [1],
        Decimal("10.25"),
        {},
    )


def test_inserts_check_json_and_array_fields_too(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    doc = {**DOC, "_id": "mort", "details": {"pages": 243}, "ratings": [4, "5"]}
    assert backend.call(make_ctx("s"), INSERT, [doc]).result == "mort"
    book = Book.objects.get(pk="mort")
    assert (book.details, book.ratings) == ({"pages": 243}, [4, 5])
    for bad, reason in [
        ({"details": {"$where": 1}}, "details: Key $where must not start with '$'"),
        (
            {"details": [dt.date(2020, 1, 1)]},
            "details: Only JSON values can be stored here, not a date",
        ),
        ({"ratings": "5"}, "ratings: Expected an array."),
        ({"ratings": [{"a": 1}]}, "ratings: {'a': 1}: “{'a': 1}” value must be an integer."),
        (
            {"ratings": [9]},
            f"ratings: Item 1 in the array did not validate: {AT_MOST_5}",
        ),
    ]:
        assert error_of(lambda bad=bad: backend.call(make_ctx("s"), INSERT, [{**DOC, **bad}])) == (
            400,
            reason,
        ), bad
    assert Book.objects.count() == 11


def test_hostile_modifiers_are_clear_400s(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    deep_value: Any = 1
    for _ in range(10_000):
        deep_value = {"a": deep_value}
    cases = [
        {"$set": {f"details.k{i}": i for i in range(5000)}},
        {"$set": {".".join(["details"] * 100): 1}},
        {"$push": {"details.a": {"$each": list(range(100_000))}}},
        {"$set": {"details.a": deep_value}},
        {"$pull": {"details.a": {"$where": "sleep(1)"}}},
    ]
    for modifier in cases:
        error, reason = error_of(lambda m=modifier: backend.call(make_ctx(), UPDATE, ["lathe", m]))
        assert error == 400, reason
        assert "at most" in reason or "not supported" in reason or "deeper" in reason, reason
    assert Book.objects.get(pk="lathe").details == {}


def test_padding_cannot_grow_a_value_past_the_bounds(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    """Every path of one small call padding an array to the largest index would write
    6 MB (the example lets anyone update ``details``), and repeated calls would grow it
    without end. One call pads at most MAX_PADDING nulls into a field, and no call leaves
    it over MAX_VALUE_BYTES; a refusal names the field and writes nothing."""
    arrays: dict[str, list[Any]] = {f"details.a{i}": [] for i in range(MAX_OPERATIONS)}
    assert backend.call(make_ctx("s1"), UPDATE, ["lathe", {"$set": arrays}]).result == 1
    before = Book.objects.get(pk="lathe")

    def pad(*arrays: int) -> Any:
        sets = {f"details.a{i}.{MAX_ARRAY_INDEX}": 0 for i in arrays}
        return lambda: backend.call(make_ctx("s2"), UPDATE, ["lathe", {"$set": sets}])

    assert error_of(pad(*range(MAX_OPERATIONS))) == (
        400,
        f"The update would pad arrays of 'details' with {2 * MAX_ARRAY_INDEX} nulls (at"
        f" 'details.a1.{MAX_ARRAY_INDEX}'); at most {MAX_PADDING} (MAX_PADDING)",
    )
    after = Book.objects.get(pk="lathe")
    assert (after.details, after.updated_at) == (before.details, before.updated_at)
    # Call by call, it grows only up to the size bound.
    grown = 0
    while grown < MAX_OPERATIONS:
        try:
            assert pad(grown)().result == 1
        except ClientError as exc:
            assert exc.error == 400
            reason = str(exc.reason)
            assert reason.startswith("The update would make 'details' ")
            assert reason.endswith(f"; at most {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)")
            break
        grown += 1
    # 6 bytes a null ("null, "): the size bound stops it after about 17 calls.
    assert grown == MAX_VALUE_BYTES // (6 * (MAX_ARRAY_INDEX + 1))
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT octet_length(details::text) FROM bookstore_book WHERE id = 'lathe'")
        (stored,) = cursor.fetchone()
    assert stored <= MAX_VALUE_BYTES
    assert [len(a) for a in Book.objects.get(pk="lathe").details.values()] == [
        MAX_ARRAY_INDEX + 1
    ] * grown + [0] * (MAX_OPERATIONS - grown)


# -- relations: a published many-to-many array takes $addToSet and $pull --------------------


def test_addtoset_and_pull_on_tags(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    assert tag_names("dispossessed") == ["hainish", "science fiction", "utopia"]
    add = {"$addToSet": {"tags": {"$each": ["anarchy", "utopia"]}}}
    assert backend.call(make_ctx("t"), UPDATE, ["dispossessed", add]).result == 1
    assert tag_names("dispossessed") == ["anarchy", "hainish", "science fiction", "utopia"]
    pull = {"$pull": {"tags": "hainish"}}
    assert backend.call(make_ctx(), UPDATE, ["dispossessed", pull]).result == 1
    pull_all = {"$pullAll": {"tags": ["utopia", "no such tag"]}}
    assert backend.call(make_ctx(), UPDATE, ["dispossessed", pull_all]).result == 1
    assert tag_names("dispossessed") == ["anarchy", "science fiction"]
    assert Tag.objects.filter(name="hainish").exists()  # unlinked, not deleted
    query = {"$pull": {"tags": {"name": "anarchy"}}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["dispossessed", query]))[0] == 400
    pop = {"$pop": {"tags": 1}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["dispossessed", pop])) == (
        400,
        "Field 'tags' is a set of related rows, kept sorted: $pop is not supported there; use"
        " $set, $addToSet, $pull or $pullAll of values",
    )


# -- deny rules ------------------------------------------------------------------------------


def test_deny_rules_win_over_allow_and_see_meteor_arguments(make_ctx: Any, seeded: str) -> None:
    calls: list[tuple[Any, ...]] = []
    reg = Registry()

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title", "price", "details"]

        def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("allow_insert",))
            return True

        def allow_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            calls.append(("allow_update", fields))
            return True

        def allow_remove(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("allow_remove",))
            return True

        def deny_insert(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("deny_insert", doc))
            return doc.get("title") == "Forbidden"

        def deny_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            calls.append(("deny_update", doc, fields, modifier))
            return "title" in fields

        def deny_remove(self, user: Any, doc: dict[str, Any]) -> bool:
            calls.append(("deny_remove", doc))
            return bool(doc["_id"] == "lathe")

    backend = DjangoBackend(registry=reg)
    modifier = {"$set": {"title": "x", "details.a.b": 1}, "$inc": {"details.n": 1}}
    assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", modifier])) == (
        403,
        "Access denied",
    )
    doc = {"_id": "lathe", "title": "The Lathe of Heaven", "price": "10.25", "details": {}}
    assert calls == [("deny_update", doc, ["title", "details"], modifier)]  # allow not asked
    calls.clear()
    assert backend.call(make_ctx(), UPDATE, ["lathe", {"$inc": {"details.n": 1}}]).result == 1
    assert calls == [
        ("deny_update", doc, ["details"], {"$inc": {"details.n": 1}}),
        ("allow_update", ["details"]),
    ]
    assert error_of(lambda: backend.call(make_ctx(), REMOVE, ["lathe"])) == (403, "Access denied")
    assert backend.call(make_ctx(), REMOVE, ["small-gods"]).result == 1
    new = {"title": "Forbidden", "price": "1"}
    assert error_of(lambda: backend.call(make_ctx("s"), INSERT, [new])) == (403, "Access denied")
    assert calls[-1][0] == "deny_insert"
    assert Book.objects.filter(pk="lathe").exists() and Book.objects.count() == 9


def test_deny_rules_without_allow_rules_deny_everything(make_ctx: Any, seeded: str) -> None:
    reg = Registry()

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title", "details"]

        def deny_update(self, user: Any, doc: Any, fields: Any, modifier: Any) -> bool:
            return False

        def deny_remove(self, user: Any, doc: dict[str, Any]) -> bool:
            return False

    backend = DjangoBackend(registry=reg)
    for name, params in [
        (UPDATE, ["lathe", {"$set": {"title": "x"}}]),
        (REMOVE, ["lathe"]),
        (INSERT, [{"title": "x"}]),
    ]:
        assert error_of(lambda n=name, p=params: backend.call(make_ctx("s"), n, p)) == (
            403,
            "Access denied",
        )
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"


@pytest.mark.parametrize(
    ("modifier", "allowed"),
    [
        ({"$inc": {"price": -10.25}}, True),
        ({"$inc": {"price": -10.26}}, False),
        ({"$set": {"price": "-0.01"}}, False),
        ({"$set": {"price": 0}}, True),
        ({"$inc": {"details.price": -100}}, True),  # not the price: details' own
    ],
)
def test_the_example_denies_a_negative_price(
    backend: DjangoBackend, make_ctx: Any, seeded: str, modifier: Any, allowed: bool
) -> None:
    if allowed:
        assert backend.call(make_ctx(), UPDATE, ["lathe", modifier]).result == 1
    else:
        assert error_of(lambda: backend.call(make_ctx(), UPDATE, ["lathe", modifier])) == (
            403,
            "Access denied",
        )
        assert Book.objects.get(pk="lathe").price == Decimal("10.25")
    assert Book.objects.get(pk="lathe").price >= 0


@pytest.mark.parametrize("price", ["cheap", "NaN", None])
def test_the_example_rule_leaves_non_numbers_to_validation(
    backend: DjangoBackend, make_ctx: Any, seeded: str, price: Any
) -> None:
    error, _ = error_of(
        lambda: backend.call(make_ctx(), UPDATE, ["lathe", {"$set": {"price": price}}])
    )
    assert error == 400


# -- concurrency through the mutator -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_mutator_calls_count_every_one(make_ctx: Any) -> None:
    """Writers on their own connections, each call its own transaction: every $inc, $push
    and $addToSet of the same row counts, and the published row converges."""
    author = Author.objects.create(id="a1", name="A", email="a@example.org")
    Book.objects.create(id="b1", title="T", author=author, price=Decimal("1.00"))
    backend = DjangoBackend()
    writers, writes = 6, 8
    barrier = threading.Barrier(writers)
    failures: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            barrier.wait()
            for i in range(writes):
                modifier = {
                    "$inc": {"details.likes": 1, "price": 1},
                    "$push": {"ratings": 1 + (w + i) % 5},
                    "$addToSet": {"details.readers": f"r{w}", "details.visits": f"{w}-{i}"},
                }
                assert backend.call(make_ctx(), UPDATE, ["b1", modifier]).result == 1
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    book = Book.objects.get(pk="b1")
    total = writers * writes
    assert book.details["likes"] == total
    assert book.price == Decimal(1 + total)
    assert len(book.ratings) == total
    assert sorted(book.details["readers"]) == sorted(f"r{w}" for w in range(writers))
    assert len(book.details["visits"]) == total
