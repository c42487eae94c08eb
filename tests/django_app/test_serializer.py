"""Serialization of every field type into document fields (django_app.serializer/collection)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.test.utils import isolate_apps

from django_app.collection import Collection
from django_app.serializer import from_wire, to_wire
from relay.protocol import ejson

_isolated = isolate_apps("django_app")
_isolated.enable()
try:

    class Owner(models.Model):
        id = models.UUIDField(primary_key=True, default=uuid.uuid4)

        class Meta:
            app_label = "ddp"

    class Sink(models.Model):
        name = models.CharField(max_length=20)
        count = models.IntegerField(default=0)
        ratio = models.FloatField(default=0.5)
        flag = models.BooleanField(default=False)
        when = models.DateTimeField(null=True)
        day = models.DateField(null=True)
        clock = models.TimeField(null=True)
        span = models.DurationField(null=True)
        amount = models.DecimalField(max_digits=8, decimal_places=2, null=True)
        blob = models.BinaryField(null=True)
        token = models.UUIDField(null=True)
        data = models.JSONField(default=dict)
        upload = models.FileField(null=True, blank=True)
        owner = models.ForeignKey(Owner, null=True, on_delete=models.CASCADE)
        secret = models.CharField(max_length=20, default="")

        class Meta:
            app_label = "ddp"

finally:
    _isolated.disable()

OWNER = uuid.UUID("12345678-1234-5678-1234-567812345678")


class SinkCollection(Collection):
    model = Sink
    exclude = ["secret"]
    rename = {"owner_id": "ownerId"}


def model_field(name: str) -> models.Field[Any, Any]:
    field = Sink._meta.get_field(name)
    assert isinstance(field, models.Field)
    return field


def make_sink(**overrides: Any) -> Sink:
    values: dict[str, Any] = {
        "pk": 7,
        "name": "sink",
        "count": 3,
        "ratio": 1.5,
        "flag": True,
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "day": dt.date(2024, 1, 2),
        "clock": dt.time(13, 14, 15),
        "span": dt.timedelta(minutes=1, seconds=30),
        "amount": Decimal("1.10"),
        "blob": memoryview(b"\x00\x01\xff"),
        "token": uuid.UUID("87654321-4321-8765-4321-876543218765"),
        "data": {"at": {"$date": 5}, "list": [1, {"$type": "x", "$value": 1}]},
        "upload": "files/a.txt",
        "owner_id": OWNER,
        "secret": "hidden",
    }
    values.update(overrides)
    return Sink(**values)


def test_every_field_type() -> None:
    raw_id, fields = SinkCollection().serialize(make_sink())
    assert raw_id == 7
    assert fields == {
        "name": "sink",
        "count": 3,
        "ratio": 1.5,
        "flag": True,
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "day": dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
        "clock": "13:14:15",
        "span": 90.0,
        "amount": "1.10",
        "blob": b"\x00\x01\xff",
        "token": "87654321-4321-8765-4321-876543218765",
        "data": {"at": {"$date": 5}, "list": [1, {"$type": "x", "$value": 1}]},
        "upload": "files/a.txt",
        "ownerId": str(OWNER),
    }
    assert type(fields["blob"]) is bytes


def test_fields_encode_as_ejson() -> None:
    _, fields = SinkCollection().serialize(make_sink())
    wire = ejson.to_json_value(fields)
    assert wire["when"] == {"$date": 1704164645678}
    assert wire["day"] == {"$date": 1704153600000}  # midnight UTC
    assert wire["blob"] == {"$binary": "AAH/"}
    assert wire["amount"] == "1.10"
    # A JSONField holding $-keys is escaped by EJSON, so the client gets the plain object back.
    assert wire["data"] == {
        "at": {"$escape": {"$date": 5}},
        "list": [1, {"$escape": {"$type": "x", "$value": 1}}],
    }
    assert ejson.from_json_value(wire)["data"] == fields["data"]


def test_pk_and_excluded_fields_are_not_published() -> None:
    _, fields = SinkCollection().serialize(make_sink())
    assert "id" not in fields
    assert "_id" not in fields
    assert "secret" not in fields
    assert "owner_id" not in fields


def test_nulls_stay_null() -> None:
    sink = make_sink(when=None, day=None, clock=None, span=None, amount=None, blob=None)
    _, fields = SinkCollection().serialize(sink)
    assert [fields[k] for k in ("when", "day", "clock", "span", "amount", "blob")] == [None] * 6
    assert SinkCollection().serialize(make_sink(upload=None))[1]["upload"] is None


def test_naive_datetime_is_made_aware_in_default_timezone() -> None:
    sink = make_sink(when=dt.datetime(2024, 1, 2, 3, 4, 5))
    value = SinkCollection().serialize(sink)[1]["when"]
    assert value == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)  # TIME_ZONE = "UTC"


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("string", "1.10"), ("number", 1.1), ("Decimal", Decimal("1.10"))],
)
def test_decimal_encodings(encoding: str, expected: Any) -> None:
    class Encoded(Collection):
        model = Sink
        fields = ["amount"]
        encodings = {"amount": encoding}

    value = Encoded().serialize(make_sink())[1]["amount"]
    assert value == expected
    assert type(value) is type(expected)


def test_decimal_ejson_type() -> None:
    class Encoded(Collection):
        model = Sink
        fields = ["amount"]
        encodings = {"amount": "Decimal"}

    fields = Encoded().serialize(make_sink())[1]
    assert ejson.to_json_value(fields) == {"amount": {"$type": "Decimal", "$value": "1.10"}}


def test_decimal_default_follows_setting(settings: Any) -> None:
    settings.DDP_DECIMAL_ENCODING = "number"
    assert SinkCollection().serialize(make_sink())[1]["amount"] == 1.1


def test_foreign_key_name_or_attname_and_rename() -> None:
    class ByName(Collection):
        model = Sink
        fields = ["owner"]

    class Renamed(Collection):
        model = Sink
        fields = ["owner_id"]
        rename = {"owner": "ownerId"}

    assert ByName().serialize(make_sink())[1] == {"owner_id": str(OWNER)}
    assert Renamed().serialize(make_sink())[1] == {"ownerId": str(OWNER)}


def test_document_has_raw_id() -> None:
    doc = SinkCollection().document(make_sink())
    assert doc["_id"] == 7
    assert doc["ownerId"] == str(OWNER)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"fields": ["nope"]}, "has no field 'nope'"),
        ({"fields": ["id"]}, "published as '_id'"),
        ({"fields": ["name"], "exclude": ["count"]}, "either 'fields' or 'exclude'"),
        ({"encodings": {"count": "string"}}, "not a DecimalField"),
        ({"encodings": {"amount": "float"}}, "is not one of"),
        ({"rename": {"name": "count"}}, "must be unique"),
        ({"rename": {"name": "_id"}}, "must be unique and not '_id'"),
    ],
)
def test_bad_declarations_fail_at_registration(options: dict[str, Any], message: str) -> None:
    bad = type("Bad", (Collection,), {"model": Sink, **options})
    with pytest.raises(ImproperlyConfigured, match=message):
        bad()


def test_collection_needs_a_model() -> None:
    with pytest.raises(ImproperlyConfigured, match="must be a Django model"):
        Collection()


def test_default_names_and_channel() -> None:
    collection = SinkCollection()
    assert collection.collection_name == "ddp.sink"
    assert collection.channel == "ddp_ddp_sink"


@pytest.mark.parametrize(
    ("field_name", "value", "expected"),
    [
        ("day", dt.datetime(2024, 1, 2, tzinfo=dt.UTC), dt.date(2024, 1, 2)),
        (
            "day",
            dt.datetime(2024, 1, 1, 23, tzinfo=dt.timezone(dt.timedelta(hours=-2))),
            dt.date(2024, 1, 2),
        ),
        ("day", "2024-01-02", dt.date(2024, 1, 2)),
        ("amount", "1.10", Decimal("1.10")),
        ("amount", 1.1, Decimal("1.1")),
        ("amount", 3, Decimal(3)),
        ("blob", b"ab", b"ab"),
        (
            "token",
            "87654321-4321-8765-4321-876543218765",
            uuid.UUID("87654321-4321-8765-4321-876543218765"),
        ),
        ("data", {"$date": 1}, {"$date": 1}),
        ("count", 5, 5),
        ("owner", str(OWNER), OWNER),
        ("name", None, None),
    ],
)
def test_from_wire(field_name: str, value: Any, expected: Any) -> None:
    assert from_wire(model_field(field_name), value) == expected


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("amount", "abc"),
        ("amount", True),
        ("amount", "Infinity"),
        ("blob", "ab"),
        ("count", True),
        ("count", "x"),
    ],
)
def test_from_wire_rejects(field_name: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        from_wire(model_field(field_name), value)


def test_to_wire_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unknown decimal encoding"):
        to_wire(model_field("amount"), Decimal(1), "float")
