"""One worker's shared field values: equal values published to many sessions are one object.

Layer: L2 (pure: no I/O, no gevent, no clock). Every subscription's snapshot and every
decoded change brings fresh Python objects for a document's fields. A worker with 5,000
sessions subscribed to the same books would keep 5,000 equal copies of every title and
date, and fan-out would compare them 5,000 times per change. ``Interner.fields`` swaps each
incoming value for the one already known for that (collection, id, field) when the two are
the same value: same type and the same EJSON text (so ``Decimal("1.0")`` does not stand in
for ``Decimal("1.00")``, nor ``0.0`` for ``-0.0``), so that:

* the sessions' mergeboxes hold the same objects (memory: one copy per worker);
* fan-out's per-session diff (``MergeBox.change``) sees unchanged fields as the very same
  object (``is``) and compares only the field that changed, once per batch;
* the ``added`` text of a document is encoded once and shared by every session that loads
  it (``Interner.encode``), including the copy each keeps in its resume log.

Values are treated as immutable everywhere (``relay.protocol.mergebox``), so substituting an
object with the same type and encoding changes nothing a client can see. The table is bounded
(``max_documents``, least recently seen first out); forgetting a document only loses
sharing, never correctness.

Must not: alter a value, keep anything per session, or grow without bound.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from relay.protocol import ejson, messages

__all__ = ["Interner"]

#: Documents remembered per worker. Each costs its field values (shared with the sessions
#: that hold it) plus about 300 bytes, and its ``added`` text while that is cached.
DEFAULT_MAX_DOCUMENTS = 32_768


class _Entry:
    __slots__ = ("added", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        #: field -> the shared value object.
        self.fields = fields
        #: (field names, values, text) of the last ``added`` encoded for the document.
        self.added: tuple[tuple[str, ...], tuple[Any, ...], str] | None = None


class Interner:
    """Shared value objects for the documents one worker publishes."""

    __slots__ = ("_docs", "_max", "hits", "misses")

    def __init__(self, max_documents: int = DEFAULT_MAX_DOCUMENTS) -> None:
        if max_documents < 1:
            raise ValueError("max_documents must be at least 1")
        self._max = max_documents
        #: (collection, id) -> entry; insertion order is recency (hits move to the end).
        self._docs: dict[tuple[str, str], _Entry] = {}
        #: Values given back shared / taken as new (tests and metrics read them).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._docs)

    def fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` with every value replaced by the known equal one, if any (a new dict;
        ``fields`` itself is left alone). New values become the known ones."""
        key = (collection, doc_id)
        entry = self._docs.pop(key, None)
        if entry is None:
            entry = _Entry(dict(fields))
            self.misses += len(fields)
            self._remember(key, entry)
            return dict(fields)
        known = entry.fields
        out: dict[str, Any] = {}
        for name, value in fields.items():
            old = known.get(name, _MISSING)
            if old is value or (old is not _MISSING and _same(old, value)):
                out[name] = old
                self.hits += 1
            else:
                out[name] = known[name] = value
                self.misses += 1
        self._docs[key] = entry  # most recently seen
        return out

    def forget(self, collection: str, doc_id: str) -> None:
        """The document was deleted: nothing will be shared for it any more."""
        self._docs.pop((collection, doc_id), None)

    def encode(self, msg: dict[str, Any]) -> str:
        """``messages.encode(msg)``, shared between sessions for an ``added`` whose values
        are the interned objects (identity, so no equality test on the hot path)."""
        if msg.get("msg") != "added":
            return messages.encode(msg)
        entry = self._docs.get((msg["collection"], msg["id"]))
        if entry is None:
            return messages.encode(msg)
        fields: Mapping[str, Any] = msg.get("fields") or {}
        names = tuple(fields)
        values = tuple(fields.values())
        cached = entry.added
        if (
            cached is not None
            and cached[0] == names
            and len(cached[1]) == len(values)
            and all(a is b for a, b in zip(cached[1], values, strict=True))
        ):
            return cached[2]
        text = messages.encode(msg)
        entry.added = (names, values, text)
        return text

    def _remember(self, key: tuple[str, str], entry: _Entry) -> None:
        docs = self._docs
        docs[key] = entry
        while len(docs) > self._max:
            del docs[next(iter(docs))]


_MISSING: Any = object()
#: Types whose ``==`` already means "encodes the same" (bool is an int subclass, but the
#: type check comes first).
_PLAIN = frozenset({str, int, bool, type(None), bytes, datetime.datetime, datetime.date})


def _same(old: Any, new: Any) -> bool:
    """Whether ``new`` may be replaced by ``old``: the client could not tell them apart."""
    kind = type(old)
    if kind is not type(new):
        return False
    if kind in _PLAIN:
        return bool(old == new)
    try:
        return ejson.dumps(old) == ejson.dumps(new)
    except (TypeError, ValueError):
        return False
