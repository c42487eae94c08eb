"""The example project: settings parsing, admin + static serving, and seed_demo.

Elsewhere: the favorites (``test_example_favorites.py``), the secret key
(``test_example_secret_key.py``), the other settings (``test_example_settings.py``), the
login throttle (``test_example_throttle.py``) and the throttled admin login
(``test_example_admin_site.py``)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from bookstore.management.commands import seed_demo
from bookstore.models import Author, Book, Favorite, Tag
from django.contrib.auth import authenticate
from django.contrib.auth.hashers import get_hasher, identify_hasher
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from example.settings import database_from_url

from example import settings as example_settings
from relay.backend import ClientError


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
    # The demo page is at / (example/demo, tests/django_app/test_example_demo.py).
    assert client.get("/").status_code == 200
    assert client.get("/admin/login/").status_code == 200
    css = client.get("/static/admin/css/base.css")
    assert css.status_code == 200
    assert b"".join(css.streaming_content)  # type: ignore[attr-defined]
    assert client.get("/static/nope.css").status_code == 404


@pytest.mark.django_db
def test_seed_demo_is_idempotent(seeded: str) -> None:
    assert "created superuser admin" in seeded and "created user reader" in seeded
    assert seeded.count("created author") == 3 and seeded.count("created book") == 10
    Book.objects.filter(pk="lathe").update(title="Changed")
    Author.objects.filter(pk="jemisin").delete()  # cascades to her three books
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "restored book lathe" in out.getvalue()
    assert "created author jemisin" in out.getvalue()
    assert "unchanged superuser admin" in out.getvalue()
    assert "unchanged user reader" in out.getvalue()
    assert (Author.objects.count(), Book.objects.count()) == (3, 10)
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"
    assert book_tags() == {b["id"]: sorted(b["tags"]) for b in seed_demo.BOOKS}
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("ddp-relay-demo")
    assert admin.email == "admin@example.com"
    reader = User.objects.get(username="reader")
    assert (reader.email, reader.is_staff, reader.is_superuser, reader.is_active) == (
        "reader@example.com",
        False,
        False,
        True,
    )
    assert User.objects.count() == 2


def book_tags() -> dict[str, list[str]]:
    return {
        book.pk: sorted(book.tags.values_list("name", flat=True))
        for book in Book.objects.prefetch_related("tags")
    }


@pytest.mark.django_db
def test_seed_demo_brings_tags_back(seeded: str) -> None:
    assert "tagged book lathe: science fiction" in seeded
    assert Tag.objects.count() == len({t for b in seed_demo.BOOKS for t in b["tags"]})
    lathe = Book.objects.get(pk="lathe")
    lathe.tags.set([Tag.objects.create(name="mine"), Tag.objects.get(name="fantasy")])
    Book.objects.get(pk="dispossessed").tags.clear()
    Tag.objects.filter(name="hainish").delete()
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "tagged book lathe: science fiction" in out.getvalue()
    assert "tagged book dispossessed: hainish, science fiction, utopia" in out.getvalue()
    assert "tagged book left-hand: hainish, science fiction" in out.getvalue()
    assert "tagged book small-gods" not in out.getvalue()
    assert book_tags() == {b["id"]: sorted(b["tags"]) for b in seed_demo.BOOKS}
    assert Tag.objects.filter(name="mine").exists()  # unlinked, not deleted


@pytest.mark.django_db
def test_seeded_users_authenticate(seeded: str) -> None:
    reader = authenticate(username="reader", password="bookworm-2026")
    assert reader is not None and reader.get_username() == "reader"
    admin = authenticate(username="admin", password="ddp-relay-demo")
    assert admin is not None and admin.is_superuser
    assert authenticate(username="reader", password="ddp-relay-demo") is None


@pytest.mark.django_db
def test_seed_leaves_existing_users_passwords_alone(seeded: str) -> None:
    for name in ("admin", "reader"):
        user = User.objects.get(username=name)
        user.set_password(f"changed-{name}")
        user.save()
    call_command("seed_demo", stdout=io.StringIO())
    assert authenticate(username="reader", password="changed-reader") is not None
    assert authenticate(username="admin", password="changed-admin") is not None
    assert authenticate(username="reader", password="bookworm-2026") is None


@pytest.mark.django_db
def test_seed_moves_an_old_admin_to_the_new_email(seeded: str) -> None:
    User.objects.filter(username="admin").update(email="admin@example.org")
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "updated superuser admin's email to admin@example.com" in out.getvalue()
    assert User.objects.get(username="admin").email == "admin@example.com"
    # An email the operator chose is theirs: left alone.
    User.objects.filter(username="admin").update(email="ops@example.net")
    call_command("seed_demo", stdout=io.StringIO())
    assert User.objects.get(username="admin").email == "ops@example.net"


@pytest.mark.django_db
def test_seed_with_the_examples_own_password_hashers(settings: Any) -> None:
    """The suite hashes cheaply for speed (conftest); the example's own first hasher is
    the accounts one, with its real cost, and the seeded users must log in through it."""
    settings.PASSWORD_HASHERS = example_settings.PASSWORD_HASHERS
    assert settings.PASSWORD_HASHERS[0] == "django_app.accounts.hashers.MeteorPBKDF2PasswordHasher"
    call_command("seed_demo", stdout=io.StringIO())
    reader = authenticate(username="reader", password="bookworm-2026")
    assert reader is not None
    assert identify_hasher(reader.password).algorithm == get_hasher("default").algorithm


@pytest.mark.django_db
def test_passwords_from_env(monkeypatch: Any) -> None:
    monkeypatch.setenv("DEMO_ADMIN_PASSWORD", "from-env")
    monkeypatch.setenv("DEMO_READER_PASSWORD", "reader-from-env")
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "created superuser admin (password from DEMO_ADMIN_PASSWORD)" in out.getvalue()
    assert "created user reader (password from DEMO_READER_PASSWORD)" in out.getvalue()
    assert User.objects.get(username="admin").check_password("from-env")
    assert User.objects.get(username="reader").check_password("reader-from-env")


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
        "/admin/bookstore/favorite/",
        "/admin/bookstore/favorite/add/",
        "/admin/bookstore/tag/",
        "/admin/bookstore/tag/add/",
        f"/admin/bookstore/tag/{Tag.objects.get(name='utopia').pk}/change/",
        "/admin/bookstore/book/?tags__id__exact=" + Tag.objects.get(name="utopia").pk,
        "/admin/bookstore/book/?q=discworld",
    ):
        assert client.get(url).status_code == 200, url
    reader = User.objects.get(username="reader")
    favorite = Favorite.objects.create(user=reader, book=Book.objects.get(pk="lathe"))
    page = client.get(f"/admin/bookstore/favorite/{favorite.pk}/change/")
    assert page.status_code == 200
    assert b"The Lathe of Heaven" in page.content
    listing = client.get("/admin/bookstore/favorite/", {"q": "reader"})
    assert favorite.pk.encode() in listing.content


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
            "tags": [Tag.objects.get(name="discworld").pk, Tag.objects.get(name="fantasy").pk],
        },
    )
    assert response.status_code == 302, response.content[:2000]
    book = Book.objects.get(title="Mort")
    assert len(book.id) == 17
    assert sorted(book.tags.values_list("name", flat=True)) == ["discworld", "fantasy"]


@pytest.mark.django_db
def test_renaming_a_book_removed_meanwhile_is_a_404_not_a_server_error(
    backend: Any, make_ctx: Any, seeded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the fuzz probe: a books.remove between the read and the save made
    # "Save with update_fields did not affect any rows" a 500 with a traceback.
    import bookstore.ddp as bookstore_ddp

    read = bookstore_ddp._book

    def read_then_lose(book_id: str) -> Book:
        book = read(book_id)
        Book.objects.filter(pk=book_id).delete()
        return book

    monkeypatch.setattr(bookstore_ddp, "_book", read_then_lose)
    with pytest.raises(ClientError) as refused:
        backend.call(make_ctx(), "books.rename", ["lathe", "Gone"])
    assert (refused.value.error, refused.value.reason) == (404, "Book not found")
