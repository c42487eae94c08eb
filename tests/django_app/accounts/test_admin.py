"""The login token admin: read-only list, delete to revoke, revoke a user's tokens."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from django_app.accounts.tokens import issue_token
from django_app.models import LoginToken
from tests.django_app.accounts.helpers import token_ids

pytestmark = pytest.mark.django_db

URL = "/admin/ddp/logintoken/"


@pytest.fixture
def staff(db: None) -> Client:
    admin = User.objects.create_superuser("boss", "boss@example.com", "x")
    client = Client()
    client.force_login(admin)
    return client


def test_list_without_hashes(staff: Client, reader: User) -> None:
    row, secret = issue_token(reader)
    page = staff.get(URL).content.decode()
    assert "reader" in page and row.pk in page
    assert row.hashed_token not in page and secret not in page
    assert staff.get(f"{URL}add/").status_code == 403
    detail = staff.get(f"{URL}{row.pk}/change/")
    assert detail.status_code == 200 and row.hashed_token not in detail.content.decode()
    assert staff.get(f"{URL}?q=read").status_code == 200


def test_delete_revokes(staff: Client, reader: User) -> None:
    row, _ = issue_token(reader)
    response = staff.post(f"{URL}{row.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert token_ids(reader) == set()


def test_revoke_every_token_of_the_users(staff: Client, reader: User) -> None:
    one, _ = issue_token(reader)
    issue_token(reader)
    other = User.objects.create_user("other", "o@example.com", "x")
    theirs, _ = issue_token(other)
    response = staff.post(
        URL, {"action": "revoke_users_tokens", "_selected_action": [one.pk]}, follow=True
    )
    assert "Revoked 2 token(s) of 1 user(s)" in response.content.decode()
    assert token_ids(reader) == set()
    assert list(LoginToken.objects.values_list("pk", flat=True)) == [theirs.pk]
