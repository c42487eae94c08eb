"""Migration 0007: every NOTIFY payload carries its commit time (``t``) and the changelog
row's ``created_at`` is that same instant; the relay's channel classes agree with the
write side's channel names.

These tests commit for real (``transaction=True``) and listen with a raw psycopg2
connection, as a relay does.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
from bookstore.models import Author, Book
from django.db import connection, transaction

from django_app.channel import model_channel
from django_app.models import Presence
from django_app.streams import CHANNEL_PREFIX
from relay.protocol import changestream
from relay.stream.source import PostgresSource
from tests.django_app.changestream_helpers import BOOKS, Listener, position

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def listener(django_database_url: str) -> Iterator[Listener]:
    listening = Listener(django_database_url, BOOKS)
    yield listening
    listening.close()


def test_a_commit_carries_its_time_inline_spilled_and_in_the_changelog(
    listener: Listener, django_database_url: str
) -> None:
    author = Author.objects.create(id="tc", name="T. C.", email="tc@example.org")
    listener.drain()
    before = time.time()
    with transaction.atomic():
        Book.objects.create(id="tc1", author=author, title="Small", price=Decimal("1.00"))
    with transaction.atomic():  # too large to fit a NOTIFY: spilled to the changelog
        for i in range(40):
            Book.objects.create(id=f"tc2-{i}", author=author, title="L" * 280, price=Decimal(1))
    after = time.time()
    inline, spilled = listener.drain()
    assert inline.changes is not None and spilled.changes is None
    for note in (inline, spilled):
        assert note.committed is not None
        # The database's clock is this machine's: the flush ran between the two reads.
        assert before - 0.5 <= note.committed <= after + 0.5
    assert inline.committed <= spilled.committed  # type: ignore[operator]
    # A backfill reads the same instant from created_at.
    source = PostgresSource(django_database_url)
    source.connect()
    try:
        rows = source.read_since(BOOKS, inline.seq - 1, 10)
    finally:
        source.close()
    assert [r.seq for r in rows] == [inline.seq, spilled.seq]
    for row, note in zip(rows, (inline, spilled), strict=True):
        assert row.committed is not None
        assert abs(row.committed - note.committed) < 1e-5  # type: ignore[operator]
    assert position(BOOKS) == spilled.seq


def test_the_reverse_migration_stops_sending_the_time(
    listener: Listener, django_database_url: str
) -> None:
    migration = importlib.import_module("django_app.migrations.0007_commit_time")
    author = Author.objects.create(id="tr", name="T. R.", email="tr@example.org")
    listener.drain()
    try:
        with connection.cursor() as cursor:
            cursor.execute(migration.REVERSE_SQL)
        Book.objects.create(id="tr1", author=author, title="Old", price=Decimal("1.00"))
        (old,) = listener.drain()
        assert old.committed is None and old.changes is not None  # an old writer's payload
    finally:
        with connection.cursor() as cursor:
            cursor.execute(migration.SQL)
    Book.objects.create(id="tr2", author=author, title="New", price=Decimal("1.00"))
    (new,) = listener.drain()
    assert new.committed is not None


def test_the_relay_classes_channels_as_the_write_side_names_them() -> None:
    assert changestream.EVENT_CHANNEL_PREFIX == CHANNEL_PREFIX
    assert model_channel(Presence) == changestream.PRESENCE_CHANNEL
    assert changestream.channel_class(model_channel(Presence)) == "presence"
    assert changestream.channel_class(model_channel(Book)) == "model"
