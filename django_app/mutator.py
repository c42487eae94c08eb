"""Meteor's collection mutators: ``/<collection>/insert``, ``update`` and ``remove``.

Job: what a stock Meteor client calls when app code does ``Books.insert(doc)``,
``Books.update(id, {$set: ...})`` or ``Books.remove(id)`` (and the ``...Async``
aliases), checked against the collection's ``allow_*`` rules with Meteor's own errors:

* every collection answers its mutator names; rules deny by default, so a collection
  that allows nothing answers 403 "Access denied" (Meteor without ``insecure``);
* ``insert`` without ``_id`` takes the id from the invocation's seeded stream
  ``/collection/<name>``, the id the client's stub already shows; with ``_id`` it uses it
  (the rule sees it);
* ``update``/``remove`` take an id or ``{"_id": id}`` (anything else: 403 "Not permitted.
  Untrusted code may only update documents by ID."), find the row among those the user
  may see (``visible``), and return 0 when there is none, else 1;
* ``update`` takes ``$set``/``$unset`` of top-level published fields (wire names, renames
  mapped back); a replacement document is 403 like Meteor, other operators are 400;
* model validation (``full_clean``) failures are 400 with the messages; database
  integrity errors are 409, as Meteor reports Mongo errors.

Only published fields can be written, and among the published arrays
(``Collection.published_paths``) only two shapes, both written after the row is saved, in
the mutator's transaction, replacing the relation's rows (``$unset``: none):

* a many-to-many field (``"tags"``, either side of the relation): the array of the related
  rows' ids, which must exist (400 otherwise): ``manager.set(rows)``;
* a path of ONE many-to-many hop ending on a unique, non-relation field of the related
  model (``"tags__name"``): the array of values; each value names the related row with
  it, created (validated with ``full_clean``) when missing, then ``manager.set(rows)``.

Any other array (a reverse foreign key, a longer path, a non-unique field, a relation
with its own ``through`` model) is a 400 that says so. The ``allow_*`` rules see the
whole document or modifier, arrays included.

Where it sits: below the registry, which answers every mutator name with a ``Mutator``.
A mutator is not declared with ``@method`` (``django_app.methods``): it has the same shape
(``name``, ``is_atomic``, ``run``: the registry's ``RegisteredMethod`` protocol) but no
function or parameter signature of its own. What must not live here: the rules themselves
(``Collection.allow_*``), the transaction around the whole call (the backend's), or any
registry lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import IntegrityError, models, router, transaction

from django_app.collection import Collection, PublishedField, PublishedPath
from django_app.conf import ddp_settings
from django_app.exceptions import AccessDenied, DDPError, MatchFailed
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

_NO_REPLACE: Final = (
    "Access denied. In a restricted collection you can only update documents, not replace"
    " them. Use a Mongo update operator, such as '$set'."
)
_UPDATE_OPERATORS: Final = ("$set", "$unset")


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
            except IntegrityError as exc:
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
    if not collection.allow_insert(ctx.user, doc):
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
    if not modifier or any(not op.startswith("$") for op in modifier):
        raise AccessDenied(_NO_REPLACE)
    touched: list[str] = []
    for op, spec in modifier.items():
        if op not in _UPDATE_OPERATORS:
            raise DDPError(400, f"Operator {op} is not supported; use $set or $unset")
        if not isinstance(spec, dict):
            raise MatchFailed()
        for key in spec:
            top = key.split(".", 1)[0]
            if top not in touched:
                touched.append(top)
    instance = _find(collection, ctx, raw_id)
    if instance is None:
        return 0
    if not collection.allow_update(ctx.user, collection.document(instance), touched, modifier):
        raise AccessDenied()
    changed: set[models.Field[Any, Any]] = set()
    relations: list[tuple[_RelationWrite, list[Any]]] = []
    for op, spec in modifier.items():
        for key, value in spec.items():
            if key == "_id":
                raise DDPError(400, "The _id of a document cannot be changed")
            if "." in key:
                raise DDPError(400, f"Nested field updates are not supported: {key!r}")
            published = _published(collection, key)
            if isinstance(published, PublishedPath):
                write = _relation_write(collection, published)
                relations.append((write, write.decode(value) if op == "$set" else []))
                continue
            field = published.field
            if op == "$set":
                new_value = _decode(published, value)
            elif field.null:
                new_value = None
            elif field.has_default():
                new_value = field.get_default()
            else:
                raise DDPError(400, f"Field {key!r} cannot be unset")
            setattr(instance, published.attname, new_value)
            changed.add(field)
    opts = collection.model._meta
    instance.full_clean(exclude=[f.name for f in opts.concrete_fields if f not in changed])
    auto_now = {f for f in opts.concrete_fields if getattr(f, "auto_now", False)}
    instance.save(update_fields=[f.name for f in changed | auto_now])
    for write, values in relations:
        write.apply(instance, values)
    return 1


def _remove(collection: Collection, ctx: MethodContext, params: Sequence[Any]) -> int:
    if not params:
        raise MatchFailed()
    raw_id = _selector_id(params[0], "remove")
    instance = _find(collection, ctx, raw_id)
    if instance is None:
        return 0
    if not collection.allow_remove(ctx.user, collection.document(instance)):
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

    def apply(self, instance: models.Model, values: list[Any]) -> None:
        """Make the instance's related rows exactly those ``values`` name."""
        manager = getattr(instance, self.accessor)
        if self.by is None:
            rows = list(self.related._default_manager.filter(pk__in=values))
            missing = set(values) - {row.pk for row in rows}
            if missing:
                shown = ", ".join(repr(pk_to_wire(v)) for v in values if v in missing)
                raise ValidationError({self.wire_name: [f"No such {self._kind}: {shown}."]})
        else:
            rows = [self._get_or_create(value) for value in values]
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
    """``from_wire`` with the field named in the error (reported under its wire name)."""
    try:
        return from_wire(published.field, value)
    except ValidationError as exc:
        raise ValidationError({published.field.name: exc.messages}) from exc


def _wire_names(collection: Collection) -> dict[str, str]:
    pk_field = collection.model._meta.pk
    names = {p.field.name: p.wire_name for p in collection.published}
    if pk_field is not None:
        names[pk_field.name] = "_id"
    return names
