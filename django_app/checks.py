"""System checks of the ``ddp`` app (``manage.py check``; the relay runs them at start).

Job: report configuration the DDP side cannot work with, each with a stable id:

* ``ddp.E001`` a database that published models or methods write to is not PostgreSQL
  (the change stream is LISTEN/NOTIFY);
* ``ddp.E002`` a published model's primary key cannot be a Meteor ``_id`` (supported:
  strings, integers, UUIDs, and one-to-one keys to those);
* ``ddp.E003`` ``DDP_DECIMAL_ENCODING`` is not "string", "number" or "Decimal";
* ``ddp.E004`` ``DDP_ATOMIC_METHODS`` is not a boolean;
* ``ddp.E005`` ``DDP_CHANGELOG_RETENTION`` is not a positive number of seconds or
  ``timedelta``;
* ``ddp.E006`` ``DDP_ACCOUNTS``, ``DDP_CREATE_USER`` or ``DDP_AMBIGUOUS_ERRORS`` is not a
  boolean;
* ``ddp.E007`` ``DDP_LOGIN_EXPIRATION`` is not None, a positive number of seconds or a
  ``timedelta``;
* ``ddp.E008`` ``DDP_AUTHENTICATORS`` is not a list of importable authenticators;
* ``ddp.E009`` ``DDP_USER_FIELDS``, ``DDP_USER_PROFILE`` or ``DDP_EMAIL_VERIFIED_FIELD``
  names what the user model cannot publish (accounts on);
* ``ddp.E010`` ``DDP_PASSWORD_RESET_URL`` has no ``{token}``, or
  ``DDP_PASSWORD_RESET_EMAIL`` names no importable callable;
* ``ddp.E011`` ``DDP_PRESENCE_LEASE`` is under ``MIN_PRESENCE_LEASE`` seconds (a relay
  renews its lease every ~3 s: a shorter one lets other relays sweep live members),
  ``DDP_EVENT_MAX_BYTES`` is not a positive integer, or ``DDP_PRESENCE_COLLECTION`` is
  not a non-empty string;
* ``ddp.W001`` a collection publishes a field named ``password``;
* ``ddp.W002`` a model's channel name had to be shortened to fit PostgreSQL's identifier
  limit (it stays unique: a hash is appended);
* ``ddp.W003`` accounts are on but ``MeteorPBKDF2PasswordHasher`` is not the first of
  ``PASSWORD_HASHERS``: a Meteor client's password digest cannot be checked against the
  hashes Django then stores (``django_app.accounts.hashers``).
* ``ddp.W004`` a collection's path (published, ``related`` or used by a computed field)
  joins on a foreign key whose column has no index: the triggers would scan that table
  for every change they resolve or republish through it.

Registering one model twice is refused earlier, at import (``AlreadyRegistered``). What
must not live here: connecting to the database, or relay settings (``RELAY_*``
environment variables are validated by ``relay.config``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from django.apps import AppConfig
from django.conf import settings
from django.contrib.auth.hashers import get_hashers
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, models, router
from django.db.utils import load_backend
from django.utils.module_loading import import_string

from django_app.collection import Collection
from django_app.conf import DECIMAL_ENCODINGS, ddp_settings
from django_app.registries import Registry
from django_app.registries import registry as default_registry

__all__ = [
    "TAG",
    "check_accounts",
    "check_collections",
    "check_database",
    "check_settings",
    "register_checks",
]

#: The shortest ``DDP_PRESENCE_LEASE`` (seconds): several of a relay's renewals.
MIN_PRESENCE_LEASE: Final = 5

#: The tag of every check here: ``manage.py check --tag ddp``.
TAG: Final = "ddp"


def register_checks() -> None:
    """Register the checks (``DDPConfig.ready`` calls this)."""
    checks.register(check_database, TAG)
    checks.register(check_collections, TAG)
    checks.register(check_settings, TAG)
    checks.register(check_accounts, TAG)


def check_database(
    app_configs: Sequence[AppConfig] | None = None,
    *,
    database_settings: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """ddp.E001: every database DDP writes to must be PostgreSQL."""
    registry = registry or default_registry
    database_settings = settings.DATABASES if database_settings is None else database_settings
    aliases = {DEFAULT_DB_ALIAS} | {router.db_for_write(c.model) for c in registry.collections}
    errors: list[checks.CheckMessage] = []
    for alias in sorted(aliases):
        engine = database_settings.get(alias, {}).get("ENGINE", "")
        if _vendor(engine) != "postgresql":
            errors.append(
                checks.Error(
                    f"Database {alias!r} uses {engine or 'no ENGINE'!s}; DDP needs PostgreSQL.",
                    hint="Set ENGINE to 'django.db.backends.postgresql' (the change stream"
                    " is PostgreSQL LISTEN/NOTIFY).",
                    id="ddp.E001",
                )
            )
    return errors


def _vendor(engine: str) -> str:
    if not engine:
        return ""
    try:
        return str(load_backend(engine).DatabaseWrapper.vendor)
    except Exception:
        return ""


def check_collections(
    app_configs: Sequence[AppConfig] | None = None,
    *,
    registry: Registry | None = None,
    **kwargs: Any,
) -> list[checks.CheckMessage]:
    """ddp.E002, ddp.W001, ddp.W002 and ddp.W004 for every registered collection."""
    registry = registry or default_registry
    messages: list[checks.CheckMessage] = []
    for collection in registry.collections:
        model = collection.model
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        pk = model._meta.pk
        if pk is None or not _meteor_id_key(pk):
            messages.append(
                checks.Error(
                    f"{model._meta.label}'s primary key ({type(pk).__name__}) cannot be a"
                    " Meteor document id.",
                    hint="Use a string, integer or UUID primary key, e.g."
                    " id = MeteorIdField(primary_key=True).",
                    obj=model,
                    id="ddp.E002",
                )
            )
        for published in collection.published:
            if published.field.name == "password":
                messages.append(
                    checks.Warning(
                        f"{collection!r} publishes the field 'password' of {model._meta.label}.",
                        hint="List the published fields explicitly with Collection.fields.",
                        obj=model,
                        id="ddp.W001",
                    )
                )
        messages += _unindexed_joins(collection)
        if collection.channel_truncated:
            messages.append(
                checks.Warning(
                    f"The change-stream channel of {model._meta.label} was shortened to"
                    f" {collection.channel!r}.",
                    hint="Channel names are 'ddp_<app_label>_<model_name>' and must fit"
                    " PostgreSQL's 63-byte identifiers; the hash keeps them unique.",
                    obj=model,
                    id="ddp.W002",
                )
            )
    return messages


def _unindexed_joins(collection: Collection) -> list[checks.CheckMessage]:
    """ddp.W004: each foreign key a path crosses is looked up by its column, both ways
    (resolving the path from a row, and finding the rows to republish when it changes)."""
    messages: list[checks.CheckMessage] = []
    seen: set[models.ForeignKey[Any, Any]] = set()
    for path in collection.related_paths:
        for hop in path.hops:
            fk = hop.fk
            if fk in seen or _indexed(fk):
                continue
            seen.add(fk)
            table = fk.model._meta.db_table
            messages.append(
                checks.Warning(
                    f"{collection!r}: the path {path.key!r} joins on {table}.{fk.column}"
                    f" ({fk.model._meta.label}.{fk.name}), which has no index: the change"
                    " stream's triggers scan that table for each change they resolve or"
                    " republish through it.",
                    hint="Index the column (db_index=True, a ForeignKey's default, or an"
                    " index or unique constraint that starts with it), or drop the path.",
                    obj=collection.model,
                    id="ddp.W004",
                )
            )
    return messages


def _indexed(fk: models.ForeignKey[Any, Any]) -> bool:
    """Whether an index starts with ``fk``'s column (what an equality lookup needs)."""
    if getattr(fk, "db_index", False) or fk.unique or fk.primary_key:
        return True
    opts = fk.model._meta
    names = {fk.name, fk.attname}
    firsts: list[str] = []
    for index in opts.indexes:
        if index.fields:
            firsts.append(index.fields[0].lstrip("-"))
    for constraint in opts.constraints:
        fields = getattr(constraint, "fields", ())
        if isinstance(constraint, models.UniqueConstraint) and fields:
            firsts.append(fields[0])
    for together in opts.unique_together:
        if together:
            firsts.append(together[0])
    return bool(names & set(firsts))


