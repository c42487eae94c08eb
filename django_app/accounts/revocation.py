"""Revocation on the write side: what removes login tokens, whoever changes the user.

Job: the Python half of revoking tokens. The database half is a generated trigger on the
user table (``django_app.triggers``, installed by ``migrate`` and ``ddp_sync_triggers``):
when a user's password column changes, or ``is_active`` goes from true to false (when the
model has a concrete ``is_active``), it deletes every ``ddp_login_token`` row of that
user, for every write path (``set_password()`` + ``save()``, the admin, a form,
``QuerySet.update(password=...)``, raw SQL). The deletes travel the change stream, and
every relay closes the sessions that held those tokens. Two transaction-local PostgreSQL
settings steer it, set here:

* ``ddp.keep_token``: the id of one row the trigger keeps (``changePassword`` keeps the
  caller's token, as Meteor does): ``keep_token(token_id)``;
* ``ddp.rehash``: ``on`` while a password hash is upgraded to the preferred hasher at a
  plain-password DDP login (same password, new hash: not a password change):
  ``rehashing()``. Django's own login form upgrades hashes without it, so a hash upgrade
  there revokes the user's DDP tokens, as it ends the user's other Django sessions (their
  session hash derives from the password hash).

And ``revoke_django_session``, the receiver of Django's ``user_logged_out``
(``django_app/ddp.py`` connects it): the ``"session"`` row of the Django session being
logged out is deleted, so the DDP sessions that the browser's cookie authenticated are
closed too; and ``revoke_deleted_django_session`` does the same when a database-backed
Django session is deleted without a logout.

What must not live here: the trigger's SQL (``django_app.triggers``) or issuing tokens
(``django_app.accounts.tokens``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_app.accounts.tokens import hash_token
from django_app.models import LoginToken

__all__ = [
    "KEEP_TOKEN_SETTING",
    "REHASH_SETTING",
    "keep_token",
    "rehashing",
    "revoke_django_session",
]

#: The transaction-local setting naming the one token row the trigger keeps.
KEEP_TOKEN_SETTING: Final = "ddp.keep_token"
#: The transaction-local setting that tells the trigger a password was only re-hashed.
REHASH_SETTING: Final = "ddp.rehash"


def _set_local(name: str, value: str, using: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT set_config(%s, %s, true)", [name, value])


@contextmanager
def keep_token(token_id: str | None, *, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Within the block (a transaction is opened if there is none), a password change
    or deactivation of the user keeps the token row ``token_id`` (None keeps nothing)."""
    with transaction.atomic(using=using):
        _set_local(KEEP_TOKEN_SETTING, token_id or "", using)
        try:
            yield
        finally:
            # Transaction-local already; reset so later writes of an enclosing
            # transaction revoke everything again.
            if not connections[using].needs_rollback:
                _set_local(KEEP_TOKEN_SETTING, "", using)


@contextmanager
def rehashing(*, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Within the block, a changed password hash is an upgrade of the same password: the
    trigger revokes nothing."""
    with transaction.atomic(using=using):
        _set_local(REHASH_SETTING, "on", using)
        try:
            yield
        finally:
            if not connections[using].needs_rollback:
                _set_local(REHASH_SETTING, "", using)


def revoke_django_session(
    sender: Any, request: Any = None, user: Any = None, **kwargs: Any
) -> None:
    """``user_logged_out`` receiver: delete the ``"session"`` token of that Django session.

    Django sends the signal before it flushes the session, so the key is still the one the
    DDP sessions were authenticated with. A logout without a request (or without a
    session) has nothing to revoke.
    """
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key:
        revoke_session_key(key)


def revoke_deleted_django_session(sender: Any, instance: Any, **kwargs: Any) -> None:
    """``post_delete`` receiver of Django's database ``Session`` model: a Django session
    that ended without a logout (a login as someone else flushes it, a login cycles its
    key, an admin deletes it) stops authenticating the DDP sessions its cookie opened.
    Bulk deletes (``clearsessions``) send no signal: those rows expire with the session."""
    key = getattr(instance, "session_key", None)
    if key:
        revoke_session_key(key)


def revoke_session_key(key: str) -> None:
    """Delete the ``"session"`` token row of the Django session ``key``."""
    LoginToken.objects.filter(hashed_token=hash_token(key), kind=LoginToken.KIND_SESSION).delete()
