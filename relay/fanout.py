"""Channel streams of one worker: who listens to what, in order, and applying changes.

Layer: L3. For every change-stream channel that at least one local subscription needs,
a ``ChannelStream`` keeps the position (seq, epoch) up to which changes were applied, a
short ring of recent changes (so a subscription that starts a little behind catches up
without a query), and the attached subscriptions with their own cursors. The listener
feeds it committed changes strictly in sequence order; each change is decoded ONCE by the
backend and then routed in memory to every attached subscription (``relay.routing``):
membership now versus membership before (the session's mergebox) gives ``added``,
``changed`` or ``removed``. Nothing here queries the database or blocks: a slow session is
cut off by its transport's send buffer, never by the stream.

The write fence (invariant I5): ``wait_for(channel, seq)`` returns once every change up to
``seq`` was routed to the sessions, which is when a method's ``updated`` may go out.

Must not: read the database (the listener does), or write to sockets directly.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event

from relay.backend import Backend, DecodedChange, Route
from relay.protocol import ejson, messages
from relay.protocol.changestream import Change
from relay.protocol.sockjs import encode_messages
from relay.routing import matches
from relay.websocket import encode_text_frame

if TYPE_CHECKING:
    from relay.session import Session

log = logging.getLogger(__name__)

#: Recent changes kept per channel for late attachers (count of transactions).
RING_SIZE = 256


@dataclass(eq=False, slots=True)
class Attachment:
    """One subscription's route on one channel."""

    session: Session
    sub_id: str
    route: Route
    #: The last seq applied to this subscription (its snapshot position at first).
    cursor: int


@dataclass(slots=True)
class Batch:
    """The decoded changes of one transaction on one channel."""

    seq: int
    epoch: str
    txid: int
    changes: tuple[DecodedChange, ...]


