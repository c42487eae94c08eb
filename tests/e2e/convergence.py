"""Did every client end up with what the database holds? Shared by the multi-relay and chaos tests.

Its job: the database as clients must see it (``database_state``: published fields by
wire name, read straight from SQL), what one subscription should show of it
(``Sub``, ``expected_view``), how a client's cache differs from that (``cache_problems``),
whether revisions went backwards in what a client received (``order_problems``, reading
the ``"<label> r<N>"`` titles ``tests/e2e/writer.py`` writes), and ``WireClient``, a
``DDPClient`` that keeps its raw inbound messages for those checks.

For the example's other publications (issue #10): the ``books.latest`` window by Meteor's
sort (``latest_order``, ``latest_window``), ``COUNT(*)`` per author (``book_counts``), the
``books.stats`` document (``stats_document``), the active site notices
(``active_notices``), and what a client held when a method's ``updated`` arrived
(``updated_index``, ``replay``: the write fence seen from the wire).

What it must not do: start servers or clients (the fixtures and the tests do), or assert:
it returns lists of problems, and each test decides what fails it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2

from relay.client import DDPClient
from relay.protocol import ejson

BOOKS = "bookstore.book"
AUTHORS = "bookstore.author"
#: ``books.countByAuthor``'s, ``books.stats``' and the universal publication's collections.
COUNTS = "counts"
STATS = "stats"
NOTICES = "bookstore.notice"
#: The seeded authors (example/bookstore/management/commands/seed_demo.py).
EMAILS = ("ursula.leguin@example.org", "terry.pratchett@example.org", "nk.jemisin@example.org")
AUTHOR_IDS = {
    "ursula.leguin@example.org": "leguin",
    "terry.pratchett@example.org": "pratchett",
    "nk.jemisin@example.org": "jemisin",
}
#: Title revision suffix written by writer.py.
REVISION = re.compile(r"\sr(\d+)$")

View = dict[str, dict[str, dict[str, Any]]]


def wire(value: Any) -> Any:
    """``value`` as EJSON-JSON, the form clients compare."""
    return ejson.to_json_value(value)


def database_state(
    database_url: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(books, authors): id -> published fields as EJSON-JSON, read straight from SQL.

    A book's ``tags`` are the names of its tags (the many-to-many), distinct and sorted by
    code point, as the collection publishes them."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        # One statement: the books and their tags from one snapshot.
        cur.execute(
            "SELECT b.id, b.title, b.author_id, b.published, b.price,"
            " ARRAY(SELECT t.name FROM bookstore_book_tags bt"
            " JOIN bookstore_tag t ON t.id = bt.tag_id WHERE bt.book_id = b.id),"
            " b.updated_at, b.details, b.ratings FROM bookstore_book b"
        )
        books = {}
        for row in cur.fetchall():
            book_id, title, author_id, published, price, tags, updated_at, details, ratings = row
            books[book_id] = {
                "title": title,
                "authorId": author_id,
                "published": None
                if published is None
                else wire(
                    dt.datetime(published.year, published.month, published.day, tzinfo=dt.UTC)
                ),
                "price": str(price),
                "tags": sorted(set(tags)),  # Python compares str by code point
                "updatedAt": wire(updated_at),
                "details": wire(details),
                "ratings": list(ratings),
            }
        cur.execute("SELECT id, name, email FROM bookstore_author")
        authors = {a_id: {"name": name, "email": email} for a_id, name, email in cur.fetchall()}
    conn.close()
    return books, authors


@dataclass(frozen=True)
class Sub:
    name: str
    params: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name if not self.params else f"{self.name}({self.params[0]})"


ALL = Sub("books.all")


def by_email(email: str) -> Sub:
    return Sub("books.byAuthorEmail", (email,))


def expected_view(
    sub: Sub, books: dict[str, dict[str, Any]], authors: dict[str, dict[str, Any]]
) -> View:
    """What ``sub`` publishes of the database state ``(books, authors)``."""
    if sub.name == "books.all":
        return {BOOKS: books, AUTHORS: authors}
    email = sub.params[0]
    author_ids = {a for a, doc in authors.items() if doc["email"] == email}
    return {
        BOOKS: {b: doc for b, doc in books.items() if doc["authorId"] in author_ids},
        AUTHORS: {a: doc for a, doc in authors.items() if a in author_ids},
    }


def cache_problems(actual: View, expected: View, fields: Sequence[str] | None = None) -> list[str]:
    """How a client's cache differs from the expected view (empty: equal)."""
    problems = []
    for collection in sorted(set(actual) | set(expected)):
        have = actual.get(collection, {})
        want = expected.get(collection, {})
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        if missing:
            problems.append(f"{collection}: {len(missing)} missing, e.g. {missing[:5]}")
        if extra:
            problems.append(f"{collection}: {len(extra)} not in the database, e.g. {extra[:5]}")
        wrong = []
        for doc_id in sorted(set(have) & set(want)):
            got, exp = have[doc_id], want[doc_id]
            if fields is not None:
                got = {k: got.get(k) for k in fields if k in exp}
                exp = {k: exp[k] for k in fields if k in exp}
            if got != exp:
                keys = sorted(
                    k
                    for k in set(got) | set(exp)
                    if got.get(k, "<absent>") != exp.get(k, "<absent>")
                )
                diff = {k: (got.get(k, "<absent>"), exp.get(k, "<absent>")) for k in keys}
                wrong.append(f"{doc_id} {diff}")
        if wrong:
            problems.append(
                f"{collection}: {len(wrong)} documents differ (client, database): {wrong[:4]}"
            )
    return problems