def _meteor_id_key(field: models.Field[Any, Any]) -> bool:
    if isinstance(field, models.ForeignKey):
        return _meteor_id_key(field.target_field)
    # AutoField and BigAutoField are IntegerFields; SlugField and EmailField are CharFields.
    return isinstance(
        field, models.CharField | models.TextField | models.UUIDField | models.IntegerField
    )


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """ddp.E003, ddp.E004, ddp.E005 and ddp.E011: the ``DDP_*`` settings have usable
    values."""
    messages: list[checks.CheckMessage] = []
    encoding = ddp_settings.raw("DDP_DECIMAL_ENCODING")
    if encoding not in DECIMAL_ENCODINGS:
        messages.append(
            checks.Error(
                f"DDP_DECIMAL_ENCODING is {encoding!r}.",
                hint=f"Use one of {', '.join(repr(e) for e in DECIMAL_ENCODINGS)}.",
                id="ddp.E003",
            )
        )
    if not isinstance(ddp_settings.raw("DDP_ATOMIC_METHODS"), bool):
        messages.append(checks.Error("DDP_ATOMIC_METHODS must be True or False.", id="ddp.E004"))
    retention = ddp_settings.raw("DDP_CHANGELOG_RETENTION")
    if isinstance(retention, dt.timedelta):
        retention = retention.total_seconds()
    if isinstance(retention, bool) or not isinstance(retention, int | float) or retention <= 0:
        messages.append(
            checks.Error(
                f"DDP_CHANGELOG_RETENTION is {ddp_settings.raw('DDP_CHANGELOG_RETENTION')!r}.",
                hint="Use a positive number of seconds (default 600) or a timedelta.",
                id="ddp.E005",
            )
        )
    lease = ddp_settings.raw("DDP_PRESENCE_LEASE")
    if isinstance(lease, dt.timedelta):
        lease = lease.total_seconds()
    if isinstance(lease, bool) or not isinstance(lease, int | float) or lease < MIN_PRESENCE_LEASE:
        messages.append(
            checks.Error(
                f"DDP_PRESENCE_LEASE is {ddp_settings.raw('DDP_PRESENCE_LEASE')!r}.",
                hint=f"Use at least {MIN_PRESENCE_LEASE} seconds (default 10): a relay renews"
                " its lease every ~3 s, a shorter lease lets other relays sweep live members.",
                id="ddp.E011",
            )
        )
    max_bytes = ddp_settings.raw("DDP_EVENT_MAX_BYTES")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        messages.append(checks.Error(f"DDP_EVENT_MAX_BYTES is {max_bytes!r}.", id="ddp.E011"))
    collection = ddp_settings.raw("DDP_PRESENCE_COLLECTION")
    if not isinstance(collection, str) or not collection:
        messages.append(checks.Error(f"DDP_PRESENCE_COLLECTION is {collection!r}.", id="ddp.E011"))
    return messages


