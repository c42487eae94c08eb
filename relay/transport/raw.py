"""DDP straight on a WebSocket (``/websocket``): one text message is one DDP message.

Layer: runtime. Must not: parse DDP, or block a sender.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.transport.base import Inbound, OnInbound, SharedFrames
from relay.transport.websocket import WebSocket

__all__ = ["RawTransport"]


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
