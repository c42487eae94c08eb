"""The change-stream contract between the write side and the relays (pure data + SQL text).

Layer: pure core. Whatever process commits a change (Django web views, workers, relay
methods, raw SQL) publishes it through PostgreSQL in the SAME transaction, as one
changelog row and one NOTIFY per transaction and per channel. This module is the one place
that says what those look like; ``django_app`` writes them (database triggers generated
from the registered collections), ``relay.stream.listener`` reads them.

Tables (created by ``django_app``'s migrations):

- ``ddp_channel(channel text primary key, seq bigint not null, epoch text not null)``: the
  per-channel counter. ``seq`` is taken with a row lock just before commit (a deferred
  constraint trigger), so a channel's sequence follows commit order (DESIGN.md 4).
  ``epoch`` is random per counter row; a relay that sees a different epoch (database
  restored, counter recreated) must resync instead of trusting its position.
- ``ddp_changelog(id bigserial, channel text, seq bigint, epoch text, txid bigint,
  created_at timestamptz, changes jsonb)`` with ``unique(channel, seq)``: the durable
  history relays backfill from after a gap or a reconnect; pruned after a retention window.

NOTIFY payload on the channel (always < 8000 bytes): JSON object
``{"s": seq, "e": epoch, "x": txid, "t": micros, "c": [change, ...]}`` or, when the changes
do not fit, ``{"s": seq, "e": epoch, "x": txid, "t": micros, "r": true}`` (read them from
``ddp_changelog``). ``t`` is the commit time in integer microseconds since the Unix epoch,
by the database's clock (the flush runs just before the commit; the changelog row's
``created_at`` holds the same instant), for the relays' commit-to-client latency. It is
optional: payloads from writers older than migration 0006 have none and still decode
(``Notification.committed`` is then None).

A change: ``{"o": "i"|"u"|"d", "id": <primary key>, "f": {key: value, ...}}``; ``f`` holds
the published columns by attname (``author_id``) and every declared related path
(``author__email``) resolved once by the writer; it is absent for deletes. Numbers that
are not integers must be decoded as ``Decimal`` (``loads_payload``) so ``12.50`` keeps its
scale.

Must not: do I/O. The SQL strings below are executed by the listener, not here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

#: The largest NOTIFY payload PostgreSQL accepts is 7999 bytes; stay clear of it.
MAX_PAYLOAD_BYTES = 7900

#: Channel names are PostgreSQL identifiers (< 64 bytes); writers cap them lower.
MAX_CHANNEL_BYTES = 63

CHANGELOG_TABLE = "ddp_changelog"
CHANNEL_TABLE = "ddp_channel"

#: Changes of one channel after a position, in order (listener backfill). ``changes`` is
#: read as text so that non-integer numbers are parsed as Decimal (``loads_payload``); the
#: last column is the commit time in seconds since the Unix epoch (float).
SELECT_SINCE = (
    "SELECT seq, epoch, txid, changes::text, extract(epoch FROM created_at)::float8"
    " FROM ddp_changelog WHERE channel = %s AND seq > %s ORDER BY seq LIMIT %s"
)
#: The current position of a channel (absent row: nothing was ever published).
SELECT_POSITION = "SELECT seq, epoch FROM ddp_channel WHERE channel = %s"
#: The changes of one transaction on one channel (payload spilled to the table).
SELECT_ONE = "SELECT changes::text FROM ddp_changelog WHERE channel = %s AND seq = %s"
#: Where a committed transaction's changes went (write fence after a method).
SELECT_BY_TXID = "SELECT channel, seq FROM ddp_changelog WHERE txid = %s"

#: Event streams' channels start with this (``django_app.streams.CHANNEL_PREFIX``).
EVENT_CHANNEL_PREFIX = "ddp_ev_"
#: The channel of presence rows (``django_app.models.Presence``, app label ``ddp``).
PRESENCE_CHANNEL = "ddp_ddp_presence"
#: What ``channel_class`` returns: the label values of the listener's lag metrics.
CHANNEL_CLASSES = ("model", "event", "presence")


@dataclass(frozen=True, slots=True)
class Change:
    """One row change as the writer published it."""

    #: "i" insert, "u" update, "d" delete.
    op: str
    #: The primary key value (JSON: str or int).
    pk: Any
    #: Published columns and resolved related paths; empty for deletes.
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    """One NOTIFY: a channel's next position and, unless spilled, its changes."""

    channel: str
    seq: int
    epoch: str
    txid: int
    #: None when the payload was too large and the changes must be read from the changelog.
    changes: tuple[Change, ...] | None
    #: Commit time, seconds since the Unix epoch (database clock); None from old writers.
    committed: float | None = None


