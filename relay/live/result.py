"""The maintained result of one shared live query, and what its published view becomes.

Layer: pure (standard library and ``relay.backend`` only; no I/O, no gevent, no clock).
A relay keeps one result per distinct query (``QuerySpec.key``); the runtime feeds it a
fetch (``load``) and then, per delivery of committed changes, the membership decisions
routing made (``apply``), and hands every subscriber the effects these return: ``(id,
fields)`` for a document in the published view now, ``(id, None)`` for one that left it.
Subscribers' mergeboxes diff the fields, so an effect may repeat unchanged fields; fields
objects are kept as given, never copied, so subscribers can compare them by identity first.

Three kinds share that interface (``Result``): ``SetResult`` publishes every member (a
filtered queryset); ``WindowResult`` a sorted, limited slice with Meteor's oplog-driver
buffer, asking for a refetch only when the window may have shrunk below its limit;
``CountResult`` one document holding the number of members; ``StreamResult`` the latest
events of a stream, oldest out first (a capped collection).

Must not: query, wait, or know about sessions and collections: the runtime does that.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, TypeAlias

from relay.backend import CountOf, StreamOf, Window
from relay.live.order import SortKey, sort_keyer

Fields: TypeAlias = Mapping[str, Any]
#: One fetched document: wire id, published fields, sort values (None outside a window).
Entry: TypeAlias = tuple[str, Fields, tuple[Any, ...] | None]
#: One committed membership decision: wire id, fields (None: not a member: deleted, or no
#: longer matching, or never matched), sort values (None when not a member or unsorted).
Change: TypeAlias = tuple[str, Fields | None, tuple[Any, ...] | None]
#: What the published view became for one id: its fields now, or None: not in it.
Effect: TypeAlias = tuple[str, Fields | None]


class Result(Protocol):
    """What every kind of maintained result offers the runtime."""

    def load(self, entries: Sequence[Entry], complete: bool) -> list[Effect]:
        """Replace the whole state by a fetch's result; the view's difference."""
        ...

    def apply(self, changes: Iterable[Change]) -> list[Effect]:
        """One delivery's membership changes, in commit order; the view's difference."""
        ...

    def view(self) -> Mapping[str, Fields]:
        """The published documents now (what a new subscriber is sent)."""
        ...

    def __len__(self) -> int:
        """How many documents the view holds."""
        ...

    @property
    def needs_refetch(self) -> bool:
        """The view may be wrong until the runtime fetches again and calls ``load``."""
        ...


def _same(old: Fields, new: Fields) -> bool:
    return old is new or old == new


def _require_complete(complete: bool, kind: str) -> None:
    # Only a limited window's fetch stops at a capacity; any other fetch reads every row.
    if not complete:
        raise ValueError(f"an incomplete fetch for a {kind}: only a limited window has one")


class SetResult:
    """Every member is published (a filtered queryset): O(1) per change."""

    __slots__ = ("_docs", "_loaded", "_proxy")

    def __init__(self) -> None:
        self._docs: dict[str, Fields] = {}
        self._proxy = MappingProxyType(self._docs)
        self._loaded = False

    def load(self, entries: Sequence[Entry], complete: bool) -> list[Effect]:
        """Replace the members by a fetch's; ``complete`` must be True. Removals come
        first, then the documents added or whose fields differ, in the fetch's order."""
        _require_complete(complete, "filtered set")
        new: dict[str, Fields] = {}
        for doc_id, fields, _values in entries:
            if doc_id in new:
                raise ValueError(f"id {doc_id!r} fetched twice")
            new[doc_id] = fields
        old = self._docs
        effects: list[Effect] = [(doc_id, None) for doc_id in old if doc_id not in new]
        for doc_id, fields in new.items():
            prev = old.get(doc_id)
            if prev is None or not _same(prev, fields):
                effects.append((doc_id, fields))
        # In place, so a view() taken earlier stays live.
        old.clear()
        old.update(new)
        self._loaded = True
        return effects

    def apply(self, changes: Iterable[Change]) -> list[Effect]:
        """Effects in the order ids were first touched; a touched member always gets one."""
        return self._effects(self._take(changes))

    def _take(self, changes: Iterable[Change]) -> dict[str, bool]:
        """Apply ``changes`` to the members; each touched id and whether it was one."""
        docs = self._docs
        before: dict[str, bool] = {}
        for doc_id, fields, _values in changes:
            if doc_id not in before:
                before[doc_id] = doc_id in docs
            if fields is None:
                docs.pop(doc_id, None)
            else:
                docs[doc_id] = fields  # an id already held keeps its place
        return before

    def _effects(self, before: dict[str, bool]) -> list[Effect]:
        """The view's difference for the ids ``before`` says were touched."""
        docs = self._docs
        effects: list[Effect] = []
        for doc_id, was in before.items():
            now = docs.get(doc_id)
            if now is not None:
                effects.append((doc_id, now))
            elif was:
                effects.append((doc_id, None))
        return effects

    def view(self) -> Mapping[str, Fields]:
        """A live read-only mapping of the members."""
        return self._proxy

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def needs_refetch(self) -> bool:
        """Only before the first load."""
        return not self._loaded


