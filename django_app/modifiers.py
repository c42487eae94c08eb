"""Mongo update modifiers, as Meteor clients send them to ``/<collection>/update``, checked
and compiled to ONE guarded SQL ``UPDATE`` of one row.

Job, in two halves:

* ``parse_modifier(modifier)`` (pure): the operations of a modifier, in the order sent, or
  Meteor's and Mongo's refusals as ``DDPError``: 403 for what Meteor's ``allow-deny``
  refuses (a replacement document, an operator outside Meteor's list), 400 for a modifier
  that is malformed or over the bounds below, 409 for paths that overlap (Mongo's
  "would create a conflict"). ``touched_fields`` gives the ``fieldNames`` of Meteor's
  ``allow``/``deny`` callbacks: each path's first segment, in order.
* ``JsonSteps``/``ArraySteps``/``NumberSteps`` compile the operations of one column into
  SQL over that column's current value, and ``apply_update`` writes them, with any plain
  values, in one ``UPDATE ... WHERE pk = %s AND <no operation fails>``. The new value is
  computed by the database from the row being updated, so two concurrent ``$inc`` (or
  ``$push``, ``$addToSet``) of the same field never lose one, with or without a lock.
  The guard also refuses more than ``MAX_PADDING`` nulls of array padding in a JSON
  column, and a JSON or array column whose new value would be over ``MAX_VALUE_BYTES``,
  so no call writes more than that and repeated calls cannot grow a value past it.
  When the guard fails, one more query says which operation failed and why (409, or
  400 for a bound).

Semantics follow minimongo's ``_modify`` (Meteor's ``packages/minimongo``) and Mongo:

* a JSON column is a document: ``$set`` of ``a.b.c`` creates the missing objects; a
  numeric segment indexes an array (padded with nulls up to the index, like Mongo) or
  names a key of an object; going through a string, number, boolean or null is a 409;
  ``$unset``, ``$pull``, ``$pullAll`` and ``$pop`` of a missing path do nothing;
* ``$inc`` of a missing value sets it; of a non-number is a 409; ``$push``/``$addToSet``
  of a missing value create the array, of a non-array are a 409; ``$push`` and
  ``$addToSet`` take ``$each``; ``$pop`` takes 1 (last) or -1 (first);
* ``$pull`` removes the elements equal to a value, or with a query object
  ``{field: value, ...}`` of plain values the object elements whose fields equal them
  (or, for an array field, contain them); any other query (operators, nested objects,
  dotted keys, null) is a 400;
* equality is jsonb's: numbers by value (``1`` equals ``1.0``), objects regardless of key
  order (jsonb keeps none, where Mongo compares key order too);
* ``$addToSet`` also drops duplicates among its own ``$each`` values when it creates the
  array (Mongo does; minimongo's client stub keeps them);
* numbers in JSON are exact decimals (PostgreSQL ``numeric``): ``0.1 + 0.2`` is ``0.3``,
  where JavaScript's doubles give ``0.30000000000000004``;
* several operations on one column apply in the order sent, each on the result of the
  previous one, as minimongo does; paths of one modifier never overlap (409).

Bounds (hostile input gets a 400 that names the bound): ``MAX_OPERATIONS`` paths in one
modifier, ``MAX_PATH_DEPTH`` segments and ``MAX_PATH_LENGTH`` characters per path,
``MAX_ELEMENTS`` values in one ``$each``/``$pullAll``, ``MAX_QUERY_FIELDS`` fields in a
``$pull`` query, ``MAX_VALUE_DEPTH`` levels of nesting in a value stored in JSON, numbers
in JSON (and ``$inc`` amounts) of at most ``MAX_JSON_NUMBER`` in magnitude, an array
index of at most ``MAX_ARRAY_INDEX`` when it would extend an array. Checked on the row in
the ``UPDATE``'s guard: at most ``MAX_PADDING`` nulls padded into the arrays of one JSON
column by one modifier (all its paths together), and, like Mongo's document size limit, a
new value of a JSON or array column of at most ``MAX_VALUE_BYTES`` as JSON text (UTF-8
bytes, as PostgreSQL prints ``jsonb``; an array column as ``to_jsonb`` prints it). A value
already over it (written by server code) takes a modifier only if the result is within
it. The padding bound keeps every step's intermediate value near the size bound too, so
the database time of one call stays bounded (the size is checked on the final value only).

What must not live here: finding the row, locking it, the ``allow``/``deny`` rules,
published names and relations (``django_app.mutator``), or any Python read-modify-write
of a value a concurrent writer could change in between.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models.expressions import RawSQL

from django_app.exceptions import AccessDenied, DDPError, MatchFailed

__all__ = [
    "ARRAY_OPERATORS",
    "MAX_ARRAY_INDEX",
    "MAX_ELEMENTS",
    "MAX_JSON_NUMBER",
    "MAX_OPERATIONS",
    "MAX_PADDING",
    "MAX_PATH_DEPTH",
    "MAX_PATH_LENGTH",
    "MAX_QUERY_FIELDS",
    "MAX_VALUE_BYTES",
    "MAX_VALUE_DEPTH",
    "ArraySteps",
    "ColumnSteps",
    "JsonSteps",
    "NumberSteps",
    "Operation",
    "PullQuery",
    "apply_update",
    "column_json_type",
    "json_problem",
    "mismatch",
    "parse_modifier",
    "touched_fields",
]

#: The most paths (keys over all operators) one modifier may hold.
MAX_OPERATIONS: Final = 100
#: The most segments in one path (``details.a.b`` has 3).
MAX_PATH_DEPTH: Final = 16
#: The longest path, in characters.
MAX_PATH_LENGTH: Final = 1000
#: The most values in one ``$each`` or ``$pullAll``.
MAX_ELEMENTS: Final = 1000
#: The most fields in one ``$pull`` query object.
MAX_QUERY_FIELDS: Final = 16
#: The deepest nesting of lists and objects in a value stored in a JSON field.
MAX_VALUE_DEPTH: Final = 32
#: The largest array index a write may extend an array to (padding it with nulls).
MAX_ARRAY_INDEX: Final = 10_000
#: The largest magnitude of a number written into JSON (a JavaScript double's): beyond
#: it, increments could grow an integer past the digits Python's ``json`` reads back.
MAX_JSON_NUMBER: Final = Decimal(sys.float_info.max)
#: The largest new value of a JSON or array column a modifier may write, in bytes of its
#: JSON text (Mongo's document limit is 16 MB; a value is republished whole to every
#: subscriber on each change, so it is kept far below that). Without it, padding arrays
#: (``MAX_OPERATIONS`` paths up to ``MAX_ARRAY_INDEX``) turns a 2 KB call into 6 MB.
MAX_VALUE_BYTES: Final = 1 << 20
#: The most nulls one modifier may pad a JSON column's arrays with, over all its paths
#: (one write at ``MAX_ARRAY_INDEX`` of an empty array pads that many).
MAX_PADDING: Final = MAX_ARRAY_INDEX

_NO_REPLACE: Final = (
    "Access denied. In a restricted collection you can only update documents, not replace"
    " them. Use a Mongo update operator, such as '$set'."
)
#: Meteor's ALLOWED_UPDATE_OPERATIONS (allow-deny.js): anything else is its 403.
_METEOR_OPERATORS: Final = frozenset(
    {
        *("$inc", "$set", "$unset", "$addToSet", "$pop"),
        *("$pullAll", "$pull", "$pushAll", "$push", "$bit"),
    }
)
_UNSUPPORTED: Final = {
    "$pushAll": "$pushAll is not supported (MongoDB removed it): use $push with $each",
    "$bit": "$bit is not supported",
}
#: Operators that read an array at their path.
ARRAY_OPERATORS: Final = frozenset({"$push", "$addToSet", "$pull", "$pullAll", "$pop"})
#: minimongo's NO_CREATE_MODIFIERS: a missing path makes them do nothing.
_NO_CREATE: Final = frozenset({"$unset", "$pull", "$pullAll", "$pop"})
_INDEX: Final = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class PullQuery:
    """``$pull``'s query object ``{field: value, ...}``: plain values, no operators."""

    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Operation:
    """One path of one operator. ``argument`` is normalised: ``$push``, ``$addToSet``,
    ``$pullAll`` and an equality ``$pull`` hold a tuple of values, a query ``$pull`` a
    ``PullQuery``, ``$inc`` a number, ``$pop`` 1 or -1, ``$set`` the value as sent,
    ``$unset`` None. ``index`` is its position in the modifier (the first failing one is
    the one reported)."""

    operator: str
    path: tuple[str, ...]
    argument: Any
    index: int

    @property
    def key(self) -> str:
        return ".".join(self.path)


