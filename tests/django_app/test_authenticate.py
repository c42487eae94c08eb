"""DjangoBackend.authenticate (the Django session cookie of the WebSocket handshake), close."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, connections
from django.test import Client

from django_app.backend import DjangoBackend
from relay.backend import ANONYMOUS, Handshake
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db


def handshake_with(cookies: dict[str, str]) -> Handshake:
    return Handshake(headers={}, cookies=cookies, remote_addr="127.0.0.1", path="/websocket")


@pytest.fixture
def user() -> User:
    return User.objects.create_user("reader", "reader@example.org", "secret-password")


def session_cookie(user: User) -> str:
    client = Client()
    assert client.login(username="reader", password="secret-password")
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def test_logged_in_session(backend: DjangoBackend, user: User) -> None:
    identity = backend.authenticate(
        handshake_with({settings.SESSION_COOKIE_NAME: session_cookie(user)})
    )
    assert identity.user == user
    assert identity.user_id == str(user.pk)


@pytest.mark.parametrize(
    "cookies", [{}, {"sessionid": ""}, {"sessionid": "not-a-session"}, {"other": "x"}]
)
def test_anonymous(backend: DjangoBackend, cookies: dict[str, str]) -> None:
    assert backend.authenticate(handshake_with(cookies)) is ANONYMOUS


def test_changed_password_invalidates_the_session(backend: DjangoBackend, user: User) -> None:
    cookie = session_cookie(user)
    user.set_password("another-password")
    user.save()
    # The session's auth hash no longer matches, as for Django's own get_user().
    assert backend.authenticate(handshake_with({settings.SESSION_COOKIE_NAME: cookie})) is ANONYMOUS


def test_fallback_secret_verifies_without_touching_the_session(
    backend: DjangoBackend, user: User, settings: Any
) -> None:
    from django.contrib.sessions.models import Session

    cookie = session_cookie(user)
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-for-rotation-tests-0123456789"
    settings.SECRET_KEY_FALLBACKS = [old_key]
    identity = backend.authenticate(handshake_with({settings.SESSION_COOKIE_NAME: cookie}))
    assert identity.user_id == str(user.pk)
    # auth.get_user() would have cycled the key, deleting the session the cookie names.
    assert Session.objects.filter(session_key=cookie).exists()
    settings.SECRET_KEY_FALLBACKS = []
    assert backend.authenticate(handshake_with({settings.SESSION_COOKIE_NAME: cookie})) is ANONYMOUS
    assert Session.objects.filter(session_key=cookie).exists()


def test_session_without_hash_or_with_unknown_backend(backend: DjangoBackend, user: User) -> None:
    from django.contrib.sessions.backends.db import SessionStore

    for data in (
        {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        },
        {
            "_auth_user_id": str(user.pk),
            "_auth_user_backend": "no.such.Backend",
            "_auth_user_hash": "x",
        },
        {
            "_auth_user_id": "not-a-number",
            "_auth_user_backend": "django.contrib.auth.backends.ModelBackend",
        },
    ):
        store = SessionStore()
        store.update(data)
        store.create()
        cookies = {settings.SESSION_COOKIE_NAME: str(store.session_key)}
        assert backend.authenticate(handshake_with(cookies)) is ANONYMOUS


def test_inactive_user(backend: DjangoBackend, user: User) -> None:
    cookie = session_cookie(user)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert backend.authenticate(handshake_with({settings.SESSION_COOKIE_NAME: cookie})) is ANONYMOUS


def test_the_session_user_reaches_methods(
    backend: DjangoBackend, user: User, make_ctx: Any
) -> None:
    from relay.backend import CallContext

    identity = backend.authenticate(
        handshake_with({settings.SESSION_COOKIE_NAME: session_cookie(user)})
    )
    ctx = CallContext("s", identity, handshake_with({}))
    data = subscribe(backend, ctx, "books.all", [])
    assert data.documents == ()


def test_close_closes_connections(backend: DjangoBackend) -> None:
    """A stopping relay worker calls ``close()`` on its own thread: that thread's Django
    connections are closed for good (the server sees the session end), and a connection
    another thread holds is left alone."""
    here = connections[DEFAULT_DB_ALIAS]
    here.ensure_connection()
    here_raw = here.connection
    seen: dict[str, Any] = {}

    def worker() -> None:
        try:
            conn = connections[DEFAULT_DB_ALIAS]  # this thread's own wrapper
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            raw = conn.connection
            backend.close()
            seen["raw closed"] = raw.closed  # psycopg2: 0 while open
            seen["wrapper connection"] = conn.connection
        except BaseException as exc:  # reported by the assertion below, not lost in a thread
            seen["error"] = exc

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=30)
    assert "error" not in seen, seen
    assert seen["raw closed"]
    assert seen["wrapper connection"] is None
    assert not here_raw.closed
