"""The change stream at commit: one changelog row and one NOTIFY per transaction and channel.

These tests commit for real (``transaction=True``) and listen with a raw psycopg2
connection, as a relay does.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
from bookstore.models import Author, Book, Tag
from django.db import connection, transaction

from django_app import changes
from django_app.backend import DjangoBackend
from django_app.methods import method
from django_app.registries import registry
from relay.backend import WritePosition
from relay.protocol.changestream import SELECT_ONE, loads_payload, parse_changes
from tests.django_app.changestream_helpers import (
    AUTHORS,
    BOOKS,
    Listener,
    changelog,
    pending_count,
    position,
)
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def listener(django_database_url: str) -> Iterator[Listener]:
    listening = Listener(django_database_url, BOOKS, AUTHORS)
    yield listening
    listening.close()


@pytest.fixture
def author() -> Author:
    return Author.objects.create(id="le-guin", name="Ursula K. Le Guin", email="ukl@example.org")


def new_book(author: Author, key: str, **kwargs: Any) -> Book:
    values: dict[str, Any] = {"title": key.title(), "price": Decimal("9.50"), **kwargs}
    return Book.objects.create(id=key, author=author, **values)


def test_commit_rollback_and_savepoints(listener: Listener, author: Author) -> None:
    listener.drain()
    books, authors = position(BOOKS), position(AUTHORS)

    # Three saves of books and one of an author in one transaction: one notify per channel.
    with transaction.atomic():
        for key in ("a", "b", "c"):
            new_book(author, key)
        author.name = "Ursula Le Guin"
        author.save()
    got = listener.drain()
    assert [(n.channel, n.seq) for n in got] == [(AUTHORS, authors + 1), (BOOKS, books + 1)]
    assert got[0].txid == got[1].txid and got[0].epoch and got[1].epoch
    by_channel = {n.channel: n for n in got}
    book_changes = by_channel[BOOKS].changes
    assert book_changes is not None
    assert [(c.op, c.pk) for c in book_changes] == [("i", "a"), ("i", "b"), ("i", "c")]
    assert book_changes[0].values["title"] == "A"
    assert book_changes[0].values["price"] == Decimal("9.50")
    assert book_changes[0].values["author__email"] == "ukl@example.org"
    rows = changelog(BOOKS, books)
    assert len(rows) == 1
    assert rows[0][:3] == (books + 1, by_channel[BOOKS].epoch, by_channel[BOOKS].txid)
    assert tuple(rows[0][3]) == book_changes
    assert changes.published_by([got[0].txid]) == [(AUTHORS, authors + 1), (BOOKS, books + 1)]

    # A rollback publishes nothing and leaves nothing behind.
    with pytest.raises(RuntimeError), transaction.atomic():
        new_book(author, "d")
        Book.objects.filter(pk="a").update(title="Never")
        raise RuntimeError
    assert listener.drain() == []
    assert position(BOOKS) == books + 1

    # A rolled-back savepoint drops only its own changes.
    with transaction.atomic():
        Book.objects.filter(pk="a").update(title="Outer 1")
        with pytest.raises(RuntimeError), transaction.atomic():
            Book.objects.filter(pk="b").update(title="Inner")
            new_book(author, "e")
            raise RuntimeError
        with transaction.atomic():
            Book.objects.filter(pk="c").update(title="Released savepoint")
        Book.objects.filter(pk="b").update(title="Outer 2")
    (got_one,) = listener.drain()
    assert got_one.seq == books + 2
    assert got_one.changes is not None
    assert [(c.op, c.pk, c.values["title"]) for c in got_one.changes] == [
        ("u", "a", "Outer 1"),
        ("u", "c", "Released savepoint"),
        ("u", "b", "Outer 2"),
    ]
    assert pending_count() == 0


def test_every_kind_of_write_is_captured(listener: Listener, author: Author) -> None:
    listener.drain()
    start = position(BOOKS)
    Book.objects.bulk_create(
        [Book(id=k, title=k, author=author, price=Decimal(1)) for k in ("x", "y")]
    )
    Book.objects.filter(pk__in=["x", "y"]).update(price=Decimal("2.25"))
    Book.objects.filter(pk="x").update(price=Decimal("2.25"))  # no change: nothing sent
    with connection.cursor() as cursor:
        cursor.execute("UPDATE bookstore_book SET title = upper(title) WHERE id = 'y'")
        cursor.execute("UPDATE bookstore_book SET id = 'z' WHERE id = 'y'")
    Book.objects.get(pk="x").delete()
    got = listener.drain()
    assert [n.seq for n in got] == list(range(start + 1, start + 6))
    summary = [[(c.op, c.pk) for c in n.changes or ()] for n in got]
    assert summary == [
        [("i", "x"), ("i", "y")],
        [("u", "x"), ("u", "y")],
        [("u", "y")],
        [("d", "y"), ("i", "z")],
        [("d", "x")],
    ]
    assert got[1].changes is not None and got[1].changes[0].values["price"] == Decimal("2.25")
    assert got[2].changes is not None and got[2].changes[0].values["title"] == "Y"
    assert got[4].changes is not None and got[4].changes[0].values == {}


def tagged_book(author: Author, key: str, names: list[str]) -> Book:
    """A book with these tags, created in one transaction (one change, tags included)."""
    with transaction.atomic():
        book = new_book(author, key)
        book.tags.set([Tag.objects.get_or_create(name=name)[0] for name in names])
    return book


def test_large_payloads_spill_to_the_changelog(listener: Listener, author: Author) -> None:
    listener.drain()
    start = position(BOOKS)
    # 50 tags of 100 characters: 5 000 characters (would fit in 7 900) but 10 000 bytes.
    names = sorted(f"{i:02}" + "é" * 98 for i in range(50))
    tagged_book(author, "big", names)
    with transaction.atomic():  # many small rows: spills too
        for i in range(120):
            new_book(author, f"small-{i:03}")
    big, many = listener.drain()
    assert (big.seq, many.seq) == (start + 1, start + 2)
    assert big.changes is None and many.changes is None
    with connection.cursor() as cursor:
        cursor.execute(SELECT_ONE, [BOOKS, big.seq])
        (raw,) = cursor.fetchone()
    stored = parse_changes(loads_payload(raw) if isinstance(raw, str) else raw)
    assert stored[-1].values["tags__name"] == names
    assert len(changelog(BOOKS, start)[1][3]) == 120
    # Just under the limit stays inline: 65 tags of 100 ASCII characters.
    tagged_book(author, "fits", [f"{i:03}" + "e" * 97 for i in range(65)])
    (fits,) = listener.drain()
    assert fits.changes is not None and fits.changes[-1].values["tags__name"][0].startswith("000e")


def test_related_path_changes_republish_dependents(listener: Listener, author: Author) -> None:
    new_book(author, "one")
    new_book(author, "two")
    other = Author.objects.create(id="other", name="Other", email="other@example.org")
    new_book(other, "three")
    listener.drain()
    author.email = "ursula@example.org"
    author.save()
    author.name = "Renamed"  # not read by any related path: books are not republished
    author.save()
    got = listener.drain()
    assert [n.channel for n in got] == [AUTHORS, BOOKS, AUTHORS]
    books = got[1].changes
    assert books is not None
    assert sorted((c.op, c.pk, c.values["author__email"]) for c in books) == [
        ("u", "one", "ursula@example.org"),
        ("u", "two", "ursula@example.org"),
    ]
    # Moving a book to another author carries the new author's email.
    Book.objects.filter(pk="one").update(author=other)
    (moved,) = listener.drain()
    assert moved.changes is not None
    assert moved.changes[0].values["author__email"] == "other@example.org"
    assert moved.changes[0].values["author_id"] == "other"


def test_touch_and_prune(listener: Listener, author: Author) -> None:
    new_book(author, "t1")
    new_book(author, "t2")
    listener.drain()
    with connection.cursor() as cursor:  # a write triggers cannot see
        cursor.execute("ALTER TABLE bookstore_book DISABLE TRIGGER USER")
        try:
            cursor.execute("UPDATE bookstore_book SET title = 'Silent'")
        finally:
            cursor.execute("ALTER TABLE bookstore_book ENABLE TRIGGER USER")
    assert listener.drain() == []
    assert changes.touch(Book.objects.filter(author=author)) == 2
    (touched,) = listener.drain()
    assert touched.changes is not None
    assert sorted((c.op, c.pk, c.values["title"]) for c in touched.changes) == [
        ("u", "t1", "Silent"),
        ("u", "t2", "Silent"),
    ]
    gone = Book.objects.get(pk="t2")
    with connection.cursor() as cursor:
        # CASCADE: favorites reference books (and are empty here).
        cursor.execute("TRUNCATE bookstore_book CASCADE")
    with transaction.atomic():
        assert changes.touch([gone, author]) == 2
    got = listener.drain()
    assert sorted((n.channel, [(c.op, c.pk) for c in n.changes or ()]) for n in got) == [
        (AUTHORS, [("u", "le-guin")]),
        (BOOKS, [("d", "t2")]),
    ]

    with connection.cursor() as cursor:
        cursor.execute("UPDATE ddp_changelog SET created_at = now() - interval '2 hours'")
        cursor.execute("SELECT count(*) FROM ddp_changelog")
        (total,) = cursor.fetchone()
    new_book(author, "fresh")
    assert changes.prune(dt.timedelta(hours=1), batch_size=2) == total
    assert changes.prune() == 0  # the fresh row is within the default retention
    assert len(changelog(BOOKS, 0)) == 1


def test_method_writes_and_subscription_positions(listener: Listener, author: Author) -> None:
    backend = DjangoBackend()
    from relay.backend import ANONYMOUS, CallContext, Handshake

    ctx = CallContext("s", ANONYMOUS, Handshake({}, {}, "127.0.0.1", "/websocket"))
    new_book(author, "m")
    start = position(BOOKS)
    outcome = backend.call(ctx, "books.rename", ["m", "Renamed"])
    assert outcome.writes == (WritePosition(BOOKS, start + 1),)
    assert backend.call(ctx, "users.whoami", []).writes == ()

    with registry.isolated():

        @method("test.manual", atomic=False)
        def manual(ctx: Any) -> None:
            Book.objects.filter(pk="m").update(title="First")  # autocommit
            with transaction.atomic():
                Book.objects.filter(pk="m").update(title="Second")
                Author.objects.filter(pk="le-guin").update(name="Third")
            Book.objects.filter(pk="nope").update(title="Nothing")

        outcome = backend.call(ctx, "test.manual", [])
    assert outcome.writes == (
        WritePosition(AUTHORS, position(AUTHORS)),
        WritePosition(BOOKS, start + 2),
        WritePosition(BOOKS, start + 3),
    )

    data = subscribe(backend, ctx, "books.byAuthorEmail", ["ukl@example.org"])
    assert data.positions == {
        AUTHORS: (position(AUTHORS), changelog(AUTHORS)[-1][1]),
        BOOKS: (start + 3, changelog(BOOKS)[-1][1]),
    }
    assert [d.fields["title"] for d in data.documents if d.collection == "bookstore.book"] == [
        "Second"
    ]
    listener.drain()


def test_sequences_follow_commit_order_under_concurrency(
    listener: Listener, author: Author, django_database_url: str
) -> None:
    writers, rounds = 4, 25
    for w in range(writers):
        new_book(author, f"w{w}")
    listener.drain()
    start = position(BOOKS)
    committed: dict[int, tuple[int, int]] = {}  # txid -> (writer, round)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def write(w: int) -> None:
        try:
            conn = psycopg2.connect(django_database_url)
            with conn.cursor() as cursor:
                for r in range(rounds):
                    ids = [f"w{w}", f"w{(w + 1) % writers}"]
                    # Writers overlap on rows (so commits interleave) but lock them
                    # in one order: an UPDATE's own order follows the heap and can
                    # deadlock, which is the test's fault, not the changelog's.
                    cursor.execute(
                        "SELECT id FROM bookstore_book WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
                        ids,
                    )
                    cursor.execute(
                        "UPDATE bookstore_book SET title = %s WHERE id IN (%s, %s)",
                        [f"{w}-{r}", *ids],
                    )
                    cursor.execute("SELECT txid_current()")
                    (txid,) = cursor.fetchone()
                    if r % 7 == 3:
                        conn.rollback()
                        continue
                    conn.commit()
                    with lock:
                        committed[txid] = (w, r)
            conn.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    got = listener.drain()
    elapsed = time.monotonic() - began
    # Arrival order is commit order (PostgreSQL delivers NOTIFYs so): gapless seqs.
    assert [n.seq for n in got] == list(range(start + 1, start + 1 + len(committed)))
    assert {n.txid for n in got} == set(committed)
    rows = changelog(BOOKS, start)
    assert [(s, x) for s, _, x, _ in rows] == [(n.seq, n.txid) for n in got]
    for w in range(writers):  # each writer's own commits got increasing seqs
        mine = [committed[n.txid][1] for n in got if committed[n.txid][0] == w]
        assert mine == sorted(mine)
    print(f"\n{len(committed)} concurrent commits on one channel in {elapsed:.2f}s")


def test_write_overhead(listener: Listener, author: Author, django_database_url: str) -> None:
    """Prints what the triggers add to a writing transaction (no assertion on time)."""
    new_book(author, "perf")
    conn = psycopg2.connect(django_database_url)
    cursor = conn.cursor()
    counter = iter(range(10**9))

    def one_row(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            cursor.execute(
                "UPDATE bookstore_book SET title = %s, updated_at = now() WHERE id = 'perf'",
                [f"t{next(counter)}"],
            )
            conn.commit()
        return (time.perf_counter() - began) / n

    def ten_rows(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            for _ in range(10):
                cursor.execute(
                    "UPDATE bookstore_book SET title = %s WHERE id = 'perf'",
                    [f"t{next(counter)}"],
                )
            conn.commit()
        return (time.perf_counter() - began) / n

    def triggers(on: bool) -> None:
        cursor.execute(f"ALTER TABLE bookstore_book {'ENABLE' if on else 'DISABLE'} TRIGGER USER")
        conn.commit()

    results: dict[tuple[str, bool], list[float]] = {}
    try:
        one_row(30)  # warm up
        for _ in range(3):
            for on in (True, False):
                triggers(on)
                results.setdefault(("one", on), []).append(one_row(80))
                results.setdefault(("ten", on), []).append(ten_rows(12))
    finally:
        triggers(True)
        conn.close()
    best = {key: min(values) * 1000 for key, values in results.items()}
    one = best[("one", True)] - best[("one", False)]
    ten = best[("ten", True)] - best[("ten", False)]
    print(
        f"\nchange-stream overhead: {one:.3f} ms per one-row transaction"
        f" ({best[('one', False)]:.3f} -> {best[('one', True)]:.3f} ms);"
        f" {ten:.3f} ms per ten-row transaction ({ten / 10:.3f} ms per row)"
    )
    assert len(listener.drain()) > 0