# -- parsing (pure) ------------------------------------------------------------------------


def parse_modifier(modifier: Mapping[str, Any]) -> list[Operation]:
    """The operations of ``modifier`` in the order sent; ``DDPError`` when it is refused."""
    if not modifier:
        raise AccessDenied(_NO_REPLACE)
    for op in modifier:
        if not op.startswith("$"):
            raise AccessDenied(_NO_REPLACE)
        if op not in _METEOR_OPERATORS:
            raise AccessDenied(
                f"Access denied. Operator {op} not allowed in a restricted collection."
            )
    for spec in modifier.values():
        if not isinstance(spec, dict):
            raise MatchFailed()
    total = sum(len(spec) for spec in modifier.values())
    if total > MAX_OPERATIONS:
        raise DDPError(400, f"The modifier has {total} paths; at most {MAX_OPERATIONS} are allowed")
    operations: list[Operation] = []
    for op, spec in modifier.items():
        if op in _UNSUPPORTED:
            raise DDPError(400, _UNSUPPORTED[op])
        for key, arg in spec.items():
            operations.append(Operation(op, _path(key), _argument(op, key, arg), len(operations)))
    _check_conflicts(operations)
    return operations


def touched_fields(operations: Sequence[Operation]) -> list[str]:
    """Meteor's ``fieldNames``: the first segment of each path, once each, in order."""
    return list(dict.fromkeys(op.path[0] for op in operations))