class WindowResult:
    """A sorted, limited query ``order_by(...)[skip:skip + limit]`` (Meteor's oplog driver).

    It knows a contiguous PREFIX of the full sorted result: a fetch reads
    ``window.capacity`` rows (the window plus a buffer as large), and ``complete`` says
    nothing else matched. The view is ``known[skip:skip + limit]``. A change removes the
    id if known and, if it is a member, inserts it by its key when the state is complete
    or the key sorts before the last known one (otherwise it lies somewhere in the
    unknown tail: forgotten). At most ``capacity`` entries are kept (the tail is trimmed,
    then the state is incomplete). When an incomplete state knows fewer than ``skip +
    limit`` entries the window may have lost a document it cannot name: ``needs_refetch``;
    until the refetch the view shows what is known.

    Per change: O(log n) to find the place, plus the list move; per delivery, O(1) work
    per document that entered or left the view (a document shifted in from the buffer
    by a removal, one pushed out by an insertion) and per touched document.
    """

    __slots__ = (
        "_capacity",
        "_complete",
        "_end",
        "_fields",
        "_ids",
        "_in_view",
        "_key_of",
        "_keyer",
        "_keys",
        "_loaded",
        "_skip",
    )

    def __init__(self, window: Window) -> None:
        if window.skip < 0 or (window.limit is not None and window.limit < 0):
            raise ValueError(f"a window needs skip >= 0 and limit >= 0: {window!r}")
        if not window.order:
            raise ValueError("a window needs an order (ending with the primary key)")
        self._skip = window.skip
        #: One past the view's last index; None: unlimited.
        self._end = None if window.limit is None else window.skip + window.limit
        self._capacity = window.capacity
        self._keyer = sort_keyer(window.order)
        # The known prefix, in order: keys and ids side by side for bisect.
        self._keys: list[SortKey] = []
        self._ids: list[str] = []
        self._fields: dict[str, Fields] = {}
        self._key_of: dict[str, SortKey] = {}
        self._in_view: set[str] = set()
        self._complete = False
        self._loaded = False

    # -- the interface -------------------------------------------------------------------

    def load(self, entries: Sequence[Entry], complete: bool) -> list[Effect]:
        """Replace the known prefix by a fetch's rows (in the window's order, each with its
        sort values). More rows than the capacity are trimmed (the state is then
        incomplete). Removals from the view come first, then the view's documents that
        are new or whose fields differ, in window order."""
        if self._end is None:
            _require_complete(complete, "window without a limit")
        keys: list[SortKey] = []
        ids: list[str] = []
        fields_of: dict[str, Fields] = {}
        for doc_id, fields, values in entries:
            if values is None:
                raise ValueError(f"id {doc_id!r} fetched for a window without sort values")
            if doc_id in fields_of:
                raise ValueError(f"id {doc_id!r} fetched twice")
            key = self._keyer(values)
            if keys and not keys[-1] < key:
                raise ValueError(f"id {doc_id!r} fetched out of the window's order")
            keys.append(key)
            ids.append(doc_id)
            fields_of[doc_id] = fields
        capacity = self._capacity
        if capacity is not None and len(ids) > capacity:
            for doc_id in ids[capacity:]:
                del fields_of[doc_id]
            del keys[capacity:], ids[capacity:]
            complete = False
        old_view = [(doc_id, self._fields[doc_id]) for doc_id in self._view_ids()]
        self._keys, self._ids, self._fields = keys, ids, fields_of
        self._key_of = dict(zip(ids, keys, strict=True))
        self._complete = complete
        self._loaded = True
        new_ids = self._view_ids()
        self._in_view = set(new_ids)
        effects: list[Effect] = [
            (doc_id, None) for doc_id, _fields in old_view if doc_id not in self._in_view
        ]
        old_fields = dict(old_view)
        for doc_id in new_ids:
            fields = fields_of[doc_id]
            prev = old_fields.get(doc_id)
            if prev is None or not _same(prev, fields):
                effects.append((doc_id, fields))
        return effects

    def apply(self, changes: Iterable[Change]) -> list[Effect]:
        """Effects in the order ids were first touched or moved across the view's edges.

        Every change is checked (a member without sort values, values of the wrong
        arity: ``ValueError``) before any is applied, so a bad delivery leaves the state
        as it was.
        """
        prepared: list[tuple[str, Fields | None, SortKey | None]] = []
        for doc_id, fields, values in changes:
            if fields is None:
                prepared.append((doc_id, None, None))
                continue
            if values is None:
                raise ValueError(f"member {doc_id!r} of a window changed without sort values")
            prepared.append((doc_id, fields, self._keyer(values)))
        before: dict[str, bool] = {}
        touched: set[str] = set()
        for doc_id, fields, key in prepared:
            self._note(before, doc_id)
            touched.add(doc_id)
            if doc_id in self._key_of:
                self._remove(doc_id, before)
            if fields is not None and key is not None:
                keys = self._keys
                if self._complete or (keys and key < keys[-1]):
                    self._insert(doc_id, fields, key, before)
        effects: list[Effect] = []
        in_view = self._in_view
        for doc_id, was in before.items():
            if doc_id in in_view:
                if not was or doc_id in touched:
                    effects.append((doc_id, self._fields[doc_id]))
            elif was:
                effects.append((doc_id, None))
        return effects

    def view(self) -> Mapping[str, Fields]:
        """The window's documents, in window order (a fresh dict)."""
        fields = self._fields
        return {doc_id: fields[doc_id] for doc_id in self._view_ids()}

    def __len__(self) -> int:
        return len(self._in_view)

    @property
    def needs_refetch(self) -> bool:
        """Before the first load, or when an incomplete state knows fewer entries than
        ``skip + limit`` (an empty window, ``limit`` 0, never needs one)."""
        if not self._loaded:
            return True
        end = self._end
        return not self._complete and end is not None and end > self._skip and len(self._ids) < end

    @property
    def complete(self) -> bool:
        """Whether the known prefix is the whole result."""
        return self._complete

    def known_ids(self) -> list[str]:
        """The known prefix's ids in window order (a copy: O(n), for tests and metrics)."""
        return list(self._ids)

    # -- the prefix ----------------------------------------------------------------------

    def _view_ids(self) -> list[str]:
        return self._ids[self._skip : self._end]

    def _note(self, before: dict[str, bool], doc_id: str) -> None:
        if doc_id not in before:
            before[doc_id] = doc_id in self._in_view

    def _enter(self, doc_id: str, before: dict[str, bool]) -> None:
        self._note(before, doc_id)
        self._in_view.add(doc_id)

    def _leave(self, doc_id: str, before: dict[str, bool]) -> None:
        self._note(before, doc_id)
        self._in_view.discard(doc_id)

    def _position(self, doc_id: str, key: SortKey) -> int:
        pos = bisect_left(self._keys, key)
        if pos < len(self._ids) and self._ids[pos] == doc_id:
            return pos
        # Only reached when two documents share a key: an order without its unique last
        # component, which the backend promises never to send.
        return self._ids.index(doc_id)

    def _remove(self, doc_id: str, before: dict[str, bool]) -> None:
        key = self._key_of.pop(doc_id)
        del self._fields[doc_id]
        ids = self._ids
        pos = self._position(doc_id, key)
        skip, end = self._skip, self._end
        if end is None or pos < end:
            if pos >= skip:
                self._leave(doc_id, before)
            elif skip < len(ids):
                self._leave(ids[skip], before)  # the view's first shifts before it
            if end is not None and end < len(ids):
                self._enter(ids[end], before)  # the buffer's first shifts into it
        del ids[pos]
        del self._keys[pos]

    def _insert(self, doc_id: str, fields: Fields, key: SortKey, before: dict[str, bool]) -> None:
        ids, keys = self._ids, self._keys
        pos = bisect_left(keys, key)
        keys.insert(pos, key)
        ids.insert(pos, doc_id)
        self._fields[doc_id] = fields
        self._key_of[doc_id] = key
        skip, end = self._skip, self._end
        if end is None or pos < end:
            if pos >= skip:
                self._enter(doc_id, before)
            elif skip < len(ids):
                self._enter(ids[skip], before)  # the one before the view shifts into it
            if end is not None and end < len(ids):
                self._leave(ids[end], before)  # the view's last is pushed out
        capacity = self._capacity
        if capacity is not None and len(ids) > capacity:
            # Beyond the buffer: never in the view, so no effect of its own.
            for dropped in ids[capacity:]:
                del self._fields[dropped], self._key_of[dropped]
            del ids[capacity:], keys[capacity:]
            self._complete = False