def order_problems(received: Sequence[dict[str, Any]]) -> list[str]:
    """Per document: title revisions and updatedAt never go backwards (across re-adds)."""
    last_rev: dict[tuple[str, str], int] = {}
    last_ts: dict[tuple[str, str], int] = {}
    problems = []
    for msg in received:
        if msg.get("msg") not in ("added", "changed"):
            continue
        key = (msg.get("collection", ""), msg.get("id", ""))
        fields = msg.get("fields") or {}
        title = fields.get("title")
        match = REVISION.search(title) if isinstance(title, str) else None
        if match:
            rev = int(match.group(1))
            if key in last_rev and rev < last_rev[key]:
                problems.append(f"title revision went backwards r{last_rev[key]} -> {msg}")
            last_rev[key] = max(rev, last_rev.get(key, rev))
        stamp = fields.get("updatedAt")
        if isinstance(stamp, dict) and isinstance(stamp.get("$date"), int):
            ms = stamp["$date"]
            if key in last_ts and ms < last_ts[key]:
                problems.append(f"updatedAt went backwards {last_ts[key]} -> {msg}")
            last_ts[key] = max(ms, last_ts.get(key, ms))
    return problems


def latest_order(books: dict[str, dict[str, Any]]) -> list[str]:
    """Book ids as ``books.latest`` sorts them (Meteor's sort for ``published: -1``): newest
    ``published`` first, books without a date last, ties by ``_id`` ascending by code point.
    ``books`` is ``database_state``'s (``published`` as ``{"$date": ms}`` or None)."""

    def key(book_id: str) -> tuple[int, int, str]:
        published = books[book_id]["published"]
        if published is None:
            return (1, 0, book_id)
        return (0, -int(published["$date"]), book_id)

    return sorted(books, key=key)