def _path(key: str) -> tuple[str, ...]:
    if key == "":
        raise DDPError(400, "An empty update path is not valid.")
    if len(key) > MAX_PATH_LENGTH:
        raise DDPError(
            400, f"An update path is {len(key)} characters long; at most {MAX_PATH_LENGTH}"
        )
    parts = tuple(key.split("."))
    if len(parts) > MAX_PATH_DEPTH:
        raise DDPError(
            400, f"The update path '{key}' has {len(parts)} parts; at most {MAX_PATH_DEPTH}"
        )
    if not all(parts):
        raise DDPError(
            400,
            f"The update path '{key}' contains an empty field name, which is not allowed.",
        )
    if any(part.startswith("$") for part in parts):
        raise DDPError(400, f"The positional operator is not supported: '{key}'")
    return parts


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _argument(op: str, key: str, arg: Any) -> Any:
    if op == "$inc":
        if not _is_number(arg):
            raise DDPError(400, "Modifier $inc allowed for numbers only")
        return arg
    if op in ("$push", "$addToSet"):
        if isinstance(arg, dict) and "$each" in arg:
            extra = [k for k in arg if k != "$each"]
            if extra:
                raise DDPError(400, f"{op} with {extra[0]} is not supported; only $each is")
            return _elements(arg["$each"], "$each must be an array")
        return (arg,)
    if op == "$pullAll":
        return _elements(arg, "Modifier $pushAll/pullAll allowed for arrays only")
    if op == "$pull":
        if isinstance(arg, dict):
            return _pull_query(key, arg)
        return (arg,)
    if op == "$pop":
        if not _is_number(arg) or arg not in (1, -1):
            raise DDPError(400, f"$pop expects 1 or -1, found: {arg!r}")
        return int(arg)
    if op == "$unset":
        return None
    return arg


def _elements(value: Any, reason: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise DDPError(400, reason)
    if len(value) > MAX_ELEMENTS:
        raise DDPError(400, f"{len(value)} values in one operation; at most {MAX_ELEMENTS}")
    return tuple(value)


def _pull_query(key: str, query: dict[str, Any]) -> PullQuery:
    refused = DDPError(
        400,
        f"$pull of '{key}' with this query is not supported: only a value, or a query"
        " {field: value, ...} of strings, numbers and booleans",
    )
    if not query or len(query) > MAX_QUERY_FIELDS:
        raise refused
    for name, value in query.items():
        if name.startswith("$") or "." in name or not name:
            raise refused
        if not isinstance(value, str | int | float):
            raise refused  # null, objects, arrays: Mongo's matching of those is not mapped
    return PullQuery(tuple(query.items()))


def _check_conflicts(operations: Sequence[Operation]) -> None:
    """Mongo refuses a modifier whose paths overlap: equal, or one inside the other.

    Sorted, a path's extensions follow it directly (anything between a path and one of
    its extensions extends it too), so comparing neighbours finds every overlap."""
    ordered = sorted(operations, key=lambda op: op.path)
    for shorter, longer in itertools.pairwise(ordered):
        if longer.path[: len(shorter.path)] == shorter.path:
            raise DDPError(
                409,
                f"Updating the path '{longer.key}' would create a conflict at '{shorter.key}'",
            )


# -- values ------------------------------------------------------------------------------


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored in a JSON field, or None. Keys follow Mongo's
    rules (no ``$`` first, no ``.``), as minimongo checks them; EJSON dates, binary,
    decimals and custom types are not JSON."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | tuple | dict):
            if depth >= MAX_VALUE_DEPTH:
                return f"Values nested deeper than {MAX_VALUE_DEPTH} levels cannot be stored"
            if isinstance(item, dict):
                for k in item:
                    if not isinstance(k, str):
                        return "Object keys must be strings"
                    if k.startswith("$"):
                        return f"Key {k} must not start with '$'"
                    if "." in k:
                        return f"Key {k} must not contain '.'"
                items = list(item.values())
            else:
                items = list(item)
            stack.extend((v, depth + 1) for v in items)
        elif item is not None and not isinstance(item, str | int | float):
            return f"Only JSON values can be stored here, not {_describe(item)}"
        elif isinstance(item, int) and abs(item) > MAX_JSON_NUMBER:  # a float cannot be
            return f"Numbers beyond ±{float(MAX_JSON_NUMBER):.4g} cannot be stored"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, dt.date | dt.datetime):
        return "a date"
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary data"
    if isinstance(value, Decimal):
        return "a Decimal"
    return f"a {type(value).__name__}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


