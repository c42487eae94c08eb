"""Meteor's collection mutators: ``/<collection>/insert``, ``update`` and ``remove``.

Job: what a stock Meteor client calls when app code does ``Books.insert(doc)``,
``Books.update(id, {$inc: ...})`` or ``Books.remove(id)`` (and the ``...Async`` aliases),
checked against the collection's ``deny_*`` and ``allow_*`` rules with Meteor's own errors:

* every collection answers its mutator names; rules deny by default, so a collection
  that allows nothing answers 403 "Access denied" (Meteor without ``insecure``); a
  ``deny_*`` rule is asked first, and True refuses whatever ``allow_*`` says (allow is
  then not asked), as in Meteor's allow-deny.js;
* ``insert`` without ``_id`` takes the id from the invocation's seeded stream
  ``/collection/<name>``, the id the client's stub already shows; with ``_id`` it uses it
  (the rules see it);
* ``update``/``remove`` take an id or ``{"_id": id}`` (anything else: 403 "Not permitted.
  Untrusted code may only update documents by ID."), find the row among those the user
  may see (``visible``), lock it, and return 0 when there is none, else 1;
* ``update`` takes Mongo modifiers (``django_app.modifiers`` parses them, with Meteor's
  403 for a replacement document or an operator it refuses, and compiles them): the
  rules get ``fields``, each path's first segment as Meteor's ``fieldNames``; then a
  top-level ``$set``/``$unset`` is a plain value, and every other operation (``$inc`` of
  a number column, array operators on an ``ArrayField``, anything inside a JSON field
  by dotted path) a value the database computes from the row; all of them, with the
  ``auto_now`` columns, go in ONE guarded ``UPDATE`` of the row;
* model validation (``full_clean``) failures are 400 with the messages: of the plain
  values before the write, of the computed columns after it (in the transaction, so a
  failure writes nothing); database integrity and data errors are 409, as Meteor reports
  Mongo errors.

Only published fields can be written, and among the published arrays
(``Collection.published_paths``) only two shapes, both written after the row, in the
mutator's transaction (``$set``: replacing the relation's rows; ``$unset``: none;
``$addToSet``: adding rows; ``$pull``/``$pullAll``: removing those named):

* a many-to-many field (``"tags"``, either side of the relation): the array of the related
  rows' ids, which must exist (400 otherwise): ``manager.set(rows)``;
* a path of ONE many-to-many hop ending on a unique, non-relation field of the related
  model (``"tags__name"``): the array of values; each value names the related row with
  it, created (validated with ``full_clean``) when missing, then ``manager.set(rows)``.

Any other array (a reverse foreign key, a longer path, a non-unique field, a relation
with its own ``through`` model) is a 400 that says so. The rules see the whole document
or modifier, arrays included.

Where it sits: below the registry, which answers every mutator name with a ``Mutator``.
A mutator is not declared with ``@method`` (``django_app.methods``): it has the same shape
(``name``, ``is_atomic``, ``run``: the registry's ``RegisteredMethod`` protocol) but no
function or parameter signature of its own. What must not live here: the rules themselves
(``Collection.allow_*``/``deny_*``), the modifier semantics and their SQL
(``django_app.modifiers``), the transaction around the whole call (the backend's), or any
registry lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import DataError, IntegrityError, connections, models, router, transaction

from django_app.collection import Collection, PublishedField, PublishedPath
from django_app.conf import ddp_settings
from django_app.exceptions import AccessDenied, DDPError, MatchFailed
from django_app.modifiers import (
    ARRAY_OPERATORS,
    ArraySteps,
    ColumnSteps,
    JsonSteps,
    NumberSteps,
    Operation,
    PullQuery,
    apply_update,
    column_json_type,
    json_problem,
    mismatch,
    parse_modifier,
    touched_fields,
)
from django_app.serializer import from_wire, pk_to_wire
from django_app.signature import storable

if TYPE_CHECKING:
    from django_app.context import MethodContext

__all__ = ["MUTATOR_OPERATIONS", "Mutator"]

#: Mutator method suffixes and the operation each performs (Meteor's allow-deny.js names).
MUTATOR_OPERATIONS: Final = {
    "insert": "insert",
    "update": "update",
    "remove": "remove",
    "insertAsync": "insert",
    "updateAsync": "update",
    "removeAsync": "remove",
}

#: Stands for a value a column cannot hold (a ``$pull`` of it removes nothing).
_MISSING: Final = object()


class Mutator:
    """The mutator method ``name`` of ``collection``, performing ``operation``."""

    def __init__(self, name: str, collection: Collection, operation: str) -> None:
        self.name = name
        self.collection = collection
        self.operation = operation

    @property
    def is_atomic(self) -> bool:
        """Like a method without ``atomic=``: ``settings.DDP_ATOMIC_METHODS`` decides.

        ``run`` opens its own atomic block on the model's database either way, so one
        mutator call is all or nothing.
        """
        return ddp_settings.ATOMIC_METHODS

    def run(self, ctx: MethodContext, params: Sequence[Any]) -> Any:
        if not storable(params):
            raise MatchFailed()  # a NUL, an unpaired surrogate or a non-finite number
        model = self.collection.model
        with transaction.atomic(using=router.db_for_write(model)):
            try:
                if self.operation == "insert":
                    return _insert(self.collection, ctx, params)
                if self.operation == "update":
                    return _update(self.collection, ctx, params)
                return _remove(self.collection, ctx, params)
            except ValidationError as exc:
                raise DDPError.from_validation_error(exc, _wire_names(self.collection)) from exc
            except (IntegrityError, DataError) as exc:
                # Meteor reports Mongo's errors as 409; a value the database refuses
                # (an $inc past the column's range, say) is one of those.
                raise DDPError(409, str(exc).strip().splitlines()[0]) from exc

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def _insert(collection: Collection, ctx: MethodContext, params: Sequence[Any]) -> Any:
    if not params or not isinstance(params[0], dict):
        raise MatchFailed()
    sent: dict[str, Any] = params[0]
    model = collection.model
    pk_field = model._meta.pk
    assert pk_field is not None
    doc = dict(sent)
    kwargs: dict[str, Any] = {}
    if "_id" in sent:
        raw_id = _client_id(pk_field, sent["_id"])
        kwargs[pk_field.attname] = raw_id
    elif _is_string_key(pk_field):
        raw_id = ctx.new_id(collection.collection_name)
        kwargs[pk_field.attname] = raw_id
        doc = {"_id": raw_id, **sent}
    if collection.deny_insert(ctx.user, doc) or not collection.allow_insert(ctx.user, doc):
        raise AccessDenied()
    relations: list[tuple[_RelationWrite, list[Any]]] = []
    for wire_name, value in sent.items():
        if wire_name == "_id":
            continue
        published = _published(collection, wire_name)
        if isinstance(published, PublishedPath):
            write = _relation_write(collection, published)
            relations.append((write, write.decode(value)))
        else:
            kwargs[published.attname] = _decode(published, value)
    instance = model(**kwargs)
    instance.full_clean()
    instance.save(force_insert=True)
    for write, values in relations:
        write.apply(instance, values)
    return pk_to_wire(instance.pk)


def _update(collection: Collection, ctx: MethodContext, params: Sequence[Any]) -> int:
    if len(params) < 2 or not isinstance(params[1], dict):
        raise MatchFailed()
    selector, modifier = params[0], params[1]
    options = params[2] if len(params) > 2 and params[2] is not None else {}
    if not isinstance(options, dict):
        raise MatchFailed()
    raw_id = _selector_id(selector, "update")
    if options.get("upsert"):
        raise AccessDenied("Access denied. Upserts not allowed in a restricted collection.")
    operations = parse_modifier(modifier)
    instance = _find(collection, ctx, raw_id)
    if instance is None:
        return 0
    doc = collection.document(instance)
    touched = touched_fields(operations)
    if collection.deny_update(ctx.user, doc, list(touched), modifier) or not (
        collection.allow_update(ctx.user, doc, list(touched), modifier)
    ):
        raise AccessDenied()
    plan = _UpdatePlan(collection, instance)
    for op in operations:
        plan.add(op)
    plan.run()
    return 1


class _UpdatePlan:
    """One ``update``: plain values set by the ORM, columns computed by the database
    (``django_app.modifiers``), and relation writes after the row, in that order."""

    def __init__(self, collection: Collection, instance: models.Model) -> None:
        self.collection = collection
        self.instance = instance
        self.values: dict[models.Field[Any, Any], Any] = {}
        self.steps: dict[models.Field[Any, Any], ColumnSteps] = {}
        self.relations: list[tuple[_RelationWrite, str, list[Any]]] = []

    def add(self, op: Operation) -> None:
        wire_name = op.path[0]
        if wire_name == "_id":
            raise DDPError(400, "The _id of a document cannot be changed")
        published = _published(self.collection, wire_name)
        if isinstance(published, PublishedPath):
            self._relation(op, published)
            return
        field = published.field
        is_json = isinstance(field, models.JSONField)
        if len(op.path) > 1 and not is_json:
            raise DDPError(
                400, f"Nested field updates are only supported in JSON fields: {op.key!r}"
            )
        if len(op.path) == 1 and op.operator in ("$set", "$unset"):
            self.values[field] = self._plain(op, published)
        elif is_json:
            self._json(op, published)
        elif isinstance(field, ArrayField):
            self._array(op, published)
        elif op.operator == "$inc" and _is_numeric(field):
            steps = self.steps.get(field)
            if steps is None:
                steps = self.steps[field] = NumberSteps(self.collection.model, field)
            assert isinstance(steps, NumberSteps)
            steps.add(op)
        elif field.is_relation:
            raise DDPError(
                400, f"Field {op.key!r} refers to another row: {op.operator} cannot write it"
            )
        else:
            raise mismatch(op, column_json_type(field))

    def _plain(self, op: Operation, published: PublishedField) -> Any:
        field = published.field
        if op.operator == "$set":
            return _decode(published, op.argument)
        if field.null:
            return None
        if field.has_default():
            return field.get_default()
        raise DDPError(400, f"Field {op.key!r} cannot be unset")

    def _json(self, op: Operation, published: PublishedField) -> None:
        field = published.field
        values: tuple[Any, ...] = ()
        if op.operator == "$set":
            values = (op.argument,)
        elif isinstance(op.argument, tuple):
            values = op.argument
        for value in values:
            problem = json_problem(value)
            if problem is not None:
                raise ValidationError({field.name: [f"{op.key}: {problem}"]})
        steps = self.steps.get(field)
        if steps is None:
            steps = self.steps[field] = JsonSteps(self.collection.model, field)
        assert isinstance(steps, JsonSteps)
        steps.add(op)

    def _array(self, op: Operation, published: PublishedField) -> None:
        field = published.field
        if op.operator not in ARRAY_OPERATORS:
            raise mismatch(op, "array")
        base = _array_base(published)
        if op.operator == "$pop":
            values: list[Any] = []
        elif isinstance(op.argument, PullQuery):
            values = []  # elements of a one-dimensional array are never objects
        elif op.operator in ("$pull", "$pullAll"):
            # A value the column cannot hold equals none of its elements.
            values = [
                v for v in map(partial(_element_or_missing, base), op.argument) if v is not _MISSING
            ]
        else:
            values = [_element(published, base, v) for v in op.argument]
        connection = connections[router.db_for_write(self.collection.model)]
        prepared = field.get_db_prep_value(values, connection, prepared=False)
        steps = ArraySteps(self.collection.model, field, str(field.db_type(connection)))
        steps.add(op, prepared)
        self.steps[field] = steps

    def _relation(self, op: Operation, published: PublishedPath) -> None:
        write = _relation_write(self.collection, published)
        if len(op.path) > 1:
            raise DDPError(
                400, f"Nested field updates are only supported in JSON fields: {op.key!r}"
            )
        if op.operator == "$set":
            self.relations.append((write, "set", write.decode(op.argument)))
        elif op.operator == "$unset":
            self.relations.append((write, "set", []))
        elif op.operator == "$addToSet":
            self.relations.append((write, "add", write.decode(list(op.argument))))
        elif op.operator in ("$pull", "$pullAll") and not isinstance(op.argument, PullQuery):
            self.relations.append((write, "remove", write.decode(list(op.argument))))
        elif op.operator == "$inc":
            raise mismatch(op, "array")
        else:
            raise DDPError(
                400,
                f"Field {op.key!r} is a set of related rows, kept sorted: {op.operator} is not"
                " supported there; use $set, $addToSet, $pull or $pullAll of values",
            )

    def run(self) -> None:
        instance = self.instance
        opts = self.collection.model._meta
        plain = {f.name for f in self.values}
        for field, value in self.values.items():
            setattr(instance, field.attname, value)
        if plain:
            instance.full_clean(
                exclude=[f.name for f in opts.concrete_fields if f.name not in plain]
            )
        values = {f.attname: v for f, v in self.values.items()}
        for field in opts.concrete_fields:
            if getattr(field, "auto_now", False):
                values[field.attname] = field.pre_save(instance, add=False)
        apply_update(self.collection.model, instance.pk, values, list(self.steps.values()))
        if self.steps:
            # The database computed these: validate what it stored (a $push past a
            # validator, say); a failure rolls the whole mutator back.
            computed = [f.attname for f in self.steps]
            instance.refresh_from_db(fields=computed)
            names = {f.name for f in self.steps}
            instance.full_clean(
                exclude=[f.name for f in opts.concrete_fields if f.name not in names]
            )
        for write, action, rows in self.relations:
            write.apply(instance, rows, action)


def _remove(collection: Collection, ctx: MethodContext, params: Sequence[Any]) -> int:
    if not params:
        raise MatchFailed()
    raw_id = _selector_id(params[0], "remove")
    instance = _find(collection, ctx, raw_id)
    if instance is None:
        return 0
    doc = collection.document(instance)
    if collection.deny_remove(ctx.user, doc) or not collection.allow_remove(ctx.user, doc):
        raise AccessDenied()
    instance.delete()
    return 1


def _selector_id(selector: Any, operation: str) -> str | int:
    """The id of a Meteor id selector (``"id"``, ``5`` or ``{"_id": id}``), else 403."""
    if isinstance(selector, dict) and selector.keys() == {"_id"}:
        selector = selector["_id"]
    if isinstance(selector, str | int) and not isinstance(selector, bool):
        return selector
    raise DDPError(403, f"Not permitted. Untrusted code may only {operation} documents by ID.")


def _find(collection: Collection, ctx: MethodContext, raw_id: str | int) -> models.Model | None:
    """The visible row with this id, locked for the rest of the transaction, or None."""
    pk_field = collection.model._meta.pk
    assert pk_field is not None
    try:
        pk = pk_field.to_python(raw_id)
    except ValidationError:
        return None
    return collection.queryset(ctx.user).select_for_update().filter(pk=pk).first()


def _client_id(pk_field: models.Field[Any, Any], raw: Any) -> Any:
    """A client-chosen ``_id``: a non-empty string (or an int for integer keys)."""
    if _is_string_key(pk_field):
        if not isinstance(raw, str) or not raw:
            raise DDPError(400, "Meteor requires document _id fields to be non-empty strings")
        return raw
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise DDPError(400, "Invalid _id")
    return pk_field.to_python(raw)


def _is_string_key(pk_field: models.Field[Any, Any]) -> bool:
    return isinstance(pk_field, models.CharField | models.TextField)


def _is_text(field: models.Field[Any, Any]) -> bool:
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    return isinstance(field, models.CharField | models.TextField)


def _published(collection: Collection, wire_name: str) -> PublishedField | PublishedPath:
    published = collection.by_wire_name.get(wire_name)
    if published is not None:
        return published
    for path in collection.published_paths:
        if path.wire_name == wire_name:
            return path
    raise DDPError(400, f"Unknown field {wire_name!r}")


@dataclass(frozen=True, slots=True)
class _RelationWrite:
    """How a published array is written: the many-to-many relation it replaces, and
    whether its values are the related rows' ids (``by`` None) or values of their unique
    field ``by``."""

    wire_name: str
    #: The instance attribute holding the relation's manager (``tags``, ``book_set``).
    accessor: str
    related: type[models.Model]
    by: models.Field[Any, Any] | None

    def decode(self, value: Any) -> list[Any]:
        """The distinct Python values of a sent array, in order; a ``ValidationError``
        (keyed by the wire name) for anything else. Reads nothing."""
        if not isinstance(value, list):
            raise ValidationError({self.wire_name: ["Expected an array."]})
        field = self.by if self.by is not None else self.related._meta.pk
        assert field is not None
        decoded: dict[Any, None] = {}
        for item in value:
            try:
                if item is None:
                    raise ValidationError("Null is not allowed in this array.", code="null")
                if _is_text(field) and not isinstance(item, str):
                    # to_python would make any value a string ("{'a': 1}", a date's repr).
                    raise ValidationError("Expected a string.", code="invalid")
                python = from_wire(field, item)
                if self.by is not None:
                    python = field.clean(python, None)  # max_length, blank, choices...
            except ValidationError as exc:
                raise ValidationError(
                    {self.wire_name: [f"{item!r}: {m}" for m in exc.messages]}
                ) from exc
            decoded.setdefault(python, None)
        return list(decoded)

    def apply(self, instance: models.Model, values: list[Any], action: str = "set") -> None:
        """Make the instance's related rows exactly those ``values`` name (``action``
        "set"), add them ("add": ``$addToSet``) or remove those that exist ("remove":
        ``$pull``, ``$pullAll``)."""
        manager = getattr(instance, self.accessor)
        if action == "remove":
            lookup = "pk__in" if self.by is None else f"{self.by.name}__in"
            manager.remove(*self.related._default_manager.filter(**{lookup: values}))
            return
        if self.by is None:
            rows = list(self.related._default_manager.filter(pk__in=values))
            missing = set(values) - {row.pk for row in rows}
            if missing:
                shown = ", ".join(repr(pk_to_wire(v)) for v in values if v in missing)
                raise ValidationError({self.wire_name: [f"No such {self._kind}: {shown}."]})
        else:
            rows = [self._get_or_create(value) for value in values]
        if action == "add":
            manager.add(*rows)
        else:
            manager.set(rows)

    @property
    def _kind(self) -> str:
        return str(self.related._meta.verbose_name)

    def _get_or_create(self, value: Any) -> models.Model:
        assert self.by is not None
        lookup = {self.by.name: value}
        manager = self.related._default_manager
        row = manager.filter(**lookup).first()
        if row is not None:
            return row
        # Constructed once, only to be saved: a MeteorIdField key draws one id.
        row = self.related(**{self.by.attname: value})
        try:
            row.full_clean(validate_unique=False)
        except ValidationError as exc:
            raise ValidationError(
                {self.wire_name: [f"{value!r}: {m}" for m in exc.messages]}
            ) from exc
        try:
            # A savepoint: when a concurrent transaction created the same value first,
            # its row is taken instead of failing the whole mutator.
            with transaction.atomic(using=router.db_for_write(self.related)):
                row.save(force_insert=True)
        except IntegrityError:
            winner = manager.filter(**lookup).first()
            if winner is None:
                raise
            return winner
        return row


def _relation_write(collection: Collection, published: PublishedPath) -> _RelationWrite:
    """How ``published`` is written, or a 400 saying why it cannot be."""
    path = published.path
    model = collection.model
    name = published.wire_name
    refused = DDPError(
        400,
        f"Field {name!r} cannot be written: only a many-to-many field (an array of ids) or"
        " a path through one to a unique field (an array of values) can be",
    )
    relation = path.relation
    if relation is None or "__" in relation:
        raise refused
    try:
        field: Any = model._meta.get_field(relation)
    except FieldDoesNotExist:
        raise refused from None
    if isinstance(field, models.ManyToManyField):
        accessor: str | None = field.name
        through: Any = field.remote_field.through
    elif isinstance(field, models.ManyToManyRel):
        accessor = field.get_accessor_name()
        through = field.through
    else:
        raise refused
    related = field.related_model
    if accessor is None or not isinstance(related, type):
        raise refused
    if not through._meta.auto_created:
        raise DDPError(
            400,
            f"Field {name!r} cannot be written: its relation has its own through model"
            " (write it in a method)",
        )
    if path.key == relation:
        return _RelationWrite(name, accessor, related, None)
    by = path.field
    if len(path.hops) != 2 or by.model is not related or by.is_relation or not by.unique:
        raise refused
    return _RelationWrite(name, accessor, related, by)


def _decode(published: PublishedField, value: Any) -> Any:
    """The Python value of a sent value for ``published``; a ``ValidationError`` keyed by
    the field (reported under its wire name) when it has none."""
    try:
        return _field_value(published.field, value)
    except ValidationError as exc:
        raise ValidationError({published.field.name: exc.messages}) from exc


def _field_value(field: models.Field[Any, Any], value: Any) -> Any:
    """``from_wire``, but JSON must be JSON (no dates or binary: ``json_problem``) and an
    array field's value an array of its base field's values."""
    if value is None:
        return None
    if isinstance(field, models.JSONField):
        problem = json_problem(value)
        if problem is not None:
            raise ValidationError(problem, code="invalid")
        return value
    if isinstance(field, ArrayField):
        if not isinstance(value, list):
            raise ValidationError("Expected an array.", code="invalid")
        return [_item(field.base_field, item) for item in value]
    return from_wire(field, value)


def _item(base: models.Field[Any, Any], item: Any) -> Any:
    try:
        return _field_value(base, item)
    except ValidationError as exc:
        raise ValidationError([f"{item!r}: {m}" for m in exc.messages]) from exc


def _array_base(published: PublishedField) -> models.Field[Any, Any]:
    """The base field of a one-dimensional array field (others take ``$set`` only)."""
    base: models.Field[Any, Any] = published.field.base_field  # type: ignore[attr-defined]
    if isinstance(base, ArrayField):
        raise DDPError(
            400, f"Field {published.wire_name!r} is an array of arrays: write it with $set"
        )
    return base


def _element(published: PublishedField, base: models.Field[Any, Any], value: Any) -> Any:
    """One value to add to an array field, as ``_decode`` reports a bad one."""
    try:
        return _item(base, value)
    except ValidationError as exc:
        raise ValidationError({published.field.name: exc.messages}) from exc


def _element_or_missing(base: models.Field[Any, Any], value: Any) -> Any:
    try:
        return _item(base, value)
    except ValidationError:
        return _MISSING


def _is_numeric(field: models.Field[Any, Any]) -> bool:
    return not field.is_relation and isinstance(
        field, models.IntegerField | models.FloatField | models.DecimalField
    )


def _wire_names(collection: Collection) -> dict[str, str]:
    pk_field = collection.model._meta.pk
    names = {p.field.name: p.wire_name for p in collection.published}
    if pk_field is not None:
        names[pk_field.name] = "_id"
    return names
