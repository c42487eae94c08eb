"""The ``DDP_*`` Django settings this app reads, with their defaults.

Job: one place that names every setting and its default, read lazily on each access so
``override_settings`` works in tests and nothing reads settings at import time. What must
not live here: relay settings (those are ``RELAY_*`` environment variables, read by
``relay.config``) or validation (``django_app.checks`` reports bad values).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from django.conf import settings

__all__ = ["DECIMAL_ENCODINGS", "DEFAULTS", "ddp_settings"]

#: The encodings a ``DecimalField`` may be published with (see ``django_app.serializer``).
DECIMAL_ENCODINGS: Final = ("Decimal", "string", "number")

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

    @staticmethod
    def _get(name: str) -> Any:
        return getattr(settings, name, DEFAULTS[name])

    def raw(self, name: str) -> Any:
        """The setting's value as configured (unconverted), for system checks."""
        return self._get(name)


ddp_settings: Final = _DDPSettings()
