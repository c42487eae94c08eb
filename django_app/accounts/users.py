"""Django users as Meteor sees them: lookups, and the ``users`` collection.

Job: find the user a Meteor ``{username}``, ``{email}`` or ``{id}`` names, the way
``Accounts._findUserByQuery`` does (an exact match, else a case-insensitive one accepted
only when exactly one user matches; ``username`` is ``USERNAME_FIELD``, ``email`` the
model's ``get_email_field_name()``, ``id`` the primary key as text), and publish a user
as Meteor's ``users`` document:

* ``_id``: the primary key as a string (``"42"``): Meteor's ``userId`` is a string and
  ``Meteor.user()`` is ``Meteor.users.findOne(userId)``;
* ``username``: the ``USERNAME_FIELD``'s value;
* ``emails``: ``[{"address": <EMAIL_FIELD>, "verified": <DDP_EMAIL_VERIFIED_FIELD or
  False>}]``, or ``[]`` without an address;
* ``profile``: ``{}``, or per ``DDP_USER_PROFILE`` a dict field's value or
  ``{key: field value}``;
* every ``DDP_USER_FIELDS`` field, under its key.

No other column is ever published (the password least of all). The computed fields are
right on live changes too: ``UsersCollection`` publishes the raw columns on the change
stream and computes the document both in ``serialize`` (initial load) and in
``decode_change`` (a changed address arrives as a new ``emails``).

What must not live here: the publication itself (``django_app/ddp.py``), passwords or
tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured, ValidationError
from django.db import models

from django_app.collection import Collection
from django_app.conf import ddp_settings
from django_app.cursor import Cursor
from django_app.serializer import pk_to_wire
from relay.backend import DecodedChange
from relay.protocol.changestream import Change
from relay.protocol.ids import id_stringify

__all__ = [
    "USERS_COLLECTION",
    "USER_PUBLICATION",
    "UsersCollection",
    "email_field",
    "find_user",
    "find_user_by_field",
    "own_user_cursors",
    "taken_case_insensitively",
    "user_id_of",
    "username_field",
    "users_collection_class",
    "verified_field",
]

#: The collection Meteor clients read ``Meteor.user()`` from.
USERS_COLLECTION: Final = "users"
#: The null publication of the logged-in user's own document (``django_app/ddp.py``
#: registers it; ``DjangoBackend.universal_publications`` names it).
USER_PUBLICATION: Final = "ddp.accounts.user"
#: Document keys the user document computes; extra fields cannot take them.
_RESERVED: Final = frozenset({"_id", "username", "emails", "profile"})


def user_id_of(user: Any) -> str:
    """The user's id on the wire: its primary key as text."""
    return str(pk_to_wire(user.pk))


def _concrete(model: type[models.Model], name: str) -> models.Field[Any, Any] | None:
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        return None
    if isinstance(field, models.Field) and field.concrete and not field.many_to_many:
        return field
    return None


def username_field(model: type[models.Model] | None = None) -> models.Field[Any, Any]:
    """The user model's ``USERNAME_FIELD`` (Meteor's ``username``)."""
    model = model or get_user_model()
    field = _concrete(model, str(getattr(model, "USERNAME_FIELD", "username")))
    if field is None:
        raise ImproperlyConfigured(f"{model._meta.label}.USERNAME_FIELD is not a concrete field.")
    return field


def email_field(model: type[models.Model] | None = None) -> models.Field[Any, Any] | None:
    """The user model's email field (``get_email_field_name()``), or None if it has none."""
    model = model or get_user_model()
    getter = getattr(model, "get_email_field_name", None)
    name = getter() if callable(getter) else getattr(model, "EMAIL_FIELD", "email")
    return _concrete(model, str(name))


def verified_field(model: type[models.Model] | None = None) -> models.Field[Any, Any] | None:
    """The boolean field ``DDP_EMAIL_VERIFIED_FIELD`` names, or None when it is unset.

    ``ImproperlyConfigured`` when it names no boolean field of the model.
    """
    model = model or get_user_model()
    name = ddp_settings.EMAIL_VERIFIED_FIELD
    if name is None:
        return None
    field = _concrete(model, name)
    if not isinstance(field, models.BooleanField):
        raise ImproperlyConfigured(
            f"DDP_EMAIL_VERIFIED_FIELD: {model._meta.label} has no boolean field {name!r}."
        )
    return field


def find_user_by_field(field: models.Field[Any, Any], value: str) -> Any:
    """The one user whose ``field`` is ``value``, else the one whose ``field`` equals it
    case-insensitively; None when there is none or more than one.

    Meteor takes the first exact match; Django does not make emails unique, so several
    exact matches are ambiguous here too, and nobody is logged in by guess.
    """
    manager = field.model._default_manager
    exact = list(manager.filter(**{field.attname: value})[:2])
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    folded = list(manager.filter(**{f"{field.attname}__iexact": value})[:2])
    return folded[0] if len(folded) == 1 else None


def find_user(query: Mapping[str, str]) -> Any:
    """The user a Meteor user query names (``{"username"}``, ``{"email"}`` or ``{"id"}``,
    exactly one key, already validated), or None."""
    ((key, value),) = query.items()
    model = get_user_model()
    if key == "id":
        pk = model._meta.pk
        assert pk is not None
        try:
            python_pk = pk.to_python(value)
        except ValidationError:
            return None
        return model._default_manager.filter(pk=python_pk).first()
    field = username_field(model) if key == "username" else email_field(model)
    if field is None:
        return None
    return find_user_by_field(field, value)


def taken_case_insensitively(field: models.Field[Any, Any], value: str) -> bool:
    """Whether a user already has ``value`` in ``field``, ignoring case (Meteor's
    ``_checkForCaseInsensitiveDuplicates``)."""
    return bool(field.model._default_manager.filter(**{f"{field.attname}__iexact": value}).exists())


