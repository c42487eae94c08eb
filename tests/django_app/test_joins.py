"""Joins on the write side: multi-valued paths (reverse foreign keys, many-to-many) carried
by changes, published as arrays, kept fresh by dependency triggers, and routed in memory
exactly as Django's JOINs filter (checked against PostgreSQL on random data).

The test models live in an isolated app registry (the bookstore has no many-to-many yet);
their tables are created inside each test's transaction. These tests never commit:
``flush_now()`` runs the deferred flush and ``tx_changes`` reads what it wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, models, transaction
from django.db.models import Q
from django.test.utils import CaptureQueriesContext, isolate_apps
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_app.backend import DjangoBackend
from django_app.changes import touch
from django_app.checks import check_collections
from django_app.collection import Collection
from django_app.cursor import Cursor, conditions_for_rule, resolve_lookup_path
from django_app.publications import publish
from django_app.registries import Registry, registry
from django_app.triggers import sync_triggers
from relay.backend import Condition, DecodedChange
from relay.protocol.changestream import Change
from relay.stream.routing import matches
from tests.django_app.changestream_helpers import flush_now, tx_changes
from tests.django_app.publishing import subscribe

_isolated = isolate_apps("django_app")
_isolated.enable()
try:

    class JCategory(models.Model):
        id = models.CharField(primary_key=True, max_length=10)
        name = models.CharField(max_length=20, null=True)

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jcategory"

    class JAuthor(models.Model):
        id = models.CharField(primary_key=True, max_length=10)
        name = models.CharField(max_length=20, default="")

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jauthor"

    class JProfile(models.Model):
        id = models.CharField(primary_key=True, max_length=10)
        author = models.OneToOneField(JAuthor, on_delete=models.CASCADE, related_name="profile")
        bio = models.CharField(max_length=20, null=True)

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jprofile"

    class JTag(models.Model):
        id = models.CharField(primary_key=True, max_length=10)
        name = models.CharField(max_length=20, null=True)
        rank = models.IntegerField(null=True)
        category = models.ForeignKey(
            JCategory, null=True, on_delete=models.SET_NULL, related_name="tags"
        )

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jtag"

    class JBook(models.Model):
        id = models.CharField(primary_key=True, max_length=10)
        title = models.CharField(max_length=50, default="")
        pages = models.IntegerField(default=0)
        price = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("1.50"))
        author = models.ForeignKey(
            JAuthor, null=True, on_delete=models.CASCADE, related_name="books"
        )
        tags = models.ManyToManyField(JTag, related_name="books", db_table="ddp_test_jbook_tags")

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jbook"

    class JLoose(models.Model):
        """A key without an index: a path across it makes every dependent change scan."""

        id = models.CharField(primary_key=True, max_length=10)
        book = models.ForeignKey(JBook, on_delete=models.CASCADE, db_index=False)

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_jloose"

finally:
    _isolated.disable()

Through = JBook.tags.through
MODELS = (JCategory, JAuthor, JProfile, JTag, JBook, JLoose)


class BookCollection(Collection):
    model = JBook
    fields = ["title", "author_id", "price", "tags", "tags__name"]
    rename = {"tags": "tagIds", "tags__name": "tags"}
    related = [
        "tags__rank",
        "tags__category",
        "tags__category__name",
        "author__name",
        "author__profile__bio",
    ]


class AuthorCollection(Collection):
    model = JAuthor
    fields = ["name", "books"]
    rename = {"books": "bookIds"}
    related = ["books__title", "books__tags__name", "profile__bio"]


class TagCollection(Collection):
    model = JTag
    fields = ["name", "books__title", "books__price"]
    rename = {"books__title": "titles", "books__price": "prices"}
    encodings = {"books__price": "number"}


@pytest.fixture
def joins(db: None) -> Iterator[dict[type[models.Model], Collection]]:
    """The test tables, their collections registered and their triggers installed."""
    with connection.schema_editor() as editor:
        for model in MODELS:
            editor.create_model(model)
    with registry.isolated():
        for cls in (BookCollection, AuthorCollection, TagCollection):
            registry.register(cls)
        sync_triggers()
        yield {model: registry.collection_for_model(model) for model in (JBook, JAuthor, JTag)}


class Stream:
    """The decoded changes of one collection this transaction flushed, a batch at a time."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        flush_now()
        self.seen = len(tx_changes(collection.channel))

    def new(self) -> list[DecodedChange]:
        flush_now()
        changes = tx_changes(self.collection.channel)
        fresh, self.seen = changes[self.seen :], len(changes)
        return [self.collection.decode_change(c) for c in fresh]


