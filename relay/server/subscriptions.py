"""A session's subscriptions: running publications, sharing their queries, and custom ones.

Layer: runtime. ``Subscriptions`` holds one session's named and universal subscriptions and
does everything a subscription needs beyond the DDP bookkeeping of the session itself:
run the publication function (``Backend.subscribe``, in the work pool) with a
``PublicationRun``, acquire the live query of each of its specs from the worker's
``relay.live.queries.LiveQueries`` (a query another session already maintains is joined
and its documents copied from memory: no database read), merge the documents into the
session's mergebox, re-run subscriptions with a difference only (a login, a resume, lost
history), stop them, and tell the write fence which live queries may still owe the
session data.

``PublicationRun`` is the relay's ``PublicationSink``: what a publication written with the
low-level API (Meteor's ``this.added``/``changed``/``removed``/``ready``/``error``/
``stop``/``onStop``) calls, plus ``observe``, a callback for every commit on a channel,
run in order in the work pool by an ``Observer`` (a stream target). Its documents are
merged under their own mergebox handle ``(sub id, run id)``, so a re-run publishes under
a new handle and then lets the old one go: documents both runs publish never flicker.

Must not: parse or frame DDP (the session sends), touch sockets, hold the mergebox (the
session's, which a resume replaces), or import Django.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.event

from relay.backend import (
    CallContext,
    ClientError,
    DecodedChange,
    QueryData,
    QuerySpec,
    Route,
    SubscriptionPlan,
)
from relay.protocol import messages
from relay.protocol.alea import random_id
from relay.protocol.mergebox import MergeBox

if TYPE_CHECKING:
    from relay.live.query import LiveQuery
    from relay.server.context import SessionContext
    from relay.stream.fanout import Attachment, Batch, BatchCache

log = logging.getLogger(__name__)

#: Sub ids of universal publications start with this; a client's never may (refused).
UNIVERSAL_PREFIX = "\x00"
#: Commits an observer may have waiting for its callback before its subscription is
#: stopped (a callback slower than the channel's commits would grow without bound).
MAX_OBSERVER_BACKLOG = 1000


@dataclass(eq=False, slots=True)
class Subscription:
    """A subscription of this session."""

    id: str
    name: str
    params: tuple[Any, ...]
    ready: bool = False
    #: The live queries its publication's specs resolved to (shared with other sessions).
    queries: list[LiveQuery] = field(default_factory=list)
    #: The current run of its publication function (its low-level documents and callbacks).
    run: PublicationRun | None = None

    @property
    def universal(self) -> bool:
        return self.id.startswith(UNIVERSAL_PREFIX)


@dataclass(frozen=True, slots=True)
class StopSub:
    """Internal message: a publication stopped itself (``error``/``stop``), handled in
    the session's message order. ``error`` None: a clean stop."""

    sub_id: str
    run: PublicationRun
    error: dict[str, Any] | None


class Host(Protocol):
    """The session as its subscriptions use it."""

    ctx: SessionContext
    owner: Hashable
    closed: bool

    @property
    def mergebox(self) -> MergeBox: ...

    def send(self, msgs: Sequence[dict[str, Any]]) -> None: ...

    def send_texts(
        self, texts: list[str], shared: Any = None, *, metered: bool = False
    ) -> bool: ...

    def call_context(self) -> CallContext: ...

    def request_resync(self, sub_id: str) -> None: ...

    def queue_internal(self, msg: StopSub) -> None: ...

    def desync(self) -> None: ...


