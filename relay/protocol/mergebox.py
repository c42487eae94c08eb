"""The per-session mergebox: what one DDP client currently sees, and who provides it.

Layer: pure core. One ``MergeBox`` per session merges what the session's subscriptions
publish into the single view the client keeps, with Meteor's ``SERVER_MERGE`` rules
(``SessionCollectionView`` / ``SessionDocumentView``, reference ``ddp-protocol.md`` 2.6):

* a document published by several subscriptions is ``added`` once; later publishers only
  turn into a ``changed`` carrying the fields nobody provided before;
* per field, providers form a precedence order and the client sees the first one's value;
* a document is ``removed`` only when no subscription publishes it any more, and losing a
  provider clears or replaces only the fields whose visible value changes;
* a value is "unchanged" when ``ejson.equals`` says so (NaN equals NaN, ``True`` is not
  ``1``); the client then keeps the value it has;
* a ``changed`` with nothing in it is never produced, and the order added, changed*,
  removed always holds per document (clients throw otherwise, reference 3.5).

Every mutating call returns the DDP data messages to send, as plain dicts with Python
values (EJSON encoding happens later). The box must not do I/O, read the clock, log,
import gevent or Django, or hold anything but the session's view: the caller owns
sockets, queues and timing.

Subscription handles are opaque hashable values chosen by the caller (a DDP sub id, a
tuple for a universal sub). ``to_state`` needs them to be JSON scalars or tuples of
them.

Memory layout (the mergebox holds every published field, per session):

* ``_docs``: collection -> wire id -> view. A document published by exactly one
  subscription (nearly all of them) is stored as one plain ``dict`` of its fields and
  nothing else. Its owner is not stored with it: it is the one subscription whose reverse
  index holds the id, found by a scan over the session's subscriptions only when a second
  subscription arrives. A document published by two or more subscriptions is a
  ``_Shared`` (``existsIn`` + per field, its providers in precedence order with their
  values, as a dict); it goes back to a plain dict when a single publisher remains.
* A plain-dict view is copy-on-write: the box never changes one in place, it puts a new
  dict in its place (or the caller's, see below). So one dict may be the view of the
  same document version in thousands of sessions' boxes: the dict a worker's
  ``relay.stream.interning.Interner`` hands out for a snapshot, or the fields dict of one
  decoded change that fan-out passes to every session's ``update``. Per session, such a
  document then costs only its entry in the collection's dict.
* ``_by_sub``: subscription -> collection -> set of ids, so that ``remove_subscription``
  and "does this sub publish that doc" cost no scan of the documents.

Copying (the contract with callers):

* A field mapping given to ``add``, ``change`` or ``update`` may be kept as the view
  itself when it is a plain ``dict`` (exact type) without an ``_id`` key; anything else
  is copied (minus ``_id``). The caller must therefore not change a dict after giving it
  to the box, and the box never changes a dict it was given (nor one it keeps).
* ``add`` of a new document keeps the given dict. ``update`` keeps it whenever it holds
  every field of the single-publisher view, even when nothing visible changed: this is
  how the sessions reached by one change converge on one dict. (Not when a field's new
  value is equal to the old one but of another type, ``1.0`` for ``1``: the view keeps the
  value the client has, in a copy.) ``change`` keeps it when the resulting view has
  exactly its fields and values, in its order.
* Everything the box returns is fresh: the ``fields`` and ``cleared`` of every message,
  the dicts of ``get``, ``documents`` and ``to_state``. Callers may change those.
* Field *values* are never copied: they are shared with the caller, with the messages
  and between sessions, and must be treated as immutable. (Meteor clones them; sharing
  lets one decoded change feed many sessions without a copy each.)
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeGuard

from relay.protocol.ejson import equals as _equals
from relay.protocol.errors import LocalProtocolError

__all__ = ["MergeBox", "Message", "SubHandle", "UpdateMemo"]

#: An opaque subscription handle chosen by the caller.
SubHandle = Hashable
#: A DDP data message: ``added``, ``changed`` or ``removed``, values still Python values.
Message = dict[str, Any]

#: A field's providers in precedence order (insertion order: a provider keeps its place
#: when its value changes, goes last when it comes back) and the value each provides.
_Precedence = dict[Hashable, Any]
#: ``update``'s shared work: (id(view), id(fields)) -> (view, fields, new view, messages).
UpdateMemo = dict[
    tuple[int, int],
    tuple[dict[str, Any], Mapping[str, Any], dict[str, Any], list[dict[str, Any]]],
]
#: A field the view does not have (``None`` is a value).
_ABSENT: Any = object()
_STATE_VERSION = 1


class _Shared:
    """A document published by two or more subscriptions: Meteor's general form."""

    __slots__ = ("data", "subs")

    def __init__(self, subs: dict[Hashable, None], data: dict[str, _Precedence]) -> None:
        #: ``existsIn``: the subscriptions that publish the document, in the order they
        #: came (a dict, for a deterministic ``to_state``; smaller than a set when small).
        self.subs = subs
        #: field -> providers in precedence order, each with its value; the first one's
        #: value is visible. (A dict rather than Meteor's list of pairs: a provider is
        #: found without a scan, and the pairs are not objects of their own for the
        #: garbage collector to traverse, which a client subscribing the same
        #: publication many times made it do for hundreds of thousands of them.)
        self.data = data

    def visible(self) -> dict[str, Any]:
        return {key: _first(plist) for key, plist in self.data.items()}


