"""The transport seam: how a DDP session reads and writes message texts (centrifuge style).

Layer: runtime. A session sees only ``Transport``: batches of DDP message texts in, batches
out, close with a code and reason. The implementations: ``relay.transport.raw`` (one DDP
message per WebSocket text message, ``/websocket``), ``relay.transport.sockjs`` (SockJS
framing on ``/sockjs/<server>/<session>/websocket``) and ``MemoryTransport`` here, the
in-memory twin for session unit tests. Nothing here parses DDP, keeps a greenlet per idle
connection (``start`` reads from watcher callbacks) or blocks a sender.

Must not: import the session or the change stream (they import this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent.queue

from relay.transport.frames import Compression
from relay.transport.websocket import Oversized

__all__ = ["Inbound", "MemoryTransport", "OnInbound", "Oversized", "SharedFrames", "Transport"]

#: One inbound item: a DDP message text, or the report of one too large to keep.
Inbound = str | Oversized
#: Called with each inbound batch, in order (``Transport.start``).
OnInbound = Callable[[list[Inbound]], None]


class SharedFrames(Protocol):
    """Encodings shared by every socket one fan-out batch reaches (``relay.stream.fanout``)."""

    def frame(self, text: str, compression: Compression | None) -> bytes:
        """The WebSocket TEXT frame for ``text`` on sockets with ``compression``, built
        once (``relay.transport.frames.encode_text_frame``)."""
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
