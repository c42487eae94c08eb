"""Meteor's password digest, and the password parameter of the accounts methods.

Job: ``meteor_digest(password)``, the SHA-256 hex digest a Meteor client sends instead of
the password (``Accounts._hashPassword``), and ``parse_password(value)``, which checks the
``password`` parameter of ``login``, ``createUser``, ``changePassword`` and
``resetPassword`` like Meteor's ``passwordValidator`` (but with the length bound Meteor
means to have): either ``{"digest": <64 lowercase hex digits>, "algorithm": "sha-256"}``
(what Meteor's own client always sends) or a plain string of at most 256 characters (for
DDP clients without SHA-256). Anything else is 400 "Match failed".

Meteor's SHA-256 (``packages/sha``) encodes each UTF-16 code unit on its own, so a
character outside the Basic Multilingual Plane becomes two 3-byte surrogate encodings
(CESU-8) instead of 4 bytes of UTF-8: for such passwords the digest differs from a
standard SHA-256, and a server that hashed plain passwords the standard way could never
verify the digest a browser sends for the same emoji password.

What must not live here: hashing for storage (``django_app.accounts.hashers``) or any
database access.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from django_app.exceptions import MatchFailed

__all__ = ["DIGEST_ALGORITHM", "MAX_PASSWORD_LENGTH", "Password", "meteor_digest", "parse_password"]

#: The only ``algorithm`` Meteor's server accepts for a digest.
DIGEST_ALGORITHM: Final = "sha-256"
#: The longest plain password accepted (Meteor's ``passwordMaxLength`` default).
MAX_PASSWORD_LENGTH: Final = 256
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")


def meteor_digest(password: str) -> str:
    """The SHA-256 hex digest of ``password`` as Meteor's client computes it (CESU-8)."""
    units = password.encode("utf-16-le", "surrogatepass")
    # Rebuild the string one UTF-16 code unit per character: surrogates stay separate
    # characters, and "surrogatepass" encodes each as 3 bytes, as Meteor's Utf8Encode does.
    split = "".join(
        chr(int.from_bytes(units[i : i + 2], "little")) for i in range(0, len(units), 2)
    )
    return hashlib.sha256(split.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Password:
    """A password as a client sent it: always its Meteor digest, and the plain text when
    the client sent the plain text (only then can Django's validators check it, or a hash
    of another algorithm be verified and upgraded)."""

    digest: str
    plain: str | None = None

    def __repr__(self) -> str:
        return "<Password plain>" if self.plain is not None else "<Password digest>"


def parse_password(value: Any) -> Password:
    """The ``password`` parameter as a ``Password``; ``MatchFailed`` for anything else."""
    if isinstance(value, str):
        if len(value) > MAX_PASSWORD_LENGTH:
            raise MatchFailed()
        return Password(digest=meteor_digest(value), plain=value)
    if (
        isinstance(value, dict)
        and value.keys() == {"digest", "algorithm"}
        and value["algorithm"] == DIGEST_ALGORITHM
        and isinstance(value["digest"], str)
        and _DIGEST.fullmatch(value["digest"])
    ):
        return Password(digest=value["digest"])
    raise MatchFailed()