def _data() -> None:
    cat = JCategory.objects.create(id="c1", name="fiction")
    JCategory.objects.create(id="c2", name=None)
    t1 = JTag.objects.create(id="t1", name="a", rank=1, category=cat)
    t2 = JTag.objects.create(id="t2", name="B", rank=2)
    t3 = JTag.objects.create(id="t3", name="é", rank=None, category_id="c2")
    JTag.objects.create(id="t4", name=None, rank=3)
    ann = JAuthor.objects.create(id="ann", name="Ann")
    JAuthor.objects.create(id="bob", name="Bob")
    JProfile.objects.create(id="p1", author=ann, bio="writes")
    b1 = JBook.objects.create(id="b1", title="One", author=ann)
    b2 = JBook.objects.create(id="b2", title="Two", author=ann)
    JBook.objects.create(id="b3", title="Three", author=None)
    b1.tags.set([t3, t1, t2])
    b2.tags.set([t1])


# -- paths and conditions (no database) ---------------------------------------------------


@pytest.mark.parametrize(
    ("model", "lookup", "key", "relation"),
    [
        (JBook, "tags", "tags", "tags"),
        (JBook, "tags__pk", "tags", "tags"),
        (JBook, "tags__id", "tags", "tags"),
        (JBook, "tags__name", "tags__name", "tags"),
        (JBook, "tags__category", "tags__category_id", "tags"),
        (JBook, "tags__category__name", "tags__category__name", "tags"),
        (JBook, "author__books__title", "author__books__title", "author__books"),
        (JBook, "author__profile__bio", "author__profile__bio", None),
        (JAuthor, "books", "books", "books"),
        (JAuthor, "books__pk", "books", "books"),
        (JAuthor, "books__tags__name", "books__tags__name", "books"),
        (JAuthor, "books__author", "books__author_id", "books"),
        (JAuthor, "profile", "profile", None),
        (JAuthor, "profile__bio", "profile__bio", None),
        (JTag, "books__title", "books__title", "books"),
        (JCategory, "tags__books__author__name", "tags__books__author__name", "tags"),
    ],
)
def test_paths_are_normalised_and_know_their_relation(
    model: type[models.Model], lookup: str, key: str, relation: str | None
) -> None:
    path = resolve_lookup_path(model, lookup.split("__"), many=True)
    assert path is not None
    assert (path.key, path.relation, path.many) == (key, relation, relation is not None)
    if relation is not None:
        assert resolve_lookup_path(model, lookup.split("__")) is None  # many=False refuses


def test_path_shapes() -> None:
    tags = resolve_lookup_path(JBook, ["tags"], many=True)
    assert tags is not None
    # Ends on the through table's key to the tag: no join to the tag table.
    assert [(h.fk.model, h.reverse) for h in tags.hops] == [(Through, True)]
    assert tags.field is Through._meta.get_field("jtag")
    names = resolve_lookup_path(JBook, ["tags", "name"], many=True)
    assert names is not None
    assert [(h.source, h.target, h.reverse, h.many) for h in names.hops] == [
        (JBook, Through, True, True),
        (Through, JTag, False, False),
    ]
    assert names.base_field is JBook._meta.pk
    bio = resolve_lookup_path(JAuthor, ["profile", "bio"])
    assert bio is not None and [(h.reverse, h.many) for h in bio.hops] == [(True, False)]
    for bad in (["tags", "name", "upper"], ["tags", "nope"], ["nope"], ["tags", "name", "x"]):
        assert resolve_lookup_path(JBook, bad, many=True) is None


