"""``MeteorPBKDF2PasswordHasher``: Django password hashes a Meteor digest can be checked against.

Job: make the two ways a password arrives verifiable against one stored hash. Django's own
login (forms, the admin, ``authenticate``) hands a hasher the plain password; a Meteor
client sends only ``{digest: SHA-256 hex of the password, algorithm: "sha-256"}``. A
Django hash of the plain password cannot be checked against a digest.

The scheme: this hasher (algorithm ``ddp_meteor_pbkdf2_sha256``) is Django's PBKDF2-SHA256
run over Meteor's digest of the password (``django_app.accounts.passwords.meteor_digest``)
instead of the password itself. Storage is exactly as strong as Django's default (same
PBKDF2, same iterations, salt and format; SHA-256 first adds no weakness: its output is
what PBKDF2 stretches, as Meteor's bcrypt does with the same digest). So:

* a plain password (Django's login, a DDP client sending a string) verifies through the
  hasher's ``verify``, which digests it first: Django's login keeps working;
* a Meteor client's digest verifies with ``verify_digest(digest, encoded)``: the same
  PBKDF2 over the digest, compared in constant time;
* a password set from a digest (``createUser``, ``changePassword``, ``resetPassword`` from
  a Meteor client) is stored with ``make_password_from_digest``: Django's login accepts it
  later with the plain password.

Put it first in ``PASSWORD_HASHERS`` (system check ``ddp.W003`` warns otherwise)::

    PASSWORD_HASHERS = [
        "django_app.accounts.hashers.MeteorPBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        ...
    ]

Older hashes are upgraded by Django's must-update mechanism at the next login that
carries the plain password (Django's login form, or a DDP client sending a string, which
``check_user_password`` verifies with Django's ``check_password`` and a setter). Until
then a digest cannot be checked against them: such a login is refused as a wrong
password (same 403), and the first refusal of each user is logged at INFO. Tests use a
subclass with few ``iterations`` (the stored hash carries its own count).

What must not live here: finding users, issuing tokens, or deciding refusals' messages
(``django_app.accounts.methods``).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from django.contrib.auth.hashers import (
    PBKDF2PasswordHasher,
    check_password,
    get_hashers,
    identify_hasher,
    make_password,
)
from django.core.exceptions import ImproperlyConfigured
from django.utils.crypto import constant_time_compare

from django_app.accounts.passwords import Password, meteor_digest
from django_app.accounts.revocation import rehashing

__all__ = [
    "MeteorPBKDF2PasswordHasher",
    "check_user_password",
    "make_password_from_digest",
    "meteor_hasher",
    "run_hasher_once",
    "set_user_password",
    "verify_digest",
]

logger = logging.getLogger("django_app.accounts")

#: How many users' "hash predates the hasher" are remembered, so each is logged once.
_PREDATES_MEMORY: Final = 10_000
_predates_logged: set[Any] = set()


class MeteorPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    """Django's PBKDF2-SHA256 over Meteor's SHA-256 digest of the password (see module)."""

    algorithm = "ddp_meteor_pbkdf2_sha256"

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        # Django's own argument checks (None password, "$" in the salt) run in
        # encode_digest, on the digest: a str password has a digest of hex digits.
        if password is None:
            raise TypeError("password must be provided.")
        return self.encode_digest(meteor_digest(password), salt, iterations)

    def encode_digest(self, digest: str, salt: str, iterations: int | None = None) -> str:
        """The stored form for a password known only by its Meteor digest."""
        return str(super().encode(digest, salt, iterations))

    def verify_digest(self, digest: str, encoded: str) -> bool:
        """Whether ``digest`` is the Meteor digest of the password ``encoded`` stores."""
        decoded = self.decode(encoded)
        expected = self.encode_digest(digest, str(decoded["salt"]), int(decoded["iterations"]))
        return constant_time_compare(encoded, expected)


def meteor_hasher() -> MeteorPBKDF2PasswordHasher | None:
    """The first ``MeteorPBKDF2PasswordHasher`` (or subclass) in ``PASSWORD_HASHERS``."""
    for hasher in get_hashers():
        if isinstance(hasher, MeteorPBKDF2PasswordHasher):
            return hasher
    return None


def verify_digest(digest: str, encoded: str | None) -> bool:
    """Whether Meteor ``digest`` matches the stored ``encoded`` password.

    False for a hash of another algorithm (it cannot be checked against a digest), an
    unusable password, or an algorithm no longer in ``PASSWORD_HASHERS``.
    """
    if not encoded:
        return False
    try:
        hasher = identify_hasher(encoded)
    except ValueError:
        return False
    if not isinstance(hasher, MeteorPBKDF2PasswordHasher):
        return False
    return hasher.verify_digest(digest, encoded)


def make_password_from_digest(digest: str) -> str:
    """The stored form of the password whose Meteor digest is ``digest``.

    ``ImproperlyConfigured`` when no ``MeteorPBKDF2PasswordHasher`` is installed: nothing
    else could verify the password later (system check ``ddp.W003`` says so at start).
    """
    hasher = meteor_hasher()
    if hasher is None:
        raise ImproperlyConfigured(
            "A Meteor client sent a password digest, but no MeteorPBKDF2PasswordHasher is in"
            " PASSWORD_HASHERS: add django_app.accounts.hashers.MeteorPBKDF2PasswordHasher"
            " first."
        )
    return hasher.encode_digest(digest, hasher.salt())


def set_user_password(user: Any, password: Password) -> None:
    """Set (not save) ``user``'s password from what the client sent, plain or digest."""
    if password.plain is not None:
        user.set_password(password.plain)
    else:
        user.password = make_password_from_digest(password.digest)