class CountResult:
    """One document ``count.id -> {count.field: n}``, n the number of members.

    Fields are ignored (a count's fetch carries ids only); an effect goes out on the first
    load and whenever n changed, with a fresh fields dict each time.
    """

    __slots__ = ("_count", "_doc", "_ids")

    def __init__(self, count: CountOf) -> None:
        self._count = count
        self._ids: set[str] = set()
        self._doc: dict[str, int] | None = None

    def load(self, entries: Sequence[Entry], complete: bool) -> list[Effect]:
        """Replace the members by a fetch's ids; ``complete`` must be True."""
        _require_complete(complete, "count")
        ids = {entry[0] for entry in entries}
        if len(ids) != len(entries):
            raise ValueError("an id fetched twice for a count")
        self._ids = ids
        return self._publish()

    def apply(self, changes: Iterable[Change]) -> list[Effect]:
        """Nothing is published before the first load (the members are kept, though)."""
        ids = self._ids
        for doc_id, fields, _values in changes:
            if fields is None:
                ids.discard(doc_id)
            else:
                ids.add(doc_id)
        if self._doc is None:
            return []
        return self._publish()

    def view(self) -> Mapping[str, Fields]:
        return {} if self._doc is None else {self._count.id: self._doc}

    def __len__(self) -> int:
        return 0 if self._doc is None else 1

    @property
    def needs_refetch(self) -> bool:
        """Only before the first load."""
        return self._doc is None

    @property
    def value(self) -> int:
        """The number of members now."""
        return len(self._ids)

    def _publish(self) -> list[Effect]:
        n = len(self._ids)
        field = self._count.field
        if self._doc is not None and self._doc[field] == n:
            return []
        self._doc = {field: n}
        return [(self._count.id, self._doc)]


