"""``LiveQuery``: one distinct query of a worker, maintained once for all its subscribers.

Layer: runtime (gevent). Subscribers of the same query (``QuerySpec.key``: publication,
parameters and the user's visibility, as the backend decided) share one ``LiveQuery``: it
holds the query's result (``relay.live.result``: a filtered set, a sorted window, a
count), is the one ``StreamTarget`` of its route on the channel stream, and turns each
delivery of committed changes into effects ``(id, fields | None)`` computed ONCE, which
every subscriber then applies to its own mergebox (the session's view, where several
subscriptions merge). Per commit, routing and window work is per distinct query; only
the mergebox update and the socket write are per subscriber, with the batch's shared
memo and encodings (``relay.stream.fanout.BatchCache``).

When the change payload cannot decide membership (an unroutable route), when a window
shrank below its limit with more rows possibly beyond its buffer, or when the channel lost
history, the query is fetched again, once for all its subscribers (never per
subscriber, never twice at once), and its subscribers get the difference. Until that
fetch is in, the query is *unsettled* from the first change that needed it: a method's
write fence (``wait_settled``) waits for it, so a caller's own writes still reach it
before ``updated`` (I5).

Must not: read the database itself (``fetch`` runs ``Backend.fetch`` in the work pool),
know sessions beyond ``relay.stream.subscriber.Subscriber``, or block in ``deliver``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from relay.backend import DecodedChange, QueryData, QuerySpec
from relay.live.result import CountResult, Effect, Entry, SetResult, StreamResult, WindowResult
from relay.stream.fanout import Attachment, Batch, BatchCache
from relay.stream.routing import matches

if TYPE_CHECKING:
    from collections.abc import Hashable

    from relay.stream.subscriber import Subscriber

log = logging.getLogger(__name__)

Result = SetResult | WindowResult | CountResult


class QueryHost:
    """What a live query needs of its worker: a fetch in the work pool, the channel
    streams, the shared values, and its registry's bookkeeping. One per worker."""

    __slots__ = ("fetch", "interner", "metrics", "streams")

    def __init__(
        self,
        fetch: Callable[[Sequence[QuerySpec]], Sequence[QueryData]],
        streams: Any,
        metrics: Any = None,
    ) -> None:
        #: ``Backend.fetch`` through the work pool (blocks cooperatively).
        self.fetch = fetch
        #: ``relay.stream.fanout.Streams`` (attach, detach, batches_after, interner).
        self.streams = streams
        self.interner = streams.interner
        self.metrics = metrics