def own_user_cursors(user: Any) -> list[Cursor]:
    """The null publication's cursors: the logged-in user's own row, routable by key."""
    if user is None or not getattr(user, "is_authenticated", False):
        return []
    return [Cursor(type(user), pk=user.pk)]


class UsersCollection(Collection):
    """The user model published as Meteor's ``users`` collection (see the module).

    Built by ``users_collection_class()`` from the settings; ``published`` holds the raw
    columns the document is computed from, so changes carry exactly those.
    """

    name = USERS_COLLECTION
    #: The attname of the username, email and verified columns (None: absent).
    username_attname: ClassVar[str | None] = None
    email_attname: ClassVar[str | None] = None
    verified_attname: ClassVar[str | None] = None
    #: None, the attname of a dict column, or ``{profile key: attname}``.
    profile_source: ClassVar[str | Mapping[str, str] | None] = None
    #: ``{attname: document key}`` of the extra fields.
    extra: ClassVar[Mapping[str, str]] = {}

    def serialize(self, instance: models.Model) -> tuple[str | int, dict[str, Any]]:
        _, raw = super().serialize(instance)
        if self.username_attname is None:  # USERNAME_FIELD is the primary key
            raw["username"] = pk_to_wire(instance.pk)
        return str(pk_to_wire(instance.pk)), self._document(raw)

    def decode_change(self, change: Change) -> DecodedChange:
        decoded = super().decode_change(change)
        raw_pk = decoded.routing[self.pk_field.attname]
        fields = decoded.fields
        if decoded.op != "d":
            if self.username_attname is None:
                fields = {**fields, "username": pk_to_wire(raw_pk)}
            fields = self._document(fields)
        return DecodedChange(
            decoded.collection,
            id_stringify(str(pk_to_wire(raw_pk))),
            decoded.op,
            fields,
            decoded.routing,
        )

    def _document(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """The document's fields from the raw columns present in ``raw`` (a field whose
        columns are absent, from triggers older than the declaration, is left out)."""
        doc: dict[str, Any] = {}
        username = self.username_attname or "username"
        if username in raw:
            doc["username"] = raw[username]
        if self.email_attname is None:
            doc["emails"] = []
        elif self.email_attname in raw and (
            self.verified_attname is None or self.verified_attname in raw
        ):
            address = raw[self.email_attname]
            verified = bool(raw[self.verified_attname]) if self.verified_attname else False
            doc["emails"] = [{"address": address, "verified": verified}] if address else []
        source = self.profile_source
        if source is None:
            doc["profile"] = {}
        elif isinstance(source, str):
            if source in raw:
                value = raw[source]
                doc["profile"] = value if isinstance(value, dict) else {}
        elif all(attname in raw for attname in source.values()):
            doc["profile"] = {key: raw[attname] for key, attname in source.items()}
        for attname, key in self.extra.items():
            if attname in raw:
                doc[key] = raw[attname]
        return doc


def users_collection_class(
    model: type[models.Model] | None = None,
    *,
    extra: Mapping[str, str] | Sequence[str] | None = None,
    profile: str | Mapping[str, str] | None = None,
) -> type[UsersCollection]:
    """A ``UsersCollection`` subclass for ``model`` (default ``AUTH_USER_MODEL``), with the
    extra fields and profile of ``DDP_USER_FIELDS`` and ``DDP_USER_PROFILE`` unless given.

    ``ImproperlyConfigured`` for a field the model lacks, the password, the primary key, or
    an extra field whose key the document computes itself.
    """
    model = model or get_user_model()
    extra = ddp_settings.USER_FIELDS if extra is None else extra
    if not isinstance(extra, Mapping):
        extra = {name: name for name in extra}
    profile = ddp_settings.USER_PROFILE if profile is None else profile
    pk = model._meta.pk
    assert pk is not None

    def column(name: str, setting: str) -> models.Field[Any, Any]:
        field = _concrete(model, name)
        if field is None:
            raise ImproperlyConfigured(f"{setting}: {model._meta.label} has no field {name!r}.")
        if field.name == "password":
            raise ImproperlyConfigured(f"{setting}: the password is never published.")
        if field.primary_key:
            raise ImproperlyConfigured(f"{setting}: the primary key is the document's _id.")
        return field

    fields: list[str] = []

    def publish(field: models.Field[Any, Any] | None) -> str | None:
        if field is None:
            return None
        if field.attname not in fields:
            fields.append(field.attname)
        return field.attname

    name_field = username_field(model)
    username = None if name_field.primary_key else publish(name_field)
    email = publish(email_field(model))
    verified = publish(verified_field(model))
    if profile is None:
        profile_source: str | dict[str, str] | None = None
    elif isinstance(profile, str):
        profile_source = publish(column(profile, "DDP_USER_PROFILE"))
    else:
        profile_source = {
            key: str(publish(column(name, "DDP_USER_PROFILE"))) for key, name in profile.items()
        }
    extras: dict[str, str] = {}
    for name, key in extra.items():
        if key in _RESERVED:
            raise ImproperlyConfigured(
                f"DDP_USER_FIELDS: {key!r} is computed by the users document; use another key."
            )
        extras[str(publish(column(name, "DDP_USER_FIELDS")))] = key
    attrs = {
        "model": model,
        "fields": fields,
        "username_attname": username,
        "email_attname": email,
        "verified_attname": verified,
        "profile_source": profile_source,
        "extra": extras,
        "__module__": __name__,
        "__qualname__": "UsersCollection",
    }
    return type("UsersCollection", (UsersCollection,), attrs)
