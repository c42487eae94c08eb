"""SockJS framing on a WebSocket (``/sockjs/<server>/<session>/websocket``).

Layer: runtime. ``SockJSTransport`` adds SockJS framing (``o``, ``a[...]``, ``h``,
``c[...]``, ``relay.protocol.sockjs``) around DDP message texts.

SockJS heartbeats: no greenlet or timer per socket. Each ``SockJSTransport`` registers
with the worker's ``HeartbeatRegistry``, whose single ticker greenlet (``run``) calls
``heartbeat(now)`` on every transport; a transport sends ``h`` when nothing went out
since ``heartbeat_interval``. ``send`` only sets a flag, so the hot path never reads the
clock. A receive timeout in the reader loop was the alternative, but it would wake every
idle reader and tie heartbeats to whoever reads.

Must not: parse DDP, or block a sender.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import gevent

from relay.protocol.errors import FramingError
from relay.protocol.sockjs import (
    HEARTBEAT,
    OPEN,
    decode_client_frame,
    encode_close,
    encode_messages,
)
from relay.transport.base import Inbound, OnInbound, SharedFrames
from relay.transport.websocket import Oversized, WebSocket

__all__ = ["Beating", "HeartbeatRegistry", "SockJSTransport"]


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


class Beating(Protocol):
    """Whatever the ticker beats: SockJS transports (WebSocket and HTTP), and the HTTP
    sessions' directory (its housekeeping)."""

    @property
    def closed(self) -> bool: ...

    def heartbeat(self, now: float) -> None: ...


class HeartbeatRegistry:
    """The SockJS transports of one worker process, beaten by one ticker greenlet."""

    __slots__ = ("_transports",)

    def __init__(self) -> None:
        self._transports: set[Beating] = set()

    def __len__(self) -> int:
        return len(self._transports)

    def add(self, transport: Beating) -> None:
        self._transports.add(transport)

    def discard(self, transport: Beating) -> None:
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
