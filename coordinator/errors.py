"""The coordinator's error family: what callers of ``coordinator`` may catch.

Job: one small hierarchy rooted at ``CoordinatorError``. ``coordinator.zk`` translates
every kazoo exception into one of these at its boundary, and ``coordinator.memory`` raises
the same ones in the same situations, so callers never see a kazoo type.

Must not: import kazoo (the translation lives in ``zk.py``), or carry retry policy.
Programming errors (a malformed id, oversized facts) are ``ValueError``, not these.
"""

from __future__ import annotations

__all__ = [
    "CoordinatorError",
    "FencedError",
    "NotConnectedError",
    "SessionExists",
    "SessionNotFound",
]


class CoordinatorError(Exception):
    """Root of every error the coordinator raises on purpose."""


class NotConnectedError(CoordinatorError):
    """The coordinator is SUSPENDED or LOST (or not started): nothing was read or written.

    Raised promptly instead of waiting for a reconnect. Callers degrade: new DDP sessions
    go on without a coordinator record; resumes fall back to a fresh session.

    Exception: when the connection drops *during* a write and does not come back within
    the short command retry budget, the write may or may not have landed. The fence still
    holds either way; the caller must not assume it owns (or parked) the session.
    """


class FencedError(CoordinatorError):
    """A compare-and-set lost: the session's epoch or owner is not what the caller said.

    This is the fence. Whoever gets it must not act as the session's owner any more
    (must not resume it, park it, or drop it).
    """


class SessionNotFound(CoordinatorError):
    """No record for this session id (never created, dropped, or reaped)."""


class SessionExists(CoordinatorError):
    """``create_session`` for an id that already has a record."""
