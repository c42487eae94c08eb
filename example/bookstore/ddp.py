"""What the bookstore publishes over DDP: five collections, a chat stream, twelve
publications, twelve methods.

``DDPConfig.ready`` imports this module (every installed app's ``ddp.py``). Meteor
clients see the collections ``bookstore.author``, ``bookstore.book``, ``bookstore.tag``
and ``bookstore.favorite``, plus ``counts`` (``books.countByAuthor``'s documents),
``stats`` (``books.stats``) and ``bookstore.notice`` (the active site notices, which
every session gets unasked: a universal publication); the
book mutators (``/bookstore.book/insert`` etc.) are open to any user, for the demo, and
write ``tags`` too (an array of names: missing tags are created), Mongo modifiers into
``details`` (JSON: ``$set`` of ``details.publisher.city``, ``$inc`` of ``details.likes``)
and ``ratings`` (an integer array: ``$push``, ``$addToSet``, ``$pull``), with one rule
against them: ``deny_update`` refuses a ``$set`` or ``$inc`` that leaves the price below
zero (403), whatever the allow rule says. Favorites belong to the
logged-in user: only the ``favorites.*`` methods write them (their mutators stay denied)
and a user sees only their own, whatever publication asks.

The shapes a newcomer copies: a live "latest N" window (``books.latest``), a live count
(``books.countByAuthor``) and a many-to-many filter (``books.byTag``), all kept by the
relay from the change stream without re-querying per subscriber; a publication written
with the low-level API (``books.stats``: an aggregate, recomputed on each commit it
observes); a universal publication (the site notices); server-pushed events (each
book's chat: ``chat.post`` by a logged-in user, ``chat.byBook`` delivers the last 100
messages, then each new one, as documents in ``chat``); presence (``presence.book``: who
is on a book's page, one ``presence`` document per user or anonymous session); a method
that lets its session go on while it runs (``books.slowRename`` with ``{unblock:
true}``); and an ``async def`` method (``books.renameAsync``).

Prices are published as strings ("12.50"): stock Meteor clients throw on an EJSON
``Decimal`` unless the app adds the ``mongo-decimal`` package, and a float would lose
cents. A client that has mongo-decimal can get real decimals with
``encodings = {"price": "Decimal"}``. ``books.create`` takes the price as an EJSON
``Decimal``, a decimal string or a number: ``NewBook.price`` is annotated ``Decimal``, so
each reaches it as an exact ``Decimal`` (``12.5`` is ``Decimal("12.5")``).

Must not: hold the models (``bookstore.models``) or the demo data (``seed_demo``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from asgiref.sync import sync_to_async
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import Avg, Max, Min
from django.db.models import Count as CountOf
from django.utils import timezone

from bookstore.models import TAG_NAME_MAX_LENGTH, Author, Book, Favorite, Notice, Tag
from django_app import (
    Collection,
    Count,
    Cursor,
    DDPError,
    MethodContext,
    Publication,
    Rule,
    Stream,
    StreamCursor,
    SubscriptionContext,
    method,
    present,
    publish,
    publish_event,
    registry,
)

if TYPE_CHECKING:
    from django.db import models

    from relay.backend import DecodedChange
    from relay.protocol.changestream import Change

#: The longest ``books.slowRename`` may sleep, in milliseconds.
MAX_SLOW_MS = 60_000
#: The largest window ``books.latest`` serves.
MAX_LATEST = 1000
#: The most tags ``books.setTags`` and ``books.create`` give one book.
MAX_TAGS = 20
#: The length of an ``Author.id`` (a MeteorIdField): a longer id names no author.
_AUTHOR_ID_MAX_LENGTH = 17


@registry.register
class AuthorCollection(Collection):
    model = Author
    fields = ["name", "email"]


@registry.register
class TagCollection(Collection):
    model = Tag
    fields = ["name"]


@registry.register
class BookCollection(Collection):
    model = Book
    # tags__name: the sorted array of the book's tag names, live when a tag is added,
    # removed or renamed (the through table's and the tag table's triggers republish).
    fields = [
        *("title", "author_id", "published", "price", "tags__name", "updated_at"),
        *("details", "ratings"),
    ]
    rename = {"author_id": "authorId", "tags__name": "tags", "updated_at": "updatedAt"}
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

    # Meteor's deny(), which wins over allow: no client write leaves a negative price.
    # The mutator locks the row before asking, so ``doc`` is the price the $inc adds to.
    def deny_update(
        self, user: Any, doc: dict[str, Any], fields: list[str], modifier: dict[str, Any]
    ) -> bool:
        if "price" not in fields:
            return False
        try:
            if "price" in modifier.get("$set", {}):
                price = Decimal(str(modifier["$set"]["price"]))
            elif "price" in modifier.get("$inc", {}):
                price = Decimal(str(doc["price"])) + Decimal(str(modifier["$inc"]["price"]))
            else:
                return False
            return price < 0  # a NaN raises here: not a number either
        except (InvalidOperation, ValueError):
            return False  # not a number: the mutator's validation answers that


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


@registry.register
class NoticeCollection(Collection):
    model = Notice
    fields = ["text", "created_at"]
    rename = {"created_at": "createdAt"}
    related = ["active"]  # the universal publication filters on it, in memory


def _user_id_as_text(fields: dict[str, Any]) -> dict[str, Any]:
    if fields.get("userId") is not None:
        return {**fields, "userId": str(fields["userId"])}
    return fields


Publication("books.all", cursors=[Cursor(Author), Cursor(Book)])
Publication("authors.all", cursors=[Cursor(Author)])
Publication("tags.all", cursors=[Cursor(Tag)])


@publish("books.latest")
def latest_books(ctx: SubscriptionContext, n: int) -> Cursor:
    """The ``n`` newest books: ``published`` descending, books without a date last, ties
    by ``_id`` ascending (Meteor's sort). A window the relay keeps live in memory: a book
    entering it pushes the last one out, one leaving it pulls the next one in."""
    if not 1 <= n <= MAX_LATEST:
        raise DDPError(400, f"n must be between 1 and {MAX_LATEST}")
    return Cursor(Book).order_by("-published")[:n]


@publish("books.countByAuthor")
def count_by_author(ctx: SubscriptionContext, author_id: str) -> Count:
    """``{_id: author_id, count: n}`` in the client-side collection ``counts``: the number
    of the author's books, live through creates, removes and ``books.setAuthor``."""
    if not author_id or len(author_id) > _AUTHOR_ID_MAX_LENGTH:
        raise DDPError(400, "Invalid author id")
    return Count(Cursor(Book, author_id=author_id), id=author_id)


@publish("books.byTag")
def books_by_tag(ctx: SubscriptionContext, name: str) -> Cursor:
    """The books tagged ``name``: routed in memory (``tags__name`` is published), so a
    tag added to or removed from a book moves it in or out."""
    return Cursor(Book, tags__name=name)


@publish("books.stats")
def book_stats(ctx: SubscriptionContext) -> None:
    """One document ``stats/books``: how many books, their average and extreme prices,
    and the newest publication date. Written with the low-level API: it reads an
    aggregate, publishes it with ``ctx.added``, and reads it again on every commit to
    books (``ctx.observe``), sending only what changed."""

    def totals() -> dict[str, Any]:
        row = Book.objects.aggregate(
            books=CountOf("pk"),
            average=Avg("price"),
            cheapest=Min("price"),
            dearest=Max("price"),
            newest=Max("published"),
        )
        for key in ("average", "cheapest", "dearest"):
            row[key] = None if row[key] is None else f"{row[key]:.2f}"
        if row["newest"] is not None:
            row["newest"] = dt.datetime.combine(row["newest"], dt.time(), dt.UTC)
        return row

    ctx.added("stats", "books", totals())
    ctx.observe(Book, lambda changes: ctx.changed("stats", "books", totals()))
    ctx.ready()


#: The active site notices (added in the admin), for every session, unasked: a universal
#: publication. Declared, not a function: running it reads nothing, so it adds no
#: database round trip to a connect.
Publication(None, cursors=[Cursor(Notice, active=True)])


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
    #: An EJSON ``Decimal``, a decimal string ("12.50") or a number: a ``Decimal`` here.
    price: Decimal
    #: An EJSON ``{"$date": ms}``; the book keeps its UTC calendar day.
    published: NotRequired[dt.datetime | None]
    #: Tag names; missing tags are created.
    tags: NotRequired[list[str]]


@method("books.create")
def create_book(ctx: MethodContext, doc: NewBook) -> str:
    """Create a book; returns its id, the one the client's stub drew from the same seed."""
    title = _title(doc["title"])
    author = _author(doc["authorId"])
    price = _price(doc["price"])
    published = doc.get("published")
    names = _tag_names(doc.get("tags", []))
    book = Book(title=title, author=author, price=price, published=_day(published))
    book.full_clean()  # a ValidationError becomes a 400 error with the messages
    book.save(force_insert=True)
    if names:
        book.tags.set(_tags(names))
    return str(book.id)


@method("books.setTags")
def set_tags(ctx: MethodContext, book_id: str, names: list[str]) -> None:
    """Replace the book's tags with ``names`` (missing tags are created, unused ones
    stay); the book's ``tags`` change once, whatever the number of tags."""
    cleaned = _tag_names(names)
    with transaction.atomic():  # the row lock below needs one, whatever DDP_ATOMIC_METHODS
        # Locked: a concurrent books.remove waits, so links never point at a deleted book.
        book = _book(book_id, lock=True)
        _save(book, ["updated_at"])
        book.tags.set(_tags(cleaned))


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


class SlowRenameOptions(TypedDict):
    #: Let the caller's later calls and subscriptions run meanwhile (Meteor's unblock).
    unblock: NotRequired[bool]


@method("books.slowRename")
def slow_rename(
    ctx: MethodContext,
    book_id: str,
    title: str,
    ms: int | float,
    options: SlowRenameOptions | None = None,
) -> None:
    """Rename after sleeping ``ms`` milliseconds (at most a minute): for latency demos.
    ``{unblock: true}`` calls ``ctx.unblock()`` first, as a Meteor method calls
    ``this.unblock()``: the caller's later messages then need not wait for this one.

    ``time.sleep`` yields to other greenlets under gevent's monkey-patching.
    """
    if options and options.get("unblock"):
        ctx.unblock()
    time.sleep(min(max(ms, 0), MAX_SLOW_MS) / 1000)
    rename_book(ctx, book_id, title)


@method("books.renameAsync")
async def rename_book_async(ctx: MethodContext, book_id: str, title: str) -> None:
    """``books.rename`` written with Django's async ORM: the same transaction, write fence
    and ``ctx`` as a plain method (the backend awaits it in the method's own thread)."""
    book = await Book.objects.filter(pk=book_id).afirst()
    if book is None:
        raise DDPError(404, "Book not found")
    book.title = _title(title)
    await sync_to_async(book.full_clean)()  # model validation has no async twin
    renamed = await Book.objects.filter(pk=book.pk).aupdate(
        title=book.title, updated_at=timezone.now()
    )
    if not renamed:
        raise DDPError(404, "Book not found")  # removed meanwhile


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


def _book(book_id: str, *, lock: bool = False) -> Book:
    books = Book.objects.select_for_update() if lock else Book.objects.all()
    book = books.filter(pk=book_id).first()
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


def _day(value: dt.datetime | None) -> dt.date | None:
    """The UTC calendar day of an EJSON date (dates travel as midnight UTC)."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return value.date()


def _tag_names(names: list[str]) -> list[str]:
    """``names`` stripped and deduplicated, in order; 400 for an empty or too long name,
    or too many."""
    cleaned = list(dict.fromkeys(name.strip() for name in names))
    if len(cleaned) > MAX_TAGS:
        raise DDPError(400, f"A book has at most {MAX_TAGS} tags")
    for name in cleaned:
        if not name:
            raise DDPError(400, "Tag names must not be empty")
        if len(name) > TAG_NAME_MAX_LENGTH:
            raise DDPError(400, f"Tag names have at most {TAG_NAME_MAX_LENGTH} characters")
    return cleaned


def _tags(names: list[str]) -> list[Tag]:
    """The tags named ``names``, created when missing. ``get_or_create`` inserts in a
    savepoint: a concurrent creation of the same name waits for the other transaction,
    then reads its row instead of failing."""
    return [Tag.objects.get_or_create(name=name)[0] for name in names]


def _price(price: Decimal) -> Decimal:
    """Rounded to cents; the signature made it a finite Decimal, whatever the client sent."""
    if price < 0:
        raise DDPError(400, "Price must not be negative")
    try:
        return price.quantize(Decimal("0.01"))
    except InvalidOperation:  # more digits than a context holds: far beyond the column
        raise DDPError(400, "Price is too large") from None


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


# -- chat and presence ------------------------------------------------------------------

#: Each book's chat, an event stream per book: subscribers of ``chat.byBook`` get its
#: messages as documents added to the client-side collection ``chat`` (the last 100 at
#: subscribe, then each new one once, in order; beyond 100 the oldest is removed).
chat = registry.add_stream(Stream("chat", collection="chat", history=100))

#: The longest chat message, in characters.
MAX_CHAT_TEXT = 1000

#: At most 5 chat messages per second per connection (Meteor's DDPRateLimiter shape).
registry.add_rate_limit_rule(
    Rule(
        type="method",
        name="chat.post",
        connection_id=lambda _: True,
        limit=5,
        interval_ms=1000,
        label="chat_post",
    )
)


@method("chat.post")
def post_chat(ctx: MethodContext, book_id: str, text: str) -> str:
    """Say ``text`` in ``book_id``'s chat as the logged-in user; returns the message id.
    The message leaves when this method's transaction commits (never if it fails), and
    the caller's ``updated`` comes after its own copy arrived."""
    user = _logged_in(ctx)
    book = _book(book_id)
    text = text.strip()
    if not 0 < len(text) <= MAX_CHAT_TEXT:
        raise DDPError(400, f"A chat message is 1 to {MAX_CHAT_TEXT} characters")
    payload = {
        "bookId": str(book.pk),
        "text": text,
        "userId": str(user.pk),
        "createdAt": dt.datetime.now(dt.UTC),
    }
    return publish_event(chat, payload, key=str(book.pk))


@publish("chat.byBook")
def chat_by_book(ctx: SubscriptionContext, book_id: str) -> StreamCursor:
    """A book's chat: anyone may read it (the demo's rule: a publication is where a
    stream is authorised), only logged-in users post."""
    _book(book_id)
    return chat.cursor(book_id)


@publish("presence.book")
def presence_on_book(ctx: SubscriptionContext, book_id: str) -> Cursor:
    """Who is on a book's page: the caller is present while subscribed (as its user, or
    as an anonymous session), and gets one ``presence`` document per member there."""
    _book(book_id)
    return present(ctx, f"book:{book_id}")
