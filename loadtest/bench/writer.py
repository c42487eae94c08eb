"""The writing side of the benchmark: committed renames with their commit times.

A ``Writer`` is one psycopg2 connection that renames seeded books with plain SQL
(``UPDATE bookstore_book SET title = ...``), one transaction per write, exactly what a
``books.rename`` method or any other Django process does to the table: the write side's
database triggers turn each commit into a changelog row and a NOTIFY. The commit time is
``time.time()`` right after ``COMMIT`` returns; the generator subtracts it from each
session's receive time.

``trigger_overhead`` measures the write side's cost per transaction: the same single-row
UPDATE transactions timed with the table's user triggers enabled and disabled
(``ALTER TABLE ... DISABLE TRIGGER USER``), in alternating rounds so drift cancels.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import psycopg2

#: Seeded book ids (example/bookstore/management/commands/seed_demo.py).
BOOK_IDS = (
    "earthsea-1",
    "left-hand",
    "lathe",
    "dispossessed",
    "colour-of-magic",
    "mort",
    "guards-guards",
    "small-gods",
    "fifth-season",
    "obelisk-gate",
)
TABLE = "bookstore_book"


def connect(url: str) -> Any:
    conn = psycopg2.connect(url, application_name="ddp-bench writer")
    conn.autocommit = False
    return conn


def book_ids(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT id FROM {TABLE} ORDER BY id")
        ids = [str(row[0]) for row in cur.fetchall()]
    conn.rollback()
    if not ids:
        raise RuntimeError("no seeded books: did seed_demo run?")
    return ids


class Writer:
    """Commits renames; ``commits`` holds each write's commit time (epoch seconds)."""

    def __init__(self, url: str) -> None:
        self.conn = connect(url)
        self.ids = book_ids(self.conn)
        self.commits: list[float] = []
        self.commit_seconds: list[float] = []
        self.original = self._titles()

    def _titles(self) -> dict[str, str]:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id, title FROM {TABLE}")
            titles = {str(i): str(t) for i, t in cur.fetchall()}
        self.conn.rollback()
        return titles

    def write(self, title: str, index: int) -> float:
        """Rename book ``index % len(ids)`` to ``title`` in its own transaction."""
        book = self.ids[index % len(self.ids)]
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            cur.execute(f"UPDATE {TABLE} SET title = %s WHERE id = %s", (title, book))
            if cur.rowcount != 1:
                raise RuntimeError(f"book {book!r} is gone")
        self.conn.commit()
        committed = time.time()
        self.commit_seconds.append(time.perf_counter() - started)
        self.commits.append(committed)
        return committed

    def restore(self) -> None:
        """Put the seeded titles back (one transaction)."""
        with self.conn.cursor() as cur:
            for book, title in self.original.items():
                cur.execute(f"UPDATE {TABLE} SET title = %s WHERE id = %s", (title, book))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def paced_writes(
    writer: Writer, prefix: str, count: int, interval: float, *, max_seconds: float
) -> float:
    """``count`` writes on a fixed schedule, ``interval`` apart (late ones go at once).

    Returns the achieved rate (writes per second). Stops early after ``max_seconds``.
    """
    started = time.monotonic()
    for i in range(count):
        due = started + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - started > max_seconds:
            break
        writer.write(f"{prefix}{i}", i)
    elapsed = time.monotonic() - started
    done = len(writer.commits)
    return done / elapsed if elapsed > 0 and done > 1 else float("nan")


# -- write-side overhead ----------------------------------------------------------------------


@dataclass
class Overhead:
    transactions: int
    rounds: int
    enabled_ms: float
    disabled_ms: float
    triggers: list[str]
    enabled_rounds: list[float]
    disabled_rounds: list[float]

    @property
    def added_ms(self) -> float:
        return self.enabled_ms - self.disabled_ms


def user_triggers(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal"
            " ORDER BY tgname",
            (TABLE,),
        )
        names = [str(r[0]) for r in cur.fetchall()]
    conn.rollback()
    return names


def _set_triggers(conn: Any, enabled: bool) -> None:
    with conn.cursor() as cur:
        cur.execute(f"ALTER TABLE {TABLE} {'ENABLE' if enabled else 'DISABLE'} TRIGGER USER")
    conn.commit()


def _time_round(conn: Any, ids: list[str], n: int, tag: str) -> float:
    """Mean milliseconds of ``n`` single-row UPDATE transactions (BEGIN..COMMIT)."""
    cur = conn.cursor()
    started = time.perf_counter()
    for i in range(n):
        cur.execute(
            f"UPDATE {TABLE} SET title = %s WHERE id = %s", (f"{tag}{i}", ids[i % len(ids)])
        )
        conn.commit()
    elapsed = time.perf_counter() - started
    cur.close()
    return elapsed * 1000 / n


def trigger_overhead(url: str, transactions: int = 2000, rounds: int = 5) -> Overhead:
    """Per-transaction time with the write side's triggers on and off (alternating)."""
    conn = connect(url)
    try:
        ids = book_ids(conn)
        triggers = user_triggers(conn)
        original = {}
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, title FROM {TABLE}")
            original = {str(i): str(t) for i, t in cur.fetchall()}
        conn.rollback()
        _time_round(conn, ids, min(200, transactions), "bench warmup ")
        on: list[float] = []
        off: list[float] = []
        try:
            for r in range(rounds):
                # Alternate which goes first, so neither always runs on a warmer cache.
                order = (True, False) if r % 2 == 0 else (False, True)
                for enabled in order:
                    _set_triggers(conn, enabled)
                    mean = _time_round(conn, ids, transactions, f"bench overhead {r} ")
                    (on if enabled else off).append(mean)
        finally:
            _set_triggers(conn, True)
            with conn.cursor() as cur:
                for book, title in original.items():
                    cur.execute(f"UPDATE {TABLE} SET title = %s WHERE id = %s", (title, book))
            conn.commit()
        return Overhead(
            transactions=transactions,
            rounds=rounds,
            enabled_ms=statistics.median(on),
            disabled_ms=statistics.median(off),
            triggers=triggers,
            enabled_rounds=on,
            disabled_rounds=off,
        )
    finally:
        conn.close()
