"""``Collection``: how one Django model is published as one Meteor collection.

Job: the declarative options of a published model and the per-document work that follows
from them: the collection name, which fields are published and under which names, how
Decimals are encoded, which rows a user may see (``visible``) and which client writes
the Meteor mutators may make (``allow_*``). What must not live here: running querysets
for subscriptions (``django_app.backend``), lookup-to-route translation
(``django_app.cursor``) or the mutator procedures themselves (``django_app.mutator``).

A collection is a class, declared like a ``ModelAdmin`` and registered with
``@registry.register``; the registry keeps one instance per model::

    @registry.register
    class BookCollection(Collection):
        model = Book
        fields = ["title", "author_id", "price"]
        rename = {"author_id": "authorId"}
        encodings = {"price": "string"}
        related = ["author__email"]  # books.byAuthorEmail filters on it

        def visible(self, user):
            return None  # everyone sees every book

        def allow_update(self, user, doc, fields, modifier):
            return user.is_staff

Field names in ``fields``, ``exclude``, ``rename`` and ``encodings`` may be a field's name
(``author``) or its attname (``author_id``); a foreign key is always published under its
attname (``author_id``) unless renamed. The primary key is never a field: it is the
document's ``_id``. Many-to-many fields are not published (yet).

Live updates are routed in memory (``django_app.cursor``): every change the write side
publishes carries the primary key, the published columns and the ``related`` paths,
resolved once by the writer (``django_app.triggers``). A cursor or visibility lookup on
anything else (``author__email`` when it is not declared, an unpublished column that is
not declared) is not routable: the relay re-runs the publication for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import models
from django.db.models import Q

from django_app.channel import channel_name
from django_app.conf import DECIMAL_ENCODINGS, ddp_settings
from django_app.cursor import LookupPath, resolve_lookup_path
from django_app.serializer import from_db_json, pk_to_wire, to_wire
from relay.backend import DecodedChange
from relay.protocol.changestream import Change
from relay.protocol.ids import id_stringify

__all__ = ["Collection", "PublishedField", "Visibility", "default_collection_name"]

#: What ``Collection.visible`` returns: Django lookups (routable), a Q (routable only when
#: it is a plain AND of supported lookups), or None for "no restriction".
Visibility = Mapping[str, Any] | Q | None


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


class Collection:
    """Declarative options for one published model; subclass and register it.

    Class attributes:

    * ``model`` (required): the Django model.
    * ``name``: the Meteor collection name; default ``"<app_label>.<model_name>"``.
    * ``fields``: field names to publish, in order; default every concrete field but the
      primary key. Mutually exclusive with ``exclude``.
    * ``exclude``: field names not to publish.
    * ``rename``: ``{field name: wire name}``, e.g. ``{"author_id": "authorId"}``.
    * ``encodings``: ``{decimal field name: "string" | "number" | "Decimal"}``; default
      ``settings.DDP_DECIMAL_ENCODING`` ("string").
    * ``related``: extra lookup paths publications and ``visible`` filter on, which every
      change carries so that relays route it in memory: forward foreign-key paths
      (``"author__email"``, ``"book__author__country"``), or local fields that are not
      published (``"owner"``). The writer resolves them once per change, and a change to
      a column such a path reads (``Author.email``) publishes the dependent rows again
      (every book of that author) with the new value. Lookups on paths that are neither
      published nor declared are not routable.

    Methods to override: ``visible(user)`` (row-level read rule, applied to every queryset
    of this collection) and the mutator rules ``allow_insert``, ``allow_update`` and
    ``allow_remove``, which all deny by default: the lesson of Meteor's ``insecure``.
    ``serialize`` may be extended to add computed fields.
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
        self.published: tuple[PublishedField, ...] = self._resolve_fields(model)
        self.by_wire_name: dict[str, PublishedField] = {p.wire_name: p for p in self.published}
        self.by_name: dict[str, PublishedField] = {}
        for published in self.published:
            self.by_name[published.field.name] = published
            self.by_name[published.attname] = published
        pk = opts.pk
        assert pk is not None
        self.pk_field: models.Field[Any, Any] = pk
        #: Extra values every change carries (declared ``related`` paths), by key.
        self.related_paths: tuple[LookupPath, ...] = self._resolve_related(model)
        #: Every lookup path a route condition may test: the primary key's attname, the
        #: published columns and the related paths.
        self.routing_keys: frozenset[str] = frozenset(
            [pk.attname, *(p.attname for p in self.published)] + [r.key for r in self.related_paths]
        )

    # -- declaration ------------------------------------------------------------------

    def _resolve_fields(self, model: type[models.Model]) -> tuple[PublishedField, ...]:
        opts = model._meta
        cls_name = type(self).__qualname__
        if self.fields is not None and self.exclude:
            raise ImproperlyConfigured(f"{cls_name}: set either 'fields' or 'exclude', not both.")

        def lookup(name: str, option: str) -> models.Field[Any, Any]:
            try:
                field = opts.get_field(name)  # also finds attnames such as "author_id"
            except FieldDoesNotExist:
                raise ImproperlyConfigured(
                    f"{cls_name}.{option}: {model.__name__} has no field {name!r}."
                ) from None
            if not isinstance(field, models.Field) or not field.concrete:
                raise ImproperlyConfigured(
                    f"{cls_name}.{option}: {name!r} is not a concrete field of {model.__name__}"
                    " (many-to-many and reverse relations are not published)."
                )
            if field.primary_key:
                raise ImproperlyConfigured(
                    f"{cls_name}.{option}: the primary key {name!r} is published as '_id'."
                )
            return field

        if self.fields is not None:
            chosen = [lookup(name, "fields") for name in self.fields]
        else:
            excluded = {lookup(name, "exclude") for name in self.exclude}
            chosen = [f for f in opts.concrete_fields if not f.primary_key and f not in excluded]
        renames = {lookup(name, "rename"): wire for name, wire in self.rename.items()}
        encodings = {lookup(name, "encodings"): enc for name, enc in self.encodings.items()}
        for field, encoding in encodings.items():
            if not isinstance(field, models.DecimalField):
                raise ImproperlyConfigured(
                    f"{cls_name}.encodings: {field.name!r} is not a DecimalField."
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
        wire_names = [p.wire_name for p in published]
        duplicates = sorted({w for w in wire_names if wire_names.count(w) > 1})
        if duplicates or "_id" in wire_names:
            raise ImproperlyConfigured(
                f"{cls_name}: published field names must be unique and not '_id': "
                f"{duplicates or ['_id']}."
            )
        return published

    def _resolve_related(self, model: type[models.Model]) -> tuple[LookupPath, ...]:
        cls_name = type(self).__qualname__
        if isinstance(self.related, str):
            raise ImproperlyConfigured(f"{cls_name}.related must be a list of lookup paths.")
        published = {p.attname for p in self.published}
        assert model._meta.pk is not None
        paths: dict[str, LookupPath] = {}
        for name in self.related:
            path = resolve_lookup_path(model, name.split("__")) if isinstance(name, str) else None
            if path is None:
                raise ImproperlyConfigured(
                    f"{cls_name}.related: {name!r} is not a field of {model.__name__} or a"
                    " path of forward foreign keys to one (reverse and many-to-many"
                    " relations and transforms cannot be routed)."
                )
            if path.key in published or path.key == model._meta.pk.attname:
                continue  # every change carries it anyway
            paths.setdefault(path.key, path)
        return tuple(paths.values())

    # -- documents --------------------------------------------------------------------

    def serialize(self, instance: models.Model) -> tuple[str | int, dict[str, Any]]:
        """``(raw _id, fields)`` of one instance; ``_id`` is never inside ``fields``.

        The raw id is a string (or an int for integer keys); ``relay.protocol.ids``
        turns it into the wire id.
        """
        default_encoding = ddp_settings.DECIMAL_ENCODING
        fields = {
            p.wire_name: to_wire(
                p.field, getattr(instance, p.attname), p.encoding or default_encoding
            )
            for p in self.published
        }
        return pk_to_wire(instance.pk), fields

    def document(self, instance: models.Model) -> dict[str, Any]:
        """The document as Meteor code sees it: the published fields plus ``_id``."""
        raw_id, fields = self.serialize(instance)
        return {"_id": raw_id, **fields}

    def decode_change(self, change: Change) -> DecodedChange:
        """A change-stream change of this collection as the relay needs it (no database).

        ``fields`` are what ``serialize`` gives for the same row (wire names, encodings);
        ``routing`` maps the primary key's attname, every published column's attname and
        every ``related`` path to Python values (``Decimal``, ``date``, aware
        ``datetime``...) comparable with the values of route conditions. A field absent
        from the change (triggers older than this declaration) is left out of both.
        Raises ``ValueError`` for a value that is not the JSON form of its field.
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
                    routing[r.key] = from_db_json(r.field, values[r.key])
        return DecodedChange(
            self.collection_name, id_stringify(pk_to_wire(raw_pk)), change.op, fields, routing
        )

    def queryset(self, user: Any) -> models.QuerySet[Any]:
        """Every row ``user`` may see: the default manager filtered by ``visible``."""
        return apply_visibility(self.model._default_manager.all(), self.visible(user))

    # -- rules (override) ---------------------------------------------------------------

    def visible(self, user: Any) -> Visibility:
        """The rows ``user`` may read, as lookups (``{"owner": user}``), a Q, or None (all).

        Applied to every queryset of this collection: subscriptions and mutators. Plain
        lookups on local fields or forward foreign-key paths (``author__email``) keep live
        updates routable in memory; see ``django_app.cursor``. Return ``{"pk__in": []}``
        to show nothing.
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

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {self.collection_name!r}>"


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
