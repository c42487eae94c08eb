"""Where the listener hears of commits and reads the changelog: the seam and its two sides.

Layer: runtime (gevent + psycopg2). ``ChangeSource`` is everything the listener
(``relay.stream.listener``) needs of the database: LISTEN and UNLISTEN, waiting for
notifications (``wake`` ends a wait early), and three reads with
``relay.protocol.changestream``'s SQL: the changelog rows after a seq, the changes of one
spilled transaction, a channel's counter. Two implementations pass the same contract
(``tests/relay/stream/test_source_contract.py``):

- ``PostgresSource``: two psycopg2 connections, one that LISTENs (named ``ddp-relay
  listener``: operators and tests find it in ``pg_stat_activity``) and one that reads, so
  a backfill never waits behind the notification stream;
- ``MemorySource``: its in-memory twin for tests. Writers push commits, raw notifications
  and changelog rows into it, and it can lose notifications, drop its connection, prune
  history or start a channel's counter over in a new epoch, as a real database does.

A lost connection is a ``SourceError`` from whichever call noticed it; PostgreSQL forgets
what the connection LISTENed and never replays what was sent meanwhile, and so does the
twin. The listener reconnects and backfills (invariant I3).

Must not: judge sequence numbers or epochs (``relay.stream.cursor`` does), retry or
reconnect on its own, or keep what it read (the listener hands it on at once).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent.event
import gevent.select
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from relay.protocol import changestream
from relay.protocol.changestream import Change
from relay.stream.cursor import Position
from relay.stream.fanout import Transaction

#: ``application_name`` of the connection that LISTENs (and of the one that reads).
LISTENER_NAME = "ddp-relay listener"
READER_NAME = "ddp-relay backfill"


class SourceError(Exception):
    """The connection to the change stream is lost (or could not be opened): reconnect."""


class RawNotification(Protocol):
    """One NOTIFY as received, not yet decoded (psycopg2's ``Notify`` is one)."""

    @property
    def channel(self) -> str: ...

    @property
    def payload(self) -> str: ...


class ChangeSource(Protocol):
    """The listener's view of the database (one per worker process).

    Called from the listener's greenlet only, except ``wake`` (any greenlet).
    """

    def connect(self) -> None:
        """Open (or reopen) the connections. Afterwards nothing is LISTENed, and what was
        notified before is gone. Raises ``SourceError`` when the database is unreachable."""

    def close(self) -> None:
        """Close the connections; closing twice is a no-op."""

    def listen(self, channel: str) -> None:
        """Receive the notifications of ``channel`` committed from now on."""

    def unlisten(self, channel: str) -> None:
        """Stop receiving ``channel``'s notifications (those already received still come)."""

    def wait(self, timeout: float) -> Sequence[RawNotification]:
        """The notifications received so far, in commit order, waiting up to ``timeout``
        seconds for one; empty when woken (``wake``) or timed out. Raises ``SourceError``
        when the connection is lost."""

    def wake(self) -> None:
        """Make the current (or next) ``wait`` return now. Never blocks."""

    def read_since(self, channel: str, seq: int, limit: int) -> list[Transaction]:
        """At most ``limit`` changelog rows of ``channel`` with a seq above ``seq``, in seq
        order (whatever their epoch)."""

    def read_one(self, channel: str, seq: int, epoch: str) -> tuple[Change, ...] | None:
        """The changes of ``channel``'s transaction ``seq`` in ``epoch``; None when that row
        is gone, or is another epoch's (the counter restarted since it was notified)."""

    def read_counter(self, channel: str) -> Position:
        """``channel``'s counter ``(seq, epoch)``; ``(0, "")`` when nothing was ever
        published on it."""


# -- PostgreSQL ---------------------------------------------------------------------------------


class PostgresSource:
    """The change stream of a PostgreSQL database (``dsn``), through psycopg2."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        #: LISTENs; its socket is what ``wait`` selects on.
        self._conn: psycopg2.extensions.connection | None = None
        #: Serves the reads, so they never interleave with the notification stream.
        self._query: psycopg2.extensions.connection | None = None
        # A self-pipe: ``wake`` (another greenlet) ends a ``wait`` blocked in select.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def connect(self) -> None:
        self.close()
        try:
            self._conn = self._open(LISTENER_NAME)
            self._query = self._open(READER_NAME)
        except psycopg2.Error as exc:
            self.close()
            raise SourceError(str(exc).strip()) from exc

    def _open(self, name: str) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self.dsn, application_name=name)
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        return conn

    def close(self) -> None:
        for conn in (self._conn, self._query):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = self._query = None

    def listen(self, channel: str) -> None:
        self._execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))

    def unlisten(self, channel: str) -> None:
        self._execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))

    def _execute(self, statement: sql.Composable) -> None:
        conn = self._connection(self._conn)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        except psycopg2.Error as exc:
            raise SourceError(str(exc).strip()) from exc

    def wait(self, timeout: float) -> Sequence[RawNotification]:
        conn = self._connection(self._conn)
        try:
            # Notifications can already be in hand (psycopg2 collects them during any
            # statement on this connection, a LISTEN among them): no select then.
            if not conn.notifies:
                readable, _, _ = gevent.select.select([conn, self._wake_r], [], [], timeout)
                if self._wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 4096):
                            pass
                if conn in readable or not readable:
                    conn.poll()  # raises on a dead connection, also when idle (timeout)
            notes = conn.notifies[:]
            del conn.notifies[:]
        except (psycopg2.Error, OSError) as exc:
            raise SourceError(str(exc).strip()) from exc
        return notes

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the waiter is awake anyway
            os.write(self._wake_w, b"x")

    def read_since(self, channel: str, seq: int, limit: int) -> list[Transaction]:
        rows = self._read(changestream.SELECT_SINCE, (channel, seq, limit), many=True)
        return [
            Transaction(row_seq, row_epoch, txid, changestream.parse_changes(_json(raw)), committed)
            for row_seq, row_epoch, txid, raw, committed in rows
        ]

    def read_one(self, channel: str, seq: int, epoch: str) -> tuple[Change, ...] | None:
        # The first row from ``seq`` on, rather than SELECT_ONE: it comes with its epoch.
        rows = self._read(changestream.SELECT_SINCE, (channel, seq - 1, 1), many=False)
        if not rows or rows[0][0] != seq or rows[0][1] != epoch:
            return None
        return changestream.parse_changes(_json(rows[0][3]))

    def read_counter(self, channel: str) -> Position:
        rows = self._read(changestream.SELECT_POSITION, (channel,), many=False)
        return (0, "") if not rows else (int(rows[0][0]), str(rows[0][1]))

    def _read(self, query: str, params: tuple[Any, ...], *, many: bool) -> list[tuple[Any, ...]]:
        conn = self._connection(self._query)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                if many:
                    return cur.fetchall()
                row = cur.fetchone()
                return [] if row is None else [row]
        except psycopg2.Error as exc:
            raise SourceError(str(exc).strip()) from exc

    @staticmethod
    def _connection(
        conn: psycopg2.extensions.connection | None,
    ) -> psycopg2.extensions.connection:
        if conn is None:
            raise SourceError("not connected")
        return conn


def _json(raw: Any) -> Any:
    """The changes column: read as text (``changes::text``) so that non-integer numbers
    become Decimal; a driver that hands jsonb over already parsed is taken as is."""
    if isinstance(raw, str):
        return changestream.loads_payload(raw)
    return raw


# -- the in-memory twin -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A notification as ``MemorySource.wait`` returns it."""

    channel: str
    payload: str


@dataclass(slots=True)
class _Channel:
    """One channel's counter and changelog rows (seq -> (epoch, txid, changes as JSON)),
    and each row's commit time (seq -> seconds since the epoch)."""

    seq: int = 0
    epoch: str = ""
    rows: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    committed: dict[int, float] = field(default_factory=dict)


class MemorySource:
    """A ``ChangeSource`` held in memory, for tests: the writers' side is public.

    Writers: ``commit`` (what the write side does at commit: next seq, a changelog row, a
    NOTIFY inline or spilled), ``notify`` (a raw NOTIFY), ``renotify`` (a row's
    notification again), ``insert_row`` and ``set_counter`` (raw rows). Failures:
    ``commit(notify=False)`` (a notification lost), ``drop_connection`` (the listening
    connection dies: what it LISTENed and what it had not handed over are gone),
    ``prune`` (history past the retention window), ``reset`` (the counter starts over in
    a new epoch, as after a restore). Like PostgreSQL, a notification reaches the reader
    only when it is connected and LISTENing to the channel at commit time.
    """

    def __init__(self) -> None:
        self.connected = False
        #: Times ``connect`` was called (a reconnect is the second one on).
        self.connects = 0
        self._channels: dict[str, _Channel] = {}
        self._listening: set[str] = set()
        self._inbox: list[Notice] = []
        self._bell = gevent.event.Event()
        self._broken = False
        self._txid = 1000

    # -- ChangeSource -----------------------------------------------------------------------

    def connect(self) -> None:
        self.connected = True
        self.connects += 1
        self._broken = False
        self._listening.clear()
        self._inbox.clear()

    def close(self) -> None:
        self.connected = False
        self._listening.clear()
        self._inbox.clear()

    def listen(self, channel: str) -> None:
        self._check()
        self._listening.add(channel)

    def unlisten(self, channel: str) -> None:
        self._check()
        self._listening.discard(channel)

    def wait(self, timeout: float) -> Sequence[RawNotification]:
        self._check()
        # The bell rings for a notification, a wake or a drop, and stays rung until a wait
        # answers it: a wake before the wait is not lost (as with PostgresSource's pipe).
        if not self._inbox and not self._bell.is_set():
            self._bell.wait(timeout)
        self._bell.clear()
        self._check()
        notes, self._inbox = self._inbox, []
        return notes

    def wake(self) -> None:
        self._bell.set()

    def read_since(self, channel: str, seq: int, limit: int) -> list[Transaction]:
        self._check()
        log = self._channels.get(channel)
        if log is None:
            return []
        after = sorted(s for s in log.rows if s > seq)[:limit]
        return [self._transaction(s, *log.rows[s], log.committed.get(s)) for s in after]

    def read_one(self, channel: str, seq: int, epoch: str) -> tuple[Change, ...] | None:
        self._check()
        log = self._channels.get(channel)
        row = None if log is None else log.rows.get(seq)
        return None if row is None or row[0] != epoch else _changes(row[2])

    def read_counter(self, channel: str) -> Position:
        self._check()
        log = self._channels.get(channel)
        return (0, "") if log is None else (log.seq, log.epoch)

    def _check(self) -> None:
        if self._broken:
            raise SourceError("connection lost (MemorySource.drop_connection)")
        if not self.connected:
            raise SourceError("not connected")

    @staticmethod
    def _transaction(
        seq: int, epoch: str, txid: int, text: str, committed: float | None
    ) -> Transaction:
        return Transaction(seq, epoch, txid, _changes(text), committed)

    # -- the writers' side --------------------------------------------------------------------

    @property
    def listening(self) -> frozenset[str]:
        """The channels LISTENed on the current connection (``pg_listening_channels()``)."""
        return frozenset(self._listening)

    def commit(
        self,
        channel: str,
        changes: list[dict[str, Any]],
        *,
        notify: bool = True,
        spill: bool = False,
        committed: float | None = None,
    ) -> int:
        """Commit one transaction's ``changes`` on ``channel`` as the write side does: the
        next seq (a new counter gets a random epoch), a changelog row and, unless
        ``notify`` is False (the notification is lost), a NOTIFY: inline, or a reference
        to the row when ``spill`` or when it would not fit. Both carry the commit time,
        ``committed`` (seconds since the epoch; default now). Returns the seq."""
        log = self._channels.setdefault(channel, _Channel())
        if not log.epoch:
            log.epoch = secrets.token_hex(8)
        log.seq += 1
        self._txid += 1
        text = json.dumps(changes, separators=(",", ":"), default=str)
        log.rows[log.seq] = (log.epoch, self._txid, text)
        stamp = time.time() if committed is None else committed
        log.committed[log.seq] = stamp
        if notify:
            self.notify(channel, _payload(log.seq, log.epoch, self._txid, changes, spill, stamp))
        return log.seq

    def notify(self, channel: str, payload: str) -> None:
        """A raw NOTIFY: received only when connected and LISTENing to ``channel``."""
        if self.connected and not self._broken and channel in self._listening:
            self._inbox.append(Notice(channel, payload))
            self._bell.set()

    def renotify(self, channel: str, seq: int, *, spill: bool = False) -> None:
        """Send the notification of changelog row ``seq`` again (a duplicate, as one that
        arrives after a backfill already read its row)."""
        log = self._channels[channel]
        epoch, txid, text = log.rows[seq]
        self.notify(
            channel, _payload(seq, epoch, txid, json.loads(text), spill, log.committed.get(seq))
        )

    def insert_row(
        self, channel: str, seq: int, epoch: str, txid: int, changes: list[dict[str, Any]]
    ) -> None:
        """A raw changelog row (the counter is left alone: see ``set_counter``)."""
        log = self._channels.setdefault(channel, _Channel())
        log.rows[seq] = (epoch, txid, json.dumps(changes, separators=(",", ":"), default=str))

    def set_counter(self, channel: str, seq: int, epoch: str) -> None:
        """Set ``channel``'s counter row (the next ``commit`` takes ``seq + 1``)."""
        log = self._channels.setdefault(channel, _Channel())
        log.seq, log.epoch = seq, epoch

    def prune(self, channel: str, through: int) -> None:
        """Delete ``channel``'s changelog rows up to seq ``through`` (retention)."""
        log = self._channels.get(channel)
        if log is not None:
            log.rows = {s: row for s, row in log.rows.items() if s > through}
            log.committed = {s: t for s, t in log.committed.items() if s > through}

    def reset(self, channel: str, epoch: str | None = None) -> None:
        """Start ``channel``'s counter over at 0 in a new epoch (``epoch`` or a random
        one), its history gone: what a relay sees after the database was restored."""
        self._channels[channel] = _Channel(0, epoch or secrets.token_hex(8))

    def drop_connection(self) -> None:
        """The listening connection dies: the next (or current) ``wait`` raises
        ``SourceError``; what it LISTENed and any notification not yet handed over are
        lost, and so is everything notified until the next ``connect``."""
        self._broken = True
        self.connected = False
        self._listening.clear()
        self._inbox.clear()
        self._bell.set()


def _changes(text: str) -> tuple[Change, ...]:
    # Parsed on every read, as PostgreSQL's rows are: what a test pushed must follow the
    # contract, and non-integer numbers come back as Decimal.
    return changestream.parse_changes(changestream.loads_payload(text))


def _payload(
    seq: int,
    epoch: str,
    txid: int,
    changes: list[dict[str, Any]],
    spill: bool,
    committed: float | None,
) -> str:
    if spill:
        head: dict[str, Any] = {"s": seq, "e": epoch, "x": txid, "r": True}
        if committed is not None:
            head["t"] = round(committed * 1_000_000)
        return json.dumps(head, separators=(",", ":"))
    return changestream.encode_notification(seq, epoch, txid, changes, committed)
