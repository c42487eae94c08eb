"""Where parked sessions are kept: the ``ParkedStore`` seam, and its PostgreSQL
implementation over the ``ddp_parked_session`` table (created by ``django_app``'s migrations).

Layer: runtime (gevent + psycopg2). The resumer is written against ``ParkedStore``; every
implementation passes one contract suite (``tests/relay/resume/test_store_contract.py``):
this one and the in-memory twin ``relay.resume.memory.MemoryParkStore``. What the seam
promises:

- ``save`` writes a session's state (replacing any earlier one) resumable for ``window``
  seconds, in its compact form (``relay.resume.parked.pack``), unless the states its
  ``owner`` (the client's address) has parked would then exceed ``owner_limit`` bytes:
  then nothing is written and it returns False; ``load`` gives it back, or None when
  there is none, its window passed, or it is not a state this code can resume (another
  format version); ``delete`` and
  ``delete_expired`` forget, and neither minds an id that is not there.
- Any failure of the storage (database unreachable, connection lost twice in a row, an
  SQL error) is raised as ``ParkStoreError``, never as a driver type. It may or may not
  have taken effect; the caller treats the session as not resumable. The next call tries
  again (a lost connection is reopened). ``close`` never raises.

``PostgresParkStore`` (also importable as ``ParkStore``, the name ``relay.server.node``
uses): one connection per worker process, in autocommit, used by one greenlet at a time
(``relay.pg.Autocommit``)
(parking and resuming are rare next to messages: a few per connection). Row expiry uses the
database's clock (``now()``), so every relay agrees on it.

Must not: decide anything about resumption (``relay.resume.resumer``), or be used per message.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg2

from relay.pg import Autocommit
from relay.resume import parked
from relay.resume.parked import ParkedSession

__all__ = ["ParkStore", "ParkStoreError", "ParkedStore", "PostgresParkStore"]

TABLE = "ddp_parked_session"
UPSERT = (
    "INSERT INTO ddp_parked_session (session_id, state, owner, size, parked_at, expires_at)"
    " SELECT %(id)s, %(state)s, %(owner)s, %(size)s, now(),"
    " now() + make_interval(secs => %(window)s)"
    # The owner's other live rows plus this one must fit its limit (0: no limit).
    " WHERE %(limit)s = 0 OR %(size)s + (SELECT coalesce(sum(size), 0)"
    " FROM ddp_parked_session WHERE owner = %(owner)s AND expires_at > now()"
    " AND session_id <> %(id)s) <= %(limit)s"
    " ON CONFLICT (session_id) DO UPDATE SET state = EXCLUDED.state, owner = EXCLUDED.owner,"
    " size = EXCLUDED.size, parked_at = EXCLUDED.parked_at, expires_at = EXCLUDED.expires_at"
)
SELECT = "SELECT state FROM ddp_parked_session WHERE session_id = %s AND expires_at > now()"
DELETE = "DELETE FROM ddp_parked_session WHERE session_id = %s"
DELETE_EXPIRED = "DELETE FROM ddp_parked_session WHERE expires_at < now()"


class ParkStoreError(Exception):
    """The park store could not do what it was asked (the cause is chained)."""


class ParkedStore(Protocol):
    """Durable storage of parked session states, keyed by session id."""

    def save(
        self, state: ParkedSession, window: float, *, owner: str = "", owner_limit: int = 0
    ) -> bool:
        """Keep ``state`` (replacing any earlier one) until ``window`` seconds from now;
        False (nothing kept) when ``owner``'s live states would pass ``owner_limit``
        bytes (0: no limit)."""
        ...

    def load(self, session_id: str) -> ParkedSession | None:
        """The state, or None: never saved, deleted, expired, or of an unknown format."""
        ...

    def delete(self, session_id: str) -> None:
        """Forget the session's state (nothing happens when there is none)."""
        ...

    def delete_expired(self) -> None:
        """Forget every state whose window has passed (housekeeping)."""
        ...

    def close(self) -> None:
        """Release what the store holds; it may be used again afterwards. Never raises."""
        ...


class PostgresParkStore:
    """``ParkedStore`` on the ``ddp_parked_session`` table of the database at ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # Every statement here is idempotent, so running one twice is harmless.
        self._db = Autocommit(dsn, "ddp-relay parking", ParkStoreError, "park store")

    def _execute(
        self, statement: str, params: tuple[Any, ...] | dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        return self._db.execute(statement, params)

    def save(
        self, state: ParkedSession, window: float, *, owner: str = "", owner_limit: int = 0
    ) -> bool:
        data = parked.pack(state)
        params = {
            "id": state.session_id,
            "state": psycopg2.Binary(data),
            "owner": owner,
            "size": len(data),
            "window": window,
            "limit": owner_limit,
        }
        _, written = self._execute(UPSERT, params)
        return written > 0

    def load(self, session_id: str) -> ParkedSession | None:
        rows, _ = self._execute(SELECT, (session_id,))
        return parked.unpack(bytes(rows[0][0])) if rows else None

    def delete(self, session_id: str) -> None:
        self._execute(DELETE, (session_id,))

    def delete_expired(self) -> None:
        self._execute(DELETE_EXPIRED, ())

    def close(self) -> None:
        self._db.close()


#: The name ``relay.server.node`` imports.
ParkStore = PostgresParkStore
