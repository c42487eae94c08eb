"""Which sessions of a worker are traced, learnt from the change stream; storing their frames.

Layer: runtime. One ``TraceBook`` per worker, made by its node (``make_book``) and
reached by sessions as ``SessionContext.traces`` (nothing is read while no session has
connected: the first ``follow`` loads the orders). It holds
the trace orders switched on now (``relay.backend.TraceBackend.trace_orders``, read
through the work pool), and watches the trace table's route on the change stream the way
``relay.server.revocation`` watches a credential: any change there (a trace started,
extended or stopped, in the admin or with ``ddp_trace``) makes it read the orders again,
and a lost history too, so no relay polls. Each connected session is matched when it
connects, when its user changes, and whenever the orders change: a match gives it a
``Tracer`` (``Session.trace``), which feeds a ``relay.server.trace.Recorder`` and stores
its frames in batches (``TraceBackend.save_trace``, one store in flight per session)
from a greenlet of its own, so a slow database never slows the session.

A backend without ``TraceBackend`` never traces: ``follow`` then does nothing.

Must not: touch the database but through the work pool, block the session or the
listener (fan-out calls the watch), or send DDP messages.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import gevent

from relay.backend import TraceBackend, TraceOrder, TraceOrders
from relay.resume.resumer import relay_id
from relay.server.trace import Recorder
from relay.transport import Inbound

if TYPE_CHECKING:
    from relay.server.context import SessionContext
    from relay.server.session import Session
    from relay.stream.fanout import Attachment, Batch, BatchCache

log = logging.getLogger(__name__)

__all__ = ["TraceBook", "Tracer", "follow", "make_book"]

#: Seconds between two attempts to read the orders after one failed.
RETRY_SECONDS = 10.0
#: The work pool's owner of trace stores: together they hold at most one owner's share
#: of the pool, so a traced user never slows the calls of the rest.
TRACE_OWNER = "relay.trace"


#: The worker's book, by the streams object of its context (one per worker).
class Tracer:
    """What a traced session holds: records its frames, stores them in batches."""

    __slots__ = ("_save", "_storing", "recorder")

    def __init__(
        self,
        recorder: Recorder,
        save: Callable[[str, str, str, int, Sequence[Any], Any], None],
    ) -> None:
        self.recorder = recorder
        self._save = save
        self._storing: gevent.Greenlet | None = None

    @property
    def order(self) -> TraceOrder:
        return self.recorder.order

    def received(self, text: Inbound) -> None:
        now = time.time()
        self.recorder.received(text, now)
        self._maybe_store(now)

    def sent(self, texts: Sequence[str]) -> None:
        now = time.time()
        self.recorder.sent(texts, now)
        self._maybe_store(now)

    def tick(self) -> None:
        """About once a second: store what waited long enough."""
        self._maybe_store(time.time())

    def finish(self, reason: str = "off") -> None:
        """Recording is over (the session ended, or the trace was stopped): store the rest."""
        self.recorder.stop(reason)
        self._maybe_store(time.time())

    def _maybe_store(self, now: float) -> None:
        if self._storing is None and self.recorder.due(now):
            self._storing = gevent.spawn(self._store)

    def _store(self) -> None:
        recorder = self.recorder
        try:
            while (chunk := recorder.take(time.time())) is not None:
                self._save(
                    recorder.order.id,
                    recorder.relay,
                    recorder.session_id,
                    chunk.first,
                    chunk.frames,
                    chunk.stats,
                )
        except Exception:
            # Lost frames of a support trace are not worth a session: say so, go on.
            log.exception("storing trace %s failed; frames dropped", recorder.order.id)
        finally:
            self._storing = None
        if recorder.due(time.time()):
            self._storing = gevent.spawn(self._store)

    def flushed(self, timeout: float) -> bool:
        """Wait (tests, shutdown) until nothing is being stored; True if so."""
        storing = self._storing
        if storing is not None:
            storing.join(timeout)
        return self._storing is None


class _Watch:
    """Fan-out's view of the trace table: any change means "read the orders again"."""

    __slots__ = ("_changed", "closed")

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self.closed = False

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        fresh = False
        for batch in batches:
            if batch.seq > att.cursor:
                att.cursor = batch.seq
                fresh = True
        if fresh:
            self._changed()
        return 0

    def lost(self, att: Attachment) -> None:
        self._changed()


