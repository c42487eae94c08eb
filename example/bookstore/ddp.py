"""What the bookstore publishes over DDP: three collections, four publications, nine methods.

``DDPConfig.ready`` imports this module (every installed app's ``ddp.py``). Meteor
clients see the collections ``bookstore.author``, ``bookstore.book`` and
``bookstore.favorite``; the book mutators (``/bookstore.book/insert`` etc.) are open to
any user, for the demo. Favorites belong to the logged-in user: only the
``favorites.*`` methods write them (their mutators stay denied) and a user sees only
their own, whatever publication asks.

Prices are published as strings ("12.50"): stock Meteor clients throw on an EJSON
``Decimal`` unless the app adds the ``mongo-decimal`` package, and a float would lose
cents. A client that has mongo-decimal can get real decimals with
``encodings = {"price": "Decimal"}``.
"""

from __future__ import annotations

import dataclasses
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from django.db import DatabaseError, IntegrityError, transaction

from bookstore.models import Author, Book, Favorite
from django_app import (
    Collection,
    Cursor,
    DDPError,
    MethodContext,
    Publication,
    SubscriptionContext,
    method,
    publish,
    registry,
)

if TYPE_CHECKING:
    from django.db import models

    from relay.backend import DecodedChange
    from relay.protocol.changestream import Change

#: The longest ``books.slowRename`` may sleep, in milliseconds.
MAX_SLOW_MS = 60_000


@registry.register
class AuthorCollection(Collection):
    model = Author
    fields = ["name", "email"]


@registry.register
class BookCollection(Collection):
    model = Book
    fields = ["title", "author_id", "published", "price", "tags", "updated_at"]
    rename = {"author_id": "authorId", "updated_at": "updatedAt"}
    encodings = {"price": "string"}
    # books.byAuthorEmail filters on it: every book change carries its author's email, and
    # a changed email re-publishes that author's books, so relays route them in memory.
    related = ["author__email"]

    # Demo: anyone may write books from the client (Meteor's allow rules, all True).
    def allow_insert(self, user: Any, doc: dict[str, Any]) -> bool:
        return True

    def allow_update(
        self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
    ) -> bool:
        return True

    def allow_remove(self, user: Any, doc: dict[str, Any]) -> bool:
        return True


@registry.register
class FavoriteCollection(Collection):
    model = Favorite
    fields = ["user_id", "book_id"]
    rename = {"user_id": "userId", "book_id": "bookId"}

    # userId goes out as text, like every user id on the wire (Meteor.userId(), the
    # ``users`` documents' ids, a login's ``id``), so ``Favorites.find({userId:
    # Meteor.userId()})`` matches on the client. Initial documents (serialize) and live
    # changes (decode_change) both convert it; routing keeps the integer key.
    def serialize(self, instance: models.Model) -> tuple[str | int, dict[str, Any]]:
        raw_id, fields = super().serialize(instance)
        return raw_id, _user_id_as_text(fields)

    def decode_change(self, change: Change) -> DecodedChange:
        decoded = super().decode_change(change)
        return dataclasses.replace(decoded, fields=_user_id_as_text(decoded.fields))

    def visible(self, user: Any) -> dict[str, Any]:
        # Defence in depth: whatever publication names this collection, a user sees only
        # their own favorites. Logged out matches nothing (the column is NOT NULL); both
        # rules are plain lookups on a published column, so relays route them in memory.
        if user.is_authenticated:
            return {"user_id": user.pk}
        return {"user_id__isnull": True}


def _user_id_as_text(fields: dict[str, Any]) -> dict[str, Any]:
    if fields.get("userId") is not None:
        return {**fields, "userId": str(fields["userId"])}
    return fields


Publication("books.all", cursors=[Cursor(Author), Cursor(Book)])
Publication("authors.all", cursors=[Cursor(Author)])


@publish("books.byAuthorEmail")
def books_by_author_email(ctx: SubscriptionContext, email: str) -> list[Cursor]:
    return [Cursor(Author, email=email), Cursor(Book, author__email=email)]


@publish("favorites.mine")
def my_favorites(ctx: SubscriptionContext) -> list[Cursor]:
    """The logged-in user's favorites; nothing when logged out. The relay runs it again
    when the session logs in or out, and sends the difference."""
    if ctx.user_id is None or not ctx.user.is_authenticated:
        return []
    return [Cursor(Favorite, user_id=ctx.user.pk)]


class NewBook(TypedDict):
    title: str
    authorId: str
    price: str | int | float
    tags: NotRequired[list[str]]


