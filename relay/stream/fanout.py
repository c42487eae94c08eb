"""Channel streams of one worker: who listens to what, in order, and applying changes.

Layer: runtime. For every change-stream channel that at least one local target needs, a
``ChannelStream`` keeps the position (seq, epoch) up to which changes were applied, a
short ring of recent changes (so a target that starts a little behind catches up without
a query), and the attached targets with their own cursors. The listener feeds it
committed changes strictly in sequence order; each change is decoded ONCE by the backend
and then handed to every attached ``StreamTarget``: a live query shared by every
subscriber of one distinct query (``relay.live.query``), a credential watch
(``relay.server.revocation``), a custom publication's observer. The work per commit is
one call per target, so it grows with the number of distinct queries, not of
subscribers. Nothing here queries the database or blocks: a target that needs the
database schedules that work elsewhere, and a slow session is cut off by its
transport's send buffer, never by the stream.

The write fence (invariant I5): ``wait_for(channel, seq)`` returns once every change up to
``seq`` was routed to the sessions, which is when a method's ``updated`` may go out.

Must not: read the database (the listener does), know what a target does with a change,
or write to sockets directly.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import gevent
import gevent.event

from relay.backend import Backend, DecodedChange, Route
from relay.protocol import ejson, messages
from relay.protocol.changestream import Change
from relay.protocol.mergebox import UpdateMemo
from relay.protocol.sockjs import encode_messages
from relay.stream.interning import Interner
from relay.transport.frames import Compression, encode_text_frame

log = logging.getLogger(__name__)

#: Recent changes kept per channel for late attachers (count of transactions).
RING_SIZE = 256


class StreamTarget(Protocol):
    """What a channel stream hands committed changes to.

    - ``closed``: once True, the stream skips it (and only advances its cursor).
    - ``deliver(att, batches, cache)``: apply the batches past ``att.cursor`` (advancing
      it) and return the number of DDP messages that went out. Runs in the listener's
      greenlet for every commit: must not block or yield.
    - ``lost(att)``: the channel lost history (epoch change, pruned changelog): what the
      target holds may be stale and must be read again. Must not block.
    """

    @property
    def closed(self) -> bool: ...

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int: ...

    def lost(self, att: Attachment) -> None: ...


@dataclass(eq=False, slots=True)
class Attachment:
    """One target's route on one channel."""

    target: StreamTarget
    route: Route
    #: The last seq applied to the target (its snapshot position at first).
    cursor: int


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed transaction of a channel, as the listener read it."""

    seq: int
    epoch: str
    txid: int
    changes: Iterable[Change]
    #: Commit time, seconds since the epoch (database clock); None when the writer did
    #: not say (``relay.protocol.changestream``). Not part of the transaction's identity.
    committed: float | None = field(default=None, compare=False)


@dataclass(slots=True)
class Batch:
    """The decoded changes of one transaction on one channel."""

    seq: int
    epoch: str
    txid: int
    changes: tuple[DecodedChange, ...]
    #: The transaction's commit time (``Transaction.committed``).
    committed: float | None = None


class BatchCache:
    """Work shared by every session a batch reaches: each comparison and each encoding is
    done once per distinct input, not once per session.

    Sessions' mergeboxes hold the very value objects the stream delivered, so identical
    inputs are recognised by object identity (cheap, and identity implies equality). The
    cache lives for one batch, so the objects it keys on stay alive while it is used.
    """

    __slots__ = ("_by_msg", "_equal", "_frames", "_projections", "_sockjs", "_texts", "views")

    def __init__(self) -> None:
        #: ``MergeBox.update``'s memo: sessions holding the same view share its outcome.
        self.views: UpdateMemo = {}
        #: id(message) -> (message, text), for the message objects the memo shares.
        self._by_msg: dict[int, tuple[dict[str, Any], str]] = {}
        self._equal: dict[tuple[int, int], bool] = {}
        self._projections: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
        self._texts: dict[tuple[Any, ...], str] = {}
        #: compression (None: plain) -> text -> frame.
        self._frames: dict[Compression | None, dict[str, bytes]] = {}
        self._sockjs: dict[tuple[str, ...], str] = {}

    def frame(self, text: str, compression: Compression | None) -> bytes:
        frames = self._frames.get(compression)
        if frames is None:
            frames = self._frames[compression] = {}
        frame = frames.get(text)
        if frame is None:
            frame = frames[text] = encode_text_frame(text, compression)
        return frame

    def sockjs(self, texts: Sequence[str]) -> str:
        key = tuple(texts)
        text = self._sockjs.get(key)
        if text is None:
            text = self._sockjs[key] = encode_messages(texts)
        return text

    def equals(self, a: Any, b: Any) -> bool:
        if a is b:
            return True
        key = (id(a), id(b))
        hit = self._equal.get(key)
        if hit is None:
            hit = self._equal[key] = ejson.equals(a, b)
        return hit

    def project(self, change: DecodedChange, names: tuple[str, ...]) -> dict[str, Any]:
        """The change's fields limited to what a route publishes (read-only: shared)."""
        key = (id(change), names)
        fields = self._projections.get(key)
        if fields is None:
            fields = self._projections[key] = {k: v for k, v in change.fields.items() if k in names}
        return fields

    def encode(self, msg: dict[str, Any]) -> str:
        hit = self._by_msg.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        text = self._encode(msg)
        self._by_msg[id(msg)] = (msg, text)  # keeps msg alive: its id stays unique
        return text

    def _encode(self, msg: dict[str, Any]) -> str:
        fields = msg.get("fields")
        cleared = msg.get("cleared")
        key = (
            msg["msg"],
            msg["collection"],
            msg["id"],
            tuple(fields) if fields else (),
            tuple(map(id, fields.values())) if fields else (),
            tuple(cleared) if cleared else (),
        )
        text = self._texts.get(key)
        if text is None:
            text = self._texts[key] = messages.encode(msg)
        return text


