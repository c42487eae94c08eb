"""``Collection``: how one Django model is published as one Meteor collection.

Job: the declarative options of a published model and the per-document work that follows
from them: the collection name, which fields are published and under which names, how
Decimals are encoded, which fields are computed, which rows a user may see (``visible``)
and which client writes the Meteor mutators may make (``allow_*``). What must not live
here: running querysets for subscriptions (``django_app.backend``), lookup-to-route
translation (``django_app.cursor``), the SQL of the triggers (``django_app.triggers``) or
the mutator procedures themselves (``django_app.mutator``).

A collection is a class, declared like a ``ModelAdmin`` and registered with
``@registry.register``; the registry keeps one instance per model::

    @registry.register
    class BookCollection(Collection):
        model = Book
        fields = ["title", "author_id", "price", "tags__name"]
        rename = {"author_id": "authorId", "tags__name": "tags"}
        encodings = {"price": "string"}
        related = ["author__email"]  # books.byAuthorEmail filters on it

        @computed("authorName", uses=["author__name"])
        def author_name(self, values):
            return values["author__name"]

        def visible(self, user):
            return None  # everyone sees every book

        def allow_update(self, user, doc, fields, modifier):
            return user.is_staff

Field names in ``fields``, ``exclude``, ``rename`` and ``encodings`` may be a field's name
(``author``) or its attname (``author_id``); a foreign key is always published under its
attname (``author_id``) unless renamed. The primary key is never a field: it is the
document's ``_id``. ``fields`` may also name a many-to-many field (``"tags"``: the sorted
array of the related rows' ids, encoded like a foreign key) or a multi-valued path
(``"tags__name"``, ``"books__title"``: the sorted array of the distinct values, NULLs
left out).

Live updates are routed in memory (``django_app.cursor``): every change the write side
publishes carries the primary key, the published columns, the published paths, the
``related`` paths and the paths computed fields use, resolved once by the writer
(``django_app.triggers``). The initial documents read the same paths with the same SQL
(``prepare_queryset`` annotates querysets with it), so ``serialize`` and ``decode_change``
give the same document for the same row. A cursor or visibility lookup on anything else
(``author__email`` when it is not declared, an unpublished column that is not declared)
is not routable: the relay re-runs the publication for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connections, models, router
from django.db.models import F, ForeignObjectRel, Func, Q, TextField
from django.db.models.sql.datastructures import Join

from django_app.channel import channel_name
from django_app.conf import DECIMAL_ENCODINGS, ddp_settings
from django_app.cursor import LookupPath, resolve_lookup_path
from django_app.serializer import (
    from_db_json,
    from_path_json,
    path_json_sql,
    pk_to_wire,
    to_wire,
)
from relay.backend import DecodedChange
from relay.protocol.changestream import Change, loads_payload
from relay.protocol.ids import id_stringify

__all__ = [
    "Collection",
    "ComputedField",
    "PublishedField",
    "PublishedPath",
    "Visibility",
    "computed",
    "default_collection_name",
]

#: What ``Collection.visible`` returns: Django lookups (routable), a Q (routable only when
#: it is a plain AND of supported lookups), or None for "no restriction".
Visibility = Mapping[str, Any] | Q | None

#: What a computed field's function takes: the collection, then its ``uses`` values.
ComputeFunction = Callable[[Any, Mapping[str, Any]], Any]

#: The prefix of the annotations ``prepare_queryset`` adds (one per path with joins).
_ANNOTATION: Final = "_ddp_path_"


def default_collection_name(model: type[models.Model]) -> str:
    """``<app_label>.<model_name>``, e.g. ``bookstore.book`` (django-ddp's convention)."""
    return model._meta.label_lower


@dataclass(frozen=True, slots=True)
class PublishedField:
    """One published field: the model field, its attribute name and its wire name."""

    field: models.Field[Any, Any]
    #: The instance attribute holding the value (``author_id`` for a foreign key).
    attname: str
    #: The key in the published document (``authorId`` when renamed).
    wire_name: str
    #: The DecimalField encoding, or None to use ``DDP_DECIMAL_ENCODING``.
    encoding: str | None


@dataclass(frozen=True, slots=True)
class PublishedPath:
    """A published many-to-many field or multi-valued path: an array of values."""

    #: The path (its ``key`` is what changes carry it under).
    path: LookupPath
    #: The key in the published document (``tags`` for ``tags__name`` renamed).
    wire_name: str
    #: The DecimalField encoding of the values, or None for ``DDP_DECIMAL_ENCODING``.
    encoding: str | None


class ComputedField:
    """A published field whose value a function computes from routing values.

    Made by ``@computed``; ``function(collection, values)`` gets ``values[name]`` for each
    name of ``uses``, typed like ``DecodedChange.routing`` (a tuple for a multi-valued
    path). Accessed on a collection instance it is that bound function.
    """

    __slots__ = ("function", "uses", "wire_name")

    def __init__(self, wire_name: str, uses: tuple[str, ...], function: ComputeFunction) -> None:
        self.wire_name = wire_name
        self.uses = uses
        self.function = function

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return functools.partial(self.function, instance)

    def __repr__(self) -> str:
        return f"<ComputedField {self.wire_name!r} uses={list(self.uses)!r}>"


def computed(wire_name: str, *, uses: Sequence[str] = ()) -> Callable[[ComputeFunction], Any]:
    """Declare a computed field on a ``Collection``::

        @computed("authorName", uses=["author__name"])
        def author_name(self, values):
            return values["author__name"]

    ``wire_name`` is its key in the document; ``uses`` are the lookup paths it reads
    (local fields, forward foreign-key paths, multi-valued paths such as ``tags__name``):
    they become routing paths, so every change carries them and the write side publishes
    the row again when one changes. The function runs for the initial documents
    (``serialize``) and for every live change (``decode_change``, in the relay's
    listener): it must be pure and fast, must not query, and returns a value EJSON can
    encode (str, number, bool, None, list, dict, datetime, bytes).
    """
    if isinstance(uses, str) or not all(isinstance(u, str) for u in uses):
        raise TypeError("computed(uses=...) takes a list of lookup paths")

    def decorate(function: ComputeFunction) -> ComputedField:
        return ComputedField(wire_name, tuple(uses), function)

    return decorate


@dataclass(frozen=True, slots=True)
class _Computed:
    """A computed field resolved against the model: ``(name in uses, routing key)``."""

    field: ComputedField
    uses: tuple[tuple[str, str], ...]

    def compute(self, collection: Collection, values: Mapping[str, Any]) -> Any:
        return self.field.function(collection, {name: values[key] for name, key in self.uses})


class Collection:
    """Declarative options for one published model; subclass and register it.

    Class attributes:

    * ``model`` (required): the Django model.
    * ``name``: the Meteor collection name; default ``"<app_label>.<model_name>"``.
    * ``fields``: field names to publish, in order; default every concrete field but the
      primary key. May name many-to-many fields and multi-valued paths (published as
      arrays, see the module). Mutually exclusive with ``exclude``.
    * ``exclude``: field names not to publish.
    * ``rename``: ``{field name: wire name}``, e.g. ``{"author_id": "authorId"}``.
    * ``encodings``: ``{decimal field name: "string" | "number" | "Decimal"}``; default
      ``settings.DDP_DECIMAL_ENCODING`` ("string").
    * ``related``: extra lookup paths publications and ``visible`` filter on, which every
      change carries so that relays route it in memory: forward foreign-key paths
      (``"author__email"``), local fields that are not published (``"owner"``), and paths
      across reverse foreign keys and many-to-many relations (``"tags__name"``,
      ``"books__title"``), carried as the sorted tuple of their distinct values. The
      writer resolves them once per change, and a change to a row a path reads (an
      author's email, a row of the many-to-many's through table, a tag's name) publishes
      the dependent rows again with the new values. Lookups on paths that are neither
      published nor declared are not routable.

    Computed fields are methods decorated with ``@computed`` (see there). Methods to
    override: ``visible(user)`` (row-level read rule, applied to every queryset of this
    collection) and the mutator rules ``allow_insert``, ``allow_update`` and
    ``allow_remove``, which all deny by default: the lesson of Meteor's ``insecure``.
    """

    model: ClassVar[type[models.Model]]
    name: ClassVar[str | None] = None
    fields: ClassVar[Sequence[str] | None] = None
    exclude: ClassVar[Sequence[str]] = ()
    rename: ClassVar[Mapping[str, str]] = {}
    encodings: ClassVar[Mapping[str, str]] = {}
    related: ClassVar[Sequence[str]] = ()

    def __init__(self) -> None:
        model = getattr(type(self), "model", None)
        if not (isinstance(model, type) and issubclass(model, models.Model)):
            raise ImproperlyConfigured(f"{type(self).__qualname__}.model must be a Django model.")
        if model._meta.abstract:
            raise ImproperlyConfigured(f"{type(self).__qualname__}.model is abstract.")
        self.collection_name: str = self.name or default_collection_name(model)
        opts = model._meta
        self.channel, self.channel_truncated = channel_name(
            opts.app_label, opts.model_name or model.__name__.lower()
        )
        pk = opts.pk
        assert pk is not None
        self.pk_field: models.Field[Any, Any] = pk
        self.published: tuple[PublishedField, ...]
        self.published_paths: tuple[PublishedPath, ...]
        self.published, self.published_paths = self._resolve_fields(model)
        self.by_wire_name: dict[str, PublishedField] = {p.wire_name: p for p in self.published}
        self.by_name: dict[str, PublishedField] = {}
        for published in self.published:
            self.by_name[published.field.name] = published
            self.by_name[published.attname] = published
        #: The wire names in the order ``fields`` declares them (published paths among
        #: the columns), when that is not columns-then-paths; None: no reordering.
        self._order: tuple[str, ...] | None = self._declared_order()
        computed_fields, uses_paths = self._resolve_computed(model)
        #: The computed fields, in declaration order.
        self.computed_fields: tuple[ComputedField, ...] = tuple(c.field for c in computed_fields)
        self._computed: tuple[_Computed, ...] = computed_fields
        #: Every path a change carries besides the key and the published columns: the
        #: published paths, the declared ``related`` paths and the computed fields' uses.
        self.related_paths: tuple[LookupPath, ...] = self._resolve_related(model, uses_paths)
        self._paths: dict[str, LookupPath] = {r.key: r for r in self.related_paths}
        #: The annotation of each path with joins (``prepare_queryset``), by key.
        self._annotations: dict[str, str] = {
            r.key: f"{_ANNOTATION}{i}" for i, r in enumerate(self.related_paths) if r.hops
        }
        #: Every lookup path a route condition may test: the primary key's attname, the
        #: published columns and the related paths.
        self.routing_keys: frozenset[str] = frozenset(
            [pk.attname, *(p.attname for p in self.published)] + [r.key for r in self.related_paths]
        )
        self._columns: dict[str, models.Field[Any, Any]] = {
            pk.attname: pk,
            **{p.attname: p.field for p in self.published},
        }
        #: What ``serialize`` reads beyond the published columns.
        self._serialize_keys: tuple[str, ...] = tuple(
            dict.fromkeys(
                [p.path.key for p in self.published_paths]
                + [key for c in computed_fields for _, key in c.uses]
            )
        )

    # -- declaration ------------------------------------------------------------------

    def _resolve_fields(
        self, model: type[models.Model]
    ) -> tuple[tuple[PublishedField, ...], tuple[PublishedPath, ...]]:
        opts = model._meta
        cls_name = type(self).__qualname__
        if self.fields is not None and self.exclude:
            raise ImproperlyConfigured(f"{cls_name}: set either 'fields' or 'exclude', not both.")

        def column(name: str, option: str) -> models.Field[Any, Any] | None:
            """The concrete field ``name``, or None when it is a relation or a path."""
            try:
                field = opts.get_field(name)  # also finds attnames such as "author_id"
            except FieldDoesNotExist:
                return None
            if not isinstance(field, models.Field) or not field.concrete or field.many_to_many:
                return None  # (a many-to-many field counts as concrete in Django)
            if field.primary_key:
                raise ImproperlyConfigured(
                    f"{cls_name}.{option}: the primary key {name!r} is published as '_id'."
                )
            return field

        def lookup(name: str, option: str) -> models.Field[Any, Any]:
            field = column(name, option)
            if field is None:
                raise ImproperlyConfigured(
                    f"{cls_name}.{option}: {model.__name__} has no field {name!r} (a"
                    " concrete field; many-to-many fields and paths go in 'fields')."
                )
            return field

        chosen: list[models.Field[Any, Any]] = []
        paths: dict[str, tuple[str, LookupPath]] = {}  # by declared name
        if self.fields is not None:
            for name in self.fields:
                field = column(name, "fields")
                if field is not None:
                    chosen.append(field)
                else:
                    paths[name] = (name, self._published_path(model, name))
        else:
            excluded = {lookup(name, "exclude") for name in self.exclude}
            chosen = [f for f in opts.concrete_fields if not f.primary_key and f not in excluded]
        by_key = {path.key: name for name, path in paths.values()}

        def target(name: str, option: str) -> models.Field[Any, Any] | str:
            """A published column, or the declared name of a published path."""
            if name in paths:
                return name
            field = column(name, option)
            if field is not None:
                return field
            resolved = resolve_lookup_path(model, name.split("__"), many=True)
            if resolved is not None and resolved.key in by_key:
                return by_key[resolved.key]
            raise ImproperlyConfigured(
                f"{cls_name}.{option}: {model.__name__} has no field {name!r} among the"
                " published ones."
            )

        renames = {target(name, "rename"): wire for name, wire in self.rename.items()}
        encodings = {target(name, "encodings"): enc for name, enc in self.encodings.items()}
        for key, encoding in encodings.items():
            value_field = _value_field(
                key if isinstance(key, models.Field) else paths[key][1].field
            )
            if not isinstance(value_field, models.DecimalField):
                shown = key.name if isinstance(key, models.Field) else key
                raise ImproperlyConfigured(
                    f"{cls_name}.encodings: {shown!r} is not a DecimalField."
                )
            if encoding not in DECIMAL_ENCODINGS:
                raise ImproperlyConfigured(
                    f"{cls_name}.encodings: {encoding!r} is not one of {DECIMAL_ENCODINGS}."
                )
        published = tuple(
            PublishedField(
                field=field,
                attname=field.attname,
                wire_name=renames.get(field, field.attname),
                encoding=encodings.get(field),
            )
            for field in chosen
        )
        published_paths = tuple(
            PublishedPath(path, renames.get(name, name), encodings.get(name))
            for name, path in paths.values()
        )
        wire_names = [p.wire_name for p in published] + [p.wire_name for p in published_paths]
        duplicates = sorted({w for w in wire_names if wire_names.count(w) > 1})
        if duplicates or "_id" in wire_names:
            raise ImproperlyConfigured(
                f"{cls_name}: published field names must be unique and not '_id': "
                f"{duplicates or ['_id']}."
            )
        keys = [p.path.key for p in published_paths]
        if len(set(keys)) != len(keys):
            raise ImproperlyConfigured(f"{cls_name}.fields: a path is published twice.")
        return published, published_paths

    def _published_path(self, model: type[models.Model], name: str) -> LookupPath:
        cls_name = type(self).__qualname__
        path = resolve_lookup_path(model, name.split("__"), many=True)
        if path is None:
            raise ImproperlyConfigured(
                f"{cls_name}.fields: {model.__name__} has no field {name!r} (fields are"
                " concrete fields, many-to-many fields and multi-valued paths)."
            )
        if not path.many:
            raise ImproperlyConfigured(
                f"{cls_name}.fields: {name!r} is a single-valued path; publish it with a"
                " @computed field."
            )
        _check_sortable(path, f"{cls_name}.fields {name!r}")
        return path

    def _resolve_computed(
        self, model: type[models.Model]
    ) -> tuple[tuple[_Computed, ...], list[LookupPath]]:
        cls_name = type(self).__qualname__
        found: dict[str, ComputedField] = {}
        for klass in reversed(type(self).__mro__):
            for attr, value in vars(klass).items():
                if isinstance(value, ComputedField):
                    found[attr] = value
                elif attr in found:
                    del found[attr]  # a subclass replaced it with something else
        taken = {"_id"} | {p.wire_name for p in self.published}
        taken |= {p.wire_name for p in self.published_paths}
        resolved = []
        for attr, field in found.items():
            what = f"{cls_name}.{attr}"
            if not isinstance(field.wire_name, str) or not field.wire_name:
                raise ImproperlyConfigured(f"{what}: a computed field needs a wire name.")
            if field.wire_name in taken:
                raise ImproperlyConfigured(
                    f"{what}: the wire name {field.wire_name!r} is '_id' or already published."
                )
            taken.add(field.wire_name)
            uses = []
            for name in field.uses:
                path = resolve_lookup_path(model, name.split("__"), many=True)
                if path is None:
                    raise ImproperlyConfigured(
                        f"{what}: uses {name!r}, which is not a field of {model.__name__} or a"
                        " lookup path to one (transforms and generic relations cannot be read)."
                    )
                if path.many:
                    _check_sortable(path, f"{what} uses {name!r}")
                uses.append((name, path))
            resolved.append((field, tuple(uses)))
        computed_fields = tuple(
            _Computed(field, tuple((name, path.key) for name, path in uses))
            for field, uses in resolved
        )
        return computed_fields, [path for _, uses in resolved for _, path in uses]

    def _declared_order(self) -> tuple[str, ...] | None:
        if self.fields is None or not self.published_paths:
            return None
        paths = iter(self.published_paths)
        order = []
        for name in self.fields:
            column = self.by_name.get(name)
            order.append(column.wire_name if column is not None else next(paths).wire_name)
        natural = [p.wire_name for p in self.published] + [
            p.wire_name for p in self.published_paths
        ]
        return None if order == natural else tuple(order)

    def _ordered(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` in the declared order (computed fields last)."""
        order = self._order
        if order is None:
            return fields
        out = {k: fields[k] for k in order if k in fields}
        if len(out) != len(fields):
            out.update((k, v) for k, v in fields.items() if k not in out)
        return out

    def _resolve_related(
        self, model: type[models.Model], uses_paths: list[LookupPath]
    ) -> tuple[LookupPath, ...]:
        cls_name = type(self).__qualname__
        if isinstance(self.related, str):
            raise ImproperlyConfigured(f"{cls_name}.related must be a list of lookup paths.")
        declared: list[LookupPath] = []
        for name in self.related:
            path = (
                resolve_lookup_path(model, name.split("__"), many=True)
                if isinstance(name, str)
                else None
            )
            if path is None:
                raise ImproperlyConfigured(
                    f"{cls_name}.related: {name!r} is not a field of {model.__name__} or a"
                    " lookup path to one (transforms, generic and composite relations cannot"
                    " be routed)."
                )
            if path.many:
                _check_sortable(path, f"{cls_name}.related {name!r}")
            declared.append(path)
        carried = {p.attname for p in self.published} | {self.pk_field.attname}
        paths: dict[str, LookupPath] = {}
        for path in [*(p.path for p in self.published_paths), *declared, *uses_paths]:
            if path.key not in carried:  # every change carries those anyway
                paths.setdefault(path.key, path)
        return tuple(paths.values())

    # -- documents --------------------------------------------------------------------

    def serialize(self, instance: models.Model) -> tuple[str | int, dict[str, Any]]:
        """``(raw _id, fields)`` of one instance; ``_id`` is never inside ``fields``.

        The raw id is a string (or an int for integer keys); ``relay.protocol.ids``
        turns it into the wire id. Published paths and computed fields read the paths
        ``prepare_queryset`` annotated; an instance that was not prepared costs one
        query for them.
        """
        default_encoding = ddp_settings.DECIMAL_ENCODING
        fields = {
            p.wire_name: to_wire(
                p.field, getattr(instance, p.attname), p.encoding or default_encoding
            )
            for p in self.published
        }
        if self._serialize_keys:
            values = self._values(instance, self._serialize_keys)
            self._add_derived(fields, values)
        return pk_to_wire(instance.pk), self._ordered(fields)

    def document(self, instance: models.Model) -> dict[str, Any]:
        """The document as Meteor code sees it: the published fields plus ``_id``."""
        raw_id, fields = self.serialize(instance)
        return {"_id": raw_id, **fields}

    def decode_change(self, change: Change) -> DecodedChange:
        """A change-stream change of this collection as the relay needs it (no database).

        ``fields`` are what ``serialize`` gives for the same row (wire names, encodings,
        published paths, computed fields); ``routing`` maps the primary key's attname,
        every published column's attname and every related path to Python values
        (``Decimal``, ``date``, aware ``datetime``..., a sorted tuple for a multi-valued
        path) comparable with the values of route conditions. A value absent from the
        change (triggers older than this declaration) is left out of both, and so is a
        computed field that uses it. Raises ``ValueError`` for a value that is not the
        JSON form of its field.
        """
        raw_pk = from_db_json(self.pk_field, change.pk)
        routing: dict[str, Any] = {self.pk_field.attname: raw_pk}
        fields: dict[str, Any] = {}
        if change.op != "d":
            values = change.values
            default_encoding = ddp_settings.DECIMAL_ENCODING
            for p in self.published:
                if p.attname in values:
                    value = from_db_json(p.field, values[p.attname])
                    routing[p.attname] = value
                    fields[p.wire_name] = to_wire(p.field, value, p.encoding or default_encoding)
            for r in self.related_paths:
                if r.key in values:
                    routing[r.key] = from_path_json(r, values[r.key])
            self._add_derived(fields, routing)
            fields = self._ordered(fields)
        return DecodedChange(
            self.collection_name, id_stringify(pk_to_wire(raw_pk)), change.op, fields, routing
        )

    def _add_derived(self, fields: dict[str, Any], values: Mapping[str, Any]) -> None:
        """Add the published paths and computed fields whose values are in ``values``."""
        default_encoding = ddp_settings.DECIMAL_ENCODING
        for p in self.published_paths:
            if p.path.key in values:
                encoding = p.encoding or default_encoding
                fields[p.wire_name] = [
                    to_wire(p.path.field, v, encoding) for v in values[p.path.key] if v is not None
                ]
        for c in self._computed:
            if all(key in values for _, key in c.uses):
                fields[c.field.wire_name] = c.compute(self, values)

    def values_of(self, instance: models.Model, keys: Sequence[str]) -> tuple[Any, ...]:
        """The routing values of ``keys`` (routing keys: the primary key's attname,
        published attnames, related paths) for ``instance``, typed as
        ``decode_change(...).routing`` types them. Paths with joins are read from
        ``prepare_queryset``'s annotations, else with one query for the instance.
        ``KeyError`` for a key that is not a routing key."""
        unknown = [key for key in keys if key not in self.routing_keys]
        if unknown:
            raise KeyError(f"{self!r}: not routing keys: {unknown}")
        values = self._values(instance, keys)
        return tuple(values[key] for key in keys)

    def _values(self, instance: models.Model, keys: Iterable[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        missing: list[LookupPath] = []
        for key in keys:
            column = self._columns.get(key)
            path = self._paths.get(key)
            if column is None and path is not None and not path.hops:
                column = path.field
            if column is not None:
                values[key] = _local(getattr(instance, column.attname))
            elif path is not None:
                text = instance.__dict__.get(self._annotations[key], _MISSING)
                if text is _MISSING:
                    missing.append(path)
                else:
                    values[key] = _loads(path, text)
        if missing:
            values.update(self._query_paths(instance, missing))
        return values

    def _query_paths(self, instance: models.Model, paths: list[LookupPath]) -> dict[str, Any]:
        """The values of ``paths`` for one instance (from its in-memory keys), in one query."""
        conn = connections[router.db_for_read(type(instance), instance=instance)]
        selects: list[str] = []
        params: list[Any] = []
        for path in paths:
            base = path.base_field
            db_type = base.db_type(conn)
            placeholder = f"CAST(%s AS {db_type})" if db_type else "%s"
            selects.append(f"to_jsonb({self._path_sql(path, '%%').replace(_BASE, placeholder)})")
            params.append(base.get_db_prep_value(getattr(instance, base.attname), conn))
        with conn.cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(f"{s}::text" for s in selects), params)
            row = cursor.fetchone()
        assert row is not None
        return {path.key: _loads(path, text) for path, text in zip(paths, row, strict=True)}

    def _path_sql(self, path: LookupPath, percent: str) -> str:
        """``path_json_sql`` with ``_BASE`` for the row's column and ``%`` escaped."""
        sql = path_json_sql(path, _BASE, f"{type(self).__qualname__} path {path.key!r}")
        return sql.replace("%", percent)

    def prepare_queryset(self, qs: models.QuerySet[Any]) -> models.QuerySet[Any]:
        """``qs`` ready for ``serialize`` and ``values_of`` without a query per row: each
        path with joins becomes an annotation (the triggers' own SQL, one indexed
        subquery per row and path), and a queryset filtered across a multi-valued
        relation (``Cursor(Book, tags__name__in=[...])``), which Django returns once per
        matching related row, is made DISTINCT. A sliced queryset keeps its slice."""
        wanted = {
            name: Func(
                F(self._paths[key].base_field.attname),
                # Func fills the template with %-formatting, and the SQL then goes to the
                # driver with parameters: a literal % must survive both.
                template=f"to_jsonb({self._path_sql(self._paths[key], '%%%%')})::text".replace(
                    _BASE, "%(expressions)s"
                ),
                output_field=TextField(),
            )
            for key, name in self._annotations.items()
            if name not in qs.query.annotations
        }
        if wanted:
            qs = qs.annotate(**wanted)
        if not qs.query.distinct and _joins_many(qs):
            low, high = qs.query.low_mark, qs.query.high_mark
            sliced = qs.query.is_sliced
            if sliced:
                qs = qs.all()
                qs.query.clear_limits()
            qs = qs.distinct()
            if sliced:
                qs.query.set_limits(low, high)
        return qs

    def queryset(self, user: Any) -> models.QuerySet[Any]:
        """Every row ``user`` may see: the default manager filtered by ``visible``."""
        return apply_visibility(self.model._default_manager.all(), self.visible(user))

    # -- rules (override) ---------------------------------------------------------------

    def visible(self, user: Any) -> Visibility:
        """The rows ``user`` may read, as lookups (``{"owner": user}``), a Q, or None (all).

        Applied to every queryset of this collection: subscriptions and mutators. Plain
        lookups on local fields or declared paths (``author__email``, ``members``) keep
        live updates routable in memory; see ``django_app.cursor``. Return
        ``{"pk__in": []}`` to show nothing.
        """
        return None

    def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
        """Whether ``user`` may insert ``doc`` (wire field names, with its ``_id``)."""
        return False

    def allow_update(
        self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
    ) -> bool:
        """Whether ``user`` may apply ``modifier`` (touching ``fields``) to ``doc``."""
        return False

    def allow_remove(self, user: Any, doc: dict[str, Any]) -> bool:
        """Whether ``user`` may remove ``doc``."""
        return False

    # Meteor's deny(): asked before the allow rule; True refuses (403 "Access denied")
    # whatever the allow rule says. A collection with deny rules and no allow rule still
    # refuses everything (the allow rules default to False).

    def deny_insert(self, user: Any, doc: dict[str, Any]) -> bool:
        """Whether to refuse ``user`` inserting ``doc`` (arguments as ``allow_insert``)."""
        return False

    def deny_update(
        self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
    ) -> bool:
        """Whether to refuse ``modifier`` on ``doc`` (arguments as ``allow_update``:
        ``fields`` are the top-level names the modifier touches, a dotted path counting
        as its first segment)."""
        return False

    def deny_remove(self, user: Any, doc: dict[str, Any]) -> bool:
        """Whether to refuse ``user`` removing ``doc``."""
        return False

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.collection_name!r}>"


#: Stands for the row's column in a path's SQL until it is known (a NUL: never in SQL).
_BASE: Final = "\x00"
_MISSING: Final = object()


def _value_field(field: models.Field[Any, Any]) -> models.Field[Any, Any]:
    while isinstance(field, models.ForeignKey):
        field = field.target_field
    return field


def _check_sortable(path: LookupPath, what: str) -> None:
    """Multi-valued paths are sorted, distinct values: JSON and arrays are neither."""
    field = _value_field(path.field)
    if isinstance(field, models.JSONField) or hasattr(field, "base_field"):
        raise ImproperlyConfigured(
            f"{what}: {type(field).__name__} values cannot be sorted and deduplicated as a"
            " multi-valued path's values are."
        )


def _local(value: Any) -> Any:
    """A column value as ``from_db_json`` decodes it (psycopg2 gives bytea as memoryview)."""
    return bytes(value) if isinstance(value, memoryview) else value


def _loads(path: LookupPath, text: str | None) -> Any:
    return from_path_json(path, None if text is None else loads_payload(text))


def _joins_many(qs: models.QuerySet[Any]) -> bool:
    """Whether ``qs`` joins a multi-valued relation (so a row may come out several times)."""
    query = qs.query
    for alias, join in query.alias_map.items():
        if not isinstance(join, Join) or not query.alias_refcount.get(alias):
            continue
        rel = join.join_field
        if isinstance(rel, ForeignObjectRel) and not getattr(rel.field, "unique", False):
            return True
    return False


def apply_visibility(qs: models.QuerySet[Any], rule: Visibility) -> models.QuerySet[Any]:
    """``qs`` restricted by a visibility rule; a sliced queryset keeps its slice.

    Filtering happens before the slice, so a top-N queryset returns the top N *visible*
    rows.
    """
    if rule is None or (not isinstance(rule, Q) and not rule) or rule == Q():
        return qs
    low, high = qs.query.low_mark, qs.query.high_mark
    if qs.query.is_sliced:
        qs = qs.all()  # a copy: clearing its limits leaves the caller's queryset alone
        qs.query.clear_limits()
    qs = qs.filter(rule) if isinstance(rule, Q) else qs.filter(**rule)
    if low or high is not None:
        qs.query.set_limits(low, high)
    return qs
