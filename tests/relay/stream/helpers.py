"""Fakes shared by the stream and live-query tests: a session, decoders for a 'books'
channel, a minimal stream target, a database a live query fetches from, and builders for
``Streams`` and loaded ``LiveQuery`` objects.

A ``World`` is one channel seen from both ends: ``commit`` changes the database's rows
(what a fetch reads from then on) and hands the transaction to the streams, as the
listener would; so after every step a session's view can be compared with the database.

Must not: hold tests (pytest collects ``test_*`` modules only), or reach into the code
under test beyond its public API.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import gevent.event

from relay.backend import (
    Condition,
    CountOf,
    DecodedChange,
    Document,
    QueryData,
    QuerySpec,
    Route,
    Window,
)
from relay.live.query import LiveQuery, QueryHost
from relay.protocol.changestream import Change
from relay.protocol.mergebox import MergeBox
from relay.stream.fanout import Attachment, Batch, BatchCache, Streams, Transaction
from relay.stream.routing import matches
from tests.relay.live.helpers import compare

Fetch = Callable[[Sequence[QuerySpec]], Sequence[QueryData]]


class FakeSession:
    """A ``relay.stream.subscriber.Subscriber`` that records what it was sent."""

    def __init__(self) -> None:
        self.mergebox = MergeBox()
        self.closed = False
        #: Every message it got, decoded, in order (the view copied at join included).
        self.sent: list[dict[str, Any]] = []
        #: Messages per fan-out write, to see coalesced deliveries.
        self.writes: list[int] = []
        #: Raised by ``send_texts`` when set (a session with a bug).
        self.fail: Exception | None = None
        #: Times fan-out said this session's view cannot be kept exact.
        self.desyncs = 0

    def send(self, msgs: list[dict[str, Any]]) -> None:
        self.sent.extend(json.loads(json.dumps(m)) for m in msgs)

    def desync(self) -> None:
        self.desyncs += 1

    def send_texts(self, texts: list[str], shared: Any = None, *, metered: bool = False) -> bool:
        if self.fail is not None:
            raise self.fail
        self.sent.extend(json.loads(t) for t in texts)
        self.writes.append(len(texts))
        return True

    def docs(self, collection: str = "books") -> dict[str, dict[str, Any]]:
        """What its client holds of ``collection``."""
        return self.mergebox.documents(collection)

    def kinds(self) -> list[tuple[str, str]]:
        """(msg, id) of every message sent, for compact assertions."""
        return [(m["msg"], m["id"]) for m in self.sent]


class Decoder:
    """decode_change for a 'books' channel: values carry title and author."""

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        if channel != "ddp_books":
            return None
        fields = {"title": change.values.get("title")} if change.op != "d" else {}
        return DecodedChange("books", str(change.pk), change.op, fields, dict(change.values))


class RowDecoder:
    """decode_change publishing every column of the row, as a collection does; the routing
    values are the columns plus ``id``, the wire id (a window's last order component)."""

    def __init__(self, channel: str = "ddp_books", collection: str = "books") -> None:
        self.channel = channel
        self.collection = collection

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        if channel != self.channel:
            return None
        doc_id = str(change.pk)
        fields = dict(change.values) if change.op != "d" else {}
        routing = {**change.values, "id": doc_id} if change.op != "d" else {"id": doc_id}
        return DecodedChange(self.collection, doc_id, change.op, fields, routing)


BOOKS = Route("ddp_books", "books", ())
BY_ANN = Route("ddp_books", "books", (Condition("author", "exact", "ann"),))
#: Membership not decidable from a change: every change of the collection means a fetch.
OPAQUE = Route("ddp_books", "books", None)


def make(decoder: Any = None) -> tuple[Streams, list[str], list[str]]:
    """Streams over ``decoder`` (default ``Decoder``) recording LISTEN and UNLISTEN."""
    listened: list[str] = []
    unlistened: list[str] = []
    backend: Any = decoder or Decoder()  # decode_change is all streams use of a backend
    streams = Streams(backend, listened.append, unlistened.append)
    return streams, listened, unlistened


def ins(pk: str, **values: Any) -> Change:
    return Change("i", pk, values)


def upd(pk: str, **values: Any) -> Change:
    return Change("u", pk, values)


def rm(pk: str) -> Change:
    return Change("d", pk, {})


class Recorder:
    """The smallest ``StreamTarget``: records the seqs it was handed, per delivery, and
    when it was told it lost history; raises ``fail`` from ``deliver`` when set."""

    def __init__(self) -> None:
        self.closed = False
        self.deliveries: list[list[int]] = []
        #: The attachment's cursor at each ``lost``.
        self.lost_at: list[int] = []
        self.fail: Exception | None = None

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        if self.fail is not None:
            raise self.fail
        seqs = []
        for batch in batches:
            if batch.seq > att.cursor:
                att.cursor = batch.seq
                seqs.append(batch.seq)
        self.deliveries.append(seqs)
        return 0

    def lost(self, att: Attachment) -> None:
        self.lost_at.append(att.cursor)

    @property
    def seqs(self) -> list[int]:
        return [seq for seqs in self.deliveries for seq in seqs]


class Db:
    """The database a live query reads (``Backend.fetch``): the rows of one collection by
    wire id, each row's values being both its published fields and its routing values
    (with ``id``, as ``RowDecoder`` decodes changes), and the channel's position.

    ``gate``: a fetch waits for it before it reads (a fetch queued for the work pool);
    ``error``: a fetch raises it (after the gate). ``member`` decides the membership of a
    row for a route whose conditions are undecidable (default: every row).
    """

    def __init__(
        self,
        rows: dict[str, dict[str, Any]] | None = None,
        position: tuple[int, str] = (0, "E"),
        channel: str = "ddp_books",
        collection: str = "books",
    ) -> None:
        self.rows: dict[str, dict[str, Any]] = dict(rows or {})
        self.position = position
        self.channel = channel
        self.collection = collection
        #: Keys of the specs fetched, in order (one entry per spec).
        self.fetched: list[str] = []
        #: Calls of ``fetch`` (one may read several specs).
        self.calls = 0
        #: Fetches that have not returned yet.
        self.running = 0
        self.gate: gevent.event.Event | None = None
        self.error: BaseException | None = None
        self.member: Callable[[dict[str, Any]], bool] = lambda routing: True

    def fetch(self, specs: Sequence[QuerySpec]) -> list[QueryData]:
        self.calls += 1
        self.fetched.extend(spec.key for spec in specs)
        self.running += 1
        try:
            if self.gate is not None:
                self.gate.wait()
            if self.error is not None:
                raise self.error
            return [self.read(spec) for spec in specs]
        finally:
            self.running -= 1

    def hold(self) -> gevent.event.Event:
        """Make fetches wait until the returned event is set."""
        self.gate = gevent.event.Event()
        return self.gate

    def apply(self, change: Change) -> None:
        if change.op == "d":
            self.rows.pop(str(change.pk), None)
        else:
            self.rows[str(change.pk)] = dict(change.values)

    def routing(self, doc_id: str) -> dict[str, Any]:
        return {**self.rows[doc_id], "id": doc_id}

    def matching(self, spec: QuerySpec) -> list[str]:
        """The ids of the rows in ``spec``'s result, in its window's order (if any)."""
        conditions = spec.route.conditions
        ids = [
            doc_id
            for doc_id in self.rows
            if (
                self.member(self.routing(doc_id))
                if conditions is None
                else matches(conditions, self.routing(doc_id))
            )
        ]
        window = spec.window
        if window is not None:
            order = window.order

            def by_order(a: str, b: str) -> int:
                return compare(self.sort_values(a, window), self.sort_values(b, window), order)

            ids.sort(key=functools.cmp_to_key(by_order))
        return ids

    def sort_values(self, doc_id: str, window: Window) -> tuple[Any, ...]:
        routing = self.routing(doc_id)
        return tuple(routing.get(o.path) for o in window.order)

    def read(self, spec: QuerySpec) -> QueryData:
        ids = self.matching(spec)
        positions = {self.channel: self.position}
        if spec.count is not None:
            docs = [Document(self.collection, doc_id, {}) for doc_id in ids]
            return QueryData(docs, positions=positions)
        window = spec.window
        complete = True
        if window is not None and window.capacity is not None:
            complete = len(ids) < window.capacity
            ids = ids[: window.capacity]
        names = spec.route.fields
        docs = [
            Document(
                self.collection,
                doc_id,
                {k: v for k, v in self.rows[doc_id].items() if names is None or k in names},
            )
            for doc_id in ids
        ]
        keys = None if window is None else [self.sort_values(i, window) for i in ids]
        return QueryData(docs, keys, complete, positions)

    def view(self, spec: QuerySpec) -> dict[str, dict[str, Any]]:
        """What a subscriber of ``spec`` must hold now (brute force, from the rows)."""
        ids = self.matching(spec)
        if spec.count is not None:
            count = spec.count
            return {count.id: {count.field: len(ids)}}
        window = spec.window
        if window is not None:
            end = None if window.limit is None else window.skip + window.limit
            ids = ids[window.skip : end]
        names = spec.route.fields
        return {
            doc_id: {k: v for k, v in self.rows[doc_id].items() if names is None or k in names}
            for doc_id in ids
        }


def join(query: LiveQuery, session: FakeSession, handle: Hashable = "s") -> FakeSession:
    """What ``Subscriptions.start`` does with a query it acquired: copy its view into the
    session's mergebox (sending it), then join, with no switch in between."""
    box = session.mergebox
    for doc_id, fields in query.view():
        session.send(box.add(handle, query.collection, doc_id, fields))
    query.join(session, handle)
    return session


def spec_of(
    route: Route,
    key: str | None = None,
    window: Window | None = None,
    count: CountOf | None = None,
) -> QuerySpec:
    return QuerySpec(key or f"{route!r}{window!r}{count!r}", route, window, count)


def live_query(
    streams: Streams,
    route: Route | QuerySpec,
    fetch: Fetch,
    session: FakeSession | None = None,
    handle: Hashable = "s",
) -> tuple[LiveQuery, FakeSession]:
    """A ``LiveQuery`` over a ``QueryHost`` whose fetch is ``fetch``, loaded (so attached
    at the fetch's position, and caught up from the ring) and joined by ``session`` (a
    new ``FakeSession`` by default)."""
    spec = route if isinstance(route, QuerySpec) else spec_of(route)
    query = LiveQuery(spec, QueryHost(fetch, streams))
    (data,) = fetch([spec])
    query.load(data)
    return query, join(query, session or FakeSession(), handle)


def settle(query: LiveQuery, timeout: float = 5.0) -> None:
    """Wait until the query fetched whatever it owed (its refetch greenlet ran)."""
    assert query.wait_settled(2**62, timeout), f"{query!r} still unsettled"


class World:
    """One channel from both ends: a ``Db`` and the worker's ``Streams`` (``RowDecoder``).

    ``commit`` changes the rows, moves the database's position and, unless told not to
    (a listener that has not read it yet), delivers the transaction to the streams.
    """

    def __init__(self, rows: dict[str, dict[str, Any]] | None = None, epoch: str = "E") -> None:
        self.epoch = epoch
        self.seq = 0
        self.db = Db(rows, (0, epoch))
        self.streams, self.listened, self.unlistened = make(RowDecoder())
        self.host = QueryHost(self.db.fetch, self.streams)
        #: Committed transactions not delivered yet, in order.
        self.pending: list[Transaction] = []

    def commit(self, *changes: Change, deliver: bool = True) -> int:
        """One transaction; returns its seq."""
        self.seq += 1
        for change in changes:
            self.db.apply(change)
        self.db.position = (self.seq, self.epoch)
        self.pending.append(Transaction(self.seq, self.epoch, self.seq, changes))
        if deliver:
            self.deliver()
        return self.seq

    def deliver(self) -> None:
        """Hand the streams what committed since the last delivery, as one run."""
        pending, self.pending = self.pending, []
        if pending:
            self.streams.deliver_many(self.db.channel, pending)

    def query(
        self,
        route: Route | QuerySpec = BOOKS,
        session: FakeSession | None = None,
        handle: Hashable = "s",
    ) -> tuple[LiveQuery, FakeSession]:
        """A live query loaded from the database now, joined by ``session``."""
        return live_query(self.streams, route, self.db.fetch, session, handle)
