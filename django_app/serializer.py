"""Model field values to wire values and back, one field at a time.

Job: the type rules of the published documents, so every collection encodes a given field
type the same way. Outbound values are Python objects that ``relay.protocol.ejson`` can
encode (it does the JSON/EJSON work, including ``$``-key escaping); inbound values are
what mutators receive after EJSON decoding. It also owns both ends of the change stream's
column encoding: ``db_json_sql`` (the SQL expression a trigger puts in a change for a
column) and ``from_db_json`` (that JSON value back to the Python value the ORM would load),
so a decoded change serializes exactly like the initial load. The same holds for a
lookup path (``django_app.cursor.LookupPath``): ``path_json_sql`` is the one SQL
expression of a path's value (the triggers put it in changes, ``Collection`` annotates
querysets with it) and ``from_path_json`` reads it back, so the initial documents and the
live changes carry the same values in the same order. What must not live here: choosing
which fields are published or renamed (``django_app.collection``), or any database
access.

A multi-valued path (``tags__name``) is a JSON array of the DISTINCT values the row
reaches through LEFT JOINs, sorted as PostgreSQL sorts the column (text by code point,
``COLLATE "C"``, as Python compares strings), NULL first: a missing related row (a book
without tags) counts as NULL, as in the LEFT JOIN Django builds for ``isnull``.

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
from typing import Any, Final

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from django_app.conf import DECIMAL_ENCODINGS
from django_app.cursor import LookupPath

__all__ = [
    "db_json_sql",
    "from_db_json",
    "from_path_json",
    "from_wire",
    "own_column",
    "path_json_sql",
    "pk_to_wire",
    "quote_name",
    "to_wire",
]

#: Field types whose column is text: multi-valued paths sort them by code point.
_TEXT_TYPES: Final = frozenset(
    {"CharField", "TextField", "SlugField", "EmailField", "URLField", "FilePathField", "FileField"}
)


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


def quote_name(name: str) -> str:
    """A PostgreSQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def own_column(model: type[models.Model], field: models.Field[Any, Any], what: str) -> str:
    """The column of ``field`` in ``model``'s own table (inherited fields live elsewhere);
    ``ImproperlyConfigured`` naming ``what`` otherwise."""
    if field not in model._meta.local_concrete_fields:
        raise ImproperlyConfigured(
            f"{what}: {field.model.__name__}.{field.name} is stored in the table of a parent"
            f" model of {model.__name__} (multi-table inheritance); the change stream can"
            " only read columns of a model's own table."
        )
    return str(field.column)


def path_json_sql(path: LookupPath, base: str, what: str) -> str:
    """The SQL expression of ``path``'s JSON value for one row of its model.

    ``base`` is the SQL of that row's ``path.base_field`` column (``NEW."author_id"``, a
    compiled column, a parameter). A local path is that column's ``db_json_sql``; a
    single-valued path is a scalar subquery (NULL when a key is NULL); a multi-valued
    path is the sorted array described in the module. Raises ``ImproperlyConfigured``
    (naming ``what``) for a column of a parent model's table.
    """
    if not path.hops:
        return db_json_sql(path.field, base)
    tables = []
    for i, hop in enumerate(path.hops, start=1):
        table = quote_name(hop.target._meta.db_table)
        right = f"t{i}.{quote_name(own_column(hop.target, hop.target_field, what))}"
        if i == 1:
            left = base
        else:
            left = f"t{i - 1}.{quote_name(own_column(hop.source, hop.source_field, what))}"
        tables.append((table, f"t{i}", f"{right} = {left}"))
    last = path.hops[-1].target
    column = f"t{len(tables)}.{quote_name(own_column(last, path.field, what))}"
    value = db_json_sql(path.field, column)
    if not path.many:
        first_table, first_alias, first_on = tables[0]
        joins = "".join(f" JOIN {t} {a} ON {on}" for t, a, on in tables[1:])
        return f"(SELECT {value} FROM {first_table} {first_alias}{joins} WHERE {first_on})"
    joins = "".join(f" LEFT JOIN {t} {a} ON {on}" for t, a, on in tables)
    order = column + (
        ' COLLATE "C"' if _value_field(path.field).get_internal_type() in _TEXT_TYPES else ""
    )
    return (
        f"(SELECT jsonb_agg(s.v ORDER BY s.o NULLS FIRST) FROM (SELECT DISTINCT"
        f" to_jsonb({value}) AS v, {order} AS o FROM (SELECT 1) z{joins}) s)"
    )


def from_path_json(path: LookupPath, value: Any) -> Any:
    """The routing value of ``path`` from its JSON form (``path_json_sql``): the value a
    single-valued path's field loads, a tuple of them for a multi-valued path. Raises
    ``ValueError`` for a value of the wrong shape."""
    if not path.many:
        return from_db_json(path.field, value)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{path.key}: {value!r} is not a JSON array")
    return tuple(from_db_json(path.field, v) for v in value)


def _value_field(field: models.Field[Any, Any]) -> models.Field[Any, Any]:
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    return field


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