def check_accounts(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """ddp.E006 to ddp.E010 and ddp.W003: the accounts settings and the password hasher."""
    # Imported here: they reach the models, and importing this module (the relay imports
    # the backend before Django is set up) must not.
    from django_app.accounts.hashers import MeteorPBKDF2PasswordHasher
    from django_app.accounts.users import users_collection_class

    messages: list[checks.CheckMessage] = []
    for name in ("DDP_ACCOUNTS", "DDP_CREATE_USER", "DDP_AMBIGUOUS_ERRORS"):
        if not isinstance(ddp_settings.raw(name), bool):
            messages.append(checks.Error(f"{name} must be True or False.", id="ddp.E006"))
    expiration = ddp_settings.raw("DDP_LOGIN_EXPIRATION")
    seconds = expiration.total_seconds() if isinstance(expiration, dt.timedelta) else expiration
    if expiration is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
    ):
        messages.append(
            checks.Error(
                f"DDP_LOGIN_EXPIRATION is {expiration!r}.",
                hint="Use a positive number of seconds (default 90 days), a timedelta, or"
                " None for tokens that never expire (about 100 years).",
                id="ddp.E007",
            )
        )
    messages += _check_authenticators()
    messages += _check_password_reset()
    if ddp_settings.raw("DDP_ACCOUNTS") is True:
        try:
            users_collection_class()
        except ImproperlyConfigured as exc:
            messages.append(checks.Error(str(exc), id="ddp.E009"))
        hashers = get_hashers()
        if not hashers or not isinstance(hashers[0], MeteorPBKDF2PasswordHasher):
            messages.append(
                checks.Warning(
                    "DDP accounts are on, but MeteorPBKDF2PasswordHasher is not the first of"
                    " PASSWORD_HASHERS: Meteor clients send a SHA-256 digest of the password,"
                    " which cannot be checked against the hashes Django stores then.",
                    hint="Put 'django_app.accounts.hashers.MeteorPBKDF2PasswordHasher' first"
                    " in PASSWORD_HASHERS; older hashes are upgraded at each user's next"
                    " login with the plain password.",
                    id="ddp.W003",
                )
            )
    return messages


def _check_authenticators() -> list[checks.CheckMessage]:
    paths = ddp_settings.raw("DDP_AUTHENTICATORS")
    if isinstance(paths, str) or not isinstance(paths, list | tuple):
        return [checks.Error("DDP_AUTHENTICATORS must be a list of dotted paths.", id="ddp.E008")]
    messages: list[checks.CheckMessage] = []
    for path in paths:
        try:
            target = import_string(path) if isinstance(path, str) else None
        except ImportError as exc:
            messages.append(checks.Error(f"DDP_AUTHENTICATORS: {exc}", id="ddp.E008"))
            continue
        if not callable(getattr(target, "authenticate", None)):
            messages.append(
                checks.Error(
                    f"DDP_AUTHENTICATORS: {path!r} is not an authenticator.",
                    hint="Name a class with an authenticate(handshake) method.",
                    id="ddp.E008",
                )
            )
    return messages


def _check_password_reset() -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    url = ddp_settings.raw("DDP_PASSWORD_RESET_URL")
    if url is not None and (not isinstance(url, str) or "{token}" not in url):
        messages.append(
            checks.Error(
                f"DDP_PASSWORD_RESET_URL is {url!r}.",
                hint="Use None or a URL with {token} where the reset token goes.",
                id="ddp.E010",
            )
        )
    path = ddp_settings.raw("DDP_PASSWORD_RESET_EMAIL")
    if path is not None:
        try:
            target = import_string(path) if isinstance(path, str) else None
        except ImportError:
            target = None
        if not callable(target):
            messages.append(
                checks.Error(
                    f"DDP_PASSWORD_RESET_EMAIL: {path!r} is not an importable callable.",
                    hint="Name f(user, token, url) -> (subject, body), or use None.",
                    id="ddp.E010",
                )
            )
    return messages
