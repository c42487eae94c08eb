"""The ``DDP_*`` Django settings this app reads, with their defaults.

Job: one place that names every setting and its default, read lazily on each access so
``override_settings`` works in tests and nothing reads settings at import time. What must
not live here: relay settings (those are ``RELAY_*`` environment variables, read by
``relay.config``) or validation (``django_app.checks`` reports bad values).

The accounts settings (``DDP_ACCOUNTS`` and below) are read when they are used, except
``DDP_ACCOUNTS``, ``DDP_USER_FIELDS``, ``DDP_USER_PROFILE`` and
``DDP_EMAIL_VERIFIED_FIELD``, which shape what ``django_app/ddp.py`` registers at start
(the ``users`` collection and the accounts methods).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Final

from django.conf import settings

__all__ = ["DECIMAL_ENCODINGS", "DEFAULTS", "UNEXPIRING_LOGIN", "ddp_settings"]

#: The encodings a ``DecimalField`` may be published with (see ``django_app.serializer``).
DECIMAL_ENCODINGS: Final = ("Decimal", "string", "number")

#: The lifetime of a login token when ``DDP_LOGIN_EXPIRATION`` is None: Meteor's
#: ``LOGIN_UNEXPIRING_TOKEN_DAYS`` (365 * 100 days).
UNEXPIRING_LOGIN: Final = dt.timedelta(days=365 * 100)

#: Every setting and its default.
DEFAULTS: Final[dict[str, Any]] = {
    #: How DecimalFields are published unless a Collection says otherwise. "string" is the
    #: default because stock Meteor clients without ``mongo-decimal`` throw on EJSON Decimal.
    "DDP_DECIMAL_ENCODING": "string",
    #: Run every DDP method inside ``transaction.atomic()``, so a failing method writes nothing.
    "DDP_ATOMIC_METHODS": True,
    #: How long change-stream history stays in ``ddp_changelog`` (seconds, or a timedelta)
    #: for relays to backfill after a gap or a reconnect; ``django_app.changes.prune()``
    #: (``manage.py ddp_prune_changelog``) deletes older rows.
    "DDP_CHANGELOG_RETENTION": 600,
    #: Meteor's accounts over DDP: the ``login``/``logout``/... methods, the ``users``
    #: collection and the logged-in user's null publication (``django_app.accounts``).
    "DDP_ACCOUNTS": True,
    #: Whether clients may call ``createUser`` (Meteor's ``forbidClientAccountCreation``,
    #: inverted). Off by default, unlike Meteor: a Django project opts in to signups.
    "DDP_CREATE_USER": False,
    #: Meteor's default accounts rate limit: 5 ``login``/``createUser``/``resetPassword``/
    #: ``forgotPassword`` calls per 10 s per connection and method. False removes it
    #: (Meteor's ``Accounts.removeDefaultRateLimit()``).
    "DDP_DEFAULT_RATE_LIMIT": True,
    #: Refused logins say "Something went wrong. Please check your credentials." whatever
    #: failed (Meteor 3's ``ambiguousErrorMessages``, default on); False gives Meteor's
    #: specific reasons ("User not found", "Incorrect password", ...).
    "DDP_AMBIGUOUS_ERRORS": True,
    #: Lifetime of a login token, in seconds (or a timedelta): Meteor's 90 days. None means
    #: about 100 years (Meteor's ``loginExpirationInDays: null``).
    "DDP_LOGIN_EXPIRATION": 90 * 86400,
    #: Dotted paths of the handshake authenticators, tried in order
    #: (``django_app.accounts.authenticators``); the first that recognises the request wins.
    "DDP_AUTHENTICATORS": ["django_app.accounts.authenticators.SessionCookieAuthenticator"],
    #: Extra user-model fields published in the ``users`` document: a list of field names,
    #: or a mapping of field name to document key.
    "DDP_USER_FIELDS": [],
    #: The ``users`` document's ``profile``: None (always ``{}``), the name of a user-model
    #: field holding a dict (a JSONField), or a mapping of profile key to field name.
    "DDP_USER_PROFILE": None,
    #: The name of a boolean user-model field telling whether the email address is
    #: verified: published as ``emails[0].verified``, set by ``verifyEmail`` and
    #: ``resetPassword``. None: ``verified`` is always False and ``verifyEmail`` refuses.
    "DDP_EMAIL_VERIFIED_FIELD": None,
    #: A URL for the password-reset email, with ``{token}`` where the reset token goes
    #: (e.g. ``"https://app.example.com/#/reset-password/{token}"``); None: the email
    #: gives the token alone.
    "DDP_PASSWORD_RESET_URL": None,
    #: Dotted path of ``f(user, token, url) -> (subject, body)`` writing the
    #: password-reset email; None: a short plain-text message.
    "DDP_PASSWORD_RESET_EMAIL": None,
    #: The largest event ``publish_event`` accepts: its payload as JSON, in bytes.
    "DDP_EVENT_MAX_BYTES": 65536,
    #: The client-side collection presence documents are published in
    #: (``django_app.presence``).
    "DDP_PRESENCE_COLLECTION": "presence",
    #: How long a relay worker's presence outlives it (seconds): a worker renews its lease
    #: every few seconds, and once the lease of one that died (SIGKILL, a lost node)
    #: expires, any other worker removes the presence it held. Small: the time "who is
    #: here" is wrong after a crash; not below a few renewals.
    "DDP_PRESENCE_LEASE": 10,
}


class _DDPSettings:
    """Attribute access to ``settings.DDP_*`` with the defaults above, read on every access."""

    @property
    def DECIMAL_ENCODING(self) -> str:
        return str(self._get("DDP_DECIMAL_ENCODING"))

    @property
    def ATOMIC_METHODS(self) -> bool:
        return bool(self._get("DDP_ATOMIC_METHODS"))

    @property
    def CHANGELOG_RETENTION(self) -> dt.timedelta:
        value = self._get("DDP_CHANGELOG_RETENTION")
        return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)

    @property
    def EVENT_MAX_BYTES(self) -> int:
        return int(self._get("DDP_EVENT_MAX_BYTES"))

    @property
    def PRESENCE_COLLECTION(self) -> str:
        return str(self._get("DDP_PRESENCE_COLLECTION"))

    @property
    def PRESENCE_LEASE(self) -> dt.timedelta:
        value = self._get("DDP_PRESENCE_LEASE")
        return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)

    @property
    def ACCOUNTS(self) -> bool:
        return bool(self._get("DDP_ACCOUNTS"))

    @property
    def DEFAULT_RATE_LIMIT(self) -> bool:
        return bool(self._get("DDP_DEFAULT_RATE_LIMIT"))

    @property
    def CREATE_USER(self) -> bool:
        return bool(self._get("DDP_CREATE_USER"))

    @property
    def AMBIGUOUS_ERRORS(self) -> bool:
        return bool(self._get("DDP_AMBIGUOUS_ERRORS"))

    @property
    def LOGIN_EXPIRATION(self) -> dt.timedelta:
        value = self._get("DDP_LOGIN_EXPIRATION")
        if value is None:
            return UNEXPIRING_LOGIN
        return value if isinstance(value, dt.timedelta) else dt.timedelta(seconds=value)

    @property
    def AUTHENTICATORS(self) -> tuple[str, ...]:
        return tuple(self._get("DDP_AUTHENTICATORS"))

    @property
    def USER_FIELDS(self) -> dict[str, str]:
        """``{field name: document key}`` (a list of names maps each to itself)."""
        value = self._get("DDP_USER_FIELDS")
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        return {str(name): str(name) for name in value}

    @property
    def USER_PROFILE(self) -> str | dict[str, str] | None:
        value = self._get("DDP_USER_PROFILE")
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        return None if value is None else str(value)

    @property
    def EMAIL_VERIFIED_FIELD(self) -> str | None:
        value = self._get("DDP_EMAIL_VERIFIED_FIELD")
        return None if value is None else str(value)

    @property
    def PASSWORD_RESET_URL(self) -> str | None:
        value = self._get("DDP_PASSWORD_RESET_URL")
        return None if value is None else str(value)

    @property
    def PASSWORD_RESET_EMAIL(self) -> str | None:
        value = self._get("DDP_PASSWORD_RESET_EMAIL")
        return None if value is None else str(value)

    @staticmethod
    def _get(name: str) -> Any:
        return getattr(settings, name, DEFAULTS[name])

    def raw(self, name: str) -> Any:
        """The setting's value as configured (unconverted), for system checks."""
        return self._get(name)


ddp_settings: Final = _DDPSettings()