@method("books.create")
def create_book(ctx: MethodContext, doc: NewBook) -> str:
    """Create a book; returns its id, the one the client's stub drew from the same seed."""
    title = _title(doc["title"])
    author = _author(doc["authorId"])
    price = _price(doc["price"])
    book = Book(title=title, author=author, price=price, tags=doc.get("tags", []))
    book.full_clean()  # a ValidationError becomes a 400 error with the messages
    book.save(force_insert=True)
    return str(book.id)


@method("books.rename")
def rename_book(ctx: MethodContext, book_id: str, title: str) -> None:
    book = _book(book_id)
    book.title = _title(title)
    book.full_clean()
    _save(book, ["title", "updated_at"])


@method("books.setAuthor")
def set_author(ctx: MethodContext, book_id: str, author_id: str) -> None:
    book = _book(book_id)
    book.author = _author(author_id)
    _save(book, ["author", "updated_at"])


@method("books.remove")
def remove_book(ctx: MethodContext, book_id: str) -> None:
    _book(book_id).delete()


@method("books.slowRename")
def slow_rename(ctx: MethodContext, book_id: str, title: str, ms: int | float) -> None:
    """Rename after sleeping ``ms`` milliseconds (at most a minute): for latency demos.

    ``time.sleep`` yields to other greenlets under gevent's monkey-patching.
    """
    time.sleep(min(max(ms, 0), MAX_SLOW_MS) / 1000)
    rename_book(ctx, book_id, title)


@method("books.fail")
def fail(ctx: MethodContext) -> None:
    raise DDPError("not-allowed", "books.fail always fails: it demonstrates a method error")


def _save(book: Book, fields: list[str]) -> None:
    """Save ``fields``; the book may have been removed since it was read (another client's
    ``books.remove`` in between): that is a 404, not a server error."""
    try:
        with transaction.atomic():  # a savepoint: the method's transaction goes on
            book.save(update_fields=fields)
    except DatabaseError:
        if Book.objects.filter(pk=book.pk).exists():
            raise
        raise DDPError(404, "Book not found") from None


def _book(book_id: str) -> Book:
    book = Book.objects.filter(pk=book_id).first()
    if book is None:
        raise DDPError(404, "Book not found")
    return book


def _logged_in(ctx: MethodContext) -> Any:
    """The caller's user, or Meteor's ``not-authorized`` when nobody is logged in (or the
    user was deactivated since: the backend then hands an anonymous user)."""
    if ctx.user_id is None or not ctx.user.is_authenticated:
        raise DDPError("not-authorized")
    return ctx.user


def _author(author_id: str) -> Author:
    author = Author.objects.filter(pk=author_id).first()
    if author is None:
        raise DDPError(404, "Author not found")
    return author


def _title(title: str) -> str:
    if not title.strip():
        raise DDPError(400, "Title must not be empty")
    return title.strip()


def _price(raw: str | int | float) -> Decimal:
    try:
        price = Decimal(str(raw))
    except InvalidOperation:
        raise DDPError(400, "Price must be a decimal number") from None
    if not price.is_finite():
        raise DDPError(400, "Price must be a decimal number")
    if price < 0:
        raise DDPError(400, "Price must not be negative")
    return price.quantize(Decimal("0.01"))


@method("favorites.add")
def add_favorite(ctx: MethodContext, book_id: str) -> str:
    """Mark ``book_id`` for the caller; returns the favorite's id (the existing one when
    the book is already a favorite, else the id the client's stub drew)."""
    user = _logged_in(ctx)
    book = _book(book_id)
    existing = Favorite.objects.filter(user=user, book=book).first()
    if existing is not None:
        return str(existing.id)
    # Constructed only now, so the id is drawn only when a row is inserted, as the stub
    # draws one per insert (MeteorIdField takes it from this invocation's seeded stream).
    favorite = Favorite(user=user, book=book)
    try:
        # A savepoint: a concurrent add of the same pair fails the unique constraint
        # without breaking the method's transaction, and the winner's id is returned.
        with transaction.atomic():
            favorite.save(force_insert=True)
    except IntegrityError:
        winner = Favorite.objects.filter(user=user, book=book).first()
        if winner is None:  # not a duplicate after all (the book vanished): re-raise
            raise
        return str(winner.id)
    return str(favorite.id)


@method("favorites.remove")
def remove_favorite(ctx: MethodContext, book_id: str) -> None:
    """Unmark ``book_id`` for the caller; removing what is not a favorite does nothing,
    so a client may call it twice (or after the book was deleted)."""
    user = _logged_in(ctx)
    Favorite.objects.filter(user=user, book_id=book_id).delete()


@method("users.whoami")
def whoami(ctx: MethodContext) -> dict[str, Any]:
    """Who this session acts for: the user logged in by ``login`` (or by the session
    cookie or token on the upgrade); both None when logged out."""
    username = ctx.user.get_username() if ctx.user.is_authenticated else None
    return {"userId": ctx.user_id, "username": username}