class BatchCache:
    """Work shared by every session a batch reaches: each comparison and each encoding is
    done once per distinct input, not once per session.

    Sessions' mergeboxes hold the very value objects the stream delivered, so identical
    inputs are recognised by object identity (cheap, and identity implies equality). The
    cache lives for one batch, so the objects it keys on stay alive while it is used.
    """

    __slots__ = ("_equal", "_frames", "_sockjs", "_texts")

    def __init__(self) -> None:
        self._equal: dict[tuple[int, int], bool] = {}
        self._texts: dict[tuple[Any, ...], str] = {}
        self._frames: dict[str, bytes] = {}
        self._sockjs: dict[tuple[str, ...], str] = {}

    def frame(self, text: str) -> bytes:
        frame = self._frames.get(text)
        if frame is None:
            frame = self._frames[text] = encode_text_frame(text)
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

    def encode(self, msg: dict[str, Any]) -> str:
        fields = msg.get("fields")
        key = (
            msg["msg"],
            msg["collection"],
            msg["id"],
            tuple((k, id(v)) for k, v in fields.items()) if fields else (),
            tuple(msg.get("cleared", ())),
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
        #: Called with (channel) when a stream lost history and its subscriptions must be
        #: re-run (epoch changed, or the changelog was pruned past our position).
        self.on_resync: Callable[[str, list[Attachment]], None] | None = None

    # -- attaching ----------------------------------------------------------------------------

    def attach(
        self, session: Session, sub_id: str, route: Route, position: tuple[int, str]
    ) -> Attachment:
        """Start routing ``route``'s channel to a subscription whose data is at ``position``."""
        seq, epoch = position
        stream = self.streams.get(route.channel)
        att = Attachment(session, sub_id, route, seq)
        if stream is None:
            stream = ChannelStream(route.channel, seq, epoch)
            self.streams[route.channel] = stream
            stream.attachments.add(att)
            # LISTEN first, then the listener backfills everything after ``seq`` from the
            # changelog: a change committed between the snapshot and the LISTEN is not lost.
            self._listen(route.channel)
            return att
        stream.attachments.add(att)
        if epoch and stream.epoch and epoch != stream.epoch:
            self._resync(stream, [att])
        elif seq < stream.seq:
            self._catch_up(stream, att)
        return att

    def _catch_up(self, stream: ChannelStream, att: Attachment) -> None:
        """Apply to a late attacher the batches it missed, from the ring."""
        missed = [b for b in stream.ring if b.seq > att.cursor]
        if not missed or missed[0].seq != att.cursor + 1:
            self._resync(stream, [att])
            return
        for batch in missed:
            self._apply(att, batch, BatchCache())

    def detach(self, att: Attachment) -> None:
        stream = self.streams.get(att.route.channel)
        if stream is None:
            return
        stream.attachments.discard(att)
        if not stream.attachments:
            del self.streams[att.route.channel]
            self._release(stream)
            self._unlisten(att.route.channel)

    def detach_session(self, session: Session) -> None:
        for stream in list(self.streams.values()):
            for att in [a for a in stream.attachments if a.session is session]:
                self.detach(att)

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

    def deliver(
        self, channel: str, seq: int, epoch: str, txid: int, changes: Iterable[Change]
    ) -> None:
        """Route one transaction's changes; the listener guarantees ``seq`` is the next one."""
        stream = self.streams.get(channel)
        if stream is None:
            return
        decoded = []
        for change in changes:
            try:
                d = self.backend.decode_change(channel, change)
            except Exception:
                log.exception("cannot decode a change on %s (seq %d)", channel, seq)
                continue
            if d is not None:
                decoded.append(d)
        batch = Batch(seq, epoch, txid, tuple(decoded))
        stream.seq, stream.epoch = seq, epoch
        stream.ring.append(batch)
        if self.metrics is not None:
            self.metrics.changes_delivered.inc()
        cache = BatchCache()
        for att in list(stream.attachments):
            if att.cursor < seq:
                self._apply(att, batch, cache)
        self._wake(stream)

    def lost_history(self, channel: str, seq: int, epoch: str) -> None:
        """The listener cannot fill a gap: re-run every subscription of the channel."""
        stream = self.streams.get(channel)
        if stream is None:
            return
        stream.seq, stream.epoch = seq, epoch
        stream.ring.clear()
        self._resync(stream, list(stream.attachments))
        self._wake(stream)

    def _resync(self, stream: ChannelStream, atts: list[Attachment]) -> None:
        if self.on_resync is not None and atts:
            self.on_resync(stream.channel, atts)

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

    def _apply(self, att: Attachment, batch: Batch, cache: BatchCache) -> None:
        att.cursor = batch.seq
        session = att.session
        if session.closed:
            return
        route = att.route
        box = session.mergebox
        out: list[dict[str, Any]] = []
        for change in batch.changes:
            if change.collection != route.collection:
                continue
            if route.conditions is None:
                # Not decidable from the payload: the publication must be re-run.
                self._resync_later(att)
                return
            member = change.op != "d" and matches(route.conditions, change.routing)
            held = box.publishes(att.sub_id, change.collection, change.id)
            fields = change.fields
            if route.fields is not None:
                fields = {k: v for k, v in fields.items() if k in route.fields}
            if member and held:
                out.extend(
                    box.change(att.sub_id, change.collection, change.id, fields, (), cache.equals)
                )
            elif member:
                out.extend(box.add(att.sub_id, change.collection, change.id, fields))
            elif held:
                out.extend(box.remove(att.sub_id, change.collection, change.id))
        if out:
            try:
                texts = [cache.encode(m) for m in out]
            except (TypeError, ValueError):
                log.exception("a change on %s cannot be encoded", att.route.channel)
                return
            session.send_texts(texts, cache)

    def _resync_later(self, att: Attachment) -> None:
        stream = self.streams.get(att.route.channel)
        if stream is not None:
            self._resync(stream, [att])

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
