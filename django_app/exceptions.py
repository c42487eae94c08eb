"""Errors a DDP client may see, raised by publications, methods and mutators.

Job: one small hierarchy rooted at ``DDPError``, a ``relay.backend.ClientError``, so the
relay turns it into a Meteor error object (``{"error", "reason", "details"}``) without
logging a traceback. Any other exception raised by application code is *not* client-safe:
the relay logs it and answers ``500 Internal server error``. What must not live here:
formatting wire messages (the relay does that) or catching errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from relay.backend import ClientError

__all__ = ["AccessDenied", "DDPError", "MatchFailed", "NotFound"]


class DDPError(ClientError):
    """A client-visible error: ``DDPError(error, reason=None, details=None)``.

    ``error`` is a string code (``"not-allowed"``) or a number (Meteor's 400, 403, 404);
    ``reason`` a human-readable sentence; ``details`` any JSON value. The counterpart of
    ``Meteor.Error`` on the server side.
    """

    def __init__(self, error: str | int, reason: str | None = None, details: Any = None) -> None:
        super().__init__(error, reason, details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, {self.reason!r})"

    @classmethod
    def from_validation_error(
        cls, exc: ValidationError, names: Mapping[str, str] | None = None
    ) -> DDPError:
        """400 with the validation messages; field errors keyed by wire name in ``details``.

        ``names`` maps model field names to the names the client knows (renames).
        """
        names = names or {}
        if not hasattr(exc, "error_dict"):
            return cls(400, " ".join(exc.messages) or "Validation failed")
        details = {
            names.get(field, field): [str(m) for m in messages]
            for field, messages in exc.message_dict.items()
        }
        reason = "; ".join(
            " ".join(messages) if field == NON_FIELD_ERRORS else f"{field}: {' '.join(messages)}"
            for field, messages in details.items()
        )
        return cls(400, reason or "Validation failed", details)


class MatchFailed(DDPError):
    """Parameters do not match the signature: Meteor's ``check()`` failure, 400 "Match failed"."""

    def __init__(self) -> None:
        super().__init__(400, "Match failed")


class AccessDenied(DDPError):
    """A mutator was refused by the collection's allow rules: 403 "Access denied"."""

    def __init__(self, reason: str = "Access denied") -> None:
        super().__init__(403, reason)


class NotFound(DDPError):
    """Something the client named does not exist (404), e.g. ``NotFound("Book not found")``."""

    def __init__(self, reason: str) -> None:
        super().__init__(404, reason)
