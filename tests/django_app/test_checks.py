"""System checks of the ddp app, and the backend refusing to start on errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from bookstore.models import Author
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.test.utils import isolate_apps

from django_app import Collection
from django_app.checks import TAG, check_collections, check_database, check_settings
from django_app.registries import Registry


def ids(messages: list[checks.CheckMessage]) -> list[str | None]:
    return [m.id for m in messages]


def test_project_passes() -> None:
    assert checks.run_checks(tags=[TAG]) == []


def test_e001_not_postgresql() -> None:
    sqlite = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    messages = check_database(database_settings=sqlite)
    assert ids(messages) == ["ddp.E001"]
    assert "sqlite3" in messages[0].msg
    assert ids(check_database(database_settings={"default": {}})) == ["ddp.E001"]
    assert ids(check_database(database_settings={"default": {"ENGINE": "no.such.backend"}})) == [
        "ddp.E001"
    ]
    postgis = {"default": {"ENGINE": "django.db.backends.postgresql"}}
    assert check_database(database_settings=postgis) == []


def test_e002_primary_key_that_cannot_be_an_id() -> None:
    with isolate_apps("django_app"):

        class Dated(models.Model):
            day = models.DateField(primary_key=True)

            class Meta:
                app_label = "ddp"

        class Numbered(models.Model):
            class Meta:
                app_label = "ddp"

        class Child(models.Model):
            parent = models.OneToOneField(Numbered, primary_key=True, on_delete=models.CASCADE)

            class Meta:
                app_label = "ddp"

    reg = Registry()
    for model in (Dated, Numbered, Child):
        reg.register(type(f"{model.__name__}Collection", (Collection,), {"model": model}))
    messages = check_collections(registry=reg)
    assert ids(messages) == ["ddp.E002"]
    assert messages[0].obj is Dated


def test_w001_password_and_w002_long_channel() -> None:
    from django.contrib.auth.models import User

    with isolate_apps("django_app"):

        class AVeryLongModelNameThatWillNotFitIntoAPostgresChannelNameAtAll(models.Model):
            class Meta:
                app_label = "ddp"

    reg = Registry()

    @reg.register
    class Users(Collection):
        model = User

    @reg.register
    class Long(Collection):
        model = AVeryLongModelNameThatWillNotFitIntoAPostgresChannelNameAtAll

    assert ids(check_collections(registry=reg)) == ["ddp.W001", "ddp.W002"]
    assert check_collections([Author._meta.app_config], registry=reg) == []


def test_e003_e004_settings(settings: Any) -> None:
    assert check_settings() == []
    settings.DDP_DECIMAL_ENCODING = "float"
    settings.DDP_ATOMIC_METHODS = "yes"
    assert ids(check_settings()) == ["ddp.E003", "ddp.E004"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DDP_PRESENCE_LEASE", 4),
        ("DDP_PRESENCE_LEASE", dt.timedelta(seconds=3)),
        ("DDP_PRESENCE_LEASE", "10"),
        ("DDP_PRESENCE_LEASE", True),
        ("DDP_EVENT_MAX_BYTES", 0),
        ("DDP_EVENT_MAX_BYTES", 1.5),
        ("DDP_PRESENCE_COLLECTION", ""),
        ("DDP_PRESENCE_COLLECTION", None),
    ],
)
def test_e011_events_and_presence_settings(settings: Any, name: str, value: Any) -> None:
    settings.DDP_PRESENCE_LEASE = dt.timedelta(seconds=5)  # the shortest allowed
    assert check_settings() == []
    setattr(settings, name, value)
    assert ids(check_settings()) == ["ddp.E011"]


def test_backend_refuses_to_start_on_errors(settings: Any) -> None:
    from django_app.backend import DjangoBackend

    settings.DDP_DECIMAL_ENCODING = "float"
    with pytest.raises(ImproperlyConfigured, match=r"ddp\.E003"):
        DjangoBackend()