def latest_window(books: dict[str, dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """What ``books.latest(n)`` publishes of ``books``: the first ``n`` of ``latest_order``."""
    return {book_id: books[book_id] for book_id in latest_order(books)[:n]}


def book_counts(database_url: str) -> dict[str, int]:
    """Author id -> ``COUNT(*)`` of their books, every author (0 included), from SQL."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT a.id, (SELECT COUNT(*) FROM bookstore_book b WHERE b.author_id = a.id)"
            " FROM bookstore_author a"
        )
        counts = {author_id: int(count) for author_id, count in cur.fetchall()}
    conn.close()
    return counts


def stats_document(database_url: str) -> dict[str, Any]:
    """The ``stats/books`` document ``books.stats`` should publish, as EJSON-JSON, from SQL
    aggregates: ``books`` (count), ``average``/``cheapest``/``dearest`` (prices as strings,
    two decimals) and ``newest`` (the latest ``published`` day, midnight UTC)."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*), AVG(price), MIN(price), MAX(price), MAX(published)"
            " FROM bookstore_book"
        )
        row = cur.fetchone()
    conn.close()
    assert row is not None
    count, average, cheapest, dearest, newest = row
    return {
        "books": int(count),
        "average": None if average is None else f"{average:.2f}",
        "cheapest": None if cheapest is None else f"{cheapest:.2f}",
        "dearest": None if dearest is None else f"{dearest:.2f}",
        "newest": None
        if newest is None
        else wire(dt.datetime(newest.year, newest.month, newest.day, tzinfo=dt.UTC)),
    }


def active_notices(database_url: str) -> dict[str, dict[str, Any]]:
    """What the universal publication gives every session: the active notices' published
    fields (``text``, ``createdAt``) by id, as EJSON-JSON."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, text, created_at FROM bookstore_notice WHERE active")
        notices = {n_id: {"text": text, "createdAt": wire(at)} for n_id, text, at in cur}
    conn.close()
    return notices


def updated_index(received: Sequence[dict[str, Any]], method_id: str) -> int | None:
    """The position of the ``updated`` that names ``method_id`` in ``received``, or None."""
    for index, msg in enumerate(received):
        if msg.get("msg") == "updated" and method_id in msg.get("methods", ()):
            return index
    return None


def replay(received: Sequence[dict[str, Any]], stop: int | None = None) -> View:
    """The cache that the data messages of ``received[:stop]`` build (EJSON-JSON fields):
    what the client held when message ``stop`` arrived. Lenient (a ``changed`` for a
    missing document is skipped): the clients' own strict caches report rule breaks."""
    view: View = {}
    for msg in received[:stop]:
        kind = msg.get("msg")
        if kind == "connected":
            view = {}  # a new session starts from nothing (no reconnects in these tests)
            continue
        if kind not in ("added", "changed", "removed"):
            continue
        docs = view.setdefault(str(msg.get("collection")), {})
        doc_id = str(msg.get("id"))
        if kind == "added":
            docs[doc_id] = dict(msg.get("fields") or {})
        elif kind == "changed":
            doc = docs.get(doc_id)
            if doc is not None:
                doc.update(msg.get("fields") or {})
                for name in msg.get("cleared") or ():
                    doc.pop(name, None)
        else:
            docs.pop(doc_id, None)
    return view


class WireClient(DDPClient):
    """DDPClient that also keeps the raw (EJSON-JSON) inbound messages, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.last_data = time.monotonic()
        self.sent_methods: list[str] = []

    def _handle(self, msg: dict[str, Any]) -> None:
        if msg.get("msg") not in ("ping", "pong"):
            self.last_data = time.monotonic()
        super()._handle(msg)

    def send(self, msg: dict[str, Any]) -> None:
        if msg.get("msg") == "method":
            self.sent_methods.append(str(msg["id"]))
        super().send(msg)

    def position(self) -> int:
        """How many messages were received so far: ``received[position:]`` comes later."""
        with self._lock:
            return len(self.received)

    def snapshot(self) -> tuple[list[dict[str, Any]], View]:
        """(received messages, cache as EJSON-JSON) taken under the client's lock."""
        with self._lock:
            received = list(self.received)
            cache = {
                c: {i: wire(f) for i, f in docs.items()} for c, docs in self.collections.items()
            }
        return received, cache