_ARTICLES: Final = {"array": "an array", "object": "an object", "null": "null"}


def _a(json_type: str) -> str:
    return _ARTICLES.get(json_type, f"a {json_type}")


def mismatch(op: Operation, json_type: str) -> DDPError:
    """409 for ``op`` on a value of the wrong type (``json_type``: jsonb_typeof's word, or
    a column's, like ``date``), with minimongo's words."""
    if op.operator == "$inc":
        return DDPError(
            409, f"Cannot apply $inc modifier to non-number: '{op.key}' is {_a(json_type)}"
        )
    return DDPError(
        409, f"Cannot apply {op.operator} modifier to non-array: '{op.key}' is {_a(json_type)}"
    )


# -- SQL ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sql:
    """SQL text with its ``%s`` parameters, in order."""

    text: str
    params: tuple[Any, ...] = ()


def _sql(template: str, *parts: Sql | str) -> Sql:
    """``template`` with each ``{}`` replaced by the next part (a str is plain SQL)."""
    pieces = template.split("{}")
    if len(pieces) != len(parts) + 1:
        raise ValueError(f"{len(parts)} parts for {template!r}")
    text = [pieces[0]]
    params: list[Any] = []
    for part, piece in zip(parts, pieces[1:], strict=True):
        if isinstance(part, Sql):
            text.append(part.text)
            params.extend(part.params)
        else:
            text.append(part)
        text.append(piece)
    return Sql("".join(text), tuple(params))


def _param(value: Any, cast: str) -> Sql:
    return Sql(f"%s::{cast}", (value,))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ColumnSteps:
    """The operations on one column, each a step over the value the previous one left.

    A step is a few ``LATERAL`` subqueries, each reading the previous ones by alias: its
    error (NULL when it applies, else the text ``"<operation index>|<kind>|<level>|<jsonb
    type>"``), then its new value (the old one where it failed). So the SQL grows linearly
    with the operations however they nest, and no expression that could raise (a cast,
    ``jsonb_set`` on a scalar) runs where its step failed."""

    #: The SQL of the column's value that the first step reads.
    base_template = "{}"
    #: The SQL of the byte size of a value's JSON text (checked against
    #: ``MAX_VALUE_BYTES``), or None for a column whose values cannot grow.
    size_template: str | None = None

    def __init__(self, model: type[models.Model], field: models.Field[Any, Any]) -> None:
        if field not in model._meta.local_concrete_fields:
            raise DDPError(
                400,
                f"Field {field.name!r} is stored in a parent model's table: write it with"
                " $set, or in a method",
            )
        self.field = field
        self.operations: list[Operation] = []
        column = f"{_quote(model._meta.db_table)}.{_quote(str(field.column))}"
        self._from: list[Sql] = [_sql(f"(SELECT {self.base_template} AS v) c0", column)]
        self._count = 0
        self._current = "c0.v"
        self._errors: list[str] = []

    def _let(self, value: Sql) -> str:
        self._count += 1
        alias = f"c{self._count}"
        # OFFSET 0 keeps each step a subquery of its own: flattened, PostgreSQL would
        # substitute a step's expression for every reference to it, exponentially.
        self._from.append(_sql(f"CROSS JOIN LATERAL (SELECT {{}} AS v OFFSET 0) {alias}", value))
        return f"{alias}.v"

    def _step(self, op: Operation, error: Sql | None, new: Sql, *, guarded: bool) -> None:
        """Add a step: ``error`` (NULL when it applies) and ``new`` over ``self._current``.
        ``guarded``: ``new`` is safe to compute even where the step fails."""
        self.operations.append(op)
        old = self._current
        if error is None:
            self._current = self._let(new)
            return
        failed = self._let(error)
        self._errors.append(failed)
        if guarded:
            self._current = self._let(
                _sql(f"CASE WHEN {failed} IS NULL THEN {{}} ELSE {old} END", new)
            )
        else:
            new_ref = self._let(_sql(f"CASE WHEN {failed} IS NULL THEN {{}} END", new))
            self._current = self._let(
                Sql(f"CASE WHEN {failed} IS NULL THEN {new_ref} ELSE {old} END")
            )

    def _select(self, head: str) -> Sql:
        text = " ".join(part.text for part in self._from)
        params = tuple(p for part in self._from for p in part.params)
        return Sql(f"SELECT {head} FROM {text}", params)

    @property
    def value(self) -> Sql:
        """A ``SELECT`` of the column's new value."""
        return self._select(self._current)

    @property
    def error(self) -> Sql:
        """A ``SELECT`` of the first failing step's error, NULL when every step applies
        and the new value is within ``MAX_VALUE_BYTES``."""
        errors = list(self._errors)
        if self.size_template is not None and self.operations:
            # Last in the coalesce: sized only when every step applies (the value written).
            size = self.size_template.format(self._current)
            errors.append(
                f"(SELECT CASE WHEN s.n > {MAX_VALUE_BYTES} THEN"
                f" {self._code(self.operations[0], 'S', 0)} || s.n END FROM (SELECT {size}) s(n))"
            )
        if not errors:
            return Sql("SELECT NULL::text")
        return self._select(f"coalesce({', '.join(errors)})")

    def _code(self, op: Operation, kind: str, level: int) -> str:
        return f"'{op.index}|{kind}|{level}|'"


