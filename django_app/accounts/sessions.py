"""Django sessions seen from a DDP handshake: the cookie's session and its user.

Job: read the Django session a WebSocket handshake's cookie names, and its user, verified
like ``django.contrib.auth.get_user`` but read-only: ``get_user`` flushes a session whose
auth hash does not verify and cycles the key of one signed with a ``SECRET_KEY_FALLBACKS``
secret, which deletes the session the browser's cookie names. A WebSocket handshake
cannot send a new cookie back, so it only reads; the next HTTP request does the
housekeeping. Also ``refresh_auth_hash``: after ``changePassword`` from a
cookie-authenticated DDP session, the browser's session stays logged in, as Django's
``update_session_auth_hash`` does for a password-change view.

What must not live here: token rows (``django_app.accounts.tokens``) or identities.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
    load_backend,
)
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.utils.crypto import constant_time_compare

from relay.backend import Handshake

__all__ = ["load_session", "refresh_auth_hash", "session_key", "session_user"]


def session_key(handshake: Handshake | None) -> str | None:
    """The session key the handshake's session cookie carries, or None."""
    if handshake is None:
        return None
    return handshake.cookies.get(settings.SESSION_COOKIE_NAME) or None


def load_session(key: str) -> SessionBase:
    """The session store of ``key`` (``SESSION_ENGINE``), not loaded yet."""
    engine = import_module(settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(key)
    return store


def session_user(session: SessionBase) -> Any:
    """The user ``session`` is logged in as, verified like ``auth.get_user``, or None."""
    try:
        user_id = get_user_model()._meta.pk.to_python(session[SESSION_KEY])
        backend_path = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    user = load_backend(backend_path).get_user(user_id)
    if user is None or not hasattr(user, "get_session_auth_hash"):
        return user
    session_hash = session.get(HASH_SESSION_KEY)
    if not session_hash:
        return None
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    if any(constant_time_compare(session_hash, h) for h in hashes):
        return user
    return None


def refresh_auth_hash(session: SessionBase, user: Any) -> None:
    """Store ``user``'s current session auth hash in ``session`` (its password changed),
    keeping the key: the browser's cookie goes on naming it."""
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