@pytest.mark.parametrize(
    ("lookups", "expected"),
    [
        ({"tags__name": "a"}, [("tags__name", "exact", "a")]),
        ({"tags": "t1"}, [("tags", "exact", "t1")]),
        ({"tags__in": ["t1", "t2"]}, [("tags", "in", ("t1", "t2"))]),
        ({"tags__isnull": True}, [("tags", "isnull", True)]),
        ({"tags__name": None}, [("tags__name", "exact", None)]),
        ({"tags__rank__gte": "2"}, [("tags__rank", "gte", 2)]),
    ],
)
def test_multi_valued_lookups_become_many_conditions(
    lookups: dict[str, Any], expected: list[tuple[str, str, Any]]
) -> None:
    assert Cursor(JBook, **lookups).conditions == tuple(Condition(*c, many=True) for c in expected)


def test_a_model_instance_stands_for_its_key_on_a_many_path() -> None:
    tag = JTag(id="t9")
    assert Cursor(JBook, tags=tag).conditions == (Condition("tags", "exact", "t9", many=True),)


@pytest.mark.parametrize(
    "lookups",
    [
        {"tags__name": "a", "tags__rank": 1},
        {"tags__rank__gte": 1, "tags__rank__lte": 3},
        {"tags": "t1", "tags__name": "a"},
        {"tags__category__name": "x", "tags__name": "a"},
    ],
)
def test_one_filter_through_one_relation_twice_is_unroutable(lookups: dict[str, Any]) -> None:
    """Django wants the SAME tag to pass both lookups of one filter() call."""
    assert Cursor(JBook, **lookups).conditions is None
    assert conditions_for_rule(JBook, Q(**lookups)) is None


def test_lookups_through_different_relations_stay_routable() -> None:
    assert Cursor(JBook, tags__name="a", author__name="x", title="t").conditions == (
        Condition("tags__name", "exact", "a", many=True),
        Condition("author__name", "exact", "x"),
        Condition("title", "exact", "t"),
    )
    # The author's books and the book's tags are different relations.
    assert Cursor(JBook, tags__name="a", author__books__title="x").conditions is not None
    assert Cursor(JAuthor, books__title="a", books__tags__name="b").conditions is None


# -- declarations -------------------------------------------------------------------------


def test_collections_carry_published_declared_and_path_keys() -> None:
    books = BookCollection()
    assert [p.wire_name for p in books.published] == ["title", "author_id", "price"]
    assert [(p.wire_name, p.path.key) for p in books.published_paths] == [
        ("tagIds", "tags"),
        ("tags", "tags__name"),
    ]
    assert [r.key for r in books.related_paths] == [
        "tags",
        "tags__name",
        "tags__rank",
        "tags__category_id",
        "tags__category__name",
        "author__name",
        "author__profile__bio",
    ]
    assert {"id", "title", "author_id", "tags", "tags__rank"} <= books.routing_keys
    assert "tags" not in books.by_wire_name  # mutators cannot $set an array of a join


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fields": ["author__name"]}, "single-valued path"),
        ({"fields": ["tags__nope"]}, "has no field 'tags__nope'"),
        ({"fields": ["tags", "tags__pk"]}, "published twice"),
        ({"fields": ["tags"], "rename": {"tags__name": "x"}}, "among the published"),
        ({"fields": ["tags__rank"], "encodings": {"tags__rank": "number"}}, "not a Decimal"),
        ({"fields": ["tags", "title"], "rename": {"tags": "title"}}, "must be unique"),
        ({"related": ["tags__name__upper"]}, "is not a field"),
        ({"exclude": ["tags"]}, "has no field 'tags'"),
    ],
)
def test_bad_path_declarations_fail_at_registration(options: dict[str, Any], message: str) -> None:
    bad = type("Bad", (Collection,), {"model": JBook, **options})
    with pytest.raises(ImproperlyConfigured, match=message):
        bad()


# -- what changes carry -------------------------------------------------------------------


