"""The DDP client's local document cache, with Meteor's merge rules, and its quiescence buffer.

:class:`DocumentCache` holds what the server published (collection -> id -> fields,
EJSON-decoded). It applies ``added``/``changed``/``removed`` strictly, like Meteor's
client: an ``added`` for a document already present, or a ``changed``/``removed`` for a
missing one, is a server bug. It is recorded in ``violations`` (tests assert the list stays
empty) instead of raising, so one bad message never kills the reader thread.

:class:`QuiescenceBuffer` is Meteor's wait after a reconnect that got a *new* session: data
messages (``added``/``changed``/``removed``/``ready``/``updated``) are held back until
every re-sent sub is ``ready`` (or ``nosub``) and every re-sent method ``updated``; then the
whole batch is released at once, and the connection empties the cache before applying it,
so a full resync never shows duplicate adds nor a half-filled cache.

Must not: import websocket or threading, do I/O, or lock (the connection holds its lock
around every call here); know calls or subscriptions beyond the ids it is handed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from relay.protocol import ejson

#: collection name -> document id -> fields.
Collections = dict[str, dict[str, dict[str, Any]]]

#: Data messages held back while waiting for quiescence after a new session.
BUFFERED = frozenset({"added", "changed", "removed", "ready", "updated"})


def _decode_fields(fields: dict[str, Any] | None) -> dict[str, Any]:
    return ejson.from_json_value(fields or {})  # type: ignore[no-any-return]


class DocumentCache:
    """The documents the server published to this client, and the rule breaks seen."""

    def __init__(self) -> None:
        self.collections: Collections = {}
        self.violations: list[str] = []

    def apply(self, msg: Mapping[str, Any]) -> None:
        """Apply one ``added``, ``changed`` or ``removed`` message (``ValueError`` for any
        other kind: the caller dispatches on it, so that is a bug of the caller's)."""
        if msg["msg"] not in ("added", "changed", "removed"):
            raise ValueError(f"not a document message: {msg['msg']!r}")
        coll = self.collections.setdefault(msg["collection"], {})
        doc_id = msg["id"]
        if msg["msg"] == "added":
            if doc_id in coll:
                self.violations.append(f"duplicate added {msg['collection']}/{doc_id}")
            # Even then the new fields win: the cache shows what the server last said.
            coll[doc_id] = _decode_fields(msg.get("fields"))
        elif msg["msg"] == "changed":
            doc = coll.get(doc_id)
            if doc is None:
                self.violations.append(f"changed for missing {msg['collection']}/{doc_id}")
                return
            doc.update(_decode_fields(msg.get("fields")))
            for name in msg.get("cleared", ()):
                doc.pop(name, None)
        elif coll.pop(doc_id, None) is None:
            self.violations.append(f"removed for missing {msg['collection']}/{doc_id}")

    def docs(self, collection: str) -> dict[str, dict[str, Any]]:
        """A copy of one collection's documents (the caller may keep or change it)."""
        return {k: dict(v) for k, v in self.collections.get(collection, {}).items()}

    def reset(self) -> None:
        """Forget every document, as Meteor resets its stores before a resync's batch."""
        self.collections.clear()


class QuiescenceBuffer:
    """Holds data messages back after a new session until the re-sent subs and methods
    are done (Meteor's ``_messagesBufferedUntilQuiescence``)."""

    def __init__(self) -> None:
        #: Re-sent subs not yet ``ready``/``nosub``; ``None`` when not waiting at all.
        self.subs_reviving: set[str] | None = None
        #: Re-sent methods not yet ``updated``.
        self.methods_blocking: set[str] = set()
        self.buffer: list[dict[str, Any]] = []

    @property
    def waiting(self) -> bool:
        return self.subs_reviving is not None

    def begin(self, subs: Iterable[str], methods: Iterable[str]) -> list[dict[str, Any]] | None:
        """Start waiting for ``subs`` to be ready and ``methods`` updated. Returns the
        (empty) batch at once when there is nothing to wait for, else ``None``."""
        self.buffer = []
        self.subs_reviving = set(subs)
        self.methods_blocking = set(methods)
        return self._release()

    def receive(self, msg: dict[str, Any]) -> tuple[bool, list[dict[str, Any]] | None]:
        """Offer one inbound message: ``(held, batch)``. ``held``: it was buffered, do not
        dispatch it now. ``batch``: quiescence was just reached; every held message, in
        order, to apply on an emptied cache (before dispatching ``msg`` if not held)."""
        if self.subs_reviving is None:
            return False, None
        kind = msg.get("msg")
        held = kind in BUFFERED
        if held:
            self.buffer.append(msg)
        elif kind != "nosub":  # results, errors, pongs: nothing to do with quiescence
            return False, None
        if kind == "ready":
            self.subs_reviving.difference_update(msg.get("subs", ()))
        elif kind == "nosub":
            # A re-sent sub the server refused still ends its wait (it passes through).
            self.subs_reviving.discard(msg.get("id", ""))
        elif kind == "updated":
            self.methods_blocking.difference_update(msg.get("methods", ()))
        return held, self._release()

    def _release(self) -> list[dict[str, Any]] | None:
        if self.subs_reviving or self.methods_blocking:
            return None
        self.subs_reviving = None
        batch, self.buffer = self.buffer, []
        return batch
