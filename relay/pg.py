"""One autocommit PostgreSQL connection for a worker's occasional statements.

Layer: runtime (gevent + psycopg2). ``Autocommit`` opens its connection on first use,
runs one statement at a time (a lock: one greenlet at a time), and reopens a connection
found stale (the database restarted since the last statement) once per statement. The
park store (``relay.resume.store``) and the HTTP sessions' inbox (``relay.httpsession``)
use one each: their statements are rare next to messages.

Failures come out as the caller's exception type (``error``), never as a driver type:
``unavailable`` when the database cannot be reached, ``failed`` for an SQL error.

Must not: know any table, or be used per message.
"""

from __future__ import annotations

import contextlib
from typing import Any

import gevent.lock
import psycopg2
import psycopg2.extensions

__all__ = ["Autocommit"]

Rows = list[tuple[Any, ...]]


class Autocommit:
    """An autocommit connection to ``dsn``, named ``name`` in ``pg_stat_activity``."""

    def __init__(self, dsn: str, name: str, error: type[Exception], what: str) -> None:
        self.dsn = dsn
        self.name = name
        self.error = error
        #: How errors name the store ("park store", "inbox").
        self.what = what
        self._conn: Any = None
        self._lock = gevent.lock.BoundedSemaphore(1)

    def execute(
        self,
        statement: str,
        params: tuple[Any, ...] | dict[str, Any],
        *,
        retry: bool = True,
    ) -> tuple[Rows, int]:
        """Run ``statement``; its rows (if any) and row count. ``retry``: the statement
        is idempotent and may run again on a new connection when the first one failed
        (a statement that is not must say so: a second run would differ)."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg2.connect(self.dsn, application_name=self.name)
                        self._conn.set_isolation_level(
                            psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT
                        )
                    with self._conn.cursor() as cur:
                        cur.execute(statement, params)
                        rows = list(cur.fetchall()) if cur.description else []
                        return rows, cur.rowcount
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    # The connection may just be stale: one more try on a new one.
                    self.close()
                    if attempt == 2 or not retry:
                        raise self.error(f"{self.what} unavailable: {exc}") from exc
                except psycopg2.Error as exc:
                    # Autocommit: no transaction was left open, the connection stays usable.
                    raise self.error(f"{self.what} failed: {exc}") from exc
            raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the connection (the next statement opens a new one). Never raises."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
