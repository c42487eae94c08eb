"""System checks of the accounts settings: ddp.E006 to ddp.E010, ddp.W003."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.core import checks

from django_app.checks import TAG, check_accounts


def ids(messages: list[checks.CheckMessage]) -> list[str | None]:
    return [m.id for m in messages]


def test_the_suite_passes() -> None:
    assert check_accounts() == []
    assert checks.run_checks(tags=[TAG]) == []


def test_w003_hasher_not_first(settings: Any) -> None:
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django_app.accounts.hashers.MeteorPBKDF2PasswordHasher",
    ]
    (warning,) = check_accounts()
    assert warning.id == "ddp.W003" and not warning.is_serious()
    settings.DDP_ACCOUNTS = False
    assert check_accounts() == []


def test_e006_booleans(settings: Any) -> None:
    settings.DDP_CREATE_USER = "yes"
    settings.DDP_AMBIGUOUS_ERRORS = 1
    assert ids(check_accounts()) == ["ddp.E006", "ddp.E006"]


@pytest.mark.parametrize("value", [0, -5, "90 days", True, dt.timedelta(0)])
def test_e007_login_expiration(settings: Any, value: Any) -> None:
    settings.DDP_LOGIN_EXPIRATION = value
    assert ids(check_accounts()) == ["ddp.E007"]


@pytest.mark.parametrize("value", [None, 60, 0.5, dt.timedelta(days=1)])
def test_login_expiration_values(settings: Any, value: Any) -> None:
    settings.DDP_LOGIN_EXPIRATION = value
    assert check_accounts() == []


@pytest.mark.parametrize(
    "value",
    [
        "django_app.accounts.authenticators.SessionCookieAuthenticator",
        ["no.such.Thing"],
        ["django_app.accounts.tokens.hash_token"],
        [5],
    ],
)
def test_e008_authenticators(settings: Any, value: Any) -> None:
    settings.DDP_AUTHENTICATORS = value
    assert ids(check_accounts()) == ["ddp.E008"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DDP_USER_FIELDS", ["password"]),
        ("DDP_USER_FIELDS", ["no_such_field"]),
        ("DDP_USER_FIELDS", {"first_name": "profile"}),
        ("DDP_USER_PROFILE", "nope"),
        ("DDP_EMAIL_VERIFIED_FIELD", "email"),
    ],
)
def test_e009_user_fields(settings: Any, name: str, value: Any) -> None:
    setattr(settings, name, value)
    assert ids(check_accounts()) == ["ddp.E009"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DDP_PASSWORD_RESET_URL", "https://example.com/reset"),
        ("DDP_PASSWORD_RESET_URL", 5),
        ("DDP_PASSWORD_RESET_EMAIL", "no.such.compose"),
        ("DDP_PASSWORD_RESET_EMAIL", "django_app.accounts.tokens.TOKEN_COLLECTION"),
    ],
)
def test_e010_password_reset(settings: Any, name: str, value: Any) -> None:
    setattr(settings, name, value)
    assert ids(check_accounts()) == ["ddp.E010"]