class LiveQuery:
    """One maintained query; a ``StreamTarget`` for its route's channel."""

    __slots__ = (
        "_attachment",
        "_dropped",
        "_fetching",
        "_settled",
        "collection",
        "error",
        "holders",
        "host",
        "loaded",
        "members",
        "pending_from",
        "result",
        "spec",
    )

    def __init__(self, spec: QuerySpec, host: QueryHost) -> None:
        self.spec = spec
        self.host = host
        self.result: Result = _result_for(spec)
        #: The collection its documents are published in (a count's own, else the route's).
        self.collection = spec.count.collection if spec.count else spec.route.collection
        #: (session, mergebox handle) -> None: who gets its effects, in join order.
        self.members: dict[tuple[Subscriber, Hashable], None] = {}
        #: Subscriptions holding it, joined or still waiting for its first load.
        self.holders = 0
        #: Set once the first load is in (or failed: ``error``).
        self.loaded = gevent.event.Event()
        self.error: BaseException | None = None
        #: The first seq whose changes the result does not reflect yet (a fetch is due).
        self.pending_from: int | None = None
        self._settled = gevent.event.Event()
        self._settled.set()
        self._attachment: Attachment | None = None
        self._fetching: gevent.Greenlet | None = None
        self._dropped = False

    def __repr__(self) -> str:
        return f"<LiveQuery {self.spec.route.collection} {self.spec.key[:12]} x{len(self.members)}>"

    # -- loading -------------------------------------------------------------------------

    def load(self, data: QueryData) -> None:
        """The first fetch is in: hold its rows and start following the channel."""
        self.result.load(self._entries(data), data.complete)
        self._follow(data)
        self.loaded.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.loaded.set()

    def _entries(self, data: QueryData) -> list[Entry]:
        interner = self.host.interner
        keys = data.keys
        entries: list[Entry] = []
        for i, doc in enumerate(data.documents):
            fields = interner.fields(doc.collection, doc.id, doc.fields) if doc.fields else {}
            doc_id = interner.canonical_id(doc.collection, doc.id)
            entries.append((doc_id, fields, tuple(keys[i]) if keys is not None else None))
        return entries

    def _follow(self, data: QueryData) -> None:
        """Attach at the fetch's position, then let go of the previous attachment: the new
        one is caught up from the ring in ``attach``, with no switch in between."""
        route = self.spec.route
        position = data.positions.get(route.channel, (0, ""))
        old, self._attachment = self._attachment, None
        attachment = self.host.streams.attach(self, route, position)
        if old is not None:
            self.host.streams.detach(old)
        self._attachment = attachment

    # -- members -------------------------------------------------------------------------

    def view(self) -> Iterable[tuple[str, dict[str, Any]]]:
        """The published documents now: what a joining subscriber starts from."""
        return self.result.view().items()  # type: ignore[return-value]

    def join(self, session: Subscriber, handle: Hashable) -> None:
        """Send ``session`` this query's effects from now on (after it copied ``view()``
        with no switch in between)."""
        self.members[(session, handle)] = None

    def leave(self, session: Subscriber, handle: Hashable) -> None:
        self.members.pop((session, handle), None)

    def drop(self) -> None:
        """Nobody holds it any more: stop following the channel."""
        self._dropped = True
        self.members.clear()
        if self._attachment is not None:
            self.host.streams.detach(self._attachment)
            self._attachment = None
        # A fetch in flight finishes in the work pool and is then ignored.
        self._settle()

    # -- StreamTarget ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._dropped

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        if not self._current(att):
            att.cursor = max(att.cursor, batches[-1].seq)
            return 0  # a replaced attachment in its last moment
        route = self.spec.route
        conditions = route.conditions
        collection = route.collection
        window = self.spec.window
        order = window.order if window is not None else ()
        counting = self.spec.count is not None
        names = route.fields
        if self._fetching is not None and self._attachment is not None:
            # A fetch is running: its re-attachment replays from the ring whatever
            # commits after its snapshot. Applying them now to the old result would
            # publish them, have the older snapshot take them back, then replay them.
            # (During the re-attachment itself, ``_attachment`` is None: that replay
            # is applied.)
            att.cursor = max(att.cursor, batches[-1].seq)
            return 0
        changes: list[tuple[str, Any, tuple[Any, ...] | None]] = []
        stale_at: int | None = None
        first: int | None = None
        for batch in batches:
            if batch.seq <= att.cursor:
                continue
            att.cursor = batch.seq
            if first is None:
                first = batch.seq
            for change in batch.changes:
                if change.collection != collection:
                    continue
                if conditions is None:
                    # Not decidable from the payload: read the query again.
                    stale_at = batch.seq if stale_at is None else stale_at
                    continue
                if change.op == "d" or not matches(conditions, change.routing):
                    changes.append((change.id, None, None))
                    continue
                fields: Any = {} if counting else _fields(change, names, cache)
                key = tuple(change.routing.get(o.path) for o in order) if order else None
                changes.append((change.id, fields, key))
        effects = self.result.apply(changes) if changes else []
        if stale_at is not None:
            self._refetch(stale_at)
        elif self.result.needs_refetch:
            # The delivery's first commit may be the one that emptied the buffer.
            self._refetch(first if first is not None else att.cursor)
        return self._publish(effects, cache) if effects else 0

    def lost(self, att: Attachment) -> None:
        if self._current(att):
            self._refetch(att.cursor)

    def _current(self, att: Attachment) -> bool:
        # None: ``_follow`` is attaching, and the new attachment is catching up.
        return self._attachment is None or att is self._attachment

    # -- effects ---------------------------------------------------------------------------

    def _publish(
        self, effects: Sequence[Effect], cache: BatchCache, *, replace: bool = False
    ) -> int:
        """Apply ``effects`` to every member's mergebox; send what each client must see.

        ``replace``: the effects come from a fetch, so a field a document no longer has
        is cleared (a change from the stream always carries every published field)."""
        collection = self.collection
        equals = cache.equals
        views = cache.views
        encode = cache.encode
        sent = 0
        for session, handle in list(self.members):
            if session.closed:
                continue
            try:
                box = session.mergebox
                out: list[dict[str, Any]] = []
                for doc_id, fields in effects:
                    if replace and fields is not None and box.publishes(handle, collection, doc_id):
                        current = box.get(collection, doc_id) or {}
                        cleared = [k for k in current if k not in fields]
                        if cleared:
                            out += box.change(handle, collection, doc_id, fields, cleared)
                            continue
                    out += box.update(handle, collection, doc_id, fields, equals, views)
                if not out:
                    continue
                texts = [encode(m) for m in out]
                if session.send_texts(texts, cache, metered=True):
                    sent += len(texts)
            except Exception:
                # This session's view can no longer be kept exact; the others' can.
                log.exception("a change of %s cannot be applied to a session", collection)
                session.desync()
        return sent

    # -- fetching again --------------------------------------------------------------------

    def _refetch(self, from_seq: int) -> None:
        """Read the query again (single-flight): changes from ``from_seq`` on are not all
        reflected until then, which the write fence sees (``wait_settled``)."""
        if self._dropped:
            return
        if self.pending_from is None:
            self.pending_from = from_seq
            self._settled.clear()
        if self._fetching is None:
            self._fetching = gevent.spawn(self._refetch_loop)

    def _refetch_loop(self) -> None:
        """Fetch until the result reflects the stream: each fetch is loaded, its difference
        published, and the query re-attached at the fetch's position, which replays from the
        ring what committed after it; a replayed change may make it stale again."""
        rounds = 0
        try:
            while not self._dropped and self.pending_from is not None:
                rounds += 1
                if rounds > 3:
                    # Stale again at once, again and again (a change per commit on an
                    # unroutable query): at most a few fetches a second, not a hot loop.
                    gevent.sleep(min(1.0, 0.05 * 2 ** (rounds - 4)))
                    if self._dropped:
                        return
                if self.host.metrics is not None:
                    self.host.metrics.query_fetches.labels(reason="refetch").inc()
                try:
                    (data,) = self.host.fetch([self.spec])
                except gevent.GreenletExit:
                    raise
                except Exception:
                    log.exception("fetching live query %r again failed; retrying", self)
                    gevent.sleep(1.0)
                    continue
                if self._dropped:
                    return
                pending = self.pending_from
                try:
                    effects = self.result.load(self._entries(data), data.complete)
                    if effects:
                        self._publish(effects, BatchCache(), replace=True)
                    # What committed up to the fetch's snapshot is in; what came after
                    # (and made it stale meanwhile) is replayed by the re-attachment.
                    self.pending_from = None
                    self._follow(data)
                except Exception:
                    # A fetch that does not load (rows twice from a join...): still stale,
                    # read again after a pause, the fence keeps waiting meanwhile.
                    log.exception("live query %r: a fetch could not be applied; retrying", self)
                    if self.pending_from is None:
                        self.pending_from = pending
                    gevent.sleep(1.0)
                    continue
                if self.pending_from is None and self.result.needs_refetch:
                    self.pending_from = self._attachment.cursor if self._attachment else 0
        finally:
            self._fetching = None
            if self.pending_from is None or self._dropped:
                self._settle()

    def _settle(self) -> None:
        self.pending_from = None
        self._settled.set()

    def wait_settled(self, seq: int, timeout: float) -> bool:
        """Block until the result reflects every change up to ``seq`` of its channel that
        the stream delivered (True), or ``timeout`` (False)."""
        while self.pending_from is not None and self.pending_from <= seq:
            if not self._settled.wait(timeout):
                return False
        return True


def _fields(change: DecodedChange, names: tuple[str, ...] | None, cache: BatchCache) -> Any:
    if names is None:
        return change.fields
    return cache.project(change, names)


def _result_for(spec: QuerySpec) -> Result:
    if spec.stream is not None:
        return StreamResult(spec.stream)
    if spec.count is not None:
        return CountResult(spec.count)
    if spec.window is not None:
        return WindowResult(spec.window)
    return SetResult()
