"""The window benchmark's books: a prepared pool, the planned writes, the database's truth.

Every window is ``books.latest``'s order: ``published`` newest first, undated last, ties
by id (code point order). ``prepare`` replaces the previous run's bench books by a pool
of ``count`` books dated after every other book, one day apart (no ties anywhere near
the windows). ``plan_writes`` (pure) decides the writes so that each one changes EVERY
window of at least ``n_min`` books, and what every session must then receive:

- even writes insert a new book dated after all (it enters every window at the top and
  pushes the last one out): every session gets its ``added``;
- odd writes delete the book at position ``n_min`` (in every window; the window's next
  book shifts in from the relay's buffer): every session gets its ``removed``.

Removals never touch a book the benchmark inserted, so a relay that re-runs the
publication late (and so coalesces commits) still shows every planned event: an inserted
book stays until the end and a removed one was in every window from the start. That
holds while the inserted books fill fewer than ``n_min - 1`` positions, hence
``max_writes``.

``BookWriter`` commits the plan, one transaction each, keeping each commit's transaction
id for PostgreSQL's commit timestamp; ``top_ids`` reads what each window must end as.

Must not: know about relays or sessions; write anything but rows titled ``TITLE...``.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.bench.stack import BenchError
from loadtest.bench.writer import TABLE, commit_times, connect

#: Every book this benchmark makes is titled so; ``prepare`` deletes them first.
TITLE = "bench window "
#: Meteor's id alphabet (``Random.id()``): what ``MeteorIdField`` draws from.
ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
#: The window order, as the database ranks it (``COLLATE "C"``: code point ties).
ORDER = 'published DESC NULLS LAST, id COLLATE "C"'


def meteor_id() -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(17))


@dataclass(frozen=True)
class PlannedWrite:
    """Write ``index``: "added" (insert ``book_id``) or "removed" (delete it)."""

    index: int
    kind: str
    book_id: str


def max_writes(n_min: int) -> int:
    """The most writes ``plan_writes`` can plan for windows of at least ``n_min`` books:
    removal k takes position ``n_min`` while k+1 inserted books sit above it."""
    return max(0, 2 * (n_min - 1))


def plan_writes(
    order: Sequence[str], n_min: int, writes: int, new_ids: Sequence[str]
) -> list[PlannedWrite]:
    """``writes`` writes: write 2k inserts ``new_ids[k]``, write 2k+1 deletes the book at
    position ``n_min``. ``order``: the ids in window order before the first write (at least
    ``n_min - 1`` of them). ValueError when more than ``max_writes(n_min)`` are asked or
    ``new_ids`` is short."""
    if writes > max_writes(n_min):
        raise ValueError(
            f"{writes} writes: windows of {n_min} books allow at most {max_writes(n_min)} "
            "(every removal must hit a book in every window that the run did not insert)"
        )
    if len(new_ids) < (writes + 1) // 2:
        raise ValueError(f"{writes} writes insert {(writes + 1) // 2} books: {len(new_ids)} ids")
    if writes > 1 and len(order) < n_min - 1:
        raise ValueError(f"{len(order)} books, windows of {n_min} need at least {n_min - 1}")
    plan = []
    for i in range(writes):
        k = i // 2
        if i % 2 == 0:
            plan.append(PlannedWrite(i, "added", new_ids[k]))
        else:
            # Positions 1..k+1 hold the inserted books, then the first books of ``order``
            # whose later ones earlier removals took: position n_min is order[n_min - k - 2].
            plan.append(PlannedWrite(i, "removed", order[n_min - k - 2]))
    return plan


def _columns(conn: Any) -> dict[str, tuple[bool, bool]]:
    """Column -> (nullable, has a default) of the book table, as this tree migrated it."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, is_nullable = 'YES', column_default IS NOT NULL"
            " FROM information_schema.columns WHERE table_name = %s",
            (TABLE,),
        )
        out = {str(name): (bool(null), bool(default)) for name, null, default in cur.fetchall()}
    conn.rollback()
    return out


