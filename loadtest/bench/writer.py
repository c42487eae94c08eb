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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from loadtest.bench.stack import cpu_seconds, end_by_stdin, machine_cpu_seconds

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
        #: Client side: ``time.time()`` right after COMMIT returned, per write.
        self.commits: list[float] = []
        #: Per write: seconds from sending the UPDATE to COMMIT returning.
        self.commit_seconds: list[float] = []
        #: Per write: the transaction id (for the server's commit timestamp).
        self.xids: list[int] = []
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
            cur.execute(
                f"WITH u AS (UPDATE {TABLE} SET title = %s WHERE id = %s RETURNING 1)"
                " SELECT txid_current() %% 4294967296, (SELECT count(*) FROM u)",
                (title, book),
            )
            xid, updated = cur.fetchone()
            if updated != 1:
                raise RuntimeError(f"book {book!r} is gone")
        self.conn.commit()
        committed = time.time()
        self.commit_seconds.append(time.perf_counter() - started)
        self.commits.append(committed)
        self.xids.append(int(xid))
        return committed

    def server_commit_times(self) -> list[float] | None:
        """The server's commit timestamps (epoch seconds) of the writes, in order.

        Taken by PostgreSQL as it commits (``track_commit_timestamp``), so they do not
        include the delay before this process runs again after COMMIT returns, which on a
        busy 2-core machine can be longer than the fan-out itself. None when the setting
        is off or a timestamp is missing.
        """
        return commit_times(self.conn, self.xids)

    def restore(self) -> None:
        """Put the seeded titles back (one transaction)."""
        with self.conn.cursor() as cur:
            for book, title in self.original.items():
                cur.execute(f"UPDATE {TABLE} SET title = %s WHERE id = %s", (title, book))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def commit_times(conn: Any, xids: list[int]) -> list[float] | None:
    """The server's commit timestamps (epoch seconds) of the transactions ``xids`` (32-bit
    ``txid_current() % 2^32``), in order; None when ``track_commit_timestamp`` is off or a
    timestamp is missing."""
    if not xids:
        return []
    with conn.cursor() as cur:
        cur.execute("SHOW track_commit_timestamp")
        if cur.fetchone()[0] != "on":
            conn.rollback()
            return None
        cur.execute(
            "SELECT extract(epoch FROM pg_xact_commit_timestamp(x::text::xid))::float8"
            " FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(x, i) ORDER BY i",
            (xids,),
        )
        times = [row[0] for row in cur.fetchall()]
    conn.rollback()
    if len(times) != len(xids) or any(t is None for t in times):
        return None
    return [float(t) for t in times]


def pace(count: int, interval: float, write: Callable[[int], object], *, max_seconds: float) -> int:
    """Call ``write(i)`` for i in 0..count-1 on a fixed schedule, ``interval`` apart (late
    ones go at once); stops early after ``max_seconds``. Returns how many were called."""
    started = time.monotonic()
    done = 0
    for i in range(count):
        due = started + i * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() - started > max_seconds:
            break
        write(i)
        done += 1
    return done


def achieved_rate(commits: list[float]) -> float:
    """Writes per second between the first and the last commit (NaN: fewer than two)."""
    if len(commits) < 2 or commits[-1] <= commits[0]:
        return float("nan")
    return (len(commits) - 1) / (commits[-1] - commits[0])


def paced_writes(
    writer: Writer, prefix: str, count: int, interval: float, *, max_seconds: float
) -> float:
    """``count`` writes on a fixed schedule, ``interval`` apart (late ones go at once).

    Returns the achieved rate (writes per second between the first and the last commit).
    Stops early after ``max_seconds``.
    """
    pace(count, interval, lambda i: writer.write(f"{prefix}{i}", i), max_seconds=max_seconds)
    return achieved_rate(writer.commits)


# -- write-side overhead ----------------------------------------------------------------------


@dataclass
class Overhead:
    """Single-row UPDATE transactions, triggers on versus off, in alternating rounds.

    Wall-clock time is what the writer waits; the writer's backend CPU time (from
    ``/proc``) is the work PostgreSQL did for it, far less sensitive to other processes
    and to a hypervisor that steals the CPU. Added costs are medians of the per-round
    differences (each "on" round paired with the "off" round next to it in time).
    """

    transactions: int
    rounds: int
    enabled_ms: float
    disabled_ms: float
    added_ms: float
    enabled_cpu_ms: float
    disabled_cpu_ms: float
    added_cpu_ms: float
    triggers: list[str]
    enabled_rounds: list[float]
    disabled_rounds: list[float]
    #: Cores busy with any process / stolen by the hypervisor while this ran (noise check).
    busy_share: float = float("nan")
    steal_share: float = float("nan")
    #: PL/pgSQL functions the transactions ran, from ``pg_stat_user_functions`` in an extra
    #: untimed pass (``track_functions = pl``): name -> (calls per transaction, self ms per
    #: transaction). Self time includes the SQL each function runs, not other functions.
    functions: dict[str, tuple[float, float]] = field(default_factory=dict)


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