def check_user_password(user: Any, password: Password) -> bool:
    """Whether ``password`` is ``user``'s password.

    A plain password goes through Django's ``check_password`` with a setter: a hash of an
    older hasher is upgraded (saved) on success, without revoking the user's tokens (see
    ``django_app.accounts.revocation.rehashing``). A digest is checked with
    ``verify_digest``; against a hash of another algorithm it fails, and the first such
    failure of each user is logged at INFO.
    """
    encoded = user.password
    if password.plain is not None:

        def setter(raw: str) -> None:
            user.set_password(raw)
            # Django's own setter does the same: a re-hash is not a password change.
            user._password = None
            with rehashing():
                user.save(update_fields=["password"])

        return bool(check_password(password.plain, encoded, setter))
    if verify_digest(password.digest, encoded):
        _upgrade_from_digest(user, password.digest)
        return True
    if encoded and user.has_usable_password() and _foreign_hash(encoded):
        _log_predates(user.pk)
        # Nothing was hashed: spend what a check costs, or the answer's speed would tell
        # an existing user (with an old hash) from an unknown one.
        run_hasher_once(password)
    return False


def _log_predates(user_pk: Any) -> None:
    """Log once per user (of the last many) that its hash cannot verify a digest."""
    if user_pk in _predates_logged or len(_predates_logged) >= _PREDATES_MEMORY:
        return
    _predates_logged.add(user_pk)
    logger.info(
        "user %s sent a Meteor password digest, but their password hash predates"
        " MeteorPBKDF2PasswordHasher: refused as a wrong password until they log in once"
        " with the plain password (Django's login), which upgrades the hash",
        user_pk,
    )


def _upgrade_from_digest(user: Any, digest: str) -> None:
    """Re-hash a verified digest when the preferred hasher is a Meteor hasher whose
    settings changed (more iterations): the digest is all it needs."""
    preferred = get_hashers()[0]
    if isinstance(preferred, MeteorPBKDF2PasswordHasher) and (
        preferred.algorithm != identify_hasher(user.password).algorithm
        or preferred.must_update(user.password)
    ):
        user.password = preferred.encode_digest(digest, preferred.salt())
        with rehashing():
            user.save(update_fields=["password"])


def _foreign_hash(encoded: str) -> bool:
    try:
        return not isinstance(identify_hasher(encoded), MeteorPBKDF2PasswordHasher)
    except ValueError:
        return True


def run_hasher_once(password: Password) -> None:
    """Spend the time a password check takes (for a user that does not exist), so the
    answer's timing does not tell which usernames exist (as Django's ModelBackend)."""
    make_password(password.plain if password.plain is not None else password.digest)
