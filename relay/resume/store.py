"""Where parked sessions are kept: the ``ddp_parked_session`` table in PostgreSQL.

Layer: L3 (gevent + psycopg2). One connection per worker process, used by one greenlet
at a time (parking and resuming are rare next to messages: a few per connection). A
failure is reported to the caller, which then treats the session as not resumable; the
connection is reopened on the next use.

Must not: decide anything about resumption (``relay.resume.resumer``), or be used per message.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import gevent.lock
import psycopg2
import psycopg2.extensions

from relay.resume import parked
from relay.resume.parked import ParkedSession

log = logging.getLogger(__name__)


class ParkStore:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: Any = None
        self._lock = gevent.lock.BoundedSemaphore(1)

    def _execute(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg2.connect(
                            self.dsn, application_name="ddp-relay parking"
                        )
                        self._conn.set_isolation_level(
                            psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT
                        )
                    with self._conn.cursor() as cur:
                        cur.execute(statement, params)
                        return list(cur.fetchall()) if cur.description else []
                except psycopg2.OperationalError:
                    self.close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def save(self, state: ParkedSession, window: float) -> None:
        self._execute(parked.UPSERT, (state.session_id, parked.dumps(state), window))

    def load(self, session_id: str) -> ParkedSession | None:
        rows = self._execute(parked.SELECT, (session_id,))
        return parked.loads(rows[0][0]) if rows else None

    def delete(self, session_id: str) -> None:
        self._execute(parked.DELETE, (session_id,))

    def delete_expired(self) -> None:
        self._execute(parked.DELETE_EXPIRED, ())

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