class PayloadError(ValueError):
    """A NOTIFY payload or changelog row does not follow this contract."""


def loads_payload(text: str) -> Any:
    """JSON with non-integer numbers as Decimal (``12.50`` keeps its two places)."""
    return json.loads(text, parse_float=Decimal)


def parse_changes(raw: Any) -> tuple[Change, ...]:
    """Validate a JSON list of changes (from a payload or a changelog row)."""
    if not isinstance(raw, list):
        raise PayloadError("changes must be a list")
    out = []
    for item in raw:
        if not isinstance(item, dict) or item.get("o") not in ("i", "u", "d") or "id" not in item:
            raise PayloadError(f"bad change: {item!r}"[:200])
        values = item.get("f") or {}
        if not isinstance(values, dict):
            raise PayloadError("change values must be an object")
        out.append(Change(item["o"], item["id"], values))
    return tuple(out)


def parse_notification(channel: str, payload: str) -> Notification:
    """Decode one NOTIFY payload; raise PayloadError if it is not ours."""
    try:
        obj = loads_payload(payload)
    except ValueError as exc:
        raise PayloadError(f"payload is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError("payload must be an object")
    seq, epoch, txid = obj.get("s"), obj.get("e"), obj.get("x")
    if not isinstance(seq, int) or not isinstance(epoch, str) or not isinstance(txid, int):
        raise PayloadError("payload needs integer s, string e and integer x")
    changes = None if obj.get("r") else parse_changes(obj.get("c"))
    return Notification(channel, seq, epoch, txid, changes, commit_time(obj.get("t")))


def commit_time(micros: Any) -> float | None:
    """``t`` of a payload as seconds since the epoch; None when absent or not an integer
    (a latency metric is not worth refusing a change for)."""
    if type(micros) is not int:
        return None
    return micros / 1_000_000


def encode_notification(
    seq: int,
    epoch: str,
    txid: int,
    changes: list[dict[str, Any]],
    committed: float | None = None,
) -> str:
    """The payload a writer sends (used by tests and by writers not in PL/pgSQL);
    ``committed`` (seconds since the epoch) becomes ``t``, omitted when None."""
    head: dict[str, Any] = {"s": seq, "e": epoch, "x": txid}
    if committed is not None:
        head["t"] = round(committed * 1_000_000)
    body = json.dumps({**head, "c": changes}, separators=(",", ":"), default=str)
    if len(body.encode()) <= MAX_PAYLOAD_BYTES:
        return body
    return json.dumps({**head, "r": True}, separators=(",", ":"))


def channel_class(channel: str) -> str:
    """Which kind of channel ``channel`` is, among ``CHANNEL_CLASSES``: an event stream's,
    the presence rows', or a model's (everything else, partitions included)."""
    if channel.startswith(EVENT_CHANNEL_PREFIX):
        return "event"
    if channel.startswith(PRESENCE_CHANNEL) and (
        len(channel) == len(PRESENCE_CHANNEL) or _is_partition(channel[len(PRESENCE_CHANNEL) :])
    ):
        return "presence"
    return "model"


def _is_partition(suffix: str) -> bool:
    """``_p17``: the suffix a partitioned channel's name ends with."""
    return suffix.startswith("_p") and suffix[2:].isdigit()
