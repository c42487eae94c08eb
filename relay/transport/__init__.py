"""Transports: how DDP message texts travel between a client and a session.

The WebSocket opening handshake (``handshake``), the RFC 6455 connection on gunicorn's
socket (``websocket``), server frames built once for many sockets (``frames``), the plain
HTTP SockJS endpoints (``endpoints``), and the ``Transport`` seam a session sees
(``base``) with its implementations: raw WebSocket (``raw``), SockJS on a WebSocket
(``sockjs``) and SockJS over a succession of HTTP requests (``http``).

Must not: parse DDP or know about sessions, subscriptions or the change stream.
"""

from relay.transport.base import Inbound, MemoryTransport, SharedFrames, Transport
from relay.transport.http import HttpTransport
from relay.transport.raw import RawTransport
from relay.transport.sockjs import HeartbeatRegistry, SockJSTransport
from relay.transport.websocket import Oversized

__all__ = [
    "HeartbeatRegistry",
    "HttpTransport",
    "Inbound",
    "MemoryTransport",
    "Oversized",
    "RawTransport",
    "SharedFrames",
    "SockJSTransport",
    "Transport",
]