class StreamResult(SetResult):
    """The latest ``cap`` events of a stream key, in commit order: every change routed
    here is an event (inserted once); beyond ``cap`` the oldest leaves the view, so a
    subscriber's client-side collection is capped. A fetch (the key's history) is
    trimmed to its newest ``cap`` entries."""

    __slots__ = ("_cap",)

    def __init__(self, stream: StreamOf) -> None:
        super().__init__()
        if stream.cap < 1:
            raise ValueError("a stream's cap is at least 1")
        self._cap = stream.cap

    def load(self, entries: Sequence[Entry], complete: bool) -> list[Effect]:
        """Replace the events by a fetch's (oldest first), keeping the newest ``cap``."""
        return super().load(entries[max(0, len(entries) - self._cap) :], complete)

    def apply(self, changes: Iterable[Change]) -> list[Effect]:
        """New events join at the end; the oldest leave while more than ``cap`` are held.
        An event leaving in the same delivery it came in is never published. Removals
        come first, so a subscriber never holds more than ``cap``."""
        docs = self._docs
        before = self._take(changes)
        while len(docs) > self._cap:
            oldest = next(iter(docs))
            if oldest not in before:
                before[oldest] = True
            del docs[oldest]
        effects = self._effects(before)
        return [e for e in effects if e[1] is None] + [e for e in effects if e[1] is not None]
