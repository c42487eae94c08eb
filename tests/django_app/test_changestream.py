"""The change stream inside one transaction: trigger output, decoding, routing, installation.

These tests never commit: ``flush_now()`` runs the deferred flush (``SET CONSTRAINTS ALL
IMMEDIATE``) inside the test transaction and reads the changelog row it wrote.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book, Tag
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, models, transaction
from django.db.models import F
from django.test.utils import isolate_apps

from django_app.backend import DjangoBackend
from django_app.checks import check_settings
from django_app.collection import Collection
from django_app.cursor import Cursor
from django_app.publications import publish
from django_app.registries import Registry, registry
from django_app.triggers import sync_triggers
from relay.backend import Condition
from relay.protocol.changestream import Change
from relay.protocol.ids import id_stringify
from tests.django_app.changestream_helpers import BOOKS, flush_now, tx_changes
from tests.django_app.publishing import subscribe

_isolated = isolate_apps("django_app")
_isolated.enable()
try:

    class Everything(models.Model):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4)
        name = models.CharField(max_length=20)
        text = models.TextField(default="")
        count = models.IntegerField(null=True)
        big = models.BigIntegerField(null=True)
        small = models.SmallIntegerField(null=True)
        positive = models.PositiveIntegerField(null=True)
        ratio = models.FloatField(null=True)
        flag = models.BooleanField(null=True)
        when = models.DateTimeField(null=True)
        day = models.DateField(null=True)
        clock = models.TimeField(null=True)
        span = models.DurationField(null=True)
        amount = models.DecimalField(max_digits=8, decimal_places=2, null=True)
        amount_number = models.DecimalField(max_digits=8, decimal_places=3, null=True)
        amount_decimal = models.DecimalField(max_digits=12, decimal_places=4, null=True)
        blob = models.BinaryField(null=True)
        token = models.UUIDField(null=True)
        data = models.JSONField(null=True)
        upload = models.FileField(null=True, blank=True)
        email = models.EmailField(null=True)
        ip = models.GenericIPAddressField(null=True)
        slug = models.SlugField(null=True)
        parent = models.ForeignKey("self", null=True, on_delete=models.SET_NULL)
        secret = models.CharField(max_length=20, default="")

        class Meta:
            app_label = "ddp"
            db_table = "ddp_test_everything"

finally:
    _isolated.disable()


class EverythingCollection(Collection):
    model = Everything
    exclude = ["secret"]
    rename = {"parent_id": "parentId"}
    encodings = {"amount_number": "number", "amount_decimal": "Decimal"}
    related = ["parent__name", "parent__parent__day"]


FULL: dict[str, Any] = {
    "name": "full",
    "text": 'ünïcode "quoted" \\ text',
    "count": -3,
    "big": 2**62,
    "small": 7,
    "positive": 9,
    "ratio": 0.1,
    "flag": True,
    "when": dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC),
    "day": dt.date(2024, 2, 29),
    "clock": dt.time(13, 14, 15, 16),
    "span": dt.timedelta(days=1, seconds=3, microseconds=5),
    "amount": Decimal("12.50"),
    "amount_number": Decimal("1.125"),
    "amount_decimal": Decimal("-0.0001"),
    "blob": b"\x00\x01\xff",
    "token": uuid.UUID("87654321-4321-8765-4321-876543218765"),
    "data": {"f": 1.5, "n": 1, "s": "x", "l": [0.1, {"d": 2.25}], "$date": 3, "z": None},
    "upload": "files/a.txt",
    "email": "a@example.org",
    "ip": "192.168.0.1",
    "slug": "a-slug",
}


@pytest.fixture
def everything(db: None) -> Any:
    """The ``Everything`` table, its collection registered and its triggers installed."""
    with connection.schema_editor() as editor:
        editor.create_model(Everything)
    with registry.isolated():
        registry.register(EverythingCollection)
        sync_triggers()
        yield DjangoBackend()


def assert_decodes_like_initial_load(backend: DjangoBackend, changes: list[Change]) -> None:
    collection = registry.collection_for_model(Everything)
    for change in changes:
        decoded = backend.decode_change(collection.channel, change)
        assert decoded is not None
        instance = Everything.objects.get(pk=change.pk)
        raw_id, fields = collection.serialize(instance)
        assert decoded.collection == "ddp.everything"
        assert decoded.id == id_stringify(raw_id)
        assert decoded.op == change.op
        assert decoded.fields == fields
        for name, value in decoded.fields.items():
            assert type(value) is type(fields[name]), name
        for p in collection.published:
            expected = getattr(instance, p.attname)
            if isinstance(expected, memoryview):  # psycopg2's bytea
                expected = bytes(expected)
            assert decoded.routing[p.attname] == expected, p.attname
        assert decoded.routing["id"] == instance.pk


def test_every_field_type_decodes_like_the_initial_load(everything: DjangoBackend) -> None:
    root = Everything.objects.create(name="root", day=dt.date(1999, 12, 31))
    mid = Everything.objects.create(name="mid", parent=root)
    full = Everything.objects.create(parent=mid, **FULL)
    empty = Everything.objects.create(name="empty")
    flush_now()
    changes = tx_changes("ddp_ddp_everything")
    assert [c.pk for c in changes] == [str(o.pk) for o in (root, mid, full, empty)]
    assert_decodes_like_initial_load(everything, changes)
    decoded = everything.decode_change("ddp_ddp_everything", changes[2])
    assert decoded is not None
    assert decoded.routing["parent__name"] == "mid"
    assert decoded.routing["parent__parent__day"] == dt.date(1999, 12, 31)
    assert decoded.fields["amount_decimal"] == Decimal("-0.0001")
    assert decoded.fields["amount_number"] == 1.125
    assert decoded.fields["when"] == FULL["when"]
    blank = everything.decode_change("ddp_ddp_everything", changes[3])
    assert blank is not None and blank.routing["parent__name"] is None

    # Updates: unchanged rows and unpublished columns publish nothing.
    Everything.objects.filter(pk=full.pk).update(name=F("name"), secret="changed")
    flush_now()
    assert len(tx_changes("ddp_ddp_everything")) == 4
    # The root's name is its child's parent__name; its day is its grandchild's
    # parent__parent__day: both are published again.
    Everything.objects.filter(pk=root.pk).update(day=dt.date(2000, 1, 1), name="root2")
    flush_now()
    latest = tx_changes("ddp_ddp_everything")[4:]
    assert sorted(c.pk for c in latest) == sorted(str(o.pk) for o in (root, mid, full))
    assert_decodes_like_initial_load(everything, latest)
    grandchild = next(c for c in latest if c.pk == str(full.pk))
    assert grandchild.values["parent__parent__day"] == "2000-01-01"

    deleted = everything.decode_change("ddp_ddp_everything", Change("d", str(full.pk), {}))
    assert deleted is not None
    assert (deleted.id, deleted.fields, deleted.routing) == (
        str(full.pk),
        {},
        {"id": full.pk},
    )
    assert everything.decode_change("ddp_nobody_nothing", changes[0]) is None


def test_book_changes_decode_like_subscription_documents(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    with transaction.atomic():
        Book.objects.filter(pk="lathe").update(published=dt.date(1971, 1, 1))
        Book.objects.get(pk="lathe").tags.set([Tag.objects.create(name="sf")])
    flush_now()
    change = [c for c in tx_changes(BOOKS) if c.pk == "lathe"][-1]
    assert change.op == "u"
    decoded = backend.decode_change(BOOKS, change)
    assert decoded is not None
    data = subscribe(backend, make_ctx(), "books.all", [])
    (document,) = [d for d in data.documents if d.id == "lathe"]
    assert (decoded.collection, decoded.id, decoded.fields) == (
        document.collection,
        document.id,
        document.fields,
    )
    book = Book.objects.select_related("author").get(pk="lathe")
    assert decoded.routing["price"] == book.price
    assert isinstance(decoded.routing["price"], Decimal)
    assert decoded.routing["published"] == dt.date(1971, 1, 1)
    assert decoded.routing["author__email"] == book.author.email
    assert decoded.routing["author_id"] == book.author_id


def test_routes_need_declared_paths(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    data = subscribe(backend, make_ctx(), "books.byAuthorEmail", ["x@example.org"])
    assert data.routes[1].conditions == (Condition("author__email", "exact", "x@example.org"),)
    assert set(data.positions) == {"ddp_bookstore_author", BOOKS}

    reg = Registry()

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title"]

    @reg.register
    class Authors(Collection):
        model = Author
        fields = ["name"]
        related = ["email"]

    @publish("by-email", registry=reg)
    def by_email(ctx: Any, email: str) -> Any:
        return [Cursor(Book, author__email=email), Cursor(Author, email=email)]

    private = DjangoBackend(registry=reg)
    routes = subscribe(private, make_ctx(), "by-email", ["x@example.org"]).routes
    assert routes[0].conditions is None  # author__email is not declared on Books
    assert routes[1].conditions == (Condition("email", "exact", "x@example.org"),)


@pytest.mark.parametrize(
    ("related", "message"),
    [
        (["books__title"], "is not a field"),  # Book has no "books"
        (["author__email__upper"], "is not a field"),
        (["author__email__in"], "is not a field"),
        (["nope"], "is not a field"),
        ("author__email", "must be a list"),
    ],
)
def test_bad_related_declarations(related: Any, message: str) -> None:
    class Books(Collection):
        model = Book

    Books.related = related
    with pytest.raises(ImproperlyConfigured, match=message):
        Books()


def test_condition_values_are_normalised() -> None:
    cursor = Cursor(Book, price__gte="10", published="2020-01-02", author__in=["a"])
    assert cursor.conditions == (
        Condition("price", "gte", Decimal("10")),
        Condition("published", "exact", dt.date(2020, 1, 2)),
        Condition("author_id", "in", ("a",)),
    )
    assert isinstance(cursor.conditions[0].value, Decimal)
    with pytest.warns(RuntimeWarning, match="naive datetime"):  # Django's own warning
        naive = Cursor(Book, updated_at__gt=dt.datetime(2020, 1, 1)).conditions
    assert naive is not None and naive[0].value == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def test_sync_is_idempotent_and_drops_stale_triggers(db: None) -> None:
    assert not sync_triggers().changed
    with registry.isolated():
        registry.unregister(Book)
        plan = sync_triggers(dry_run=True)
        assert plan.created == [] and "ddp_g_row_bookstore_book" in plan.dropped
        with pytest.raises(CommandError, match="out of date"):
            call_command("ddp_sync_triggers", "--check", stdout=_Null())
        assert sync_triggers().dropped == plan.dropped
        Book.objects.filter(pk="x").update(title="y")
    plan = sync_triggers()
    assert "ddp_g_row_bookstore_book" in plan.created
    assert not sync_triggers().changed
    call_command("ddp_sync_triggers", "--check", stdout=_Null())


def test_a_stale_function_name_from_the_catalog_is_quoted_when_dropped(db: None) -> None:
    """A function someone else named ``ddp_g_...`` is dropped as a name, never run as SQL."""
    evil = "ddp_g_x() CASCADE; CREATE TABLE ddp_injected (x int); --"
    with connection.cursor() as cursor:
        quoted = '"' + evil.replace('"', '""') + '"'
        cursor.execute(f"CREATE FUNCTION {quoted}() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    plan = sync_triggers()
    assert plan.dropped == [evil]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT to_regclass('ddp_injected'), count(*) FROM pg_proc WHERE proname = %s",
            [evil],
        )
        assert cursor.fetchone() == (None, 0)


def test_retention_setting(settings: Any) -> None:
    assert check_settings() == []
    settings.DDP_CHANGELOG_RETENTION = dt.timedelta(minutes=5)
    assert check_settings() == []
    for bad in (0, -1, "600", True):
        settings.DDP_CHANGELOG_RETENTION = bad
        assert [m.id for m in check_settings()] == ["ddp.E005"]


class _Null:
    def write(self, text: str) -> None:
        pass


def test_prune_command(db: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO ddp_changelog (channel, seq, epoch, txid, changes, created_at)"
            " VALUES ('ddp_x_y', 1, 'e', 1, '[]', now() - interval '1 hour'),"
            " ('ddp_x_y', 2, 'e', 2, '[]', now())"
        )
    out = io.StringIO()
    call_command("ddp_prune_changelog", stdout=out)
    assert out.getvalue() == "deleted 1 changelog rows\n"
    call_command("ddp_prune_changelog", "--older-than", "0", stdout=out)
    assert out.getvalue().endswith("deleted 1 changelog rows\n")
