"""What the database wrote while a benchmark measured: table counters and NOTIFYs.

``table_counters`` reads ``pg_stat_user_tables`` (rows inserted, updated, deleted per
table); ``deltas`` subtracts two readings, ``per_change`` divides them by the changes
that caused them. PostgreSQL's backends report these counters late (measured here: up
to 10 s after the write, ``PGSTAT_IDLE_INTERVAL``), so ``settled_counters`` waits until
they stayed unchanged for longer than that on the tables that matter. ``NotifyCounter``
LISTENs on one channel and counts what arrives: the NOTIFYs a workload sent, measured
rather than inferred from the flush's code. ``changelog_rows`` reads one channel's
changelog rows after a position, with each row's commit timestamp.

Must not: write anything, or know which workload it measures (the caller names tables
and channels).
"""

from __future__ import annotations

import contextlib
import json
import select
import threading
from collections.abc import Iterable, Mapping
from time import monotonic, sleep
from typing import Any

import psycopg2

#: The counters of ``pg_stat_user_tables`` read, in this order.
OPS = ("ins", "upd", "del")
#: (inserted, updated, deleted) per table.
Counters = dict[str, tuple[int, int, int]]
#: An idle backend reports its counters within PostgreSQL's ``PGSTAT_IDLE_INTERVAL``
#: (10 s): counters unchanged for longer hold every write made before.
QUIET_SECONDS = 11.0


def _connect(url: str) -> Any:
    conn = psycopg2.connect(url, application_name="ddp-bench stats")
    conn.autocommit = True
    return conn


def table_counters(url: str, tables: Iterable[str]) -> Counters:
    """Rows inserted, updated (HOT or not) and deleted so far in each of ``tables``
    (a table without statistics yet: zeros)."""
    names = list(tables)
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
                " WHERE relname = ANY(%s)",
                (names,),
            )
            found = {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()}
    finally:
        conn.close()
    return {name: found.get(name, (0, 0, 0)) for name in names}


def deltas(before: Counters, after: Counters) -> dict[str, dict[str, int]]:
    """Per table of ``after``: rows inserted, updated and deleted since ``before``."""
    out = {}
    for table, values in after.items():
        old = before.get(table, (0, 0, 0))
        out[table] = {op: values[i] - old[i] for i, op in enumerate(OPS)}
    return out


def total(changes: Mapping[str, Mapping[str, int]], skip: Iterable[str] = ()) -> int:
    """Rows written in every table but ``skip``."""
    left_out = set(skip)
    return sum(sum(ops.values()) for table, ops in changes.items() if table not in left_out)


def per_change(changes: Mapping[str, Mapping[str, int]], count: int) -> dict[str, dict[str, float]]:
    """``changes`` divided by ``count`` (NaN for every figure when ``count`` is 0)."""
    return {
        table: {op: value / count if count else float("nan") for op, value in ops.items()}
        for table, ops in changes.items()
    }


def settled_counters(
    url: str,
    tables: Iterable[str],
    *,
    ignore: Iterable[str] = (),
    quiet: float = QUIET_SECONDS,
    interval: float = 1.0,
    limit: float = 45.0,
) -> tuple[Counters, bool]:
    """Counters once they did not change for ``quiet`` seconds on any table but
    ``ignore`` (which background chores keep writing), read every ``interval``; or after
    ``limit`` seconds. Returns them and whether they settled."""
    names = list(tables)
    skip = set(ignore)
    started = monotonic()
    last = table_counters(url, names)
    since = started
    while True:
        sleep(interval)
        now = table_counters(url, names)
        if any(now[t] != last[t] for t in names if t not in skip):
            since = monotonic()
        last = now
        if monotonic() - since >= quiet:
            return last, True
        if monotonic() - started >= limit:
            return last, False


def changelog_position(url: str) -> int:
    """The id of the latest changelog row (0: none yet)."""
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT coalesce(max(id), 0) FROM ddp_changelog")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def changelog_rows(url: str, channel: str, after: int) -> list[tuple[Any, float]]:
    """The rows of ``channel`` after position ``after``, in commit order: (the changes as
    JSON, the commit timestamp in epoch ms; NaN without ``track_commit_timestamp``)."""
    conn = _connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW track_commit_timestamp")
            stamped = cur.fetchone()[0] == "on"
            stamp = (
                "extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 * 1000"
                if stamped
                else "'NaN'::float8"
            )
            cur.execute(
                f"SELECT changes::text, {stamp} FROM ddp_changelog"
                " WHERE channel = %s AND id > %s ORDER BY seq",
                (channel, after),
            )
            return [(json.loads(text), float(ms)) for text, ms in cur.fetchall()]
    finally:
        conn.close()


class NotifyCounter:
    """A LISTEN connection on ``channel`` that counts the notifications it receives, in a
    thread, until ``stop``."""

    def __init__(self, url: str, channel: str) -> None:
        self.count = 0
        self._conn = _connect(url)
        with self._conn.cursor() as cur:
            cur.execute('LISTEN "{}"'.format(channel.replace('"', '""')))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-counter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self._conn], [], [], 0.2)[0]:
                self._conn.poll()
                self.count += len(self._conn.notifies)
                self._conn.notifies.clear()

    def stop(self) -> int:
        """Stop counting (what arrived by now counts); returns the count."""
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._conn.poll()
            self.count += len(self._conn.notifies)
        with contextlib.suppress(Exception):
            self._conn.close()
        return self.count
