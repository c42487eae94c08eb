"""Revocation on the write side: the user-table trigger, ddp.keep_token, ddp.rehash, and
Django's logout, for every write path."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import User
from django.db import connection, models
from django.test import Client
from django.test.utils import isolate_apps
from django.utils import timezone

from django_app.accounts.revocation import keep_token, rehashing
from django_app.accounts.tokens import issue_token, session_token
from django_app.backend import DjangoBackend
from django_app.triggers import revocation_set, sync_triggers
from relay.backend import Handshake
from tests.django_app.accounts.conftest import PASSWORD
from tests.django_app.accounts.helpers import token_ids
from tests.django_app.changestream_helpers import flush_now, tx_changes

pytestmark = pytest.mark.django_db


@pytest.fixture
def tokens(reader: User) -> set[str]:
    """Two resume tokens and a session row of ``reader``, and a token of someone else."""
    issue_token(reader)
    issue_token(reader)
    session_token(reader, "a-session-key", timezone.now() + dt.timedelta(hours=1))
    other = User.objects.create_user("other", "other@example.com", "x")
    issue_token(other)
    return token_ids(reader)


def others_tokens() -> int:
    return len(token_ids(User.objects.get(username="other")))


def test_set_password_and_save_revokes_every_token(reader: User, tokens: set[str]) -> None:
    assert len(tokens) == 3
    reader.set_password("a new one")
    reader.save()
    assert token_ids(reader) == set()
    assert others_tokens() == 1


def test_queryset_update_revokes(reader: User, tokens: set[str]) -> None:
    User.objects.filter(pk=reader.pk).update(password="!unusable")
    assert token_ids(reader) == set()
    assert others_tokens() == 1


def test_raw_sql_revokes(reader: User, tokens: set[str]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE auth_user SET password = 'x' WHERE id = %s", [reader.pk])
    assert token_ids(reader) == set()


def test_deactivation_revokes_and_reactivation_does_not(reader: User, tokens: set[str]) -> None:
    User.objects.filter(pk=reader.pk).update(is_active=True)  # true -> true: nothing
    assert token_ids(reader) == tokens
    reader.is_active = False
    reader.save()
    assert token_ids(reader) == set()
    issue_token(reader)  # an inactive user's token (say, made by hand)
    User.objects.filter(pk=reader.pk).update(is_active=False)  # false -> false: nothing
    User.objects.filter(pk=reader.pk).update(is_active=True)
    assert len(token_ids(reader)) == 1


def test_other_changes_revoke_nothing(reader: User, tokens: set[str]) -> None:
    reader.email = "new@example.com"
    reader.last_login = timezone.now()
    reader.first_name = "Rea"
    reader.save()
    reader.save()  # a full save rewrites the same password: not a change
    assert token_ids(reader) == tokens


def test_keep_token_keeps_one(reader: User, tokens: set[str]) -> None:
    kept = sorted(tokens)[0]
    with keep_token(kept):
        reader.set_password("changed")
        reader.save(update_fields=["password"])
    assert token_ids(reader) == {kept}
    # The setting ends with the block: the next change in the same transaction revokes all.
    reader.set_password("changed again")
    reader.save()
    assert token_ids(reader) == set()


def test_keep_token_none_keeps_nothing(reader: User, tokens: set[str]) -> None:
    with keep_token(None):
        User.objects.filter(pk=reader.pk).update(password="x")
    assert token_ids(reader) == set()


def test_rehashing_revokes_nothing(reader: User, tokens: set[str]) -> None:
    with rehashing():
        reader.set_password(PASSWORD)
        reader.save(update_fields=["password"])
    assert token_ids(reader) == tokens
    User.objects.filter(pk=reader.pk).update(password="x")  # after the block: revoked
    assert token_ids(reader) == set()


def test_revocations_travel_the_change_stream(reader: User, tokens: set[str]) -> None:
    flush_now()
    User.objects.filter(pk=reader.pk).update(password="x")
    flush_now()
    deleted = {c.pk for c in tx_changes("ddp_ddp_logintoken") if c.op == "d"}
    assert deleted == tokens


def test_django_logout_revokes_that_sessions_row(
    backend: DjangoBackend, reader: User, tokens: set[str]
) -> None:
    client = Client()
    assert client.login(username="reader", password=PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    shake = Handshake({}, {settings.SESSION_COOKIE_NAME: key}, "127.0.0.1", "/websocket")
    identity = backend.authenticate(shake)
    assert identity.credential in token_ids(reader)
    client.logout()
    assert token_ids(reader) == tokens  # that row only: the rest stay
    # A logout without a request (or without a session) has nothing to revoke.
    from django.contrib.auth import user_logged_out

    user_logged_out.send(sender=User, request=None, user=reader)
    assert token_ids(reader) == tokens


def test_the_trigger_is_installed_idempotently() -> None:
    assert not sync_triggers().changed
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'auth_user'::regclass"
            " AND tgname LIKE 'ddp\\_g\\_revoke%%'"
        )
        assert cursor.fetchall() == [("ddp_g_revoke_auth_user_u",)]


def test_a_model_without_is_active_or_password() -> None:
    with isolate_apps("django_app"):

        class Member(AbstractBaseUser):
            handle = models.CharField(max_length=20, unique=True)
            USERNAME_FIELD = "handle"

            class Meta:
                app_label = "ddp"

        class Plain(models.Model):
            class Meta:
                app_label = "ddp"

    member = revocation_set(connection, Member)
    assert member is not None
    ((_, trigger_sql),) = member.triggers
    assert '"password"' in trigger_sql and "is_active" not in trigger_sql
    assert member.function == "ddp_g_revoke_ddp_member"
    assert revocation_set(connection, Plain) is None
    full = revocation_set(connection, User)
    assert full is not None
    assert 'OLD."is_active" IS TRUE AND NEW."is_active" IS NOT TRUE' in full.triggers[0][1]
    assert "current_setting('ddp.keep_token', true)" in full.function_sql


def test_a_swapped_user_model_moves_the_trigger(monkeypatch: Any) -> None:
    """The trigger follows AUTH_USER_MODEL: another model's table gets it, the old one
    is dropped as stale."""
    from bookstore.models import Author

    from django_app import triggers

    real = triggers.revocation_set
    monkeypatch.setattr(triggers, "_user_model", lambda: Author)
    monkeypatch.setattr(
        triggers, "revocation_set", lambda conn, model=None: _author_set(conn, real)
    )
    plan = sync_triggers()
    assert plan.dropped == ["ddp_g_revoke_auth_user"]
    assert plan.created == ["ddp_g_revoke_bookstore_author"]
    monkeypatch.undo()
    plan = sync_triggers()
    assert plan.dropped == ["ddp_g_revoke_bookstore_author"]
    assert plan.created == ["ddp_g_revoke_auth_user"]


def _author_set(conn: Any, real: Any) -> Any:
    """A revocation set on bookstore_author (it has no password: pretend its email is)."""
    from bookstore.models import Author

    with isolate_apps("bookstore"):

        class AuthorAsUser(models.Model):
            password = models.CharField(max_length=200, db_column="email")

            class Meta:
                app_label = "bookstore"
                db_table = Author._meta.db_table

    return real(conn, AuthorAsUser)


def test_a_django_session_deleted_without_a_logout_revokes_its_row(
    backend: DjangoBackend, reader: User, tokens: set[str]
) -> None:
    # Found in review: a login as someone else flushes the session, an admin deletes it;
    # no user_logged_out is sent, and the DDP sessions of that cookie stayed logged in.
    from django.contrib.sessions.models import Session

    client = Client()
    assert client.login(username="reader", password=PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    shake = Handshake({}, {settings.SESSION_COOKIE_NAME: key}, "127.0.0.1", "/websocket")
    assert backend.authenticate(shake).credential in token_ids(reader)
    Session.objects.get(session_key=key).delete()
    assert token_ids(reader) == tokens