def test_changes_decode_exactly_like_the_initial_load(
    joins: dict[type[models.Model], Collection],
) -> None:
    _data()
    for model, collection in joins.items():
        touch(model.objects.all())
        flush_now()
        latest = {c.pk: c for c in tx_changes(collection.channel)}  # the touch's, last
        keys = sorted(collection.routing_keys)
        prepared = collection.prepare_queryset(model.objects.all())
        for instance in prepared:
            decoded = collection.decode_change(latest[instance.pk])
            assert decoded.fields == collection.serialize(instance)[1]
            assert collection.values_of(instance, keys) == tuple(decoded.routing[k] for k in keys)
            # An instance without the annotations reads them with one query, the same SQL.
            plain = model.objects.get(pk=instance.pk)
            with CaptureQueriesContext(connection) as queries:
                assert collection.serialize(plain) == collection.serialize(instance)
            assert len(queries) == (1 if collection.published_paths else 0)
            assert collection.values_of(plain, keys) == collection.values_of(instance, keys)

    books = {b.pk: b for b in joins[JBook].prepare_queryset(JBook.objects.all())}
    one = joins[JBook].serialize(books["b1"])[1]
    # Distinct values sorted by code point ("B" < "a" < "é"), ids encoded like keys.
    assert (one["tags"], one["tagIds"]) == (["B", "a", "é"], ["t1", "t2", "t3"])
    three = joins[JBook].serialize(books["b3"])[1]
    assert (three["tags"], three["tagIds"]) == ([], [])
    routing = joins[JBook].values_of(books["b3"], ["tags", "tags__name", "author__profile__bio"])
    # No related row: the LEFT JOIN's NULL, as Django's isnull sees it.
    assert routing == ((None,), (None,), None)
    assert joins[JBook].values_of(books["b1"], ["tags__rank", "tags__category__name"]) == (
        (None, 1, 2),
        (None, "fiction"),
    )
    tag = joins[JTag].prepare_queryset(JTag.objects.filter(pk="t1")).get()
    assert joins[JTag].serialize(tag)[1] == {
        "name": "a",
        "titles": ["One", "Two"],
        "prices": [1.5],  # distinct values: both books cost 1.50
    }
    with pytest.raises(KeyError, match="not routing keys"):
        joins[JBook].values_of(books["b1"], ["pages"])


def test_a_malformed_array_is_a_decoding_error(
    joins: dict[type[models.Model], Collection],
) -> None:
    with pytest.raises(ValueError, match="not a JSON array"):
        joins[JBook].decode_change(Change("u", "b1", {"tags__name": "a"}))
    decoded = joins[JBook].decode_change(Change("u", "b1", {"title": "x"}))
    assert decoded.fields == {"title": "x"}  # older triggers: absent paths are left out


# -- dependency triggers ------------------------------------------------------------------


def _ids(changes: list[DecodedChange]) -> list[str]:
    return sorted(c.id for c in changes)


def test_through_table_changes_republish_both_ends_once_per_statement(
    joins: dict[type[models.Model], Collection],
) -> None:
    _data()
    books, tags = Stream(joins[JBook]), Stream(joins[JTag])
    b3 = JBook.objects.get(pk="b3")
    b3.tags.add("t1", "t2", "t4")  # one INSERT of three through rows
    (change,) = books.new()
    assert (change.id, change.op, change.fields["tags"], change.fields["tagIds"]) == (
        "b3",
        "u",
        ["B", "a"],
        ["t1", "t2", "t4"],
    )
    assert change.routing["tags__name"] == (None, "B", "a")
    assert _ids(tags.new()) == ["t1", "t2", "t4"]

    b3.tags.remove("t4")
    (change,) = books.new()
    assert change.routing["tags__name"] == ("B", "a")
    assert _ids(tags.new()) == ["t4"]

    Through.objects.filter(jbook_id="b3", jtag_id="t1").update(jtag_id="t3")
    (change,) = books.new()
    assert change.fields["tags"] == ["B", "é"]
    assert _ids(tags.new()) == ["t1", "t3"]  # the old tag and the new one

    b3.tags.clear()
    (change,) = books.new()
    assert (change.fields["tags"], change.fields["tagIds"]) == ([], [])
    assert _ids(tags.new()) == ["t2", "t3"]

    # Foreign keys are checked at commit: a through row may come before its tag.
    Through.objects.create(jbook_id="b3", jtag_id="t9")
    JTag.objects.create(id="t9", name="late")
    assert [c.routing["tags__name"] for c in books.new()] == [(None,), ("late",)]