class NumberSteps(ColumnSteps):
    """``$inc`` of a numeric column: ``column + n`` (a NULL is a 409, as Mongo's null)."""

    def add(self, op: Operation) -> None:
        field = self.field
        amount = op.argument
        if isinstance(field, models.DecimalField):
            amount = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
            exponent = amount.normalize().as_tuple().exponent
            places = -exponent if isinstance(exponent, int) else 0
            if field.decimal_places is not None and places > field.decimal_places:
                raise DDPError(
                    400,
                    f"{op.key}: Ensure that there are no more than {field.decimal_places}"
                    " decimal places.",
                )
            cast = "numeric"
        elif isinstance(field, models.FloatField):
            amount, cast = float(amount), "double precision"
        else:
            if amount != int(amount):
                raise DDPError(400, f"{op.key}: an integer field cannot be incremented by {amount}")
            amount, cast = int(amount), "bigint"
        x = self._current
        error = Sql(f"CASE WHEN {x} IS NULL THEN {self._code(op, 'L', 0)} || 'null' END")
        self._step(op, error, _sql(f"{x} + {{}}", _param(amount, cast)), guarded=True)


class ArraySteps(ColumnSteps):
    """``$push``, ``$addToSet``, ``$pull``, ``$pullAll`` and ``$pop`` of a PostgreSQL
    array column (``ArrayField`` of one dimension). Values are already the Python values
    of the base field (``values``): elements compare with ``IS NOT DISTINCT FROM``."""

    size_template = "octet_length(to_jsonb({})::text)"

    def __init__(
        self, model: type[models.Model], field: models.Field[Any, Any], array_type: str
    ) -> None:
        super().__init__(model, field)
        self._type = array_type

    def add(self, op: Operation, values: Sequence[Any]) -> None:
        x = self._current
        array = _param(list(values), self._type)
        if op.operator == "$push":
            new = _sql(f"{x} || {{}}", array)
        elif op.operator == "$addToSet":
            new = _sql(
                f"{x} || ARRAY(SELECT a.v FROM unnest({{}}) WITH ORDINALITY a(v, i)"
                f" WHERE NOT EXISTS (SELECT 1 FROM unnest({x}) o(v)"
                " WHERE o.v IS NOT DISTINCT FROM a.v)"
                " AND NOT EXISTS (SELECT 1 FROM unnest({}) WITH ORDINALITY b(v, j)"
                " WHERE b.j < a.i AND b.v IS NOT DISTINCT FROM a.v) ORDER BY a.i)",
                array,
                array,
            )
        elif op.operator in ("$pull", "$pullAll"):
            new = _sql(
                f"ARRAY(SELECT o.v FROM unnest({x}) WITH ORDINALITY o(v, i)"
                " WHERE NOT EXISTS (SELECT 1 FROM unnest({}) p(v)"
                " WHERE p.v IS NOT DISTINCT FROM o.v) ORDER BY o.i)",
                array,
            )
        elif op.argument == 1:
            new = Sql(f"({x})[:cardinality({x}) - 1]")
        else:
            new = Sql(f"({x})[2:]")
        error = Sql(f"CASE WHEN {x} IS NULL THEN {self._code(op, 'L', 0)} || 'null' END")
        self._step(op, error, new, guarded=False)


