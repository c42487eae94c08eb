"""The example's throttled admin login (``example/example/admin_site.py``), through
Django's test client: the form a person posts, the answers they get."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bookstore.models import Favorite
from django.contrib.auth.models import User
from django.core.cache import caches
from django.test import Client

pytestmark = pytest.mark.django_db

THROTTLED = b"Too many failed login attempts. Try again in"
WRONG = b"Please enter the correct username and password for a staff account"


@pytest.fixture(autouse=True)
def small_limits(settings: Any, seeded: str) -> Iterator[None]:
    settings.ADMIN_LOGIN_THROTTLE_PER_USERNAME = 3
    settings.ADMIN_LOGIN_THROTTLE_PER_ADDRESS = 5
    settings.ADMIN_LOGIN_THROTTLE_WINDOW = 900
    settings.HTTP_FORWARDED_COUNT = 0
    caches["default"].clear()
    yield
    caches["default"].clear()


def log_in(
    client: Client,
    username: str,
    password: str,
    address: str = "10.0.0.1",
    forwarded_for: str | None = None,
) -> Any:
    """Post the login form as a browser at ``address`` would (through a proxy that sent
    ``X-Forwarded-For: forwarded_for`` when given)."""
    meta = {"REMOTE_ADDR": address}
    if forwarded_for is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return client.post(
        "/admin/login/",
        {"username": username, "password": password, "next": "/admin/"},
        **meta,  # type: ignore[arg-type]  # WSGI environ entries, as Django's docs show
    )


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def test_a_right_password_logs_in() -> None:
    client = Client()
    response = log_in(client, "admin", "ddp-relay-demo")
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert logged_in(client)


def test_after_the_limit_even_the_right_password_is_refused() -> None:
    client = Client()
    for _ in range(3):
        response = log_in(client, "admin", "guess")
        assert response.status_code == 200 and WRONG in response.content
    response = log_in(client, "admin", "ddp-relay-demo")
    assert response.status_code == 429
    assert THROTTLED in response.content and b"15 minutes" in response.content
    assert 1 <= int(response["Retry-After"]) <= 900
    assert "no-cache" in response["Cache-Control"]
    assert not logged_in(client)
    # From another address too: the username is what is being guessed.
    assert log_in(Client(), "admin", "ddp-relay-demo", "10.9.9.9").status_code == 429
    # The page itself still opens; another user still logs in from there.
    assert Client().get("/admin/login/").status_code == 200
    other = Client()
    assert log_in(other, "ADMIN2", "x", "10.0.0.1").status_code == 200  # unknown user
    reader_form = log_in(Client(), "reader", "bookworm-2026", "10.0.0.1")
    assert reader_form.status_code == 200 and WRONG in reader_form.content  # not staff


def test_the_address_limit_covers_every_username() -> None:
    for n in range(5):
        assert log_in(Client(), f"nobody{n}", "guess", "10.0.0.7").status_code == 200
    refused = log_in(Client(), "admin", "ddp-relay-demo", "10.0.0.7")
    assert refused.status_code == 429 and THROTTLED in refused.content
    # Someone else, elsewhere, is not bothered.
    assert log_in(Client(), "admin", "ddp-relay-demo", "10.0.0.8").status_code == 302


def test_a_non_staff_users_right_password_counts_as_a_failure() -> None:
    for _ in range(3):
        assert log_in(Client(), "reader", "bookworm-2026").status_code == 200
    assert log_in(Client(), "reader", "bookworm-2026").status_code == 429


def test_a_success_resets_the_usernames_count() -> None:
    for _ in range(2):
        log_in(Client(), "admin", "guess")
    assert log_in(Client(), "admin", "ddp-relay-demo").status_code == 302
    for _ in range(3):
        assert log_in(Client(), "admin", "guess", "10.0.0.2").status_code == 200
    assert log_in(Client(), "admin", "ddp-relay-demo", "10.0.0.2").status_code == 429


def test_an_empty_form_counts_nothing() -> None:
    for _ in range(10):
        response = Client().post("/admin/login/", {"username": "admin", "password": ""})
        assert response.status_code == 200 and THROTTLED not in response.content
    assert log_in(Client(), "admin", "ddp-relay-demo").status_code == 302


def test_behind_trusted_proxies_clients_are_told_apart(settings: Any) -> None:
    """Behind one proxy every request comes from the proxy's address: the forwarded
    client is counted instead, and what a client forges to its left is ignored."""
    settings.HTTP_FORWARDED_COUNT = 1
    for n in range(5):
        response = log_in(
            Client(),
            f"nobody{n}",
            "guess",
            "10.0.0.254",
            forwarded_for=f"1.1.1.{n}, 203.0.113.9",
        )
        assert response.status_code == 200
    forged = log_in(Client(), "x", "y", "10.0.0.254", forwarded_for="198.51.100.1, 203.0.113.9")
    assert forged.status_code == 429
    honest = log_in(Client(), "admin", "ddp-relay-demo", "10.0.0.254", forwarded_for="198.51.100.2")
    assert honest.status_code == 302


def test_the_admin_still_works_after_logging_in() -> None:
    client = Client()
    assert log_in(client, "admin", "ddp-relay-demo").status_code == 302
    assert client.get("/admin/").status_code == 200
    response = client.post(
        "/admin/bookstore/favorite/add/",
        {"user": str(User.objects.get(username="reader").pk), "book": "lathe"},
    )
    assert response.status_code == 302, response.content[:2000]
    favorite = Favorite.objects.get()
    assert len(favorite.id) == 17 and favorite.book_id == "lathe"
