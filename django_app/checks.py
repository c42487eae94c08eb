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
* ``ddp.W001`` a collection publishes a field named ``password``;
* ``ddp.W002`` a model's channel name had to be shortened to fit PostgreSQL's identifier
  limit (it stays unique: a hash is appended).

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
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, models, router
from django.db.utils import load_backend

from django_app.conf import DECIMAL_ENCODINGS, ddp_settings
from django_app.registries import Registry
from django_app.registries import registry as default_registry

__all__ = [
    "TAG",
    "check_collections",
    "check_database",
    "check_settings",
    "register_checks",
]

#: The tag of every check here: ``manage.py check --tag ddp``.
TAG: Final = "ddp"


def register_checks() -> None:
    """Register the checks (``DDPConfig.ready`` calls this)."""
    checks.register(check_database, TAG)
    checks.register(check_collections, TAG)
    checks.register(check_settings, TAG)


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
    """ddp.E002, ddp.W001 and ddp.W002 for every registered collection."""
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
    """ddp.E003, ddp.E004 and ddp.E005: the ``DDP_*`` settings have usable values."""
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
    return messages
