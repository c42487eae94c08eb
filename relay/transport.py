"""The transport seam: how a DDP session reads and writes message texts (centrifuge style).

Layer: L3. A session sees only ``Transport``: batches of DDP message texts in, batches
out, close with a code and reason. ``RawTransport`` speaks one DDP message per WebSocket
text message (``/websocket``); ``SockJSTransport`` adds SockJS framing (``o``, ``a[...]``,
``h``, ``c[...]``) on ``/sockjs/<server>/<session>/websocket``; ``MemoryTransport`` is
the in-memory twin for session unit tests. Nothing here parses DDP, keeps a greenlet per
idle connection (``start`` reads from watcher callbacks) or blocks a sender.

SockJS heartbeats: no greenlet or timer per socket. Each ``SockJSTransport`` registers
with the worker's ``HeartbeatRegistry``, whose single ticker greenlet (``run``) calls
``heartbeat(now)`` on every transport; a transport sends ``h`` when nothing went out
since ``heartbeat_interval``. ``send`` only sets a flag, so the hot path never reads the
clock. A receive timeout in the reader loop was the alternative, but it would wake every
idle reader and tie heartbeats to whoever reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
import gevent.queue

from relay.frames import Compression
from relay.protocol.errors import FramingError
from relay.protocol.sockjs import (
    HEARTBEAT,
    OPEN,
    decode_client_frame,
    encode_close,
    encode_messages,
)
from relay.websocket import Oversized, WebSocket

__all__ = [
    "HeartbeatRegistry",
    "Inbound",
    "MemoryTransport",
    "Oversized",
    "RawTransport",
    "SharedFrames",
    "SockJSTransport",
    "Transport",
]

#: One inbound item: a DDP message text, or the report of one too large to keep.
Inbound = str | Oversized
#: Called with each inbound batch, in order (``Transport.start``).
OnInbound = Callable[[list[Inbound]], None]


class SharedFrames(Protocol):
    """Encodings shared by every socket one fan-out batch reaches (``relay.fanout``)."""

    def frame(self, text: str, compression: Compression | None) -> bytes:
        """The WebSocket TEXT frame for ``text`` on sockets with ``compression``, built
        once (``relay.frames.encode_text_frame``)."""
        ...

    def sockjs(self, texts: Sequence[str]) -> str:
        """The SockJS ``a[...]`` frame text for these messages, built once."""
        ...


class Transport(Protocol):
    """What a session needs from its connection. No method blocks except ``receive``."""

    #: "websocket" (raw) or "sockjs".
    kind: str

    def receive(self) -> list[Inbound] | None:
        """Block until the next batch of inbound DDP message texts; None once closed."""
        ...

    def start(self, on_inbound: OnInbound, on_end: Callable[[], None]) -> None:
        """Read in the background instead of ``receive``: ``on_inbound`` gets each batch,
        ``on_end`` is called once when reading is over. An idle socket holds no greenlet."""
        ...

    def send(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        """Queue DDP message texts to go out together, in order; never blocks. With
        ``shared``, frames other sockets of the same batch got are reused as bytes."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close with ``code``/``reason``; idempotent, never blocks."""
        ...

    @property
    def closed(self) -> bool:
        """True once closing started on either side (sends are then dropped)."""
        ...


