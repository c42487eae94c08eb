"""EJSON parameter types over the wire: a real relay (the session's shared one, two gunicorn
workers on the example) and the project's Python DDP client, which encodes ``Decimal``,
``datetime`` and ``bytes`` as Meteor's EJSON does.

1. ``books.create`` with the price as an EJSON ``Decimal`` (what a Meteor client with
   ``mongo-decimal`` sends) stores exactly 12.50, read back from PostgreSQL and from the
   published document; so do a decimal string and a JSON number; ``published`` given as
   an EJSON ``$date`` is stored as that UTC day.
2. Refused with 400 "Match failed", nothing stored: an EJSON ``Decimal`` NaN or beyond
   the digit bound, a price that is no decimal, a date sent as a string.
3. An unknown ``$type``, or a Decimal ``$value`` that is no decimal, is refused while the
   relay parses the message, as Meteor refuses it: a top-level ``error`` ("Parse error:
   ..."), no ``result``; the session goes on.

Must not: leave data on the shared database (it removes the books it created).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg2
import pytest

from relay.client import DDPClient, DDPClientError

pytestmark = pytest.mark.e2e

PUBLISHED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@dataclass
class Caller:
    """A connected client subscribed to ``books.all``, and the books it created."""

    ddp: DDPClient
    created: list[str] = field(default_factory=list)

    def create(self, doc: dict[str, Any]) -> str:
        book_id = self.ddp.call("books.create", doc)
        assert isinstance(book_id, str)
        self.created.append(book_id)
        return book_id


@pytest.fixture
def caller(relay_server: Any) -> Iterator[Caller]:
    """A ``Caller`` whose books are removed when the test ends."""
    ddp = DDPClient(relay_server.ws_url)
    ddp.connect()
    caller = Caller(ddp)
    try:
        ddp.subscribe("books.all")
        yield caller
    finally:
        for book_id in caller.created:
            with contextlib.suppress(DDPClientError, TimeoutError):
                ddp.call("books.remove", book_id)
        ddp.close()


def new_book(price: Any, **fields: Any) -> dict[str, Any]:
    return {"title": f"ejson {uuid.uuid4().hex}", "authorId": "pratchett", "price": price, **fields}


def stored(database_url: str, book_ids: list[str]) -> dict[str, tuple[str, dt.date | None]]:
    """id -> (price as PostgreSQL writes it, published) of these books, read in SQL."""
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, price::text, published FROM bookstore_book WHERE id = ANY(%s)",
            (book_ids,),
        )
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def count_titled(database_url: str, prefix: str) -> int:
    with contextlib.closing(psycopg2.connect(database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM bookstore_book WHERE title LIKE %s", (prefix + "%",))
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def test_an_ejson_decimal_price_is_stored_exactly(caller: Caller, e2e_database: str) -> None:
    cases: list[tuple[Any, str]] = [
        (Decimal("12.50"), "12.50"),
        (Decimal("1.2E+1"), "12.00"),
        ("12.5", "12.50"),
        (12.5, "12.50"),
        (0.1, "0.10"),
        (7, "7.00"),
    ]
    ids = []
    for price, expected in cases:
        book_id = caller.create(new_book(price, published=PUBLISHED))
        ids.append(book_id)
        # The caller's own document arrived before its `updated`, published as a string.
        doc = caller.ddp.docs("bookstore.book")[book_id]
        assert doc["price"] == expected, (price, doc)
        assert doc["published"] == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    rows = stored(e2e_database, ids)
    assert [rows[i] for i in ids] == [(expected, dt.date(2024, 1, 2)) for _, expected in cases]


@pytest.mark.parametrize(
    "doc",
    [
        new_book(Decimal("NaN")),
        new_book(Decimal("-Infinity")),
        new_book(Decimal("1e101")),
        new_book("cheap"),
        new_book(" 12.50"),
        new_book(True),
        new_book("1", published="2024-01-02T03:04:05Z"),
        new_book("1", published=1704164645678),
    ],
)
def test_what_is_not_a_price_or_a_date_is_match_failed(
    caller: Caller, e2e_database: str, doc: dict[str, Any]
) -> None:
    with pytest.raises(DDPClientError) as info:
        caller.create(doc)
    assert (info.value.error, info.value.reason) == (400, "Match failed")
    assert count_titled(e2e_database, doc["title"]) == 0


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        (
            {"$type": "Money", "$value": {"amount": "12.50", "currency": "EUR"}},
            "Parse error: Custom EJSON type Money is not defined",
        ),
        (
            {"$type": "Decimal", "$value": "12,50"},
            "Parse error: Decimal value must be a decimal string, got '12,50'",
        ),
    ],
)
def test_an_ejson_value_that_does_not_decode_is_a_parse_error(
    caller: Caller, e2e_database: str, price: dict[str, Any], reason: str
) -> None:
    client = caller.ddp
    doc = new_book("0")
    doc["price"] = price
    frame = {"msg": "method", "id": "bad-1", "method": "books.create", "params": [doc]}
    client.send_raw(json.dumps(frame))
    client.wait_for(lambda: bool(client.errors))
    (error,) = client.errors
    assert error["reason"] == reason
    assert error["offendingMessage"]["id"] == "bad-1"
    # The session goes on, in order: once a later call is answered, none came for bad-1.
    caller.create(new_book(Decimal("1.00")))
    assert not [m for m in client.received if m.get("id") == "bad-1"]
    assert count_titled(e2e_database, doc["title"]) == 0