class JsonSteps(ColumnSteps):
    """Every operation on a JSON column, at any path inside it. The column's SQL NULL is
    JSON null (both publish as null)."""

    base_template = "coalesce({}, 'null'::jsonb)"
    size_template = "octet_length(({})::text)"

    def __init__(self, model: type[models.Model], field: models.Field[Any, Any]) -> None:
        super().__init__(model, field)
        #: SQL of the nulls padded into arrays by the steps so far (``MAX_PADDING``).
        self._padded = "0"

    def add(self, op: Operation) -> None:
        """Add ``op`` (its values already checked with ``json_problem``)."""
        if op.operator == "$inc" and abs(Decimal(str(op.argument))) > MAX_JSON_NUMBER:
            raise DDPError(
                400, f"{op.key}: $inc by more than ±{float(MAX_JSON_NUMBER):.4g} is not allowed"
            )
        if op.operator in _NO_CREATE:
            self._no_create(op)
        else:
            self._create(op)

    def _node(self, rel: tuple[str, ...], k: int) -> Sql:
        """The value at the first ``k`` segments of ``rel``: SQL NULL when missing."""
        if k == 0:
            return Sql(self._current)
        return _sql(f"({self._current} #> {{}})", _param(list(rel[:k]), "text[]"))

    def _create(self, op: Operation) -> None:
        rel = op.path[1:]
        n = len(rel)
        whens: list[Sql] = []
        for k, part in enumerate(rel):
            node = self._node(rel, k)
            if _INDEX.fullmatch(part):
                whens.append(
                    _sql(
                        "WHEN jsonb_typeof({}) NOT IN ('object', 'array') THEN"
                        f" {self._code(op, 'T', k)} || jsonb_typeof({{}})",
                        node,
                        node,
                    )
                )
                if int(part) > MAX_ARRAY_INDEX:
                    whens.append(
                        _sql(
                            f"WHEN jsonb_typeof({{}}) = 'array' THEN {self._code(op, 'X', k)}",
                            node,
                        )
                    )
            else:
                whens.append(
                    _sql(
                        "WHEN jsonb_typeof({}) <> 'object' THEN"
                        f" {self._code(op, 'T', k)} || jsonb_typeof({{}})",
                        node,
                        node,
                    )
                )
        pads = [
            _sql(
                "CASE WHEN jsonb_typeof({}) = 'array'"
                f" THEN greatest(0, {int(part)} - jsonb_array_length({{}})) ELSE 0 END",
                self._node(rel, k),
                self._node(rel, k),
            )
            for k, part in enumerate(rel)
            if _INDEX.fullmatch(part) and int(part) <= MAX_ARRAY_INDEX
        ]
        if pads:
            self._padded = self._let(
                _sql(f"{self._padded} + " + " + ".join(["{}"] * len(pads)), *pads)
            )
            whens.append(
                Sql(
                    f"WHEN {self._padded} > {MAX_PADDING} THEN"
                    f" {self._code(op, 'P', 0)} || {self._padded}"
                )
            )
        leaf = self._node(rel, n)
        wanted = {"$inc": "number", "$push": "array", "$addToSet": "array"}.get(op.operator)
        if wanted is not None:
            whens.append(
                _sql(
                    f"WHEN jsonb_typeof({{}}) <> '{wanted}' THEN"
                    f" {self._code(op, 'L', n)} || jsonb_typeof({{}})",
                    leaf,
                    leaf,
                )
            )
        new = self._leaf(op, leaf)
        for k in reversed(range(n)):
            new = _put(self._node(rel, k), rel[k], new)
        error = _sql("CASE " + " ".join(["{}"] * len(whens)) + " END", *whens) if whens else None
        self._step(op, error, new, guarded=False)

    def _leaf(self, op: Operation, leaf: Sql) -> Sql:
        if op.operator == "$set":
            return _param(_json(op.argument), "jsonb")
        if op.operator == "$inc":
            amount = _param(op.argument, "numeric")
            return _sql(
                "CASE WHEN {} IS NULL THEN to_jsonb({}) ELSE to_jsonb(({})::numeric + {}) END",
                leaf,
                amount,
                leaf,
                amount,
            )
        values = _param(_json(list(op.argument)), "jsonb")
        base = _sql("coalesce({}, '[]'::jsonb)", leaf)
        if op.operator == "$push":
            return _sql("{} || {}", base, values)
        return _sql(  # $addToSet
            "{} || (SELECT coalesce(jsonb_agg(a.v ORDER BY a.i), '[]'::jsonb)"
            " FROM jsonb_array_elements({}) WITH ORDINALITY a(v, i)"
            " WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements({}) o(v) WHERE o.v = a.v)"
            " AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements({}) WITH ORDINALITY b(v, j)"
            " WHERE b.j < a.i AND b.v = a.v))",
            base,
            values,
            base,
            values,
        )

    def _no_create(self, op: Operation) -> None:
        rel = op.path[1:]
        n = len(rel)
        x = self._current
        leaf = self._node(rel, n)
        # jsonb's #> also reads '+1', ' 1' or '-1' as array indexes, minimongo does not:
        # the path exists only if every non-numeric segment went through an object.
        checks = [_sql("{} IS NOT NULL", leaf)] + [
            _sql("jsonb_typeof({}) = 'object'", self._node(rel, k))
            for k, part in enumerate(rel)
            if not _INDEX.fullmatch(part)
        ]
        exists = _sql(" AND ".join(["{}"] * len(checks)), *checks)
        path = _param(list(rel), "text[]")
        if op.operator == "$unset":  # never a whole column: that is a plain value
            parent = self._node(rel, n - 1)
            new = _sql(
                "CASE WHEN {} THEN (CASE WHEN jsonb_typeof({}) = 'array'"
                f" THEN jsonb_set({x}, {{}}, 'null'::jsonb) ELSE {x} #- {{}} END) ELSE {x} END",
                exists,
                parent,
                path,
                path,
            )
            self._step(op, None, new, guarded=True)
            return
        error = _sql(
            "CASE WHEN {} AND jsonb_typeof({}) <> 'array' THEN"
            f" {self._code(op, 'L', n)} || jsonb_typeof({{}}) END",
            exists,
            leaf,
            leaf,
        )
        array = self._pulled(op, leaf)
        written = array if n == 0 else _sql(f"jsonb_set({x}, {{}}, {{}})", path, array)
        new = _sql(
            f"CASE WHEN {{}} AND jsonb_typeof({{}}) = 'array' THEN {{}} ELSE {x} END",
            exists,
            leaf,
            written,
        )
        self._step(op, error, new, guarded=True)

    def _pulled(self, op: Operation, leaf: Sql) -> Sql:
        """The array at ``leaf`` after ``$pull``/``$pullAll``/``$pop``."""
        if op.operator == "$pop":
            return _sql("({}) - {}", leaf, "0" if op.argument == -1 else "(-1)")
        if isinstance(op.argument, PullQuery):
            conditions = [
                _sql(
                    "(o.v -> {} = {} OR (jsonb_typeof(o.v -> {}) = 'array'"
                    " AND (o.v -> {}) @> jsonb_build_array({})))",
                    _param(name, "text"),
                    _param(_json(value), "jsonb"),
                    _param(name, "text"),
                    _param(name, "text"),
                    _param(_json(value), "jsonb"),
                )
                for name, value in op.argument.fields
            ]
            matches = _sql(
                "jsonb_typeof(o.v) = 'object' AND " + " AND ".join(["{}"] * len(conditions)),
                *conditions,
            )
        else:
            matches = _sql(
                "EXISTS (SELECT 1 FROM jsonb_array_elements({}) p(v) WHERE p.v = o.v)",
                _param(_json(list(op.argument)), "jsonb"),
            )
        # coalesce: an element without a queried field gives NULL (SQL's unknown), and
        # NOT unknown would drop it; Mongo keeps it (it does not match).
        return _sql(
            "(SELECT coalesce(jsonb_agg(o.v ORDER BY o.i), '[]'::jsonb)"
            " FROM jsonb_array_elements({}) WITH ORDINALITY o(v, i)"
            " WHERE NOT coalesce(({}), false))",
            leaf,
            matches,
        )