class Subscriptions:
    """One session's subscriptions (``by_id``) and what runs them."""

    __slots__ = ("by_id", "closed", "host")

    def __init__(self, host: Host) -> None:
        self.host = host
        self.by_id: dict[str, Subscription] = {}
        #: The session is over (``detach_all``): a run that finishes later joins nothing.
        self.closed = False

    def named_count(self) -> int:
        return sum(1 for sub_id in self.by_id if not sub_id.startswith(UNIVERSAL_PREFIX))

    # -- starting --------------------------------------------------------------------------

    def start(self, sub: Subscription) -> str | None:
        """Run a new subscription: its documents are sent, then ``ready`` unless its
        publication marks itself ready. Returns the outcome for the metrics."""
        host = self.host
        self.by_id[sub.id] = sub
        try:
            run, plan, queries = self._run(sub)
        except ClientError as exc:
            self.fail(sub, client_error(exc))
            return "error"
        except Exception:
            log.exception("publication %r failed", sub.name)
            self.fail(sub, messages.INTERNAL_ERROR)
            return "error"
        if self.closed:
            # The session was torn down while this ran: it must hold nothing.
            self._let_go(sub.id, queries, run)
            return None
        if self.by_id.get(sub.id) is not sub or run.stopped:
            # Unsubscribed while running, or the publication stopped itself.
            self._abandon(sub, queries, run)
            return "error" if run.error_msg else None
        # From here to the end nothing yields: a query's view and its membership agree.
        box = host.mergebox
        out: list[dict[str, Any]] = []
        try:
            for query in queries:
                for doc_id, fields in query.view():
                    out += box.add(sub.id, query.collection, doc_id, fields)
            texts = [host.ctx.streams.interner.encode(m) for m in out]
        except Exception:
            # A value the publication produced cannot be sent (not EJSON-encodable). The
            # client saw none of it: forget it silently, then fail the subscription.
            log.exception("publication %r produced a document that cannot be sent", sub.name)
            box.remove_subscription(sub.id)
            self._let_go(sub.id, queries, run)
            self.fail(sub, messages.INTERNAL_ERROR)
            return "error"
        for query in queries:
            query.join(host, sub.id)
        sub.queries = queries
        sub.run = run
        host.send_texts(texts)
        run.started = True
        if plan.auto_ready or run.ready_requested:
            self.mark_ready(sub)
        return "ready"

    def _run(self, sub: Subscription) -> tuple[PublicationRun, SubscriptionPlan, list[LiveQuery]]:
        """Run the publication function and acquire its queries (both may block)."""
        host = self.host
        ctx = host.ctx
        run = PublicationRun(self, sub)
        try:
            plan = ctx.run(
                ctx.backend.subscribe,
                host.call_context(),
                sub.name,
                sub.params,
                run,
                owner=host.owner,
            )
            queries = ctx.queries.acquire(plan.queries, fetch=self._fetch)
        except BaseException:
            run.finish()
            raise
        run.auto_ready = plan.auto_ready
        return run, plan, queries

    def _fetch(self, specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        ctx = self.host.ctx
        return ctx.run(ctx.backend.fetch, specs, owner=self.host.owner)

    def mark_ready(self, sub: Subscription) -> None:
        if not sub.ready and self.by_id.get(sub.id) is sub:
            sub.ready = True
            if not sub.universal:
                self.host.send([messages.ready([sub.id])])

    # -- re-running ------------------------------------------------------------------------

    def rerun(self, subs: list[Subscription]) -> bool:
        """Run the publications of ``subs`` again (as the session's current user) and send
        only what differs from what the client holds (the mergebox). Every publication
        runs first; then every document any of them still publishes is added or changed,
        and only then are the others removed: a document that moves from one subscription
        to another (a login) is never removed and added again. False when the session's
        view can no longer be kept exact (it must start afresh)."""
        host = self.host
        ran: list[tuple[Subscription, PublicationRun, list[LiveQuery]]] = []
        for sub in subs:
            try:
                run, _, queries = self._run(sub)
            except Exception as exc:
                if not isinstance(exc, ClientError):
                    log.exception("re-running publication %r failed", sub.name)
                err = client_error(exc) if isinstance(exc, ClientError) else None
                self.fail(sub, err or messages.INTERNAL_ERROR)
                continue
            if self.by_id.get(sub.id) is not sub or run.stopped:
                self._abandon(sub, queries, run)
                continue
            ran.append((sub, run, queries))
        # From here to the end nothing yields.
        if self.closed:
            for sub, run, queries in ran:
                self._let_go(sub.id, queries, run)
            return True
        stopped = [(sub, run, queries) for sub, run, queries in ran if run.stopped]
        for sub, run, queries in stopped:
            # Stopped itself (an error, a failed observer) while a later one was running.
            self._abandon(sub, queries, run)
        ran = [entry for entry in ran if not entry[1].stopped]
        box = host.mergebox
        fresh: dict[str, dict[tuple[str, str], Any]] = {}
        for sub, _, queries in ran:
            docs = fresh[sub.id] = {}
            for query in queries:
                for doc_id, fields in query.view():
                    docs[query.collection, doc_id] = fields
        stale = [
            (sub.id, collection, doc_id)
            for sub, _, _ in ran
            for collection, ids in box.documents_of(sub.id).items()
            for doc_id in ids
            if (collection, doc_id) not in fresh[sub.id]
        ]
        out: list[dict[str, Any]] = []
        for sub, _, _ in ran:
            for (collection, doc_id), fields in fresh[sub.id].items():
                if box.publishes(sub.id, collection, doc_id):
                    current = box.get(collection, doc_id) or {}
                    cleared = [k for k in current if k not in fields]
                    out += box.change(sub.id, collection, doc_id, fields, cleared)
                else:
                    out += box.add(sub.id, collection, doc_id, fields)
        for sub_id, collection, doc_id in stale:
            out += box.remove(sub_id, collection, doc_id)
        for sub, run, queries in ran:
            # The previous run's own documents go last, and only those the new run did not
            # publish again (the mergebox keeps what another handle still provides).
            for handle in _run_handles(box, sub.id):
                if handle != run.handle:
                    out += box.remove_subscription(handle)
            self._let_go(sub.id, sub.queries, sub.run)
            for query in queries:
                query.join(host, sub.id)
            sub.queries = queries
            sub.run = run
            run.started = True
            if run.auto_ready or run.ready_requested:
                # A subscription still loading when a parked session's socket died is
                # ready now, unless its publication marks itself ready and has not.
                self.mark_ready(sub)
        try:
            texts = [host.ctx.streams.interner.encode(m) for m in out]
        except (TypeError, ValueError):
            log.exception("a re-run publication produced a document that cannot be sent")
            return False
        host.send_texts(texts)
        return True

    # -- stopping --------------------------------------------------------------------------

    def pause(self, sub: Subscription) -> None:
        """No more live data for ``sub`` until it is re-run (its documents stay)."""
        self._let_go(sub.id, sub.queries, sub.run)
        sub.queries = []
        sub.run = None

    def fail(self, sub: Subscription, err: dict[str, Any] | None) -> None:
        """Stop ``sub``: its documents go, and the client gets ``nosub`` (with ``err``)."""
        self.pause(sub)
        if self.by_id.get(sub.id) is sub:
            del self.by_id[sub.id]
        self.host.send(self._drop_documents(sub.id))
        if not sub.universal:
            self.host.send([messages.nosub(sub.id, err)])

    def unsub(self, sub_id: str) -> None:
        sub = self.by_id.get(sub_id)
        if sub is None or sub.universal:
            return
        del self.by_id[sub_id]
        self.pause(sub)
        self.host.send(self._drop_documents(sub_id))

    def stopped_by_run(self, msg: StopSub) -> None:
        """A publication called ``error`` or ``stop`` (in its session's message order)."""
        sub = self.by_id.get(msg.sub_id)
        if sub is not None and sub.run is msg.run:
            self.fail(sub, msg.error)

    def detach_all(self) -> None:
        """The session is over: every subscription lets go of its queries and callbacks
        (they stay in ``by_id`` for parking)."""
        self.closed = True
        for sub in self.by_id.values():
            self.pause(sub)

    def _abandon(
        self, sub: Subscription, queries: Sequence[LiveQuery], run: PublicationRun
    ) -> None:
        """A run that ended before its subscription started on it (unsubscribed meanwhile,
        or the publication stopped itself): what it published goes, and the subscription
        fails with the run's error if it is still there."""
        self._let_go(sub.id, queries, run)
        self.host.send(self.host.mergebox.remove_subscription(run.handle))
        if self.by_id.get(sub.id) is sub:
            self.fail(sub, run.error_msg)

    def _drop_documents(self, sub_id: str) -> list[dict[str, Any]]:
        box = self.host.mergebox
        out = box.remove_subscription(sub_id)
        for handle in _run_handles(box, sub_id):
            out += box.remove_subscription(handle)
        return out

    def _let_go(
        self, sub_id: str, queries: Sequence[LiveQuery], run: PublicationRun | None
    ) -> None:
        host = self.host
        registry = host.ctx.queries
        for query in queries:
            query.leave(host, sub_id)
            registry.release(query)
        if run is not None:
            run.finish()

    # -- the write fence -------------------------------------------------------------------

    def queries_on(self, channel: str) -> list[LiveQuery]:
        """The live queries of this session on ``channel`` (each at most once)."""
        seen: dict[int, LiveQuery] = {}
        for sub in self.by_id.values():
            for query in sub.queries:
                if query.spec.route.channel == channel:
                    seen[id(query)] = query
        return list(seen.values())

    def channels(self) -> set[str]:
        """The channels a write may owe this session data on: its live queries' and its
        publications' observers'."""
        channels = {q.spec.route.channel for sub in self.by_id.values() for q in sub.queries}
        for observer in self._observers():
            channels.add(observer.channel)
        return channels

    def observers_on(self, channel: str) -> list[Observer]:
        return [o for o in self._observers() if o.channel == channel]

    def _observers(self) -> list[Observer]:
        return [o for sub in self.by_id.values() if sub.run is not None for o in sub.run.observers]


def _run_handles(box: MergeBox, sub_id: str) -> list[Hashable]:
    """The mergebox handles of ``sub_id``'s publication runs (``(sub id, run id)``)."""
    return [
        h for h in box.subscriptions() if isinstance(h, tuple) and len(h) == 2 and h[0] == sub_id
    ]


def client_error(exc: ClientError) -> dict[str, Any]:
    """The Meteor error object for a ClientError; 500 if its details cannot be sent."""
    err = messages.meteor_error(exc.error, exc.reason, exc.details)
    try:
        messages.encode({"msg": "result", "id": "", "error": err})
    except (TypeError, ValueError):
        log.error("error details of %r are not JSON; sending a 500 instead", exc)
        return messages.INTERNAL_ERROR
    return err


class PublicationRun:
    """One run of a publication function for one subscription: the relay's
    ``relay.backend.PublicationSink``. Calls after the run stopped are ignored."""

    __slots__ = (
        "_callbacks",
        "_host",
        "_subs",
        "auto_ready",
        "error_msg",
        "handle",
        "observers",
        "ready_requested",
        "started",
        "stopped",
        "sub",
    )

    def __init__(self, subs: Subscriptions, sub: Subscription) -> None:
        self._subs = subs
        self._host = subs.host
        self.sub = sub
        #: Its documents' mergebox handle: apart from the queries' (``sub.id``) and from
        #: the previous run's, so a re-run replaces them without a flicker.
        self.handle: tuple[str, str] = (sub.id, random_id(8))
        self.started = False
        self.stopped = False
        self.ready_requested = False
        self.error_msg: dict[str, Any] | None = None
        #: The publication returned cursors (or nothing, without the low-level API).
        self.auto_ready = True
        #: Empty tuples until used (most publications never use them): a list per run
        #: per session is memory every idle session pays.
        self._callbacks: list[Callable[[], None]] | tuple[()] = ()
        self.observers: list[Observer] | tuple[()] = ()

    # -- documents ---------------------------------------------------------------------

    def added(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None:
        if self.stopped:
            return
        _check_doc(collection, doc_id)
        host = self._host
        host.send(host.mergebox.update(self.handle, collection, doc_id, dict(fields)))

    def changed(
        self,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any],
        cleared: Sequence[str] = (),
    ) -> None:
        if self.stopped:
            return
        _check_doc(collection, doc_id)
        box = self._host.mergebox
        if not box.publishes(self.handle, collection, doc_id):
            raise ValueError(f"changed() of a document this publication did not add: {doc_id!r}")
        self._host.send(box.change(self.handle, collection, doc_id, dict(fields), list(cleared)))

    def removed(self, collection: str, doc_id: str) -> None:
        if self.stopped:
            return
        _check_doc(collection, doc_id)
        box = self._host.mergebox
        if box.publishes(self.handle, collection, doc_id):
            self._host.send(box.remove(self.handle, collection, doc_id))

    # -- life --------------------------------------------------------------------------

    def ready(self) -> None:
        if self.stopped:
            return
        self.ready_requested = True
        if self.started:
            self._subs.mark_ready(self.sub)

    def error(self, error: ClientError) -> None:
        self._stop(client_error(error))

    def stop(self) -> None:
        self._stop(None)

    def _stop(self, err: dict[str, Any] | None) -> None:
        if self.stopped:
            return
        self.error_msg = err
        if self.started:
            self._host.queue_internal(StopSub(self.sub.id, self, err))
        self.finish()

    def on_stop(self, callback: Callable[[], None]) -> None:
        if self.stopped:
            self._spawn(callback)
        elif isinstance(self._callbacks, list):
            self._callbacks.append(callback)
        else:
            self._callbacks = [callback]

    def observe(
        self,
        channel: str,
        collection: str,
        callback: Callable[[Sequence[DecodedChange]], None],
        position: tuple[int, str] = (0, ""),
    ) -> None:
        if self.stopped:
            return
        observer = Observer(self, channel, collection, callback, position[0])
        self.observers = [*self.observers, observer]
        observer.attachment = self._host.ctx.streams.attach(
            observer, Route(channel, collection, None), position
        )

    def finish(self) -> None:
        """The run is over (stopped, re-run, unsubscribed, the session ended): its
        observers let go and its ``on_stop`` callbacks run."""
        if self.stopped and not self._callbacks and not self.observers:
            return
        self.stopped = True
        streams = self._host.ctx.streams
        for observer in self.observers:
            observer.close()
            if observer.attachment is not None:
                streams.detach(observer.attachment)
        self.observers = ()
        callbacks, self._callbacks = self._callbacks, ()
        for callback in callbacks:
            self._spawn(callback)

    def _spawn(self, callback: Callable[..., None], *args: Any) -> gevent.Greenlet:
        return gevent.spawn(self._call, callback, *args)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._host.ctx.run(callback, *args, owner=self._host.owner)
        except Exception:
            log.exception("a callback of publication %r failed", self.sub.name)

    def _observer_failed(self) -> None:
        if not self.stopped:
            self._stop(messages.INTERNAL_ERROR)

    def _observer_lost(self) -> None:
        if not self.stopped:
            self._host.request_resync(self.sub.id)


def _check_doc(collection: str, doc_id: str) -> None:
    if not isinstance(collection, str) or not collection:
        raise TypeError("a collection name must be a non-empty string")
    if not isinstance(doc_id, str) or not doc_id:
        raise TypeError("a document id must be a non-empty string")


class Observer:
    """A stream target that hands a custom publication's callback the changes of one
    collection on one channel, in commit order, one call at a time, in the work pool."""

    __slots__ = (
        "_advanced",
        "_backlog",
        "_collection",
        "_run",
        "_runner",
        "attachment",
        "callback",
        "channel",
        "closed",
        "done",
        "superseded",
    )

    def __init__(
        self,
        run: PublicationRun,
        channel: str,
        collection: str,
        callback: Callable[[Sequence[DecodedChange]], None],
        position: int,
    ) -> None:
        self._run = run
        self.channel = channel
        self._collection = collection
        self.callback = callback
        self.closed = False
        self.attachment: Attachment | None = None
        #: (seq, that commit's changes of the collection), waiting for the callback.
        self._backlog: deque[tuple[int, tuple[DecodedChange, ...]]] = deque()
        self._runner: gevent.Greenlet | None = None
        #: The last seq whose callback (if any) has returned: the write fence waits on it.
        self.done = position
        self._advanced = gevent.event.Event()
        #: Its channel lost history: the publication is re-run, which replaces what the
        #: callback would have published; fences stop waiting for it.
        self.superseded = False

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        collection = self._collection
        for batch in batches:
            if batch.seq <= att.cursor:
                continue
            att.cursor = batch.seq
            mine = tuple(c for c in batch.changes if c.collection == collection)
            if mine or self._backlog or self._runner is not None:
                self._backlog.append((batch.seq, mine))
            else:
                self._advance(batch.seq)
        if len(self._backlog) > MAX_OBSERVER_BACKLOG:
            log.error(
                "publication %r: its observe callback fell %d commits behind; stopping it",
                self._run.sub.name,
                len(self._backlog),
            )
            self.close()
            self._run._observer_failed()
            return 0
        if self._backlog and self._runner is None:
            self._runner = gevent.spawn(self._drain)
        return 0

    def _advance(self, seq: int) -> None:
        self.done = max(self.done, seq)
        advanced, self._advanced = self._advanced, gevent.event.Event()
        advanced.set()

    def wait_done(self, seq: int, timeout: float) -> bool:
        """Block until the callback has seen every commit up to ``seq`` (True), the
        observer stopped (True: nothing more will come of it), or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            # Taken before the test: an event is replaced before it is set, so a set
            # one means progress since, never a stale wake (no busy loop).
            advanced = self._advanced
            if self.done >= seq or self.closed or self.superseded:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not advanced.wait(remaining):
                return False

    def close(self) -> None:
        """No more callbacks: fence waiters are released."""
        self.closed = True
        self._backlog.clear()
        self._advance(self.done)

    def lost(self, att: Attachment) -> None:
        self.superseded = True
        self._advance(self.done)
        self._run._observer_lost()

    def _drain(self) -> None:
        try:
            while self._backlog and not self.closed:
                seq, changes = self._backlog.popleft()
                if not changes:
                    self._advance(seq)
                    continue
                host = self._run._host
                try:
                    host.ctx.run(self.callback, changes, owner=host.owner)
                except Exception:
                    log.exception(
                        "the observe callback of publication %r failed", self._run.sub.name
                    )
                    self.close()
                    self._run._observer_failed()
                    return
                self._advance(seq)
        finally:
            self._runner = None