def test_a_changed_tag_republishes_every_book_that_reaches_it(
    joins: dict[type[models.Model], Collection],
) -> None:
    _data()
    books, authors = Stream(joins[JBook]), Stream(joins[JAuthor])
    JTag.objects.filter(pk="t1").update(name="z")
    assert {c.id: c.fields["tags"] for c in books.new()} == {
        "b1": ["B", "z", "é"],
        "b2": ["z"],
    }
    (author,) = authors.new()  # ann's books__tags__name, once for her two books
    assert (author.id, author.routing["books__tags__name"]) == ("ann", ("B", "z", "é"))

    JTag.objects.filter(pk="t1").update(rank=5)  # read by tags__rank only
    assert _ids(books.new()) == ["b1", "b2"]
    assert authors.new() == []
    JTag.objects.filter(pk="t4").update(name="free")  # on no book
    assert books.new() == [] and authors.new() == []

    JCategory.objects.filter(pk="c1").update(name="poetry")  # tags__category__name
    assert sorted((c.id, c.routing["tags__category__name"]) for c in books.new()) == [
        ("b1", (None, "poetry")),
        ("b2", ("poetry",)),
    ]
    JTag.objects.filter(pk="t2").update(category_id="c1")
    (change,) = books.new()
    assert change.routing["tags__category__name"] == (None, "poetry")

    JTag.objects.filter(pk="t1").delete()  # Django deletes its through rows first
    assert {c.id: c.fields["tags"] for c in books.new()} == {"b1": ["B", "é"], "b2": []}


def test_reverse_foreign_keys_republish_the_old_and_the_new_parent(
    joins: dict[type[models.Model], Collection],
) -> None:
    _data()
    authors = Stream(joins[JAuthor])
    JBook.objects.bulk_create(
        [JBook(id=f"n{i}", title=f"New {i}", author_id="bob") for i in range(3)]
    )
    (change,) = authors.new()  # one statement: one change
    assert (change.id, change.fields["bookIds"]) == ("bob", ["n0", "n1", "n2"])
    assert change.routing["books__title"] == ("New 0", "New 1", "New 2")

    JBook.objects.filter(pk="n0").update(title="Renamed")
    assert [c.routing["books__title"] for c in authors.new()] == [("New 1", "New 2", "Renamed")]
    JBook.objects.filter(pk="n0").update(pages=10)  # a column no path reads
    assert authors.new() == []
    JBook.objects.filter(pk="n0").update(author_id="ann")
    assert {c.id: c.fields["bookIds"] for c in authors.new()} == {
        "ann": ["b1", "b2", "n0"],
        "bob": ["n1", "n2"],
    }
    JBook.objects.filter(author_id="bob").delete()
    (change,) = authors.new()
    assert (change.id, change.fields["bookIds"], change.routing["books"]) == ("bob", [], (None,))

    JProfile.objects.filter(pk="p1").update(bio="paints")  # a reverse one-to-one
    assert [(c.id, c.routing["profile__bio"]) for c in authors.new()] == [("ann", "paints")]
    books = Stream(joins[JBook])
    JProfile.objects.filter(pk="p1").delete()
    assert sorted((c.id, c.routing["author__profile__bio"]) for c in books.new()) == [
        ("b1", None),
        ("b2", None),
        ("n0", None),
    ]
    assert [(c.id, c.routing["profile__bio"]) for c in authors.new()] == [("ann", None)]


