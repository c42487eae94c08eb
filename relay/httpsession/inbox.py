"""The inbox: messages sent to a SockJS HTTP session held by another relay process.

Layer: runtime. An ``xhr_send`` that lands on a process other than the session's holder
``put``s its messages here; the holder ``take``s them, oldest first, when the doorbell
rings (a NOTIFY on ``CHANNEL`` whose payload is ``"s <key>"``) and when it takes the
session over. The table is the truth and NOTIFY only the doorbell: a ring lost while a
listener reconnects is made up by taking every local session's messages after the
reconnect (``relay.stream.listener``'s control channels).

Order: a SockJS client sends one request at a time and waits for its answer, and ``put``
answers after its commit, so the ids (a sequence) follow the client's order. ``take``
deletes what it returns in one statement: a message is taken once.

``PostgresInbox`` over ``ddp_sockjs_inbox`` (``django_app``'s migration 0008), and
``MemoryInbox``, its twin for unit tests; both pass ``tests/relay/httpsession/
test_inbox_contract.py``.

Must not: decide who holds a session (``relay.httpsession.directory``), or hold the
session id in the clear (keys are hashes).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from relay.pg import Autocommit
from relay.transport.base import Inbound, Oversized

__all__ = ["CHANNEL", "Inbox", "InboxError", "MemoryInbox", "PostgresInbox"]

#: The control channel every relay with HTTP sessions LISTENs on.
CHANNEL: Final = "ddp_relay_sockjs"

_PUT = (
    "WITH sent AS (INSERT INTO ddp_sockjs_inbox (session_key, messages) VALUES (%s, %s))"
    " SELECT pg_notify(%s, %s)"
)
_TAKE = "DELETE FROM ddp_sockjs_inbox WHERE session_key = %s RETURNING id, messages"
_RING = "SELECT pg_notify(%s, %s)"
_DROP = "DELETE FROM ddp_sockjs_inbox WHERE session_key = %s"
_PRUNE = "DELETE FROM ddp_sockjs_inbox WHERE created_at < now() - make_interval(secs => %s)"


class InboxError(Exception):
    """The inbox could not do what it was asked (the cause is chained)."""


class Inbox(Protocol):
    def put(self, key: str, texts: Sequence[Inbound]) -> None:
        """Keep ``texts`` for the session ``key`` and ring its holder (at commit)."""
        ...

    def take(self, key: str) -> list[Inbound]:
        """Every message kept for ``key``, oldest first, now no longer kept."""
        ...

    def ring(self, payload: str) -> None:
        """Send ``payload`` on ``CHANNEL`` (a hand-over request: ``"r <key>"``)."""
        ...

    def drop(self, key: str) -> None:
        """Forget what is kept for ``key`` (its session ended)."""
        ...

    def prune(self, older_than: float) -> None:
        """Forget messages kept longer than ``older_than`` seconds (housekeeping)."""
        ...

    def close(self) -> None: ...


def _dumps(texts: Sequence[Inbound]) -> str:
    # A message too large to keep travels as the report the session answers with.
    items = [t if isinstance(t, str) else [t.size, t.limit, t.prefix] for t in texts]
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False)


def _batch(rows: list[tuple[int, str]]) -> list[Inbound]:
    texts: list[Inbound] = []
    for _, data in sorted(rows):
        for item in json.loads(data):
            texts.append(item if isinstance(item, str) else Oversized(*item))
    return texts


class PostgresInbox:
    """``Inbox`` on ``ddp_sockjs_inbox``, through one connection of its own."""

    def __init__(self, dsn: str) -> None:
        self._db = Autocommit(dsn, "ddp-relay sockjs inbox", InboxError, "inbox")

    def put(self, key: str, texts: Sequence[Inbound]) -> None:
        data = _dumps(texts)
        # Not retried: a put that reached the database before the connection failed
        # would be sent twice (the client's next send then comes after the error).
        self._db.execute(_PUT, (key, data, CHANNEL, "s " + key), retry=False)

    def take(self, key: str) -> list[Inbound]:
        rows, _ = self._db.execute(_TAKE, (key,), retry=False)
        return _batch([(int(i), str(d)) for i, d in rows])

    def ring(self, payload: str) -> None:
        self._db.execute(_RING, (CHANNEL, payload))

    def drop(self, key: str) -> None:
        self._db.execute(_DROP, (key,))

    def prune(self, older_than: float) -> None:
        self._db.execute(_PRUNE, (older_than,))

    def close(self) -> None:
        self._db.close()


class MemoryInbox:
    """The in-process twin: ``rung`` is called with each payload (as NOTIFY would)."""

    def __init__(self, rung: Callable[[str], None] | None = None) -> None:
        self.rung = rung
        self._next = 0
        self._rows: defaultdict[str, list[tuple[int, str]]] = defaultdict(list)

    def put(self, key: str, texts: Sequence[Inbound]) -> None:
        self._next += 1
        self._rows[key].append((self._next, _dumps(texts)))
        self.ring("s " + key)

    def take(self, key: str) -> list[Inbound]:
        return _batch(self._rows.pop(key, []))

    def ring(self, payload: str) -> None:
        if self.rung is not None:
            self.rung(payload)

    def drop(self, key: str) -> None:
        self._rows.pop(key, None)

    def prune(self, older_than: float) -> None:
        """Nothing ages in memory: the twin keeps its rows until taken or dropped."""

    def close(self) -> None:
        """Nothing to release."""