def _put(container: Sql, part: str, value: Sql) -> Sql:
    """``container`` (SQL NULL: missing, so a new object) with ``value`` at ``part``:
    an object's key, or for a numeric part of an array, that index, the array padded with
    nulls up to it as Mongo pads. ``value`` appears once, so nesting stays linear."""
    key = _param([part], "text[]")
    if not _INDEX.fullmatch(part) or int(part) > MAX_ARRAY_INDEX:
        return _sql("jsonb_set(coalesce({}, jsonb_build_object()), {}, {})", container, key, value)
    index = int(part)
    padded = _sql(
        "CASE WHEN jsonb_typeof({}) = 'array' THEN {} || (SELECT coalesce(jsonb_agg('null'::jsonb),"
        f" '[]'::jsonb) FROM generate_series(1, {index + 1} - jsonb_array_length({{}})))"
        " ELSE coalesce({}, jsonb_build_object()) END",
        container,
        container,
        container,
        container,
    )
    where = _sql(
        "CASE WHEN jsonb_typeof({}) = 'array' THEN {} ELSE {} END",
        container,
        _param([str(index)], "text[]"),
        key,
    )
    return _sql("jsonb_set({}, {}, {})", padded, where, value)


# -- running -----------------------------------------------------------------------------


def apply_update(
    model: type[models.Model],
    pk: Any,
    values: Mapping[str, Any],
    steps: Sequence[ColumnSteps],
) -> None:
    """``UPDATE`` the row ``pk``: ``values`` (attname -> Python value, as ``QuerySet.update``
    takes them) and each column of ``steps`` computed by the database from the row, in one
    statement that applies only if no step fails. A failing step is a ``DDPError`` (409,
    or 400 for an array index over ``MAX_ARRAY_INDEX``) naming the first one sent; a row
    that is not there is a 409 too (callers find and lock it first); more padding than
    ``MAX_PADDING`` or a new value over ``MAX_VALUE_BYTES`` is a 400 naming its field."""
    rows = model._base_manager.filter(pk=pk)
    update: dict[str, Any] = dict(values)
    for column in steps:
        update[column.field.attname] = RawSQL(
            column.value.text, column.value.params, output_field=column.field
        )
    if not update:
        return
    guarded = rows
    if steps:
        text = " AND ".join(f"({column.error.text}) IS NULL" for column in steps)
        params = tuple(p for column in steps for p in column.error.params)
        guarded = rows.filter(RawSQL(text, params, output_field=models.BooleanField()))
    if guarded.update(**update):
        return
    annotations = {
        f"ddp_error_{i}": RawSQL(
            column.error.text, column.error.params, output_field=models.TextField()
        )
        for i, column in enumerate(steps)
    }
    found = rows.annotate(**annotations).values_list(*annotations).first() if steps else None
    codes = [code for code in found or () if code is not None]
    if not codes:
        raise DDPError(409, "The document changed while it was being updated; try again")
    operations = {op.index: op for column in steps for op in column.operations}
    index, kind, level, json_type = min(
        (int(i), kind, int(level), json_type)
        for i, kind, level, json_type in (code.split("|", 3) for code in codes)
    )
    raise _failure(operations[index], kind, level, json_type)