_View = dict[str, Any] | _Shared


def _first(plist: _Precedence) -> Any:
    """The visible value: the first provider's."""
    return next(iter(plist.values()))


def _clear_field(
    view: _Shared, sub: Hashable, key: str, out: dict[str, Any], gone: list[str]
) -> None:
    """Drop ``sub``'s entry for ``key``; record what the client must see change."""
    plist = view.data.get(key)
    if plist is None or sub not in plist:
        return
    was_first = next(iter(plist)) == sub
    old = plist.pop(sub)
    if not plist:
        del view.data[key]
        gone.append(key)
    elif was_first and not _equals(old, first := _first(plist)):
        out[key] = first


def _changed(
    collection: str, doc_id: str, fields: dict[str, Any], cleared: list[str]
) -> list[Message]:
    if not fields and not cleared:
        return []
    msg: Message = {"msg": "changed", "collection": collection, "id": doc_id}
    if fields:
        msg["fields"] = fields
    if cleared:
        msg["cleared"] = cleared
    return [msg]


def _own(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` as a view: the dict itself if it can be kept (see "Copying")."""
    if type(fields) is dict and "_id" not in fields:
        return fields
    return {key: value for key, value in fields.items() if key != "_id"}


def _is_exactly(fields: Mapping[str, Any], view: dict[str, Any]) -> TypeGuard[dict[str, Any]]:
    """Whether ``fields`` can stand for ``view``: a keepable dict with the same fields,
    values (identity) and order."""
    if type(fields) is not dict or len(fields) != len(view) or "_id" in fields:
        return False
    for (key, value), (key2, value2) in zip(view.items(), fields.items(), strict=True):
        if key != key2 or value is not value2:
            return False
    return True


class MergeBox:
    """One session's merged view of all its subscriptions (Meteor's ``SERVER_MERGE``).

    Programming errors (changing or removing a document the subscription does not
    publish, a field both set and cleared) raise ``LocalProtocolError`` before anything
    is modified: they are bugs in a publication or the router, never the peer's fault.
    """

    __slots__ = ("_by_sub", "_docs")

    def __init__(self) -> None:
        self._docs: dict[str, dict[str, _View]] = {}
        self._by_sub: dict[Hashable, dict[str, set[str]]] = {}

    # -- mutations ---------------------------------------------------------------------

    def add(
        self, sub: Hashable, collection: str, doc_id: str, fields: Mapping[str, Any]
    ) -> list[Message]:
        """``sub`` starts publishing the document.

        A new document gives ``added``. A document other subscriptions already publish
        gives at most one ``changed`` with the fields that had no provider; fields that
        had one get ``sub`` added last to their providers silently. ``_id`` in
        ``fields`` is ignored. A new document's view is ``fields`` itself when it is a
        plain dict without ``_id`` (the caller must not change it afterwards).

        Adding a document ``sub`` already publishes is a bug in Meteor; here it is
        treated leniently as ``change(sub, collection, doc_id, fields)`` (its fields
        are set, fields it does not mention are kept).
        """
        coll = self._docs.get(collection)
        if coll is None:
            coll = self._docs[collection] = {}  # the document is new: it fills it below
        view = coll.get(doc_id)
        if view is None:
            stored = _own(fields)
            coll[doc_id] = stored
            self._index_add(sub, collection, doc_id)
            msg: Message = {"msg": "added", "collection": collection, "id": doc_id}
            if stored:
                msg["fields"] = dict(stored)
            return [msg]
        if self._publishes(sub, collection, doc_id):
            return self.change(sub, collection, doc_id, fields)
        if isinstance(view, dict):
            owner = self._owner(collection, doc_id)
            view = _Shared({owner: None}, {k: {owner: v} for k, v in view.items()})
            coll[doc_id] = view
        view.subs[sub] = None
        self._index_add(sub, collection, doc_id)
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key == "_id":
                continue
            plist = view.data.get(key)
            if plist is None:
                view.data[key] = {sub: value}
                out[key] = value
            else:
                plist[sub] = value  # sub is new to the document: it goes last
        return _changed(collection, doc_id, out, [])

    def change(
        self,
        sub: Hashable,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any],
        cleared: Iterable[str] = (),
        equals: Callable[[Any, Any], bool] = _equals,
    ) -> list[Message]:
        """``sub`` sets ``fields`` and clears the fields named in ``cleared``.

        Gives at most one ``changed`` holding only what the client must see change:
        a set is visible when ``sub`` is (or becomes) the field's first provider and the
        value differs; a clear is visible as the next provider's differing value, or in
        ``cleared`` when nobody provides the field any more. Clearing a field ``sub``
        does not provide is a no-op. ``_id`` is ignored.

        Raises ``LocalProtocolError`` if ``sub`` does not publish the document (Meteor
        throws for an unknown document), if a field is both set and cleared, or if
        ``cleared`` is a string. ``equals`` may be a memoizing stand-in for
        ``ejson.equals`` (fan-out compares the same value pairs for thousands of sessions).
        """
        if isinstance(cleared, str):
            raise LocalProtocolError("cleared must be an iterable of field names, not a str")
        view = self._view_of(sub, collection, doc_id, "change")
        clears = [key for key in cleared if key != "_id"]
        both = [key for key in clears if key in fields]
        if both:
            raise LocalProtocolError(f"fields both set and cleared: {both!r}")
        out: dict[str, Any] = {}
        gone: list[str] = []
        if isinstance(view, dict):
            new: dict[str, Any] | None = None  # the copy, made at the first difference
            for key, value in fields.items():
                if key == "_id":
                    continue
                old = view.get(key, _ABSENT)
                if old is value:
                    continue
                if old is not _ABSENT and equals(old, value):
                    # Equal: nothing to send. Adopt the newer object when it is of the
                    # same type (the client's representation is unchanged), so that
                    # sessions converge on shared values and later compares are `is`.
                    if type(old) is not type(value):
                        continue
                else:
                    out[key] = value
                if new is None:
                    new = dict(view)
                new[key] = value
            for key in clears:
                if key in (view if new is None else new):
                    if new is None:
                        new = dict(view)
                    del new[key]
                    gone.append(key)
            result = view if new is None else new
            if result is not fields and _is_exactly(fields, result):
                result = fields  # the caller's dict: shared with other sessions' boxes
            if result is not view:
                self._docs[collection][doc_id] = result
            return _changed(collection, doc_id, out, gone)
        for key, value in fields.items():
            if key == "_id":
                continue
            plist = view.data.get(key)
            if plist is None:
                view.data[key] = {sub: value}
                out[key] = value
                continue
            if next(iter(plist)) != sub:
                plist[sub] = value  # a new provider goes last, a known one keeps its place
            elif not equals(plist[sub], value):
                plist[sub] = value
                out[key] = value
        for key in clears:
            _clear_field(view, sub, key, out, gone)
        return _changed(collection, doc_id, out, gone)

    def update(
        self,
        sub: Hashable,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any] | None,
        equals: Callable[[Any, Any], bool] = _equals,
        memo: UpdateMemo | None = None,
    ) -> list[Message]:
        """Live routing in one call: after a change, ``sub`` publishes the document with
        ``fields`` (``add`` or ``change``, whichever applies), or no longer publishes it
        (``fields`` None: ``remove`` if it did, nothing otherwise).

        Same messages as the separate calls; fan-out calls this once per session and
        change, so the common case (the only publisher, a few fields changed) takes one
        index lookup and an identity test per unchanged field. The resulting view is
        equal to theirs, but it is ``fields`` itself whenever that holds all of the view's
        fields (module docstring, "Copying"): every session a change reaches ends up
        sharing that one dict, and a session that already holds it compares nothing.

        ``memo`` (one dict per fan-out batch, from the caller) shares the work between
        sessions: for a single-publisher document the outcome depends only on the view
        and ``fields``, so a session whose view is the very dict another session had gets
        that session's outcome without comparing a field. The messages are then the same
        objects for all of them: with a memo, returned messages are read-only.
        """
        index = self._by_sub.get(sub)
        ids = None if index is None else index.get(collection)
        held = ids is not None and doc_id in ids
        if fields is None:
            return self.remove(sub, collection, doc_id) if held else []
        if not held:
            return self.add(sub, collection, doc_id, fields)
        coll = self._docs[collection]
        view = coll[doc_id]
        if view is fields:
            # Already this very dict (a write that changed no published field gives every
            # session the dict it holds, ``relay.stream.interning``): nothing to compare.
            return []
        if not isinstance(view, dict):
            return self.change(sub, collection, doc_id, fields, (), equals)
        if memo is not None:
            hit = memo.get((id(view), id(fields)))
            # The memo keeps both objects alive, so identity proves it is the same pair.
            if hit is not None and hit[0] is view and hit[1] is fields:
                coll[doc_id] = hit[2]
                return hit[3]
        out: dict[str, Any] | None = None
        #: Fields whose new value equals the old one but is of another type: the view
        #: keeps the old one (the client's), as ``change`` does.
        keep: dict[str, Any] | None = None
        differs = False
        absent = 0  # fields the view does not have
        for key, value in fields.items():
            old = view.get(key, _ABSENT)
            if old is value or key == "_id":
                continue
            differs = True
            if old is _ABSENT:
                absent += 1
            elif equals(old, value):
                if type(old) is not type(value):
                    if keep is None:
                        keep = {}
                    keep[key] = old
                continue
            if out is None:
                out = {}
            out[key] = value
        # Copy on write: the new view replaces the old one, which may be shared.
        if type(fields) is dict and len(fields) - absent == len(view) and "_id" not in fields:
            # Every field is in ``fields`` (fan-out always sends them all): the new view
            # is that very dict, shared with every session this change reaches.
            coll[doc_id] = fields if keep is None else {**fields, **keep}
        elif differs:
            new = {**view, **fields}
            new.pop("_id", None)
            if keep is not None:
                new.update(keep)
            coll[doc_id] = new
        messages = _changed(collection, doc_id, out or {}, [])
        if memo is not None:
            new_view = coll[doc_id]
            assert isinstance(new_view, dict)
            memo[id(view), id(fields)] = (view, fields, new_view, messages)
        return messages

    def remove(self, sub: Hashable, collection: str, doc_id: str) -> list[Message]:
        """``sub`` stops publishing the document.

        ``removed`` when no subscription publishes it any more; otherwise at most one
        ``changed`` with the fields whose visible value changed. Raises
        ``LocalProtocolError`` if ``sub`` does not publish the document.
        """
        view = self._view_of(sub, collection, doc_id, "remove")
        self._index_discard(sub, collection, doc_id)
        return self._drop(sub, collection, doc_id, view)

    def remove_subscription(self, sub: Hashable) -> list[Message]:
        """Remove every document of ``sub`` (unsub, a failed or stopped publication).

        Costs O(documents of ``sub``), thanks to the reverse index. An unknown ``sub``
        (or one that published nothing) gives no messages.
        """
        index = self._by_sub.pop(sub, None)
        if index is None:
            return []
        messages: list[Message] = []
        for collection, ids in index.items():
            coll = self._docs[collection]
            for doc_id in ids:
                messages.extend(self._drop(sub, collection, doc_id, coll[doc_id]))
        return messages

    # -- read access -------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of documents the client holds."""
        return sum(len(coll) for coll in self._docs.values())

    def has(self, collection: str, doc_id: str) -> bool:
        coll = self._docs.get(collection)
        return coll is not None and doc_id in coll

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """The visible fields of one document (a fresh dict), or None if absent."""
        view = self._docs.get(collection, {}).get(doc_id)
        if view is None:
            return None
        return dict(view) if isinstance(view, dict) else view.visible()

    def documents(self, collection: str) -> dict[str, dict[str, Any]]:
        """The client's view of ``collection``: id -> visible fields (fresh dicts)."""
        return {
            doc_id: dict(view) if isinstance(view, dict) else view.visible()
            for doc_id, view in self._docs.get(collection, {}).items()
        }

    def collections(self) -> list[str]:
        """Collections holding at least one document."""
        return list(self._docs)

    def subscriptions_of(self, collection: str, doc_id: str) -> frozenset[Hashable]:
        """The subscriptions publishing the document (``existsIn``); empty if absent."""
        view = self._docs.get(collection, {}).get(doc_id)
        if view is None:
            return frozenset()
        if isinstance(view, dict):
            return frozenset((self._owner(collection, doc_id),))
        return frozenset(view.subs)

    def subscriptions(self) -> frozenset[Hashable]:
        """The subscriptions publishing at least one document."""
        return frozenset(self._by_sub)

    def publishes(self, sub: Hashable, collection: str, doc_id: str) -> bool:
        """Whether ``sub`` currently provides the document (O(1); live-update routing)."""
        return self._publishes(sub, collection, doc_id)

    def documents_of(self, sub: Hashable) -> dict[str, frozenset[str]]:
        """The ids ``sub`` provides, by collection (a copy)."""
        return {c: frozenset(ids) for c, ids in self._by_sub.get(sub, {}).items()}

    # -- snapshot ----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The whole box as plain lists and dicts, for parking a session.

        Field values are left untouched (encode them with EJSON before storing);
        tuple handles become lists. Shape::

            {"version": 1, "collections": {collection: {id: doc}}}
            doc = {"sub": handle, "fields": {field: value}}                 # one publisher
                | {"subs": [handle, ...], "data": {field: [[handle, value], ...]}}
        """
        owners: dict[str, dict[str, Hashable]] = {}
        for sub, index in self._by_sub.items():
            for collection, ids in index.items():
                coll_owners = owners.setdefault(collection, {})
                for doc_id in ids:
                    coll_owners[doc_id] = sub
        collections: dict[str, Any] = {}
        for collection, coll in self._docs.items():
            docs: dict[str, Any] = {}
            for doc_id, view in coll.items():
                if isinstance(view, dict):
                    owner = _dump_handle(owners[collection][doc_id])
                    docs[doc_id] = {"sub": owner, "fields": dict(view)}
                else:
                    docs[doc_id] = {
                        "subs": [_dump_handle(s) for s in view.subs],
                        "data": {
                            key: [[_dump_handle(h), v] for h, v in plist.items()]
                            for key, plist in view.data.items()
                        },
                    }
            collections[collection] = docs
        return {"version": _STATE_VERSION, "collections": collections}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MergeBox:
        """Rebuild a box from ``to_state`` output (also after a JSON round trip).

        Lists in handle position become tuples. Raises ``LocalProtocolError`` if the state
        is malformed or inconsistent (it is our own format: that is a bug on this side).
        """
        box = cls()
        try:
            if state["version"] != _STATE_VERSION:
                raise LocalProtocolError(f"unknown mergebox state version {state['version']!r}")
            for collection, docs in state["collections"].items():
                if not docs:
                    continue
                coll: dict[str, _View] = {}
                box._docs[_str(collection)] = coll
                for doc_id, doc in docs.items():
                    _str(doc_id)
                    if "sub" in doc:
                        owner = _load_handle(doc["sub"])
                        coll[doc_id] = {_str(k): v for k, v in doc["fields"].items()}
                        box._index_add(owner, collection, doc_id)
                        continue
                    handles = [_load_handle(h) for h in doc["subs"]]
                    subs = dict.fromkeys(handles)
                    pairs = {
                        _str(key): [(_load_handle(h), v) for h, v in plist]
                        for key, plist in doc["data"].items()
                    }
                    if not all(pairs.values()):
                        raise ValueError(f"{collection}/{doc_id}: a field without providers")
                    for plist in [handles, *([h for h, _v in p] for p in pairs.values())]:
                        if len(set(plist)) != len(plist) or not set(plist) <= subs.keys():
                            raise ValueError(f"{collection}/{doc_id}: bad handles {plist!r}")
                    data = {key: dict(p) for key, p in pairs.items()}
                    for sub in subs:
                        box._index_add(sub, collection, doc_id)
                    shared = _Shared(subs, data)
                    coll[doc_id] = shared.visible() if len(subs) == 1 else shared
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LocalProtocolError(f"malformed mergebox state: {exc!r}") from exc
        box.verify()
        return box

    def verify(self) -> None:
        """Check the internal invariants; raise ``LocalProtocolError`` on the first break.

        O(size of the box): for ``from_state`` and tests, not for the hot path.
        """
        holders: dict[tuple[str, str], set[Hashable]] = {}
        for sub, index in self._by_sub.items():
            _check(bool(index), f"empty index for {sub!r}")
            for collection, ids in index.items():
                _check(bool(ids), f"empty id set for {sub!r} in {collection!r}")
                for doc_id in ids:
                    _check(self.has(collection, doc_id), f"{sub!r} indexes missing doc")
                    holders.setdefault((collection, doc_id), set()).add(sub)
        for collection, coll in self._docs.items():
            _check(bool(coll), f"empty collection {collection!r}")
            for doc_id, view in coll.items():
                where = f"{collection}/{doc_id}"
                subs = holders.get((collection, doc_id), set())
                if isinstance(view, dict):
                    _check(len(subs) == 1, f"{where}: single form with publishers {subs!r}")
                    _check("_id" not in view, f"{where}: _id stored")
                    continue
                _check(len(view.subs) >= 2, f"{where}: shared form with < 2 publishers")
                _check(view.subs.keys() == subs, f"{where}: existsIn differs from the index")
                _check("_id" not in view.data, f"{where}: _id stored")
                for key, plist in view.data.items():
                    _check(bool(plist), f"{where}.{key}: a field without providers")
                    _check(
                        plist.keys() <= view.subs.keys(), f"{where}.{key}: provider not in existsIn"
                    )

    # -- internals ---------------------------------------------------------------------

    def _publishes(self, sub: Hashable, collection: str, doc_id: str) -> bool:
        index = self._by_sub.get(sub)
        if index is None:
            return False
        ids = index.get(collection)
        return ids is not None and doc_id in ids

    def _view_of(self, sub: Hashable, collection: str, doc_id: str, verb: str) -> _View:
        if not self._publishes(sub, collection, doc_id):
            raise LocalProtocolError(
                f"{verb}: subscription {sub!r} does not publish {collection!r} id {doc_id!r}"
            )
        return self._docs[collection][doc_id]

    def _owner(self, collection: str, doc_id: str) -> Hashable:
        """The single publisher of a document in the plain-dict form (a scan of subs)."""
        for sub, index in self._by_sub.items():
            ids = index.get(collection)
            if ids is not None and doc_id in ids:
                return sub
        raise LocalProtocolError(f"mergebox corrupt: no publisher for {collection}/{doc_id}")

    def _index_add(self, sub: Hashable, collection: str, doc_id: str) -> None:
        self._by_sub.setdefault(sub, {}).setdefault(collection, set()).add(doc_id)

    def _index_discard(self, sub: Hashable, collection: str, doc_id: str) -> None:
        index = self._by_sub[sub]
        ids = index[collection]
        ids.discard(doc_id)
        if not ids:
            del index[collection]
            if not index:
                del self._by_sub[sub]

    def _drop(self, sub: Hashable, collection: str, doc_id: str, view: _View) -> list[Message]:
        """Take ``sub`` off the document (the index is already updated)."""
        coll = self._docs[collection]
        if isinstance(view, dict):
            del coll[doc_id]
            if not coll:
                del self._docs[collection]
            return [{"msg": "removed", "collection": collection, "id": doc_id}]
        del view.subs[sub]
        out: dict[str, Any] = {}
        gone: list[str] = []
        for key in list(view.data):
            _clear_field(view, sub, key, out, gone)
        if len(view.subs) == 1:
            coll[doc_id] = view.visible()  # one publisher left: back to the plain form
        return _changed(collection, doc_id, out, gone)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise LocalProtocolError(f"mergebox invariant broken: {what}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {value!r}")
    return value


def _dump_handle(handle: Hashable) -> Any:
    if isinstance(handle, tuple):
        return [_dump_handle(part) for part in handle]
    if handle is None or isinstance(handle, str | int | float):
        return handle
    raise LocalProtocolError(f"subscription handle {handle!r} cannot be stored in a state")


def _load_handle(raw: Any) -> Hashable:
    if isinstance(raw, list | tuple):
        return tuple(_load_handle(part) for part in raw)
    if raw is None or isinstance(raw, str | int | float):
        return raw
    raise TypeError(f"bad subscription handle {raw!r}")
