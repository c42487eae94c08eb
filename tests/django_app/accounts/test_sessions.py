"""The handshake's Django session: its key, its user, its refreshed auth hash."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from django_app.accounts.sessions import load_session, refresh_auth_hash, session_key, session_user
from relay.backend import Handshake
from tests.django_app.accounts.conftest import PASSWORD

pytestmark = pytest.mark.django_db


def test_session_key() -> None:
    name = settings.SESSION_COOKIE_NAME
    assert session_key(None) is None
    assert session_key(Handshake({}, {}, "::1", "/websocket")) is None
    assert session_key(Handshake({}, {name: ""}, "::1", "/websocket")) is None
    assert session_key(Handshake({}, {name: "abc"}, "::1", "/websocket")) == "abc"


def test_refresh_auth_hash_keeps_the_session_logged_in(reader: User, settings: Any) -> None:
    client = Client()
    assert client.login(username="reader", password=PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert session_user(load_session(key)) == reader
    reader.set_password("changed")
    reader.save()
    assert session_user(load_session(key)) is None  # Django logs it out ...
    session = load_session(key)
    refresh_auth_hash(session, reader)
    assert session.session_key == key  # ... unless refreshed, with the same key
    assert session_user(load_session(key)) == reader
    assert session_user(load_session("no-such-session")) is None