def test_triggers_install_idempotently_and_stale_ones_go(
    joins: dict[type[models.Model], Collection],
) -> None:
    assert not sync_triggers().changed
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ddp\\_g\\_dep\\_ddp\\_test\\_%'"
        )
        (count,) = cursor.fetchone()
    assert count > 0 and count % 3 == 0  # insert, delete and update triggers per function
    registry.unregister(JTag)

    @registry.register
    class Tags(Collection):
        model = JTag
        fields = ["name"]

    plan = sync_triggers()
    assert plan.dropped and not any("jtag" in name for name in plan.created if "dep" in name)
    assert not sync_triggers().changed


# -- routing agrees with Django's JOINs ----------------------------------------------------

BOOK_LOOKUPS: list[dict[str, Any]] = [
    {"tags__name": "a"},
    {"tags__name__in": ["a", "B", None]},
    {"tags__name__isnull": True},
    {"tags__name__isnull": False},
    {"tags__name": None},
    {"tags__name__gt": "a"},
    {"tags__name__lte": "B"},
    {"tags": "t1"},
    {"tags__isnull": True},
    {"tags__isnull": False},
    {"tags__in": ["t1", "t3"]},
    {"tags__rank__gte": 2},
    {"tags__rank__lt": 2},
    {"tags__category__name": "fiction"},
    {"tags__category__name__isnull": True},
    {"tags__category__isnull": True},
    {"author__name": "Ann"},
    {"author__profile__bio": "writes"},
    {"author__profile__bio__isnull": True},
    {"tags__name": "a", "author__name": "Bob"},
]
AUTHOR_LOOKUPS: list[dict[str, Any]] = [
    {"books__title": "One"},
    {"books__title__gte": "T"},
    {"books__isnull": True},
    {"books__in": ["b1", "b4"]},
    {"books__tags__name": "a"},
    {"books__tags__name__isnull": True},
    {"books__tags__name__isnull": False},
    {"books__tags__name__in": ["é"]},
    {"profile__bio__isnull": True},
    {"profile__bio": "writes"},
]
#: Two filter() calls: each may reach a different tag, so the conditions are independent.
CHAINED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"tags__name": "a"}, {"tags__rank": 2}),
    ({"tags__name__isnull": True}, {"tags__isnull": False}),
    ({"tags__rank__gte": 3}, {"tags__rank__lte": 1}),
]

NAMES = st.sampled_from(["a", "B", "é", "T", None])
dataset = st.fixed_dictionaries(
    {
        "tags": st.lists(
            st.tuples(NAMES, st.sampled_from([None, 1, 2, 3]), st.sampled_from([None, "c1", "c2"])),
            min_size=1,
            max_size=4,
        ),
        "books": st.lists(
            st.tuples(
                st.sampled_from(["One", "Two", "Zed"]),
                st.sampled_from([None, "ann", "bob"]),
                st.sets(st.integers(0, 3), max_size=3),
            ),
            max_size=5,
        ),
        "bio": st.sampled_from([None, "", "writes"]),
    }
)


def _load(data: dict[str, Any]) -> None:
    JCategory.objects.bulk_create([JCategory(id="c1", name="fiction"), JCategory(id="c2")])
    JAuthor.objects.bulk_create([JAuthor(id="ann", name="Ann"), JAuthor(id="bob", name="Bob")])
    if data["bio"] != "":
        JProfile.objects.create(id="p1", author_id="ann", bio=data["bio"])
    tags = [
        JTag(id=f"t{i}", name=name, rank=rank, category_id=category)
        for i, (name, rank, category) in enumerate(data["tags"], start=1)
    ]
    JTag.objects.bulk_create(tags)
    for i, (title, author, picked) in enumerate(data["books"], start=1):
        book = JBook.objects.create(id=f"b{i}", title=title, author_id=author)
        book.tags.set([tags[j] for j in picked if j < len(tags)])


def _routings(collection: Collection, model: type[models.Model]) -> dict[Any, dict[str, Any]]:
    """Each row's routing values from a change the triggers' SQL built (``touch``)."""
    touch(model.objects.all())
    flush_now()
    latest = {c.pk: c for c in tx_changes(collection.channel)}
    return {pk: collection.decode_change(c).routing for pk, c in latest.items()}