class BookWriter:
    """Inserts and deletes bench books, one transaction each, with their commit times."""

    def __init__(self, url: str) -> None:
        self.conn = connect(url)
        columns = _columns(self.conn)
        known = {"id", "title", "author_id", "published", "price", "updated_at", "tags"}
        missing = [
            column
            for column, (nullable, has_default) in columns.items()
            if column not in known and not nullable and not has_default
        ]
        if missing:
            raise BenchError(f"{TABLE} has NOT NULL columns the bench cannot fill: {missing}")
        self.has_tags = "tags" in columns
        with self.conn.cursor() as cur:
            cur.execute("SELECT id FROM bookstore_author ORDER BY id LIMIT 1")
            row = cur.fetchone()
        self.conn.rollback()
        if row is None:
            raise BenchError("no author: did seed_demo run?")
        self.author = str(row[0])
        #: Client side: ``time.time()`` right after COMMIT returned, per write.
        self.commits: list[float] = []
        self.xids: list[int] = []
        self.commit_seconds: list[float] = []

    def _insert_sql(self) -> str:
        tags = ", tags" if self.has_tags else ""
        values = ", '[]'::jsonb" if self.has_tags else ""
        return (
            f"INSERT INTO {TABLE} (id, title, author_id, published, price, updated_at{tags})"
            f" VALUES (%s, %s, %s, %s, 1.00, now(){values})"
        )

    def newest(self) -> dt.date | None:
        """The latest ``published`` of the books that are not the benchmark's."""
        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT max(published) FROM {TABLE} WHERE title NOT LIKE %s", (TITLE + "%",)
            )
            row = cur.fetchone()
        self.conn.rollback()
        return None if row is None or row[0] is None else row[0]

    def prepare(self, count: int) -> dt.date:
        """Delete the previous bench books, insert ``count`` new ones dated one day apart
        after every other book (one transaction); returns the first free date after them."""
        start = (self.newest() or dt.date(2000, 1, 1)) + dt.timedelta(days=1)
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {TABLE} WHERE title LIKE %s", (TITLE + "%",))
            rows = [
                (meteor_id(), f"{TITLE}pool {i}", self.author, start + dt.timedelta(days=i))
                for i in range(count)
            ]
            cur.executemany(self._insert_sql(), rows)
        self.conn.commit()
        return start + dt.timedelta(days=count)

    def top_ids(self, n: int) -> list[str]:
        """The ids of the first ``n`` books in window order, as the database has them now."""
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {TABLE} ORDER BY {ORDER} LIMIT %s", (n,))
            ids = [str(row[0]) for row in cur.fetchall()]
        self.conn.rollback()
        return ids

    def _commit(self, sql: str, params: tuple[Any, ...]) -> None:
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            cur.execute(
                f"WITH w AS ({sql} RETURNING 1)"
                " SELECT txid_current() %% 4294967296, (SELECT count(*) FROM w)",
                params,
            )
            xid, count = cur.fetchone()
            if count != 1:
                self.conn.rollback()
                raise BenchError(f"a planned write touched {count} rows, not 1: {params!r}")
        self.conn.commit()
        self.commits.append(time.time())
        self.commit_seconds.append(time.perf_counter() - started)
        self.xids.append(int(xid))

    def insert(self, book_id: str, title: str, published: dt.date) -> None:
        self._commit(self._insert_sql(), (book_id, title, self.author, published))

    def remove(self, book_id: str) -> None:
        self._commit(f"DELETE FROM {TABLE} WHERE id = %s", (book_id,))

    def apply(self, write: PlannedWrite, first_new_date: dt.date, prefix: str) -> None:
        """Commit one planned write; inserts are dated ``first_new_date`` + their index."""
        if write.kind == "added":
            published = first_new_date + dt.timedelta(days=write.index)
            self.insert(write.book_id, f"{TITLE}{prefix}{write.index}", published)
        else:
            self.remove(write.book_id)

    def server_commit_times(self) -> list[float] | None:
        return commit_times(self.conn, self.xids)

    def close(self) -> None:
        self.conn.close()
