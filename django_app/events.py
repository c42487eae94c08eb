"""Server-pushed events: ``publish_event`` from any Django process, and a key's history.

Job: ``publish_event(stream, payload, key=...)`` queues one event on the change stream in
the caller's transaction (nothing leaves on rollback; it leaves at commit, in commit
order with every other change of that key), from a view, a worker, a management command
or a relay method alike; ``history(stream_cursor)`` reads a key's most recent events back
from ``ddp_changelog`` (a new subscriber's first documents). The stream itself and the
event's shape are ``django_app.streams``.

Bounds: a payload is at most ``DDP_EVENT_MAX_BYTES`` as JSON (ValueError beyond); history
is what ``ddp_changelog`` still holds (``DDP_CHANGELOG_RETENTION``), at most the stream's
``history`` events.

What must not live here: the stream declarations or the change format
(``django_app.streams``), routing or delivery (the relay's).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from django_app.conf import ddp_settings
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.streams import Stream, StreamCursor
from django_app.triggers import enqueue_sql
from relay.backend import Document
from relay.protocol.alea import random_id
from relay.protocol.changestream import loads_payload, parse_changes

__all__ = ["history", "publish_event"]

#: A key's history, newest transaction first (each changelog row holds one transaction's
#: events of that key; at most ``history`` rows are needed for ``history`` events).
_SELECT_RECENT = (
    "SELECT changes::text FROM ddp_changelog WHERE channel = %s ORDER BY seq DESC LIMIT %s"
)


def publish_event(
    stream: Stream | str,
    payload: Mapping[str, Any],
    *,
    key: Any = "",
    using: str = DEFAULT_DB_ALIAS,
    registry: Registry | None = None,
) -> str:
    """Queue ``payload`` as the next event of ``stream`` for ``key``; returns its id (the
    ``_id`` of the document subscribers get).

    Published when the surrounding transaction commits (at once in autocommit); rolled
    back with it. ``payload`` is a mapping of field names to EJSON-able values (dates,
    decimals and bytes arrive as what they are). Raises ``LookupError`` for a stream
    that is not registered, ``ValueError``/``TypeError`` for a payload that cannot be
    sent (too large, bad field names, values EJSON cannot carry)."""
    reg = registry if registry is not None else default_registry
    if isinstance(stream, str):
        found = reg.get_stream(stream)
        if found is None:
            raise LookupError(f"no stream {stream!r} is registered (registry.add_stream)")
        stream = found
    channel = stream.channel(key)
    event_id = random_id()
    text = json.dumps(stream.change(event_id, payload), separators=(",", ":"))
    limit = ddp_settings.EVENT_MAX_BYTES
    if len(text.encode()) > limit:
        raise ValueError(f"an event is at most {limit} bytes of JSON (DDP_EVENT_MAX_BYTES)")
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(enqueue_sql(channel, "SELECT %s::jsonb AS change"), [text])
    return event_id


def history(cursor: StreamCursor, *, using: str = DEFAULT_DB_ALIAS) -> list[Document]:
    """The key's last ``cursor.history`` events still in the changelog, oldest first, as
    the documents a subscriber gets (read in the caller's snapshot)."""
    stream = cursor.stream
    with connections[using].cursor() as db:
        db.execute(_SELECT_RECENT, [cursor.channel, cursor.history])
        rows = [text for (text,) in db.fetchall()]
    events: list[Document] = []
    for text in rows:  # newest transaction first
        batch = [stream.decode(c) for c in parse_changes(loads_payload(text)) if c.op == "i"]
        events[:0] = [Document(d.collection, d.id, d.fields) for d in batch]
        if len(events) >= cursor.history:
            break
    return events[-cursor.history :]
