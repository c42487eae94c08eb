"""Did every client end up with what the database holds? Shared by the multi-relay and chaos tests.

Its job: the database as clients must see it (``database_state``: published fields by
wire name, read straight from SQL), what one subscription should show of it
(``Sub``, ``expected_view``), how a client's cache differs from that (``cache_problems``),
whether revisions went backwards in what a client received (``order_problems``, reading
the ``"<label> r<N>"`` titles ``tests/e2e/writer.py`` writes), and ``WireClient``, a
``DDPClient`` that keeps its raw inbound messages for those checks.

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
    """(books, authors): id -> published fields as EJSON-JSON, read straight from SQL."""
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT b.id, b.title, b.author_id, b.published, b.price, b.tags, b.updated_at"
            " FROM bookstore_book b"
        )
        books = {}
        for book_id, title, author_id, published, price, tags, updated_at in cur.fetchall():
            books[book_id] = {
                "title": title,
                "authorId": author_id,
                "published": None
                if published is None
                else wire(
                    dt.datetime(published.year, published.month, published.day, tzinfo=dt.UTC)
                ),
                "price": str(price),
                "tags": tags,
                "updatedAt": wire(updated_at),
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

    def snapshot(self) -> tuple[list[dict[str, Any]], View]:
        """(received messages, cache as EJSON-JSON) taken under the client's lock."""
        with self._lock:
            received = list(self.received)
            cache = {
                c: {i: wire(f) for i, f in docs.items()} for c, docs in self.collections.items()
            }
        return received, cache
