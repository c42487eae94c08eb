"""``manage.py seed_demo``: the demo data (3 authors, 10 books and their tags) and two users.

Idempotent: rows have fixed ids and are created or brought back to the demo values (a
book's tags too: missing tags are created by name, other tags the book has are unlinked,
no tag is deleted). The
users are created once and their passwords never overwritten afterwards: the superuser
``admin`` (``admin@example.com``, password from ``DEMO_ADMIN_PASSWORD``, default
``ddp-relay-demo``) and ``reader`` (``reader@example.com``, an ordinary user for Meteor
clients to log in as; password from ``DEMO_READER_PASSWORD``, default ``bookworm-2026``).
An ``admin`` seeded before the email changed keeps its password and gets the new email.

Must not: run outside one transaction for the demo rows, or overwrite a user's password.
"""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from bookstore.models import Author, Book, Tag

DEFAULT_ADMIN_PASSWORD = "ddp-relay-demo"
DEFAULT_READER_PASSWORD = "bookworm-2026"
ADMIN_EMAIL = "admin@example.com"
READER_EMAIL = "reader@example.com"
#: The email earlier versions seeded the admin with; brought to ADMIN_EMAIL.
_OLD_ADMIN_EMAIL = "admin@example.org"

AUTHORS: list[dict[str, Any]] = [
    {"id": "leguin", "name": "Ursula K. Le Guin", "email": "ursula.leguin@example.org"},
    {"id": "pratchett", "name": "Terry Pratchett", "email": "terry.pratchett@example.org"},
    {"id": "jemisin", "name": "N. K. Jemisin", "email": "nk.jemisin@example.org"},
]

BOOKS: list[dict[str, Any]] = [
    {
        "id": "earthsea-1",
        "title": "A Wizard of Earthsea",
        "author_id": "leguin",
        "published": dt.date(1968, 11, 1),
        "price": Decimal("9.99"),
        "tags": ["fantasy", "earthsea"],
    },
    {
        "id": "left-hand",
        "title": "The Left Hand of Darkness",
        "author_id": "leguin",
        "published": dt.date(1969, 3, 1),
        "price": Decimal("11.50"),
        "tags": ["science fiction", "hainish"],
    },
    {
        "id": "lathe",
        "title": "The Lathe of Heaven",
        "author_id": "leguin",
        "published": dt.date(1971, 10, 1),
        "price": Decimal("10.25"),
        "tags": ["science fiction"],
    },
    {
        "id": "dispossessed",
        "title": "The Dispossessed",
        "author_id": "leguin",
        "published": dt.date(1974, 5, 1),
        "price": Decimal("12.00"),
        "tags": ["science fiction", "hainish", "utopia"],
    },
    {
        "id": "guards-guards",
        "title": "Guards! Guards!",
        "author_id": "pratchett",
        "published": dt.date(1989, 11, 1),
        "price": Decimal("8.99"),
        "tags": ["fantasy", "discworld", "city watch"],
    },
    {
        "id": "small-gods",
        "title": "Small Gods",
        "author_id": "pratchett",
        "published": dt.date(1992, 5, 1),
        "price": Decimal("8.99"),
        "tags": ["fantasy", "discworld"],
    },
    {
        "id": "going-postal",
        "title": "Going Postal",
        "author_id": "pratchett",
        "published": dt.date(2004, 9, 25),
        "price": Decimal("9.49"),
        "tags": ["fantasy", "discworld", "moist von lipwig"],
    },
    {
        "id": "fifth-season",
        "title": "The Fifth Season",
        "author_id": "jemisin",
        "published": dt.date(2015, 8, 4),
        "price": Decimal("13.99"),
        "tags": ["fantasy", "broken earth"],
    },
    {
        "id": "obelisk-gate",
        "title": "The Obelisk Gate",
        "author_id": "jemisin",
        "published": dt.date(2016, 8, 16),
        "price": Decimal("13.99"),
        "tags": ["fantasy", "broken earth"],
    },
    {
        "id": "stone-sky",
        "title": "The Stone Sky",
        "author_id": "jemisin",
        "published": dt.date(2017, 8, 15),
        "price": Decimal("14.99"),
        "tags": ["fantasy", "broken earth"],
    },
]


class Command(BaseCommand):
    help = "Create or restore the bookstore demo data, the 'admin' superuser and 'reader'."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for row in AUTHORS:
                self._upsert(Author, row)
            for row in BOOKS:
                self._upsert(Book, row)
                self._tag(row["id"], row["tags"])
        self._admin()
        self._reader()

    def _upsert(self, model: type[Author] | type[Book], row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k not in ("id", "tags")}
        instance = model._default_manager.filter(pk=row["id"]).first()
        label = f"{model._meta.model_name} {row['id']}"
        if instance is None:
            model._default_manager.create(id=row["id"], **values)
            self.stdout.write(f"created {label}")
        elif any(getattr(instance, k) != v for k, v in values.items()):
            for key, value in values.items():
                setattr(instance, key, value)
            instance.save()
            self.stdout.write(f"restored {label}")
        else:
            self.stdout.write(f"unchanged {label}")

    def _tag(self, book_id: str, names: list[str]) -> None:
        """Give the book exactly the tags ``names`` (creating missing tags)."""
        book = Book.objects.get(pk=book_id)
        if set(book.tags.values_list("name", flat=True)) == set(names):
            return
        book.tags.set([Tag.objects.get_or_create(name=name)[0] for name in names])
        self.stdout.write(f"tagged book {book_id}: {', '.join(sorted(names))}")

    def _admin(self) -> None:
        user_model = get_user_model()
        admin = user_model._default_manager.filter(username="admin").first()
        if admin is not None:
            if admin.email == _OLD_ADMIN_EMAIL:
                admin.email = ADMIN_EMAIL
                admin.save(update_fields=["email"])
                self.stdout.write(f"updated superuser admin's email to {ADMIN_EMAIL}")
            self.stdout.write("unchanged superuser admin (password left as it is)")
            return
        password = os.environ.get("DEMO_ADMIN_PASSWORD", DEFAULT_ADMIN_PASSWORD)
        user_model._default_manager.create_superuser(
            username="admin", email=ADMIN_EMAIL, password=password
        )
        source = "DEMO_ADMIN_PASSWORD" if "DEMO_ADMIN_PASSWORD" in os.environ else "the default"
        self.stdout.write(f"created superuser admin (password from {source})")

    def _reader(self) -> None:
        user_model = get_user_model()
        if user_model._default_manager.filter(username="reader").exists():
            self.stdout.write("unchanged user reader (password left as it is)")
            return
        password = os.environ.get("DEMO_READER_PASSWORD", DEFAULT_READER_PASSWORD)
        # Hashed with the first PASSWORD_HASHERS entry: in the example, the accounts
        # hasher that Meteor clients' SHA-256 password digests are checked against.
        user_model._default_manager.create_user(
            username="reader", email=READER_EMAIL, password=password
        )
        source = "DEMO_READER_PASSWORD" if "DEMO_READER_PASSWORD" in os.environ else "the default"
        self.stdout.write(f"created user reader (password from {source})")
