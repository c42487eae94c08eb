"""Helpers of the change-stream tests: a raw LISTEN connection and changelog readers."""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg2
import psycopg2.extensions
from django.db import connection

from relay.protocol.changestream import (
    Notification,
    loads_payload,
    parse_changes,
    parse_notification,
)

BOOKS = "ddp_bookstore_book"
AUTHORS = "ddp_bookstore_author"
SENTINEL = "ddp_test_sentinel"


class Listener:
    """A psycopg2 connection that LISTENs like a relay, outside Django."""

    def __init__(self, dsn: str, *channels: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with self.conn.cursor() as cursor:
            for channel in (*channels, SENTINEL):
                cursor.execute(f"LISTEN {channel}")
        self._count = 0

    def drain(self, timeout: float = 5.0) -> list[Notification]:
        """Everything committed so far: notifies a sentinel (autocommit, from a second
        connection) and collects until it arrives: NOTIFY is delivered in commit order."""
        self._count += 1
        token = str(self._count)
        with psycopg2.connect(self.conn.dsn) as other, other.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [SENTINEL, token])
        other.close()
        out: list[Notification] = []
        deadline = time.monotonic() + timeout
        while True:
            self.conn.poll()
            while self.conn.notifies:
                n = self.conn.notifies.pop(0)
                if n.channel == SENTINEL:
                    if n.payload == token:
                        return out
                    continue
                out.append(parse_notification(n.channel, n.payload))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no sentinel within {timeout}s; got {out!r}")
            select.select([self.conn], [], [], left)

    def close(self) -> None:
        self.conn.close()


def position(channel: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT seq FROM ddp_channel WHERE channel = %s", [channel])
        row = cursor.fetchone()
    return 0 if row is None else int(row[0])


def changelog(channel: str, after: int = 0) -> list[tuple[int, str, int, list[Any]]]:
    """``(seq, epoch, txid, changes)`` rows after ``after``, changes decoded as relays do."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, epoch, txid, changes::text FROM ddp_changelog"
            " WHERE channel = %s AND seq > %s ORDER BY seq",
            [channel, after],
        )
        rows = cursor.fetchall()
    return [(s, e, x, list(parse_changes(loads_payload(c)))) for s, e, x, c in rows]


def pending_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ddp_pending")
        return int(cursor.fetchone()[0])


def flush_now() -> None:
    """Run the deferred flush inside the current (test) transaction, as a commit would."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def tx_changes(channel: str) -> list[Any]:
    """The changes the current transaction flushed on ``channel`` (after ``flush_now``)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT changes::text FROM ddp_changelog"
            " WHERE channel = %s AND txid = txid_current() ORDER BY seq",
            [channel],
        )
        rows = cursor.fetchall()
    return [c for (text,) in rows for c in parse_changes(loads_payload(text))]
