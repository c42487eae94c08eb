"""The relay's ``Identity`` of a logged-in session: the user, the token, its revocation.

Job: build ``relay.backend.Identity`` from a credential, the key of a
``django_app.models.LoginToken`` row: the row's user (fresh from the database),
``user_id`` (the primary key as text), ``credential`` (the row's key), ``revocation`` (the
change-stream route whose only document is that row, in collection ``ddp.logintoken``,
with no fields) and ``position`` (where the token channel stood). When the row is deleted
(a logout elsewhere, ``removeOtherTokens``, a password change, a deactivation, expiry) its
delete travels that route and every relay closes the sessions holding it.

Order matters: the channel's position is read *before* the row, each in its own snapshot
after the row was committed. A delete committed before the position read is seen by the
row read (no identity); one committed after it has a later sequence, which the relay
applies. So no revocation falls between the two.

What must not live here: issuing or checking tokens (``django_app.accounts.tokens``), or
handshake parsing (``django_app.accounts.authenticators``).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from django_app import changes
from django_app.accounts.tokens import TOKEN_COLLECTION, token_channel
from django_app.accounts.users import user_id_of
from django_app.models import LoginToken
from relay.backend import Condition, Identity, Route

__all__ = ["identity_of_credential", "identity_of_user", "revocation_route"]


def revocation_route(credential: str) -> Route:
    """The route whose one document is the token row ``credential``."""
    pk = LoginToken._meta.pk
    assert pk is not None
    return Route(
        token_channel(),
        TOKEN_COLLECTION,
        (Condition(pk.attname, "exact", credential),),
        fields=(),
        doc_id=credential,  # a token's key is its wire id (a string key, kept as is)
    )


def identity_of_credential(credential: str, *, user: Any = None) -> Identity | None:
    """The identity the token row ``credential`` proves, read afresh; None when the row is
    gone or expired, or its user is inactive (or is not ``user``, when given)."""
    channel = token_channel()
    position = changes.positions([channel])[channel]
    row = (
        LoginToken.objects.select_related("user")
        .filter(pk=credential, expires__gt=timezone.now())
        .first()
    )
    if row is None or (user is not None and row.user_id != user.pk):
        return None
    owner = row.user
    if not getattr(owner, "is_active", True):
        return None
    return Identity(
        user=owner,
        user_id=user_id_of(owner),
        credential=row.pk,
        revocation=revocation_route(row.pk),
        position=position,
    )


def identity_of_user(user: Any, credential: str | None) -> Identity | None:
    """The identity of ``user`` logged in with token row ``credential``; without one, an
    identity that nothing can revoke live (an application's ``ctx.set_user(user)``)."""
    if credential is None:
        return Identity(user=user, user_id=user_id_of(user))
    return identity_of_credential(credential, user=user)
