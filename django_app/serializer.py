"""Model field values to wire values and back, one field at a time.

Job: the type rules of the published documents, so every collection encodes a given field
type the same way. Outbound values are Python objects that ``relay.protocol.ejson`` can
encode (it does the JSON/EJSON work, including ``$``-key escaping); inbound values are
what mutators receive after EJSON decoding. It also owns both ends of the change stream's
column encoding: ``db_json_sql`` (the SQL expression a trigger puts in a change for a
column) and ``from_db_json`` (that JSON value back to the Python value the ORM would load),
so a decoded change serializes exactly like the initial load. What must not live here:
choosing which fields are published or renamed (``django_app.collection``), or any
database access.

Outbound rules (``to_wire``):

========================  ===============================================================
DateTimeField             aware ``datetime`` (naive values are made aware in the default
                          time zone) -> EJSON ``$date``
DateField                 ``date`` -> ``datetime`` at midnight UTC -> EJSON ``$date``
TimeField                 ISO string ``"HH:MM:SS[.ffffff]"`` (EJSON has no time type)
DurationField             seconds as a number
DecimalField              per encoding: "string" (default, ``"12.50"``), "number" (float)
                          or "Decimal" (EJSON ``{"$type":"Decimal"}``; needs the
                          ``mongo-decimal`` package on Meteor clients)
BinaryField               ``bytes`` -> EJSON ``$binary``
UUIDField                 canonical string
JSONField                 as is
FileField                 the stored name (string), None when empty
ForeignKey / OneToOne     the related primary key, encoded like that key's own field
anything else             the Python value (str, int, float, bool, None)
========================  ===============================================================
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from django_app.conf import DECIMAL_ENCODINGS

__all__ = ["db_json_sql", "from_db_json", "from_wire", "pk_to_wire", "to_wire"]


def to_wire(field: models.Field[Any, Any], value: Any, decimal_encoding: str) -> Any:
    """Encode ``value`` (as read from a model instance's ``attname``) for publication."""
    if value is None:
        return None
    if isinstance(field, models.ForeignKey):  # includes OneToOneField
        return to_wire(field.target_field, value, decimal_encoding)
    if isinstance(field, models.DateTimeField):
        if timezone.is_naive(value):
            value = timezone.make_aware(value, timezone.get_default_timezone())
        return value
    if isinstance(field, models.DateField):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(field, models.TimeField):
        return value.isoformat()
    if isinstance(field, models.DurationField):
        return value.total_seconds()
    if isinstance(field, models.DecimalField):
        return _decimal_to_wire(value, decimal_encoding)
    if isinstance(field, models.BinaryField):
        return bytes(value)
    if isinstance(field, models.UUIDField):
        return str(value)
    if isinstance(field, models.FileField) or isinstance(value, FieldFile):
        return (value.name if isinstance(value, FieldFile) else value) or None
    return value


def db_json_sql(field: models.Field[Any, Any], column: str) -> str:
    """The SQL expression whose JSON form (``jsonb_build_object``) a change carries.

    ``column`` is the quoted column reference (``NEW."price"``). Most types go as
    PostgreSQL's own JSON form; ``bytea`` goes as hex (independent of ``bytea_output``)
    and ``interval`` as seconds (independent of ``IntervalStyle``).
    """
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    if isinstance(field, models.BinaryField):
        return f"encode({column}, 'hex')"
    if isinstance(field, models.DurationField):
        return f"extract(epoch from {column})"
    return column


def from_db_json(field: models.Field[Any, Any], value: Any) -> Any:
    """The Python value the ORM loads for ``field``, from the JSON form a change carries.

    The JSON was decoded with non-integer numbers as ``Decimal``
    (``relay.protocol.changestream.loads_payload``). Raises ``ValueError`` for a value
    that is not that field's JSON form.
    """
    if value is None:
        return None
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    try:
        return _from_db_json(field, value)
    except (TypeError, ArithmeticError, ValidationError) as exc:
        raise ValueError(f"{field!r}: {value!r} is not its JSON form ({exc})") from None


def _from_db_json(field: models.Field[Any, Any], value: Any) -> Any:
    if isinstance(field, models.DateTimeField):
        parsed = dt.datetime.fromisoformat(value)
        return parsed.astimezone(dt.UTC) if timezone.is_aware(parsed) else parsed
    if isinstance(field, models.DateField):
        return dt.date.fromisoformat(value)
    if isinstance(field, models.TimeField):
        return dt.time.fromisoformat(value)
    if isinstance(field, models.DurationField):
        return dt.timedelta(microseconds=int((Decimal(value) * 1_000_000).to_integral_value()))
    if isinstance(field, models.DecimalField):
        return value if isinstance(value, Decimal) else Decimal(value)
    if isinstance(field, models.FloatField):
        return float(value)
    if isinstance(field, models.BinaryField):
        return bytes.fromhex(value)
    if isinstance(field, models.UUIDField):
        return uuid.UUID(value)
    if isinstance(field, models.JSONField):
        value = _floats(value)
        if field.decoder is not None:
            value = json.loads(json.dumps(value), cls=field.decoder)
        return value
    base_field = getattr(field, "base_field", None)  # contrib.postgres ArrayField
    if isinstance(base_field, models.Field) and isinstance(value, list):
        return [_from_db_json(base_field, v) if v is not None else None for v in value]
    return value


def _floats(value: Any) -> Any:
    """JSON as ``json.loads`` gives it: Decimals (from ``loads_payload``) become floats."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def pk_to_wire(value: Any) -> str | int:
    """The raw ``_id`` of a document: a string, or an int for integer keys.

    ``relay.protocol.ids.id_stringify`` turns it into the wire ``id``; UUID keys become
    their canonical string.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def _decimal_to_wire(value: Decimal, encoding: str) -> Any:
    if encoding == "string":
        return str(value)
    if encoding == "number":
        return float(value)
    if encoding == "Decimal":
        return value
    raise ValueError(f"unknown decimal encoding {encoding!r}; use one of {DECIMAL_ENCODINGS}")


def from_wire(field: models.Field[Any, Any], value: Any) -> Any:
    """Decode a client-sent (EJSON-decoded) value into the Python value for ``field``.

    Raises ``ValidationError`` when the value cannot be converted; the caller turns that
    into a 400 error.
    """
    if value is None:
        return None
    if isinstance(field, models.ForeignKey):
        return from_wire(field.target_field, value)
    if isinstance(field, models.DateTimeField):
        if isinstance(value, dt.datetime):
            return value
        return field.to_python(value)
    if isinstance(field, models.DateField):
        # Dates travel as midnight UTC (see to_wire); take the UTC calendar day back.
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).date() if timezone.is_aware(value) else value.date()
        return field.to_python(value)
    if isinstance(field, models.DecimalField):
        return _decimal_from_wire(value)
    if isinstance(field, models.BinaryField):
        if isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
        raise ValidationError("Expected binary data.", code="invalid")
    if isinstance(field, models.UUIDField):
        if isinstance(value, uuid.UUID):
            return value
        return field.to_python(value)
    if isinstance(field, models.JSONField):
        return value
    if isinstance(value, bool) and not isinstance(field, models.BooleanField):
        raise ValidationError("Unexpected boolean.", code="invalid")
    return field.to_python(value)


def _decimal_from_wire(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValidationError("Expected a decimal number.", code="invalid")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation as exc:
        raise ValidationError("Expected a decimal number.", code="invalid") from exc
    if not number.is_finite():
        raise ValidationError("Expected a finite decimal number.", code="invalid")
    return number
