"""One contract suite for every ``ChangeSource``: the in-memory twin and PostgreSQL.

The ``world`` fixture is parametrized over both. Each gives the source under test
(connected) and a writer for the database side: ``commit`` (what the write side does at
commit), ``notify`` (a raw NOTIFY), ``prune``, ``reset`` (the counter restarted in a new
epoch) and ``drop`` (the listening connection killed). For PostgreSQL the writer goes
through the real write path: rows staged in ``ddp_pending`` and published at commit by
``ddp_flush()``, in a database of its own on the session's server (``pg_server``), with
the change-stream tables of ``django_app``'s first migration. Channels are unique per
test, so tests share that database without seeing each other.
"""

from __future__ import annotations

import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Protocol

import gevent
import psycopg2
import psycopg2.extensions
import pytest

from devstack.embedded_postgres import EmbeddedPostgres
from relay.protocol.changestream import Change, parse_notification
from relay.stream.fanout import Transaction
from relay.stream.source import (
    LISTENER_NAME,
    ChangeSource,
    MemorySource,
    PostgresSource,
    RawNotification,
    SourceError,
)

pytestmark = pytest.mark.timeout(60)


class World(Protocol):
    source: ChangeSource

    def commit(self, channel: str, changes: list[dict[str, Any]]) -> int: ...

    def notify(self, channel: str, payload: str) -> None: ...

    def prune(self, channel: str, through: int) -> None: ...

    def reset(self, channel: str, epoch: str) -> None: ...

    def drop(self) -> None: ...


class MemoryWorld:
    def __init__(self) -> None:
        self.memory = MemorySource()
        self.source: ChangeSource = self.memory

    def commit(self, channel: str, changes: list[dict[str, Any]]) -> int:
        return self.memory.commit(channel, changes)

    def notify(self, channel: str, payload: str) -> None:
        self.memory.notify(channel, payload)

    def prune(self, channel: str, through: int) -> None:
        self.memory.prune(channel, through)

    def reset(self, channel: str, epoch: str) -> None:
        self.memory.reset(channel, epoch)

    def drop(self) -> None:
        self.memory.drop_connection()


class PostgresWorld:
    """Writes through a connection of its own, as another process would."""

    def __init__(self, dsn: str) -> None:
        self.source: ChangeSource = PostgresSource(dsn)
        self.conn = psycopg2.connect(dsn, application_name="contract writer")

    def commit(self, channel: str, changes: list[dict[str, Any]]) -> int:
        with self.conn, self.conn.cursor() as cur:
            for n, change in enumerate(changes):
                # As the generated triggers do: the first row of the transaction and
                # channel is armed, and ddp_flush() publishes them all at commit.
                cur.execute(
                    "INSERT INTO ddp_pending (channel, change, armed) VALUES (%s, %s, %s)",
                    (channel, json.dumps(change), n == 0),
                )
        return self.counter(channel)

    def counter(self, channel: str) -> int:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT seq FROM ddp_channel WHERE channel = %s", (channel,))
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def notify(self, channel: str, payload: str) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def prune(self, channel: str, through: int) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "DELETE FROM ddp_changelog WHERE channel = %s AND seq <= %s", (channel, through)
            )

    def reset(self, channel: str, epoch: str) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "UPDATE ddp_channel SET seq = 0, epoch = %s WHERE channel = %s", (epoch, channel)
            )
            cur.execute("DELETE FROM ddp_changelog WHERE channel = %s", (channel,))

    def drop(self) -> None:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (LISTENER_NAME,),
            )
            assert cur.fetchall(), "no listening connection to kill"

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def contract_dsn(pg_server: EmbeddedPostgres) -> str:
    """A database with the change-stream tables and ``ddp_flush()``, as migrated."""
    name = f"stream_source_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    dsn = pg_server.dsn(name)
    # The one definition of the tables and the flush: the migration's own SQL.
    migration = importlib.import_module("django_app.migrations.0001_initial")
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute(migration.SQL)
    conn.close()
    return dsn


