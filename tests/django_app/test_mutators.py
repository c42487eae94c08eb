"""Meteor collection mutators: /<collection>/insert, update, remove (and ...Async), including
published many-to-many arrays (ids, or names of a unique field)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from bookstore.models import Author, Book, Tag

from django_app import Collection
from django_app.backend import DjangoBackend
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
            ["lathe", {"$inc": {"price": 1}}],
            (400, "Operator $inc is not supported; use $set or $unset"),
        ),
        (
            ["lathe", {"$push": {"tags": "x"}}],
            (400, "Operator $push is not supported; use $set or $unset"),
        ),
        (
            ["lathe", {"$set": {"tags.0": "x"}}],
            (400, "Nested field updates are not supported: 'tags.0'"),
        ),
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
