"""What the bookstore publishes over DDP: two collections, three publications, seven methods.

``DDPConfig.ready`` imports this module (every installed app's ``ddp.py``). Meteor
clients see the collections ``bookstore.author`` and ``bookstore.book``; the book
mutators (``/bookstore.book/insert`` etc.) are open to any user, for the demo.

Prices are published as strings ("12.50"): stock Meteor clients throw on an EJSON
``Decimal`` unless the app adds the ``mongo-decimal`` package, and a float would lose
cents. A client that has mongo-decimal can get real decimals with
``encodings = {"price": "Decimal"}``.
"""

import time
from decimal import Decimal, InvalidOperation
from typing import Any, NotRequired, TypedDict

from bookstore.models import Author, Book
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


Publication("books.all", cursors=[Cursor(Author), Cursor(Book)])
Publication("authors.all", cursors=[Cursor(Author)])


@publish("books.byAuthorEmail")
def books_by_author_email(ctx: SubscriptionContext, email: str) -> list[Cursor]:
    return [Cursor(Author, email=email), Cursor(Book, author__email=email)]


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
    book.save(update_fields=["title", "updated_at"])


@method("books.setAuthor")
def set_author(ctx: MethodContext, book_id: str, author_id: str) -> None:
    book = _book(book_id)
    book.author = _author(author_id)
    book.save(update_fields=["author", "updated_at"])


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


def _book(book_id: str) -> Book:
    book = Book.objects.filter(pk=book_id).first()
    if book is None:
        raise DDPError(404, "Book not found")
    return book


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


@method("users.whoami")
def whoami(ctx: MethodContext) -> dict[str, Any]:
    """Who this session acts for: the Django user of the session cookie on the upgrade."""
    username = ctx.user.get_username() if ctx.user.is_authenticated else None
    return {"userId": ctx.user_id, "username": username}