def _routed(routings: dict[Any, dict[str, Any]], conditions: Any) -> set[Any]:
    assert conditions is not None
    for condition in conditions:  # the backend makes any other route unroutable
        assert all(condition.path in routing for routing in routings.values()), condition
    return {pk for pk, routing in routings.items() if matches(conditions, routing)}


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=dataset)
def test_in_memory_routing_agrees_with_djangos_joins(
    joins: dict[type[models.Model], Collection], data: dict[str, Any]
) -> None:
    """On random data, the rows a filter returns from PostgreSQL are exactly those whose
    decoded change matches the filter's conditions in memory."""
    with transaction.atomic():
        _load(data)
        cases = [
            (JBook, BOOK_LOOKUPS, joins[JBook]),
            (JAuthor, AUTHOR_LOOKUPS, joins[JAuthor]),
        ]
        for model, lookups, collection in cases:
            routings = _routings(collection, model)
            for lookup in lookups:
                expected = set(model.objects.filter(**lookup).values_list("pk", flat=True))
                got = _routed(routings, Cursor(model, **lookup).conditions)
                assert got == expected, lookup
        routings = _routings(joins[JBook], JBook)
        for first, second in CHAINED:
            qs = JBook.objects.filter(**first).filter(**second)
            conditions = Cursor(JBook, **first).conditions + Cursor(JBook, **second).conditions
            assert _routed(routings, conditions) == set(qs.values_list("pk", flat=True))
        transaction.set_rollback(True)


def test_prepare_queryset_reads_every_path_in_one_query_and_once_per_row(
    joins: dict[type[models.Model], Collection],
) -> None:
    _data()
    books = joins[JBook]
    for i in range(20):
        JBook.objects.create(id=f"x{i}", title="x", author_id="bob").tags.set(["t1", "t2"])
    with CaptureQueriesContext(connection) as queries:
        documents = [books.serialize(b) for b in books.prepare_queryset(JBook.objects.all())]
    assert len(queries) == 1 and len(documents) == 23
    # Django returns a book once per matching tag; a prepared queryset once per book.
    cursor = Cursor(JBook, tags__name__in=["a", "B"])
    assert len(list(cursor.queryset)) > len(set(cursor.queryset))
    prepared = books.prepare_queryset(cursor.queryset.order_by("pk"))
    assert [b.pk for b in prepared] == sorted({b.pk for b in cursor.queryset})
    window = books.prepare_queryset(cursor.queryset.order_by("pk")[1:4])
    assert [b.pk for b in window] == sorted({b.pk for b in cursor.queryset})[1:4]
    assert books.prepare_queryset(prepared) is not None  # idempotent
    assert books.prepare_queryset(JBook.objects.filter(title="x")).query.distinct is False


def test_a_publication_filtered_across_a_many_to_many_sends_each_book_once(
    joins: dict[type[models.Model], Collection], make_ctx: Any
) -> None:
    """Through the backend, as the relay runs it: routed in memory, one document each."""
    _data()
    reg = Registry()
    for cls in (BookCollection, AuthorCollection, TagCollection):
        reg.register(cls)

    @publish("books.byTags", registry=reg)
    def by_tags(ctx: Any, names: list[str]) -> Any:
        return Cursor(JBook, tags__name__in=names)

    data = subscribe(DjangoBackend(registry=reg), make_ctx(), "books.byTags", [["a", "B"]])
    (route,) = data.routes
    assert route.conditions == (Condition("tags__name", "in", ("a", "B"), many=True),)
    assert sorted((d.id, tuple(d.fields["tags"])) for d in data.documents) == [
        ("b1", ("B", "a", "é")),
        ("b2", ("a",)),
    ]


def test_an_unindexed_key_on_a_path_is_a_warning() -> None:
    reg = Registry()

    @reg.register
    class Books(Collection):
        model = JBook
        fields = ["title"]
        related = ["jloose__id"]

    @reg.register
    class Loose(Collection):
        model = JLoose
        related = ["book__title"]

    messages = check_collections(registry=reg)
    assert [(m.id, m.level) for m in messages] == [("ddp.W004", checks.WARNING)] * 2
    assert "ddp_test_jloose.book_id" in messages[0].msg
