"""Handshake authenticators: the session cookie's token row, bearer tokens, the setting."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone

from django_app.accounts.authenticators import (
    BearerTokenAuthenticator,
    SessionCookieAuthenticator,
    load_authenticators,
)
from django_app.accounts.tokens import hash_token, issue_token
from django_app.backend import DjangoBackend
from django_app.models import LoginToken
from relay.backend import ANONYMOUS, Handshake, Identity
from tests.django_app.accounts.conftest import PASSWORD
from tests.django_app.accounts.helpers import token_ids

pytestmark = pytest.mark.django_db

BEARER = [
    "django_app.accounts.authenticators.BearerTokenAuthenticator",
    "django_app.accounts.authenticators.SessionCookieAuthenticator",
]


def shake(cookies: dict[str, str] | None = None, **headers: str) -> Handshake:
    return Handshake(headers=headers, cookies=cookies or {}, remote_addr="::1", path="/websocket")


def browser_cookie() -> dict[str, str]:
    client = Client()
    assert client.login(username="reader", password=PASSWORD)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def test_the_cookie_gives_a_revocable_identity(backend: DjangoBackend, reader: User) -> None:
    cookies = browser_cookie()
    identity = backend.authenticate(shake(cookies))
    row = LoginToken.objects.get(pk=identity.credential)
    key = cookies[settings.SESSION_COOKIE_NAME]
    assert (row.kind, row.user_id, row.hashed_token) == ("session", reader.pk, hash_token(key))
    assert row.expires > timezone.now() + dt.timedelta(days=13)  # SESSION_COOKIE_AGE
    assert identity.revocation is not None and identity.user_id == str(reader.pk)
    # Every connection of that browser shares the row.
    assert backend.authenticate(shake(cookies)).credential == row.pk
    assert token_ids(reader) == {row.pk}


def test_bearer_resume_token(backend: DjangoBackend, reader: User, settings: Any) -> None:
    settings.DDP_AUTHENTICATORS = BEARER
    row, secret = issue_token(reader)
    for header in (f"Bearer {secret}", f"bearer  {secret} "):
        identity = backend.authenticate(shake(authorization=header))
        assert (identity.user_id, identity.credential) == (str(reader.pk), row.pk)
    for header in ("Bearer nope", "Bearer ", "Basic abc", secret, f"Bearer {'x' * 300}"):
        assert backend.authenticate(shake(authorization=header)) is ANONYMOUS
    _, old = issue_token(reader, expires=timezone.now() - dt.timedelta(seconds=1))
    assert backend.authenticate(shake(authorization=f"Bearer {old}")) is ANONYMOUS
    # A bad bearer header falls through to the next authenticator: the cookie.
    cookies = browser_cookie()
    identity = backend.authenticate(shake(cookies, authorization="Bearer nope"))
    assert identity.user_id == str(reader.pk)


def test_the_default_is_the_cookie_only(backend: DjangoBackend, reader: User) -> None:
    _, secret = issue_token(reader)
    assert backend.authenticate(shake(authorization=f"Bearer {secret}")) is ANONYMOUS


def test_rest_framework_tokens_need_rest_framework(reader: User) -> None:
    from django.apps import apps

    assert not apps.is_installed("rest_framework.authtoken")
    assert BearerTokenAuthenticator().authenticate(shake(authorization="Token abc")) is None


def test_rest_framework_token(reader: User, monkeypatch: Any) -> None:
    """DRF is not installed here: its Token model is stood in for by the shape the
    authenticator reads (``Token.objects.select_related("user").filter(key=...)``)."""
    from django.apps import apps

    class Token:
        def __init__(self, key: str, user: User) -> None:
            self.key, self.user = key, user

    class Manager:
        tokens = [Token("a" * 40, reader)]

        def select_related(self, *fields: str) -> Manager:
            return self

        def filter(self, key: str) -> Any:
            return type(
                "Q", (), {"first": lambda _: next((t for t in self.tokens if t.key == key), None)}
            )()

    model = type("TokenModel", (), {"_default_manager": Manager()})
    real_installed = apps.is_installed
    monkeypatch.setattr(
        apps,
        "is_installed",
        lambda name: name == "rest_framework.authtoken" or real_installed(name),
    )
    monkeypatch.setattr(apps, "get_model", lambda label: model)
    auth = BearerTokenAuthenticator()
    for scheme in ("Token", "Bearer"):
        identity = auth.authenticate(shake(authorization=f"{scheme} {'a' * 40}"))
        assert identity == Identity(user=reader, user_id=str(reader.pk))  # no credential
    assert auth.authenticate(shake(authorization=f"Token {'b' * 40}")) is None
    reader.is_active = False
    assert auth.authenticate(shake(authorization=f"Token {'a' * 40}")) is None


def test_authenticators_in_order(backend: DjangoBackend, reader: User, settings: Any) -> None:
    here = "tests.django_app.accounts.helpers"
    settings.DDP_AUTHENTICATORS = [f"{here}.Nobody", f"{here}.Fixed"]
    assert backend.authenticate(shake()).user_id == str(reader.pk)
    settings.DDP_AUTHENTICATORS = [f"{here}.Nobody"]
    assert backend.authenticate(shake()) is ANONYMOUS
    settings.DDP_AUTHENTICATORS = []
    assert backend.authenticate(shake(browser_cookie())) is ANONYMOUS


def test_load_authenticators_errors() -> None:
    with pytest.raises(ImproperlyConfigured, match="cannot import"):
        load_authenticators(("no.such.Authenticator",))
    with pytest.raises(ImproperlyConfigured, match="no authenticate"):
        load_authenticators(("django_app.accounts.tokens.hash_token",))
    (one,) = load_authenticators(("django_app.accounts.authenticators.SessionCookieAuthenticator",))
    assert isinstance(one, SessionCookieAuthenticator)