@pytest.fixture(params=["memory", "postgres"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    made: World
    if request.param == "memory":
        made = MemoryWorld()
    else:
        made = PostgresWorld(request.getfixturevalue("contract_dsn"))
    made.source.connect()
    try:
        yield made
    finally:
        made.source.close()
        if isinstance(made, PostgresWorld):
            made.close()


@pytest.fixture
def channel() -> str:
    return f"ddp_t{uuid.uuid4().hex[:12]}"


def collect(
    source: ChangeSource,
    until: Callable[[list[RawNotification]], bool],
    timeout: float = 10.0,
) -> list[RawNotification]:
    """Wait for notifications until ``until(received)`` holds."""
    received: list[RawNotification] = []
    deadline = time.monotonic() + timeout
    while not until(received):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; received {[(n.channel, n.payload) for n in received]}"
        received += source.wait(min(left, 1.0))
    return received


def seqs(notes: Sequence[RawNotification], channel: str) -> list[int]:
    return [parse_notification(n.channel, n.payload).seq for n in notes if n.channel == channel]


def change(pk: str, title: str) -> dict[str, Any]:
    return {"o": "u", "id": pk, "f": {"title": title}}


# -- reads ----------------------------------------------------------------------------------


def test_a_channel_never_published_has_no_counter_and_no_rows(world: World, channel: str) -> None:
    source = world.source
    assert source.read_counter(channel) == (0, "")
    assert source.read_since(channel, 0, 10) == []
    assert source.read_one(channel, 1, "") is None


def test_a_commit_is_a_counter_row_and_notification(world: World, channel: str) -> None:
    source = world.source
    source.listen(channel)
    changes = [
        {"o": "i", "id": "b1", "f": {"title": "One", "price": 12.5}},
        {"o": "d", "id": "b0"},
    ]
    assert world.commit(channel, changes) == 1
    (raw,) = collect(source, lambda got: len(got) >= 1)
    assert raw.channel == channel
    note = parse_notification(raw.channel, raw.payload)
    seq, epoch = source.read_counter(channel)
    assert (note.seq, note.epoch, seq) == (1, epoch, 1) and epoch
    expected = (
        Change("i", "b1", {"title": "One", "price": Decimal("12.5")}),
        Change("d", "b0", {}),
    )
    assert note.changes == expected
    assert source.read_since(channel, 0, 10) == [Transaction(1, epoch, note.txid, expected)]
    assert source.read_one(channel, 1, epoch) == expected


def test_rows_after_a_seq_come_in_order_and_limited(world: World, channel: str) -> None:
    source = world.source
    for n in range(1, 6):
        assert world.commit(channel, [change("b1", f"t{n}")]) == n
    epoch = source.read_counter(channel)[1]
    rows = source.read_since(channel, 2, 2)
    assert [(tx.seq, tx.epoch) for tx in rows] == [(3, epoch), (4, epoch)]
    assert [list(tx.changes) for tx in rows] == [
        [Change("u", "b1", {"title": "t3"})],
        [Change("u", "b1", {"title": "t4"})],
    ]
    assert len({tx.txid for tx in source.read_since(channel, 0, 10)}) == 5
    assert source.read_since(channel, 5, 10) == []
    assert source.read_one(channel, 4, epoch) == (Change("u", "b1", {"title": "t4"}),)
    assert source.read_one(channel, 4, "another epoch") is None
    assert source.read_one(channel, 6, epoch) is None
    assert source.read_counter(channel) == (5, epoch)


def test_a_large_transaction_is_notified_by_reference(world: World, channel: str) -> None:
    source = world.source
    source.listen(channel)
    big = [change(f"b{n}", "x" * 1000) for n in range(10)]
    world.commit(channel, big)
    (raw,) = collect(source, lambda got: len(got) >= 1)
    note = parse_notification(raw.channel, raw.payload)
    assert note.changes is None  # spilled: the changes are read from the changelog
    changes = source.read_one(channel, note.seq, note.epoch)
    assert changes is not None and [c.pk for c in changes] == [f"b{n}" for n in range(10)]


# -- notifications ----------------------------------------------------------------------------


def test_only_listened_channels_notify_in_commit_order(world: World, channel: str) -> None:
    source = world.source
    other = channel + "_other"
    source.listen(channel)
    world.commit(other, [change("a1", "unheard")])
    world.commit(channel, [change("b1", "one")])
    world.commit(channel, [change("b1", "two")])
    got = collect(source, lambda got: len(seqs(got, channel)) >= 2)
    assert [n.channel for n in got] == [channel, channel] and seqs(got, channel) == [1, 2]
    source.listen(other)
    source.listen(other)  # twice is once
    world.commit(other, [change("a1", "heard")])
    world.commit(channel, [change("b1", "three")])
    got = collect(source, lambda got: len(got) >= 2)
    assert [(n.channel, s) for n in got for s in seqs([n], n.channel)] == [(other, 2), (channel, 3)]


def test_unlisten_stops_the_notifications(world: World, channel: str) -> None:
    source = world.source
    sentinel = channel + "_sentinel"
    source.listen(channel)
    source.listen(sentinel)
    source.unlisten(channel)
    source.unlisten(channel + "_never_listened")  # a no-op
    world.commit(channel, [change("b1", "unheard")])
    world.commit(sentinel, [change("s", "s")])
    # NOTIFY arrives in commit order: had the first been sent, it would come first.
    got = collect(source, lambda got: bool(seqs(got, sentinel)))
    assert [n.channel for n in got] == [sentinel]


def test_a_raw_notification_arrives_as_sent(world: World, channel: str) -> None:
    source = world.source
    mixed = channel + "_Mixed"  # a quoted identifier: the case is kept
    source.listen(mixed)
    world.notify(mixed, "not json")
    (raw,) = collect(source, lambda got: len(got) >= 1)
    assert (raw.channel, raw.payload) == (mixed, "not json")


def test_a_wait_times_out_empty_and_wake_ends_it(world: World, channel: str) -> None:
    source = world.source
    source.listen(channel)
    assert list(source.wait(0.05)) == []
    waker = gevent.spawn_later(0.1, source.wake)
    started = time.monotonic()
    assert list(source.wait(20.0)) == []
    assert time.monotonic() - started < 10.0
    waker.join()
    source.wake()
    source.wake()  # wakes before a wait are not lost, and never block
    started = time.monotonic()
    source.wait(20.0)
    assert time.monotonic() - started < 10.0


# -- failures ---------------------------------------------------------------------------------


def test_a_lost_connection_raises_and_what_was_sent_meanwhile_is_only_in_the_changelog(
    world: World, channel: str
) -> None:
    source = world.source
    source.listen(channel)
    world.commit(channel, [change("b1", "one")])
    collect(source, lambda got: len(got) >= 1)
    world.drop()
    with pytest.raises(SourceError):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            source.wait(0.5)
    world.commit(channel, [change("b1", "two")])  # notified to nobody
    source.close()
    source.connect()
    assert list(source.wait(0.05)) == []  # nothing LISTENed after a connect
    source.listen(channel)
    world.commit(channel, [change("b1", "three")])
    got = collect(source, lambda got: len(got) >= 1)
    assert seqs(got, channel) == [3]
    assert [tx.seq for tx in source.read_since(channel, 0, 10)] == [1, 2, 3]


def test_a_closed_source_raises_and_closing_twice_is_harmless(world: World, channel: str) -> None:
    source = world.source
    source.close()
    source.close()
    for call in (
        lambda: source.wait(0.01),
        lambda: source.listen(channel),
        lambda: source.read_counter(channel),
        lambda: source.read_since(channel, 0, 1),
    ):
        with pytest.raises(SourceError):
            call()
    source.connect()
    assert source.read_counter(channel) == (0, "")


def test_pruned_rows_are_gone_and_the_counter_stays(world: World, channel: str) -> None:
    source = world.source
    for n in range(3):
        world.commit(channel, [change("b1", f"t{n}")])
    epoch = source.read_counter(channel)[1]
    world.prune(channel, 2)
    assert [tx.seq for tx in source.read_since(channel, 0, 10)] == [3]
    assert source.read_one(channel, 1, epoch) is None
    assert source.read_counter(channel) == (3, epoch)


def test_a_reset_counter_starts_over_in_its_new_epoch(world: World, channel: str) -> None:
    source = world.source
    source.listen(channel)
    world.commit(channel, [change("b1", "old")])
    world.commit(channel, [change("b1", "old")])
    old = source.read_counter(channel)[1]
    world.reset(channel, "restored")
    assert world.commit(channel, [change("b1", "new")]) == 1
    got = collect(source, lambda got: len(got) >= 3)
    notes = [parse_notification(n.channel, n.payload) for n in got]
    assert [(n.seq, n.epoch) for n in notes] == [(1, old), (2, old), (1, "restored")]
    assert source.read_counter(channel) == (1, "restored")
    assert [(tx.seq, tx.epoch) for tx in source.read_since(channel, 0, 10)] == [(1, "restored")]
    assert source.read_one(channel, 1, old) is None
