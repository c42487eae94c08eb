"""The example project: settings parsing, admin + static serving, and seed_demo."""

from __future__ import annotations

import io
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from example.settings import database_from_url


def test_database_url_parsing() -> None:
    db = database_from_url("postgresql://relay@127.0.0.1:5432/relay")
    assert {k: db[k] for k in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")} == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "relay",
        "USER": "relay",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": "5432",
    }
    assert db["CONN_HEALTH_CHECKS"] is True
    db = database_from_url("postgres://u%40x:p%2Fw@db.internal/my%20db")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == (
        "u@x",
        "p/w",
        "db.internal",
        "",
        "my db",
    )
    assert database_from_url("postgresql:///relay?host=/run/pg")["HOST"] == "/run/pg"
    with pytest.raises(ValueError, match="postgresql://"):
        database_from_url("sqlite:///x.db")


@pytest.mark.django_db
def test_admin_and_static_files_without_debug(settings: Any) -> None:
    assert settings.DEBUG is False
    client = Client()
    assert client.get("/").headers["Location"] == "/admin/"
    assert client.get("/admin/login/").status_code == 200
    css = client.get("/static/admin/css/base.css")
    assert css.status_code == 200
    assert b"".join(css.streaming_content)  # type: ignore[attr-defined]
    assert client.get("/static/nope.css").status_code == 404


@pytest.mark.django_db
def test_seed_demo_is_idempotent(seeded: str) -> None:
    assert "created superuser admin" in seeded
    assert seeded.count("created author") == 3 and seeded.count("created book") == 10
    Book.objects.filter(pk="lathe").update(title="Changed")
    Author.objects.filter(pk="jemisin").delete()  # cascades to her three books
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "restored book lathe" in out.getvalue()
    assert "created author jemisin" in out.getvalue()
    assert "unchanged superuser admin" in out.getvalue()
    assert (Author.objects.count(), Book.objects.count()) == (3, 10)
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("ddp-relay-demo")


@pytest.mark.django_db
def test_admin_password_from_env(monkeypatch: Any) -> None:
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "from-env")
    call_command("seed_demo", stdout=io.StringIO())
    assert User.objects.get(username="admin").check_password("from-env")


@pytest.mark.django_db
def test_admin_pages_render_for_the_superuser(seeded: str) -> None:
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    for url in (
        "/admin/bookstore/book/",
        "/admin/bookstore/author/",
        "/admin/bookstore/book/lathe/change/",
        "/admin/bookstore/author/leguin/change/",
        "/admin/bookstore/book/add/",
    ):
        assert client.get(url).status_code == 200, url


@pytest.mark.django_db
def test_admin_add_book_gets_a_meteor_id(seeded: str) -> None:
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    response = client.post(
        "/admin/bookstore/book/add/",
        {
            "title": "Mort",
            "author": "pratchett",
            "published": "",
            "price": "7.99",
            "tags": '["discworld"]',
        },
    )
    assert response.status_code == 302, response.content[:2000]
    book = Book.objects.get(title="Mort")
    assert len(book.id) == 17 and book.tags == ["discworld"]
