"""Identities: the revocation route, the position read after commit, verify()."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from django_app import changes
from django_app.accounts.identity import (
    identity_of_credential,
    identity_of_user,
    revocation_route,
)
from django_app.accounts.tokens import issue_token
from django_app.backend import DjangoBackend
from django_app.models import LoginToken
from relay.backend import ANONYMOUS, Condition, DecodedChange, Identity, Route
from tests.django_app.accounts.conftest import PASSWORD, Call
from tests.django_app.accounts.helpers import digest
from tests.django_app.changestream_helpers import changelog

TOKENS = "ddp_ddp_logintoken"


def test_revocation_route() -> None:
    assert revocation_route("abc") == Route(
        TOKENS, "ddp.logintoken", (Condition("id", "exact", "abc"),), fields=(), doc_id="abc"
    )


@pytest.mark.django_db(transaction=True)
def test_a_login_carries_the_position_after_its_commit(
    backend: DjangoBackend, call: Call, reader: User
) -> None:
    outcome = call("login", {"user": {"username": "reader"}, "password": digest(PASSWORD)})
    identity = outcome.identity
    assert identity is not None and identity.credential is not None
    position = changes.positions([TOKENS])[TOKENS]
    assert identity.position == position and position[0] >= 1
    # The token's insert is at or before that position: the relay needs nothing older.
    inserted = [c.pk for _, _, _, cs in changelog(TOKENS) for c in cs if c.op == "i"]
    assert identity.credential in inserted
    assert outcome.writes  # a non-atomic login still reports its writes
    # The revocation (a logout on another connection sharing the token) comes after it,
    # on the route, and decodes as the delete of the route's one document.
    call("logout", identity=identity)
    later = [c for seq, _, _, cs in changelog(TOKENS, position[0]) for c in cs]
    assert [(c.op, c.pk) for c in later] == [("d", identity.credential)]
    decoded = backend.decode_change(TOKENS, later[0])
    assert decoded == DecodedChange(
        "ddp.logintoken", identity.credential, "d", {}, {"id": identity.credential}
    )
    assert backend.verify(identity) is None


@pytest.mark.django_db
def test_verify(backend: DjangoBackend, reader: User) -> None:
    row, _ = issue_token(reader)
    identity = identity_of_credential(row.pk)
    assert identity is not None
    fresh = backend.verify(identity)
    assert fresh == identity and fresh is not identity
    assert fresh.user == reader and fresh.user is not identity.user  # read again
    # Expired.
    LoginToken.objects.filter(pk=row.pk).update(expires=timezone.now() - dt.timedelta(1))
    assert backend.verify(identity) is None
    # Gone.
    LoginToken.objects.filter(pk=row.pk).delete()
    assert backend.verify(identity) is None
    # Its user inactive (a token made after the deactivation, which revoked the rest).
    User.objects.filter(pk=reader.pk).update(is_active=False)
    late, _ = issue_token(reader)
    assert identity_of_credential(late.pk) is None
    # No credential: anonymous verifies as itself; a user nothing proves does not.
    assert backend.verify(ANONYMOUS) is ANONYMOUS
    assert backend.verify(Identity(user=reader, user_id=str(reader.pk))) is None


@pytest.mark.django_db
def test_identity_of_user(reader: User) -> None:
    assert identity_of_user(reader, None) == Identity(user=reader, user_id=str(reader.pk))
    row, _ = issue_token(reader)
    identity = identity_of_user(reader, row.pk)
    assert identity is not None and identity.credential == row.pk
    other = User.objects.create_user("other", "o@example.com", "x")
    assert identity_of_user(other, row.pk) is None  # not that user's token


@pytest.mark.django_db
def test_housekeeping_deletes_expired_tokens(backend: DjangoBackend, reader: User) -> None:
    live, _ = issue_token(reader)
    issue_token(reader, expires=timezone.now() - dt.timedelta(seconds=1))
    backend.housekeeping()
    assert list(LoginToken.objects.values_list("pk", flat=True)) == [live.pk]


def test_decode_change_of_the_token_collection(backend: DjangoBackend) -> None:
    from relay.protocol.changestream import Change

    decoded = backend.decode_change(TOKENS, Change("i", "abc", {}))
    assert decoded == DecodedChange("ddp.logintoken", "abc", "i", {}, {"id": "abc"})


@pytest.mark.django_db(transaction=True)
def test_a_login_revoked_before_the_identity_is_read_ends_logged_out(
    backend: DjangoBackend, call: Call, reader: User, monkeypatch: Any
) -> None:
    """A concurrent password change between the login's commit and the identity read:
    the session must not hold a token that is already gone."""
    from django_app.accounts import identity as module

    real = module.changes.positions

    def revoke_then_read(channels: Any) -> Any:
        User.objects.filter(pk=reader.pk).update(password="changed elsewhere")
        return real(channels)

    monkeypatch.setattr(module.changes, "positions", revoke_then_read)
    outcome = call("login", {"user": {"username": "reader"}, "password": digest(PASSWORD)})
    assert outcome.identity == ANONYMOUS