class RawTransport:
    """DDP straight on a WebSocket: one text message is one DDP message."""

    __slots__ = ("ws",)
    kind: str = "websocket"

    def __init__(self, ws: WebSocket) -> None:
        #: The socket, for fan-out that writes pre-encoded frames (``ws.send_frame``).
        self.ws = ws

    def receive(self) -> list[Inbound] | None:
        text = self.ws.receive()
        return None if text is None else [text]

    def start(self, on_inbound: OnInbound, on_end: Callable[[], None]) -> None:
        self.ws.start(lambda item: on_inbound([item]), on_end)

    def send(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        ws = self.ws
        if shared is None:
            ws.send_many(texts)
        else:
            compression = ws.compression
            ws.send_frames([shared.frame(t, compression) for t in texts])

    def close(self, code: int, reason: str) -> None:
        self.ws.close(code, reason)

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def overflowed(self) -> bool:
        """Closed because the client read slower than we wrote (send buffer full)."""
        return self.ws.overflowed


class SockJSTransport:
    """SockJS framing on a WebSocket. Sends ``o`` as soon as it is built.

    Outbound batches become one ``a[...]`` frame; a client frame that does not parse
    closes with ``c[3000,"Broken framing."]``; ``close`` sends ``c[code,"reason"]`` and
    then closes the WebSocket with 1000, as sockjs-node does.
    """

    __slots__ = ("_closed", "_heartbeats", "_interval", "_last_beat", "_sent", "ws")
    kind: str = "sockjs"

    def __init__(
        self,
        ws: WebSocket,
        heartbeat_interval: float,
        heartbeats: HeartbeatRegistry | None = None,
    ) -> None:
        self.ws = ws
        self._interval = heartbeat_interval
        self._heartbeats = heartbeats
        self._closed = False
        self._sent = True
        self._last_beat: float | None = None
        ws.send(OPEN)
        if heartbeats is not None:
            heartbeats.add(self)

    def receive(self) -> list[Inbound] | None:
        while True:
            text = self.ws.receive()
            if text is None:
                self._forget()
                return None
            if isinstance(text, Oversized):
                return [text]
            try:
                texts = decode_client_frame(text)
            except FramingError as exc:
                self.close(3000, exc.reason)
                return None
            if texts:  # an empty payload or "[]" carries nothing: keep reading
                return list[Inbound](texts)

    def start(self, on_inbound: OnInbound, on_end: Callable[[], None]) -> None:
        def on_message(item: Inbound) -> None:
            if isinstance(item, Oversized):
                on_inbound([item])
                return
            if self._closed:
                return  # after our close frame, the rest is drained unread
            try:
                texts = decode_client_frame(item)
            except FramingError as exc:
                self.close(3000, exc.reason)
                return
            if texts:  # an empty payload or "[]" carries nothing
                on_inbound(list[Inbound](texts))

        def ended() -> None:
            self._forget()
            on_end()

        self.ws.start(on_message, ended)

    def send(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        if texts and not self._closed:
            if shared is None:
                self.ws.send(encode_messages(texts))
            else:
                payload = shared.sockjs(texts)
                self.ws.send_frames([shared.frame(payload, self.ws.compression)])
            self._sent = True

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.ws.send(encode_close(code, reason))
        self.ws.close(1000, "")
        self._forget()

    @property
    def closed(self) -> bool:
        return self._closed or self.ws.closed

    @property
    def overflowed(self) -> bool:
        return self.ws.overflowed

    def heartbeat(self, now: float) -> None:
        """Send ``h`` if nothing went out for ``heartbeat_interval``; ``now`` is monotonic.

        Called by the worker's single ticker. Silence is measured from the first tick
        after the last send, so a beat comes at most one tick period late.
        """
        if self.closed:
            return
        if self._sent or self._last_beat is None:
            self._sent = False
            self._last_beat = now
        elif now - self._last_beat >= self._interval:
            self.ws.send(HEARTBEAT)
            self._last_beat = now

    def _forget(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.discard(self)


class HeartbeatRegistry:
    """The SockJS transports of one worker process, beaten by one ticker greenlet."""

    __slots__ = ("_transports",)

    def __init__(self) -> None:
        self._transports: set[SockJSTransport] = set()

    def __len__(self) -> int:
        return len(self._transports)

    def add(self, transport: SockJSTransport) -> None:
        self._transports.add(transport)

    def discard(self, transport: SockJSTransport) -> None:
        self._transports.discard(transport)

    def tick(self, now: float) -> None:
        """Beat every live transport; forget closed ones (some close without telling us)."""
        for transport in list(self._transports):
            if transport.closed:
                self._transports.discard(transport)
            else:
                transport.heartbeat(now)

    def run(self, period: float) -> None:
        """Tick every ``period`` seconds, forever. Spawn it once per worker process."""
        while True:
            gevent.sleep(period)
            self.tick(time.monotonic())


class MemoryTransport:
    """In-memory twin for session tests: feed inbound batches, read ``sent``.

    ``receive`` blocks cooperatively on a gevent queue (no monkey-patching needed).
    ``disconnect`` simulates the peer going away; ``close`` records what the session
    asked for in ``close_code``/``close_reason``.
    """

    def __init__(self, kind: str = "websocket") -> None:
        self.kind = kind
        #: Every DDP text the session sent, in order.
        self.sent: list[str] = []
        #: The batches as they were passed to ``send``.
        self.batches: list[list[str]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.disconnected = False
        self._closed = False
        self._inbound: Any = gevent.queue.Queue()

    def feed(self, *texts: Inbound) -> None:
        """Queue one inbound batch (what one frame from the client would carry)."""
        self._inbound.put(list(texts))

    def disconnect(self) -> None:
        """The peer vanished: ``receive`` returns what was fed before, then None."""
        self._inbound.put(None)

    def start(self, on_inbound: OnInbound, on_end: Callable[[], None]) -> None:
        def read() -> None:
            try:
                while (batch := self.receive()) is not None:
                    on_inbound(batch)
            finally:
                on_end()

        gevent.spawn(read)

    def receive(self) -> list[Inbound] | None:
        if self._closed:
            return None
        batch: list[Inbound] | None = self._inbound.get()
        if batch is None:
            # close() sets _closed before waking us; otherwise the peer went away.
            self.disconnected = not self._closed
            self._closed = True
        return batch

    def send(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        if not self._closed and texts:
            self.sent.extend(texts)
            self.batches.append(list(texts))

    def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if not self._closed:
            self._closed = True
            self._inbound.put(None)  # wake a session blocked in receive()

    @property
    def closed(self) -> bool:
        return self._closed