def _failure(op: Operation, kind: str, level: int, json_type: str) -> DDPError:
    if kind == "L":
        return mismatch(op, json_type)
    if kind == "P":  # json_type holds the nulls padded so far
        return DDPError(
            400,
            f"The update would pad arrays of '{op.path[0]}' with {json_type} nulls (at"
            f" '{op.key}'); at most {MAX_PADDING} (MAX_PADDING)",
        )
    if kind == "S":  # json_type holds the size
        return DDPError(
            400,
            f"The update would make '{op.path[0]}' {json_type} bytes as JSON; at most"
            f" {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)",
        )
    # Segment ``level`` of the path inside the column is ``op.path[level + 1]``.
    part = op.path[level + 1]
    where = ".".join(op.path[: level + 1])
    if kind == "X":
        return DDPError(
            400, f"The array index {part} in '{op.key}' is larger than {MAX_ARRAY_INDEX}"
        )
    if json_type == "array":
        return DDPError(
            409,
            f"Cannot use the part '{part}' of '{op.key}': '{where}' is an array, indexed by"
            " numbers",
        )
    return DDPError(
        409, f"Cannot use the part '{part}' of '{op.key}': '{where}' is {_a(json_type)}"
    )


def column_json_type(field: models.Field[Any, Any]) -> str:
    """The JSON type a column's values have on the wire (for 409 messages)."""
    if isinstance(field, ArrayField):
        return "array"
    if isinstance(field, models.BooleanField):
        return "boolean"
    if isinstance(field, models.DateField | models.DateTimeField):
        return "date"
    if isinstance(field, models.IntegerField | models.FloatField | models.DecimalField):
        return "number"
    if isinstance(field, models.BinaryField):
        return "binary"
    return "string"
