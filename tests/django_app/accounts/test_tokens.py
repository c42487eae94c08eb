"""Login tokens: secrets, Meteor's hashedToken, expiry, session rows, housekeeping."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from django_app.accounts.tokens import (
    SECRET_LENGTH,
    delete_expired,
    find_token,
    hash_token,
    issue_token,
    new_secret,
    session_token,
    token_channel,
)
from django_app.models import LoginToken


def test_hashed_token_is_meteors() -> None:
    assert hash_token("abc") == "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="


@given(st.text())
def test_hashes_are_44_base64_chars(secret: str) -> None:
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", hash_token(secret))


def test_secrets() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(re.fullmatch(rf"[A-Za-z0-9_-]{{{SECRET_LENGTH}}}", s) for s in secrets)
    assert token_channel() == "ddp_ddp_logintoken"


@pytest.mark.django_db
def test_issue_stores_only_the_hash(reader: User) -> None:
    row, secret = issue_token(reader)
    assert row.kind == "resume" and row.hashed_token == hash_token(secret)
    stored = LoginToken.objects.values_list(flat=True).get(pk=row.pk)
    assert secret not in str(LoginToken.objects.filter(pk=row.pk).values().get())
    assert stored == row.pk
    assert find_token(secret) == row
    assert find_token(secret, kind="session") is None
    assert find_token(secret + "x") is None
    assert secret not in repr(row) and row.hashed_token not in repr(row)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("setting", "lifetime"),
    [
        (None, dt.timedelta(days=365 * 100)),
        (3600, dt.timedelta(hours=1)),
        (dt.timedelta(days=2), dt.timedelta(days=2)),
    ],
)
def test_expiry_setting(reader: User, settings: Any, setting: Any, lifetime: dt.timedelta) -> None:
    settings.DDP_LOGIN_EXPIRATION = setting
    row, _ = issue_token(reader)
    assert row.expires - row.created == lifetime


@pytest.mark.django_db
def test_default_expiry_is_90_days(reader: User) -> None:
    row, _ = issue_token(reader)
    assert row.expires - row.created == dt.timedelta(days=90)
    when = timezone.now() - dt.timedelta(days=3)
    kept, _ = issue_token(reader, created=when, expires=row.expires)
    assert (kept.created, kept.expires) == (when, row.expires)


@pytest.mark.django_db
def test_session_rows(reader: User) -> None:
    soon = timezone.now() + dt.timedelta(hours=1)
    row = session_token(reader, "session-key", soon)
    assert (row.kind, row.hashed_token, row.expires) == ("session", hash_token("session-key"), soon)
    assert session_token(reader, "session-key", soon - dt.timedelta(minutes=5)) == row
    later = soon + dt.timedelta(hours=1)
    assert session_token(reader, "session-key", later).expires == later
    assert LoginToken.objects.get(pk=row.pk).expires == later
    assert LoginToken.objects.count() == 1
    # The same key for another user: the old row goes (its sessions are closed).
    other = User.objects.create_user("other", "other@example.com", "x")
    moved = session_token(other, "session-key", later)
    assert moved.pk != row.pk and moved.user_id == other.pk
    assert not LoginToken.objects.filter(pk=row.pk).exists()


@pytest.mark.django_db
def test_session_row_recreated_after_housekeeping(reader: User, monkeypatch: Any) -> None:
    soon = timezone.now() + dt.timedelta(hours=1)
    row = session_token(reader, "k", soon)
    real_filter = LoginToken.objects.filter
    calls = {"n": 0}

    def racing_filter(*args: Any, **kwargs: Any) -> Any:
        # Housekeeping deletes the row between the read and the UPDATE of its expiry.
        result = real_filter(*args, **kwargs)
        if kwargs == {"pk": row.pk} and calls["n"] == 0:
            calls["n"] += 1
            real_filter(pk=row.pk).delete()
        return result

    monkeypatch.setattr(LoginToken.objects, "filter", racing_filter)
    again = session_token(reader, "k", soon + dt.timedelta(hours=1))
    assert again.pk != row.pk and real_filter(pk=again.pk).exists()


@pytest.mark.django_db
def test_delete_expired(reader: User) -> None:
    now = timezone.now()
    live, _ = issue_token(reader)
    for i in range(5):
        issue_token(reader, created=now - dt.timedelta(days=100), expires=now - dt.timedelta(i))
    assert delete_expired(batch_size=2) == 5
    assert list(LoginToken.objects.values_list("pk", flat=True)) == [live.pk]
    assert delete_expired() == 0
