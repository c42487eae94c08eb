"""Helpers of the accounts tests: a fast Meteor hasher, and ways to call and inspect.

``FastMeteorPBKDF2PasswordHasher`` is the real scheme with one PBKDF2 iteration: the
suite's ``PASSWORD_HASHERS`` put it first (``tests/django_app/conftest.py``), so every test
hashes and verifies the way a project does, without a million iterations per password.
"""

from __future__ import annotations

from typing import Any

from django.db import connection

from django_app.accounts.hashers import MeteorPBKDF2PasswordHasher
from django_app.accounts.passwords import meteor_digest
from relay.backend import ClientError, Handshake, Identity

#: The suite's password hashers: the fast Meteor one first, MD5 as an "older" hasher.
TEST_HASHERS = [
    "tests.django_app.accounts.helpers.FastMeteorPBKDF2PasswordHasher",
    "django.contrib.auth.hashers.MD5PasswordHasher",
]


class FastMeteorPBKDF2PasswordHasher(MeteorPBKDF2PasswordHasher):
    """The Meteor hasher with a single PBKDF2 iteration (tests only)."""

    iterations = 1


def digest(password: str) -> dict[str, str]:
    """The password parameter a Meteor client sends for ``password``."""
    return {"digest": meteor_digest(password), "algorithm": "sha-256"}


def error_of(exc: BaseException) -> tuple[Any, Any]:
    """``(error, reason)`` of a client error."""
    assert isinstance(exc, ClientError), exc
    return exc.error, exc.reason


def token_ids(user: Any) -> set[str]:
    """The keys of every token row of ``user``, read with SQL (no ORM cache)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM ddp_login_token WHERE user_id = %s", [user.pk])
        return {row[0] for row in cursor.fetchall()}


def reset_email(user: Any, token: str, url: str | None) -> tuple[str, str]:
    """A ``DDP_PASSWORD_RESET_EMAIL`` composer: the username as subject, the link as body."""
    return user.get_username(), url or token


class Fixed:
    """A ``DDP_AUTHENTICATORS`` entry of an application: everyone is the user "reader"."""

    def authenticate(self, handshake: Handshake) -> Identity | None:
        from django.contrib.auth.models import User

        user = User.objects.get(username="reader")
        return Identity(user=user, user_id=str(user.pk))


class Nobody:
    """A ``DDP_AUTHENTICATORS`` entry that recognises nobody."""

    def authenticate(self, handshake: Handshake) -> Identity | None:
        return None
