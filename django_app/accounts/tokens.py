"""Login tokens: issued, hashed, looked up, expired (``django_app.models.LoginToken``).

Job: the life of a credential row. A resume token is a 43-character secret of Meteor's
``Random.secret()`` alphabet (about 258 bits), handed to the client once and stored only
as Meteor's ``hashedToken``: the standard, padded base64 of its SHA-256 (token ``abc`` ->
``ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=``). It expires ``DDP_LOGIN_EXPIRATION``
after its ``created`` time (default 90 days; None: about 100 years, as Meteor). A
``"session"`` row stands for a Django session whose cookie authenticated a DDP session: its
hash is of the session key and it expires with the session.

The token table is on the change stream as collection ``ddp.logintoken`` with no fields
(``django_app/ddp.py``): inserts and deletes travel it, nothing else, and no publication
returns it. A session logged in with a token is closed by every relay when its row is
deleted (``django_app.accounts.identity`` builds that route).

What must not live here: deciding who may get a token (``django_app.accounts.methods``,
``django_app.accounts.authenticators``) or the relay's identity.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from typing import Any, Final

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from django_app.channel import model_channel
from django_app.conf import ddp_settings
from django_app.models import LoginToken
from relay.protocol.alea import SECRET_CHARS

__all__ = [
    "EXPIRED_BATCH",
    "SECRET_LENGTH",
    "TOKEN_COLLECTION",
    "delete_expired",
    "find_token",
    "hash_token",
    "issue_token",
    "new_secret",
    "revoke_user_tokens",
    "session_token",
    "token_channel",
]

#: The length of a resume token (Meteor's ``Random.secret()``).
SECRET_LENGTH: Final = 43
#: The collection name of the token table on the change stream (never published).
TOKEN_COLLECTION: Final = "ddp.logintoken"
#: Rows deleted per statement by ``delete_expired``: short transactions.
EXPIRED_BATCH: Final = 1000


def new_secret() -> str:
    """A fresh resume token: 43 characters of ``SECRET_CHARS`` from ``secrets``."""
    return "".join(secrets.choice(SECRET_CHARS) for _ in range(SECRET_LENGTH))


def hash_token(secret: str) -> str:
    """Meteor's ``hashedToken``: base64 of the SHA-256 of the token's UTF-8 bytes."""
    digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest).decode("ascii")


def token_channel() -> str:
    """The change-stream channel of the token table."""
    return model_channel(LoginToken)


def issue_token(
    user: Any,
    *,
    created: dt.datetime | None = None,
    expires: dt.datetime | None = None,
) -> tuple[LoginToken, str]:
    """Store a new resume token of ``user``; returns the row and the secret (shown once).

    ``created`` defaults to now and ``expires`` to ``created + DDP_LOGIN_EXPIRATION``;
    ``getNewToken`` passes the old token's, so a renewed token never lives longer.
    """
    secret = new_secret()
    created = created or timezone.now()
    row = LoginToken.objects.create(
        user=user,
        hashed_token=hash_token(secret),
        kind=LoginToken.KIND_RESUME,
        created=created,
        expires=expires or created + ddp_settings.LOGIN_EXPIRATION,
    )
    return row, secret


def find_token(secret: str, kind: str = LoginToken.KIND_RESUME) -> LoginToken | None:
    """The row of ``secret`` (with its user loaded), expired or not; None if unknown."""
    return (
        LoginToken.objects.select_related("user")
        .filter(hashed_token=hash_token(secret), kind=kind)
        .first()
    )


def session_token(user: Any, session_key: str, expires: dt.datetime) -> LoginToken:
    """The ``"session"`` row of a Django session logged in as ``user``, created if needed.

    Keyed by the hash of the session key; ``expires`` moves later when the session was
    extended. A row of that key for another user (a key reused by a session store) is
    deleted first, which closes the DDP sessions that still held it. Safe against
    concurrent handshakes with the same cookie.
    """
    hashed = hash_token(session_key)
    for _attempt in range(3):
        row = LoginToken.objects.filter(hashed_token=hashed).first()
        if row is not None and (row.user_id != user.pk or row.kind != LoginToken.KIND_SESSION):
            row.delete()
            row = None
        if row is None:
            try:
                with transaction.atomic(using=router.db_for_write(LoginToken)):
                    return LoginToken.objects.create(
                        user=user,
                        hashed_token=hashed,
                        kind=LoginToken.KIND_SESSION,
                        created=timezone.now(),
                        expires=expires,
                    )
            except IntegrityError:
                continue  # another handshake created it: read it again
        if row.expires >= expires:
            return row
        # An UPDATE of ``expires`` publishes nothing (only the key is on the stream); zero
        # rows means housekeeping deleted it meanwhile: start over.
        if LoginToken.objects.filter(pk=row.pk).update(expires=expires):
            row.expires = expires
            return row
    raise RuntimeError("could not store the session token: it kept changing concurrently")


def revoke_user_tokens(user: Any) -> int:
    """Delete every token of ``user`` (resume tokens and cookie sessions): every DDP
    session logged in as that user is closed, on every relay, once this commits. Returns
    how many rows went. Browsers whose Django session is still valid reconnect logged in
    through their cookie; to end those too, end the Django sessions as well."""
    deleted, _ = LoginToken.objects.filter(user=user).delete()
    return int(deleted)


def delete_expired(*, batch_size: int = EXPIRED_BATCH) -> int:
    """Delete expired token rows in batches (each its own transaction outside one);
    returns how many. The deletes travel the change stream: relays close the sessions
    that still held them."""
    using = router.db_for_write(LoginToken)
    table = connections[using].ops.quote_name(LoginToken._meta.db_table)
    sql = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE expires <= %s LIMIT %s)"
    deleted = 0
    while True:
        with connections[using].cursor() as cursor:
            # The application's clock, as every other expiry check (not the transaction's).
            cursor.execute(sql, [timezone.now(), batch_size])
            count = int(cursor.rowcount)
        deleted += count
        if count < batch_size:
            return deleted