@dataclass(eq=False)
class ChannelStream:
    channel: str
    seq: int
    epoch: str
    attachments: set[Attachment] = field(default_factory=set)
    #: Of those, the routes of one document (``Route.doc_id``), by (collection, wire id):
    #: a change reaches only its own document's, not all of them in turn.
    keyed: dict[tuple[str, str], set[Attachment]] = field(default_factory=dict)
    #: And the others, which every change is tested against.
    general: set[Attachment] = field(default_factory=set)
    ring: deque[Batch] = field(default_factory=lambda: deque(maxlen=RING_SIZE))
    waiters: list[tuple[int, gevent.event.Event]] = field(default_factory=list)


class Streams:
    """All channel streams of a worker. The listener calls ``deliver``; sessions attach."""

    def __init__(
        self,
        backend: Backend,
        listen: Callable[[str], None],
        unlisten: Callable[[str], None],
        metrics: Any = None,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self._listen = listen
        self._unlisten = unlisten
        self.streams: dict[str, ChannelStream] = {}
        #: Field values shared by every session of the worker (``relay.stream.interning``).
        self.interner = Interner()

    # -- attaching ----------------------------------------------------------------------------

    def attach(self, target: StreamTarget, route: Route, position: tuple[int, str]) -> Attachment:
        """Start handing ``route``'s channel to a target whose data is at ``position``.

        A target behind the stream is caught up from the ring at once, in this call (or
        told it ``lost`` history when the ring does not reach back that far)."""
        seq, epoch = position
        stream = self.streams.get(route.channel)
        att = Attachment(target, route, seq)
        if stream is None:
            stream = ChannelStream(route.channel, seq, epoch)
            self.streams[route.channel] = stream
            _add(stream, att)
            # LISTEN first, then the listener backfills everything after ``seq`` from the
            # changelog: a change committed between the snapshot and the LISTEN is not lost.
            self._listen(route.channel)
            return att
        _add(stream, att)
        if epoch and stream.epoch and epoch != stream.epoch:
            self._resync(stream, [att])
        elif seq < stream.seq:
            self._catch_up(stream, att)
        return att

    def _catch_up(self, stream: ChannelStream, att: Attachment) -> None:
        """Apply to a late attacher the batches it missed, from the ring."""
        # Called only for an attacher behind the stream: [] cannot come back here.
        missed = self.batches_after(stream.channel, att.cursor)
        if not missed:
            self._resync(stream, [att])
            return
        self._apply(att, missed, BatchCache())

    def detach(self, att: Attachment) -> None:
        stream = self.streams.get(att.route.channel)
        if stream is None:
            return
        _discard(stream, att)
        if not stream.attachments:
            del self.streams[att.route.channel]
            self._release(stream)
            self._unlisten(att.route.channel)

    def _release(self, stream: ChannelStream) -> None:
        for _, event in stream.waiters:
            event.set()
        stream.waiters.clear()

    # -- delivering ---------------------------------------------------------------------------

    def position(self, channel: str) -> tuple[int, str] | None:
        stream = self.streams.get(channel)
        return None if stream is None else (stream.seq, stream.epoch)

    def channels(self) -> list[str]:
        return list(self.streams)

    def has(self, channel: str) -> bool:
        """A local subscription needs ``channel`` (the listener LISTENs to it)."""
        return channel in self.streams

    def adopt_epoch(self, channel: str, epoch: str) -> None:
        """The listener learnt ``channel``'s epoch from its counter: a stream that started
        before anything was published (no epoch) takes it, so a later change of epoch is
        noticed. A stream that has an epoch keeps it."""
        stream = self.streams.get(channel)
        if stream is not None and not stream.epoch:
            stream.epoch = epoch

    def deliver(
        self, channel: str, seq: int, epoch: str, txid: int, changes: Iterable[Change]
    ) -> None:
        """Route one transaction's changes; the listener guarantees ``seq`` is the next one."""
        self.deliver_many(channel, [Transaction(seq, epoch, txid, changes)])

    def deliver_many(self, channel: str, transactions: Sequence[Transaction]) -> None:
        """Route consecutive transactions of one channel (``seq`` n, n+1, ...; the first is
        the stream's next one) as one delivery: a session gets all of its messages from
        them in one write, in order. The listener hands over what queued up while the
        worker was busy, so a burst of commits costs a write per session, not one each."""
        stream = self.streams.get(channel)
        if stream is None:
            return
        # The stream may have been re-created meanwhile (the listener read a spilled
        # payload and other greenlets ran): what it already has is not applied twice.
        transactions = [tx for tx in transactions if tx.seq > stream.seq]
        if not transactions:
            return
        if transactions[0].seq != stream.seq + 1:
            # Not the stream's next: it was created again, at an older snapshot's position,
            # while the listener held these. Applying them would skip what lies between:
            # the listener backfills it from the changelog instead (I1, I3).
            self._listen(channel)
            return
        batches = []
        for tx in transactions:
            batch = Batch(tx.seq, tx.epoch, tx.txid, self._decode(channel, tx), tx.committed)
            stream.seq, stream.epoch = tx.seq, tx.epoch
            stream.ring.append(batch)
            batches.append(batch)
        cache = BatchCache()
        last = batches[-1].seq
        sent = 0
        targets = [att for att in stream.general if att.cursor < last]
        if stream.keyed:
            touched: set[Attachment] = set()
            for batch in batches:
                for change in batch.changes:
                    touched.update(stream.keyed.get((change.collection, change.id), ()))
            targets.extend(att for att in touched if att.cursor < last)
        for att in targets:
            sent += self._apply(att, batches, cache)
        if self.metrics is not None:
            self.metrics.changes_delivered.inc(len(batches))
            if sent:
                self.metrics.messages_sent.inc(sent)
                # Once per transaction, after every session's write (the targets write
                # synchronously: a frame is on its socket, or queued behind a slow one):
                # the latency of the last session this worker served.
                now = time.time()
                observe = self.metrics.commit_to_client_seconds.observe
                for batch in batches:
                    if batch.committed is not None:
                        observe(max(0.0, now - batch.committed))
        self._wake(stream)

    def _decode(self, channel: str, tx: Transaction) -> tuple[DecodedChange, ...]:
        decoded = []
        interner = self.interner
        for change in tx.changes:
            try:
                d = self.backend.decode_change(channel, change)
            except Exception:
                log.exception("cannot decode a change on %s (seq %d)", channel, tx.seq)
                continue
            if d is None:
                continue
            if d.op == "d":
                interner.forget(d.collection, d.id)
            elif d.fields:
                # Unchanged fields become the objects the sessions already hold, so each
                # session's diff is an identity check for them (relay.stream.interning).
                d = replace(d, fields=interner.fields(d.collection, d.id, d.fields))
            decoded.append(d)
        return tuple(decoded)

    def lost_history(self, channel: str, seq: int, epoch: str, reason: str = "epoch") -> None:
        """The listener cannot fill a gap: every target of the channel is told (``lost``).
        ``reason`` (one of ``relay.metrics.RESYNC_REASONS``) labels the resyncs."""
        stream = self.streams.get(channel)
        if stream is None:
            return
        stream.seq, stream.epoch = seq, epoch
        stream.ring.clear()
        self._resync(stream, list(stream.attachments), reason)
        self._wake(stream)

    def _resync(
        self, stream: ChannelStream, atts: list[Attachment], reason: str = "attach"
    ) -> None:
        if atts and self.metrics is not None:
            self.metrics.resyncs.labels(reason=reason).inc(len(atts))
        for att in atts:
            att.target.lost(att)

    def _wake(self, stream: ChannelStream) -> None:
        if not stream.waiters:
            return
        keep = []
        for seq, event in stream.waiters:
            if stream.seq >= seq:
                event.set()
            else:
                keep.append((seq, event))
        stream.waiters = keep

    def _apply(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        """Hand ``batches`` (past the attachment's cursor) to its target; returns the
        number of messages sent."""
        target = att.target
        if target.closed:
            att.cursor = max(att.cursor, batches[-1].seq)
            return 0
        try:
            return target.deliver(att, batches, cache)
        except Exception:
            # One target's bug must not stop the others (nor the listener): it lost this
            # delivery, so it reads its data again.
            log.exception("a stream target failed on %s", att.route.channel)
            att.cursor = max(att.cursor, batches[-1].seq)
            if self.metrics is not None:
                self.metrics.resyncs.labels(reason="target_error").inc()
            target.lost(att)
            return 0

    def batches_after(self, channel: str, seq: int) -> list[Batch] | None:
        """The ring's batches after ``seq`` up to the stream's position, or None when the
        ring does not reach back to ``seq + 1``."""
        stream = self.streams.get(channel)
        if stream is None:
            return None
        if seq >= stream.seq:
            return []
        missed = [b for b in stream.ring if b.seq > seq]
        if not missed or missed[0].seq != seq + 1:
            return None
        return missed

    # -- the write fence ----------------------------------------------------------------------

    def wait_for(self, channel: str, seq: int, timeout: float) -> bool:
        """Block until ``channel`` was routed up to ``seq`` (True), or ``timeout`` (False).

        A channel this worker does not stream has no local subscription that could get a
        message from it: nothing to wait for.
        """
        stream = self.streams.get(channel)
        if stream is None or stream.seq >= seq:
            return True
        event = gevent.event.Event()
        stream.waiters.append((seq, event))
        return bool(event.wait(timeout))


def _add(stream: ChannelStream, att: Attachment) -> None:
    stream.attachments.add(att)
    doc_id = att.route.doc_id
    if doc_id is None:
        stream.general.add(att)
    else:
        stream.keyed.setdefault((att.route.collection, doc_id), set()).add(att)


def _discard(stream: ChannelStream, att: Attachment) -> None:
    stream.attachments.discard(att)
    doc_id = att.route.doc_id
    if doc_id is None:
        stream.general.discard(att)
        return
    key = (att.route.collection, doc_id)
    held = stream.keyed.get(key)
    if held is not None:
        held.discard(att)
        if not held:
            del stream.keyed[key]
