"""Event streams: named channels of the change stream that carry payloads, not rows.

Job: the declaration ``Stream("chat", collection="chat", history=100)`` (registered with
``registry.add_stream``), what a publication returns to deliver one of its keys
(``chat.cursor(book_id)``: a ``StreamCursor``), and the translation both ways between an
event and a change-stream change. An event is one change ``{"o": "i", "id": <event id>,
"f": <payload as EJSON>}`` on the channel of its stream and key, so it rides the same
changelog and NOTIFY path as row changes (DESIGN.md 9): published only when the
writer's transaction commits, in commit order, backfilled after a listener gap, replayed
to a resumed session. A subscriber gets each event as a document added to the stream's
client-side collection, the oldest removed once it holds more than ``history``.

Channels: ``ddp_ev_<name>_<16 hex digits of the key's digest>``, one per stream and key,
so a relay LISTENs only to the keys its sessions follow and a key's history is one index
range of ``ddp_changelog``.

Where it sits: a leaf (settings, the seam's types and the EJSON codec). What must not
live here: database access (``django_app.events`` writes events and reads history) or
the registry (which stores streams by name).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from relay.backend import DecodedChange
from relay.protocol import ejson
from relay.protocol.changestream import Change

__all__ = ["CHANNEL_PREFIX", "MAX_HISTORY", "Stream", "StreamCursor", "stream_name_of"]

#: Every event channel starts with this. A model channel (``ddp_<app>_<model>``) could
#: only clash in an app labelled ``ev`` with a model named like ``<name>_<16 hex>``.
CHANNEL_PREFIX: Final = "ddp_ev_"
#: The most events one subscriber may hold of a stream (its ``history``).
MAX_HISTORY: Final = 1000
#: The longest key a stream accepts, in characters (it is hashed into the channel name).
MAX_KEY_LENGTH: Final = 200

_NAME = re.compile(r"[a-z][a-z0-9_]{0,29}\Z")
_DIGEST_CHARS: Final = 16


class Stream:
    """A family of event streams, one per key (``chat`` per book, ``jobs`` per user...).

    ``collection``: the client-side collection subscribers see the events in (default:
    the stream's name). ``history``: how many recent events a new subscriber gets and
    how many it holds at most (older ones are removed from its view as new ones come),
    bounded by ``MAX_HISTORY``; a subscription may ask for fewer.

    Who may subscribe is the publication's decision: a publication function checks
    ``ctx.user`` (raise ``DDPError(403)``) before it returns ``stream.cursor(key)``.
    """

    def __init__(self, name: str, *, collection: str | None = None, history: int = 50) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"stream name {name!r}: lower-case letters, digits and _, starting with a"
                " letter, at most 30 characters"
            )
        if (
            not isinstance(history, int)
            or isinstance(history, bool)
            or not 1 <= history <= MAX_HISTORY
        ):
            raise ValueError(f"history must be an int from 1 to {MAX_HISTORY}")
        self.name = name
        self.collection = collection if collection is not None else name
        if not isinstance(self.collection, str) or not self.collection:
            raise ValueError("collection must be a non-empty string")
        self.history = history

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} -> {self.collection!r}>"

    def key_text(self, key: Any) -> str:
        """The key as the channel digest sees it (``str``); ValueError when unusable."""
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise ValueError(f"a stream key is a string or an int, not {type(key).__name__}")
        text = str(key)
        if len(text) > MAX_KEY_LENGTH:
            raise ValueError(f"a stream key is at most {MAX_KEY_LENGTH} characters")
        return text

    def channel(self, key: Any = "") -> str:
        """The change-stream channel of ``key``'s events."""
        digest = hashlib.sha256(self.key_text(key).encode()).hexdigest()[:_DIGEST_CHARS]
        return f"{CHANNEL_PREFIX}{self.name}_{digest}"

    def cursor(self, key: Any = "", *, history: int | None = None) -> StreamCursor:
        """What a publication returns to deliver ``key``'s events (the last ``history``
        of them first, default the stream's)."""
        wanted = self.history if history is None else history
        if (
            isinstance(wanted, bool)
            or not isinstance(wanted, int)
            or not 1 <= wanted <= self.history
        ):
            raise ValueError(f"history must be an int from 1 to {self.history}")
        return StreamCursor(self, self.channel(key), wanted)

    # -- events <-> changes ----------------------------------------------------------------

    def change(self, event_id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The change-stream change of one event: its payload as EJSON (so dates,
        decimals and binary keep their types across the stream)."""
        if not isinstance(payload, Mapping):
            raise TypeError("an event payload is a mapping of field names to values")
        for name in payload:
            if not isinstance(name, str) or not name or name == "_id" or name.startswith("$"):
                raise ValueError(f"bad event field name {name!r}")
        return {"o": "i", "id": event_id, "f": ejson.to_json_value(dict(payload))}

    def decode(self, change: Change) -> DecodedChange:
        """An event as the relay publishes it (no database access: once per change)."""
        fields = ejson.from_json_value(_plain_numbers(change.values))
        return DecodedChange(self.collection, str(change.pk), change.op, fields, {})


@dataclass(frozen=True, slots=True)
class StreamCursor:
    """One key of a stream, as a publication returns it (``Stream.cursor``)."""

    stream: Stream
    channel: str
    history: int

    def fresh(self) -> StreamCursor:
        return self


def stream_name_of(channel: str) -> str | None:
    """The stream name an event channel belongs to, None for any other channel."""
    if not channel.startswith(CHANNEL_PREFIX):
        return None
    name, _, digest = channel[len(CHANNEL_PREFIX) :].rpartition("_")
    if len(digest) != _DIGEST_CHARS or not name:
        return None
    return name


def _plain_numbers(value: Any) -> Any:
    """The change stream reads non-integer numbers as Decimal (row columns keep their
    scale); an event's numbers are EJSON's, JavaScript numbers: floats again."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return value
