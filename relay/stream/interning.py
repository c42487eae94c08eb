"""One worker's shared field values: equal values published to many sessions are one object,
and so is the dict of one version of a document.

Layer: pure (no I/O, no gevent, no clock). Every subscription's snapshot and every
decoded change brings fresh Python objects for a document's fields. A worker with 5,000
sessions subscribed to the same books would keep 5,000 equal copies of every title and
date, and fan-out would compare them 5,000 times per change. ``Interner.fields`` swaps each
incoming value for the one already known for that (collection, id, field) when the two are
the same value: same type and the same EJSON text (so ``Decimal("1.0")`` does not stand in
for ``Decimal("1.00")``, nor ``0.0`` for ``-0.0``), so that:

* the sessions' mergeboxes hold the same objects (memory: one copy per worker);
* the sessions' mergeboxes hold the same *dict* for the same version of a document:
  ``fields`` returns the table's canonical dict itself when the incoming fields are the
  same names, in the same order, with the same values, and the mergebox keeps a dict it is
  given as its view (``relay.protocol.mergebox``, "Copying");
* fan-out's per-session diff (``MergeBox.change``) sees unchanged fields as the very same
  object (``is``) and compares only the field that changed, once per batch;
* the ``added`` text of a document is encoded once and shared by every session that loads
  it (``Interner.encode``), including the copy each keeps in its resume log.

Values are treated as immutable everywhere (``relay.protocol.mergebox``), so substituting an
object with the same type and encoding changes nothing a client can see. Dicts handed out
are immutable too, on both sides: the table never changes a canonical dict once ``fields``
returned it (a version that differs in any value or name gets a new canonical dict,
copy-on-write), and callers must not change it either. The table is bounded
(``max_documents``, least recently seen first out); forgetting a document only loses
sharing, never correctness.

Must not: alter a value or a dict it handed out, keep anything per session, or grow
without bound.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from relay.protocol import ejson, messages

__all__ = ["Interner"]

#: Documents remembered per worker. Each costs its canonical dict and field values (both
#: shared with the sessions that hold that version) plus about 150 bytes, and its ``added``
#: text while that is cached.
DEFAULT_MAX_DOCUMENTS = 32_768


class _Entry:
    __slots__ = ("added", "fields", "id", "others")

    def __init__(self, doc_id: str, fields: dict[str, Any]) -> None:
        #: The id string as first seen: sessions use it as their mergebox key.
        self.id = doc_id
        #: The canonical dict: the latest version seen, field -> the shared value object.
        #: Handed out by ``Interner.fields``, so never changed: replaced by a new dict.
        self.fields = fields
        #: Values known for fields the canonical dict lacks (seen in another projection
        #: of the document, or before a field was dropped), to share them still. Never
        #: handed out; None when empty.
        self.others: dict[str, Any] | None = None
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
        #: Values given back shared / taken as new (for tests and debugging).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._docs)

    def fields(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` with every value replaced by the known equal one, if any.

        Returns the document's canonical dict itself (the same object every time) while
        the incoming fields are its names, in its order, with the same values; otherwise
        a new dict, which becomes the canonical one (new values become the known ones).
        Either way the result must not be changed, and ``fields`` itself is left alone.
        """
        key = (collection, doc_id)
        entry = self._docs.pop(key, None)
        if entry is None:
            canonical = dict(fields)
            self.misses += len(canonical)
            self._remember(key, _Entry(doc_id, canonical))
            return canonical
        known = entry.fields
        others = entry.others
        #: Still the canonical dict: same names in the same order, same values so far.
        same = len(fields) == len(known)
        names = iter(known)
        out: dict[str, Any] = {}
        for name, value in fields.items():
            if same and next(names, _MISSING) != name:
                same = False
            old = known.get(name, _MISSING)
            if old is _MISSING and others is not None:
                old = others.get(name, _MISSING)
            if old is value or (old is not _MISSING and _same(old, value)):
                out[name] = old
                self.hits += 1
            else:
                out[name] = value
                self.misses += 1
                same = False
        self._docs[key] = entry  # most recently seen
        if same:
            return known
        # Copy on write: the old canonical dict may be held by sessions; ``out`` replaces it.
        if out.keys() != known.keys():
            dropped = {name: value for name, value in known.items() if name not in out}
            if others is None:
                others = dropped
            else:
                others.update(dropped)
                for name in out:
                    others.pop(name, None)
            entry.others = others or None
        entry.fields = out
        return out

    def canonical_id(self, collection: str, doc_id: str) -> str:
        """The id string the table keeps for the document (one per worker, so that the
        sessions' mergeboxes share their keys too), or ``doc_id`` if it is not known."""
        entry = self._docs.get((collection, doc_id))
        return doc_id if entry is None else entry.id

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
        # Same names means as many values: compare them by identity only.
        if (
            cached is not None
            and cached[0] == names
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