class TraceBook:
    """The worker's trace orders and the connected sessions they are matched against."""

    def __init__(self, ctx: SessionContext, backend: TraceBackend, relay: str) -> None:
        self._ctx = ctx
        self._backend = backend
        self.relay = relay
        self.orders: tuple[TraceOrder, ...] = ()
        self.loaded = False
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._loading: gevent.Greenlet | None = None
        self._again = False
        self._failed_at: float | None = None
        self._attachment: Attachment | None = None

    def follow(self, session: Session) -> None:
        """Match ``session`` now and whenever the orders change (until it ends)."""
        self._sessions.add(session)
        if not self.loaded:
            failed = self._failed_at
            if failed is None or time.monotonic() - failed >= RETRY_SECONDS:
                self.reload()
        self.apply(session)

    def reload(self) -> None:
        """Read the orders again (single flight: a change meanwhile reads once more)."""
        if self._loading is not None:
            self._again = True
            return
        self._loading = gevent.spawn(self._load)

    def _load(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    orders: TraceOrders = self._ctx.run(self._backend.trace_orders, urgent=True)
                except Exception:
                    log.exception("reading the trace orders failed")
                    self._failed_at = time.monotonic()
                    return
                self._failed_at = None
                self.orders = orders.orders
                self.loaded = True
                if self._attachment is None and orders.route is not None:
                    watch = _Watch(self.reload)
                    self._attachment = self._ctx.streams.attach(
                        watch, orders.route, orders.position
                    )
                for session in list(self._sessions):
                    self.apply(session)
                if not self._again:
                    return
        finally:
            self._loading = None

    def order_for(self, session_id: str | None, user_id: str | None) -> TraceOrder | None:
        """The order that traces this session, if any (the one ending last)."""
        now = time.time()
        found: TraceOrder | None = None
        for order in self.orders:
            if order.until <= now:
                continue
            targets = (order.session_id is not None and order.session_id == session_id) or (
                order.user_id is not None and order.user_id == user_id
            )
            if targets and (found is None or order.until > found.until):
                found = order
        return found

    def apply(self, session: Session) -> None:
        """Start, change or stop ``session``'s trace to agree with the orders."""
        if session.closed or session.id is None:
            return
        order = self.order_for(session.id, session.identity.user_id)
        tracer = session.trace
        if tracer is not None:
            if order is not None and order.id == tracer.order.id:
                recorder = tracer.recorder
                if recorder.stopped != "until" or order.until <= recorder.order.until:
                    recorder.order = order  # extended, or its bounds changed
                    return
                # Extended after it ran out: a fresh recording (its frames restart at 0).
            session.trace = None
            tracer.finish("off")
        if order is not None:
            session.trace = self._tracer(order, session.id, session.conn.version or "1")
            session.tick_due = 0.0  # a traced session is ticked every round

    def _tracer(self, order: TraceOrder, session_id: str, version: str) -> Tracer:
        now = time.time()
        recorder = Recorder(order, self.relay, session_id, now)
        recorder.begin(version, now)

        def save(*args: Any) -> None:
            self._ctx.run(self._backend.save_trace, *args, owner=TRACE_OWNER)

        return Tracer(recorder, save)

    def stop(self) -> None:
        if self._attachment is not None:
            self._ctx.streams.detach(self._attachment)
            self._attachment = None


def make_book(ctx: SessionContext) -> TraceBook | None:
    """The worker's book (its node makes one and owns it), None when its backend cannot
    trace."""
    backend = ctx.backend
    return TraceBook(ctx, backend, relay_id()) if isinstance(backend, TraceBackend) else None


def follow(session: Session) -> None:
    """Let the worker's trace orders see ``session`` (connected, or its user changed)."""
    book = session.ctx.traces
    if book is not None:
        book.follow(session)
