"""Model field values to wire values and back, one field at a time.

Job: the type rules of the published documents, so every collection encodes a given field
type the same way. Outbound values are Python objects that ``relay.protocol.ejson`` can
encode (it does the JSON/EJSON work, including ``$``-key escaping); inbound values are
what mutators receive after EJSON decoding. What must not live here: choosing which
fields are published or renamed (``django_app.collection``), or any database access.

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
FileField                 the stored name (string) or None
ForeignKey / OneToOne     the related primary key, encoded like that key's own field
anything else             the Python value (str, int, float, bool, None)
========================  ===============================================================
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from django_app.conf import DECIMAL_ENCODINGS

__all__ = ["from_wire", "pk_to_wire", "to_wire"]


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
    if isinstance(value, FieldFile):
        return value.name or None
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
