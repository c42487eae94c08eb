"""Handshake authenticators: who a new DDP session is, from the HTTP request that opened it.

Job: the pluggable first step of ``DjangoBackend.authenticate``. ``DDP_AUTHENTICATORS``
lists dotted paths, tried in order; each names a class (instantiated once, no arguments)
whose ``authenticate(handshake)`` returns a ``relay.backend.Identity`` when it recognises
the request, or None to let the next one try. Nobody recognised: anonymous. Provided:

* ``SessionCookieAuthenticator`` (the default): the Django session named by the session
  cookie, verified read-only as ``django.contrib.auth.get_user`` would (a WebSocket
  handshake cannot send a cookie back); the session's ``"session"`` token row is created
  if needed (``django_app.accounts.tokens.session_token``), which gives the DDP session a
  credential, revoked live when the browser logs out of Django (``user_logged_out``),
  the password changes or the user is deactivated. For browser clients served from the
  same site as the DDP endpoint.
* ``BearerTokenAuthenticator``: ``Authorization: Bearer <resume token>`` on the upgrade
  request, for clients that cannot run ``login`` first (mobile, Node, Python): the token
  a login method returned, revoked live like any. With ``rest_framework.authtoken``
  installed it also takes a Django REST framework ``Token`` key (``Bearer`` or ``Token``
  scheme); such an identity has no credential here, so it is not revoked live (a deleted
  DRF token stops working at the next connection).

An application's own authenticator is any class with ``authenticate(handshake) -> Identity
| None``; it may use ``django_app.accounts.identity`` to build the identity. What must not
live here: DDP login methods (``django_app.accounts.methods``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, Protocol

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from django_app.accounts.identity import identity_of_credential
from django_app.accounts.sessions import load_session, session_key, session_user
from django_app.accounts.tokens import find_token, session_token
from django_app.accounts.users import user_id_of
from django_app.conf import ddp_settings
from relay.backend import Handshake, Identity

__all__ = [
    "Authenticator",
    "BearerTokenAuthenticator",
    "SessionCookieAuthenticator",
    "authenticate",
    "load_authenticators",
]

#: Longer bearer values are not tokens: refused without hashing them.
MAX_BEARER_LENGTH: Final = 256
#: Django REST framework's token model (an optional app: typed as a plain string so the
#: type checker does not look for it).
_DRF_TOKEN_MODEL: str = "authtoken.Token"


class Authenticator(Protocol):
    """What ``DDP_AUTHENTICATORS`` names: a class whose instances answer this."""

    def authenticate(self, handshake: Handshake) -> Identity | None:
        """The identity the handshake proves, or None when this authenticator does not
        recognise it (the next one tries)."""
        ...


class SessionCookieAuthenticator:
    """The user of the Django session the session cookie names (see the module)."""

    def authenticate(self, handshake: Handshake) -> Identity | None:
        key = session_key(handshake)
        if key is None:
            return None
        session = load_session(key)
        user = session_user(session)
        if user is None or not user.is_authenticated:
            return None
        # The store found a logged-in session under this key (session_user read it): the
        # row expires when the session does (or later, if it was extended since).
        row = session_token(user, key, session.get_expiry_date())
        return identity_of_credential(row.pk, user=user)


class BearerTokenAuthenticator:
    """``Authorization: Bearer <token>``: a resume token, or a DRF token (see the module)."""

    def authenticate(self, handshake: Handshake) -> Identity | None:
        scheme, _, value = handshake.headers.get("authorization", "").strip().partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if scheme not in ("bearer", "token") or not value or len(value) > MAX_BEARER_LENGTH:
            return None
        if scheme == "bearer":
            row = find_token(value)
            if row is not None and row.expires > timezone.now():
                return identity_of_credential(row.pk)
        return _rest_framework_identity(value)


def _rest_framework_identity(key: str) -> Identity | None:
    """The user of a Django REST framework ``Token`` (when ``rest_framework.authtoken`` is
    installed), with no credential: nothing here can revoke it live."""
    if not apps.is_installed("rest_framework.authtoken"):
        return None
    token_model = apps.get_model(_DRF_TOKEN_MODEL)
    token = token_model._default_manager.select_related("user").filter(key=key).first()
    if token is None or not getattr(token.user, "is_active", True):
        return None
    return Identity(user=token.user, user_id=user_id_of(token.user))


@lru_cache(maxsize=8)
def load_authenticators(paths: tuple[str, ...]) -> tuple[Authenticator, ...]:
    """Instances of the authenticator classes ``paths`` name (cached per list)."""
    loaded: list[Authenticator] = []
    for path in paths:
        try:
            target = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"DDP_AUTHENTICATORS: cannot import {path!r}: {exc}"
            ) from exc
        instance = target() if isinstance(target, type) else target
        if not callable(getattr(instance, "authenticate", None)):
            raise ImproperlyConfigured(
                f"DDP_AUTHENTICATORS: {path!r} has no authenticate(handshake) method."
            )
        loaded.append(instance)
    return tuple(loaded)


def authenticate(handshake: Handshake) -> Identity | None:
    """The first identity the ``DDP_AUTHENTICATORS`` find, or None (anonymous)."""
    for authenticator in load_authenticators(ddp_settings.AUTHENTICATORS):
        identity = authenticator.authenticate(handshake)
        if identity is not None:
            return identity
    return None