def _time_round(conn: Any, ids: list[str], n: int, tag: str) -> tuple[float, float]:
    """Per transaction: (wall ms, backend CPU ms) of ``n`` single-row UPDATE transactions."""
    backend = conn.get_backend_pid()
    cur = conn.cursor()
    cpu0 = cpu_seconds(backend)
    started = time.perf_counter()
    for i in range(n):
        cur.execute(
            f"UPDATE {TABLE} SET title = %s WHERE id = %s", (f"{tag}{i}", ids[i % len(ids)])
        )
        conn.commit()
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(backend) - cpu0
    cur.close()
    return elapsed * 1000 / n, cpu * 1000 / n


def _function_stats(conn: Any) -> dict[str, tuple[int, float]]:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute(
            "SELECT funcname, calls, self_time FROM pg_stat_user_functions"
            " WHERE funcname LIKE 'ddp%%'"
        )
        rows = {str(n): (int(c), float(t)) for n, c, t in cur.fetchall()}
    conn.rollback()
    return rows


def _flush_stats(conn: Any) -> None:
    """Make this backend report its pending statistics now (PostgreSQL 15+)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
    conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.commit()


def _function_breakdown(conn: Any, ids: list[str], n: int) -> dict[str, tuple[float, float]]:
    """Per transaction: calls and self milliseconds of each ``ddp*`` PL/pgSQL function."""
    try:
        with conn.cursor() as cur:
            cur.execute("SET track_functions = 'pl'")
        conn.commit()
        _flush_stats(conn)
        before = _function_stats(conn)
        _time_round(conn, ids, n, "bench breakdown ")
        _flush_stats(conn)
        time.sleep(0.2)
        after = _function_stats(conn)
        with conn.cursor() as cur:
            cur.execute("SET track_functions = 'none'")
        conn.commit()
    except psycopg2.Error:
        conn.rollback()
        return {}  # before PostgreSQL 15 (no pg_stat_force_next_flush): no breakdown
    out = {}
    for name, (calls, self_ms) in after.items():
        calls0, self0 = before.get(name, (0, 0.0))
        if calls > calls0:
            out[name] = ((calls - calls0) / n, (self_ms - self0) / n)
    return out


def trigger_overhead(url: str, transactions: int = 1000, rounds: int = 10) -> Overhead:
    """Per-transaction cost with the write side's triggers on and off (alternating)."""
    conn = connect(url)
    try:
        ids = book_ids(conn)
        triggers = user_triggers(conn)
        with conn.cursor() as cur:
            cur.execute(f"SELECT id, title FROM {TABLE}")
            original = {str(i): str(t) for i, t in cur.fetchall()}
        conn.rollback()
        _time_round(conn, ids, min(200, transactions), "bench warmup ")
        started, (busy0, steal0) = time.monotonic(), machine_cpu_seconds()
        on: list[tuple[float, float]] = []
        off: list[tuple[float, float]] = []
        try:
            for r in range(rounds):
                # Alternate which goes first, so neither always runs on a warmer cache.
                order = (True, False) if r % 2 == 0 else (False, True)
                for enabled in order:
                    _set_triggers(conn, enabled)
                    timing = _time_round(conn, ids, transactions, f"bench overhead {r} ")
                    (on if enabled else off).append(timing)
        finally:
            _set_triggers(conn, True)
            with conn.cursor() as cur:
                for book, title in original.items():
                    cur.execute(f"UPDATE {TABLE} SET title = %s WHERE id = %s", (title, book))
            conn.commit()
        (busy1, steal1), wall = machine_cpu_seconds(), time.monotonic() - started
        functions = _function_breakdown(conn, ids, transactions)
        return Overhead(
            functions=functions,
            busy_share=(busy1 - busy0) / wall,
            steal_share=(steal1 - steal0) / wall,
            transactions=transactions,
            rounds=rounds,
            enabled_ms=statistics.median(w for w, _ in on),
            disabled_ms=statistics.median(w for w, _ in off),
            added_ms=statistics.median(a[0] - b[0] for a, b in zip(on, off, strict=True)),
            enabled_cpu_ms=statistics.median(c for _, c in on),
            disabled_cpu_ms=statistics.median(c for _, c in off),
            added_cpu_ms=statistics.median(a[1] - b[1] for a, b in zip(on, off, strict=True)),
            triggers=triggers,
            enabled_rounds=[w for w, _ in on],
            disabled_rounds=[w for w, _ in off],
        )
    finally:
        conn.close()


#: A minimal LISTEN client: drains every notification and nothing else (run as a child).
_DRAIN = """
import select, sys, psycopg2
conn = psycopg2.connect(sys.argv[1], application_name="ddp-bench drain")
conn.autocommit = True
with conn.cursor() as cur:
    for channel in sys.argv[2:]:
        cur.execute('LISTEN "%s"' % channel.replace('"', '""'))
print("listening", flush=True)
while True:
    readable = select.select([conn, sys.stdin], [], [], 60)[0]
    if sys.stdin in readable or not readable:
        break
    conn.poll()
    conn.notifies.clear()
"""


def channels(url: str) -> list[str]:
    """The change-stream channels that exist so far (rows of ``ddp_channel``)."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT channel FROM ddp_channel ORDER BY channel")
            return [str(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()


class DrainListener:
    """A bare psycopg2 LISTEN connection in a child process that only drains."""

    def __init__(self, url: str, listen_to: list[str]) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRAIN, url, *listen_to],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "listening":
            self.close()
            raise RuntimeError("the drain listener did not start")

    def close(self) -> None:
        end_by_stdin(self.proc)
