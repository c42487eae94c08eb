"""Why a relay closes a socket: WebSocket close code, reason text, and whether to reconnect.

Layer: core. One table, as centrifuge's ``disconnect.go``: codes 4000-4499 ask the client to
reconnect (its session may resume), 4500-4999 are terminal. Standard WebSocket codes are
used where one fits (1000 normal, 1001 going away, 1008 policy, 1011 server error). Every
close the relay makes names one of these, so logs and the ``ddp_relay_disconnects_total``
metric speak the same words.

Must not: send anything (the session and transport do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Disconnect:
    #: Short, stable name used as the metric label.
    name: str
    #: WebSocket close code (SockJS carries it in its ``c[code,"reason"]`` frame).
    code: int
    #: Human-readable reason sent with the close.
    reason: str
    #: Whether a client should reconnect (and may resume).
    reconnect: bool


CLIENT_DISCONNECT = Disconnect("client_disconnect", 1000, "Normal closure", False)
TRANSPORT_CLOSED = Disconnect("transport_closed", 1000, "Connection closed", True)
SHUTDOWN = Disconnect("shutdown", 1001, "Relay shutting down", True)
PROTOCOL_ERROR = Disconnect("protocol_error", 1002, "Protocol error", True)
SERVER_ERROR = Disconnect("server_error", 1011, "Internal server error", True)
HANDSHAKE_TIMEOUT = Disconnect("handshake_timeout", 4001, "No connect message in time", True)
HEARTBEAT_TIMEOUT = Disconnect("heartbeat_timeout", 4002, "No response to ping", True)
SLOW = Disconnect("slow", 4003, "Client too slow to receive", True)
TOO_MANY_PENDING = Disconnect("too_many_pending", 4004, "Too many unprocessed messages", True)
REVOKED = Disconnect("revoked", 4005, "Credential revoked", True)
PENDING_BYTES = Disconnect("pending_bytes", 4006, "Too much unprocessed data", True)
#: A SockJS HTTP session moved to another relay (``relay.httpsession``): the client is
#: not told, its next request is served there.
HANDOVER = Disconnect("handover", 4007, "Session moved to another relay", True)
#: The client reconnected elsewhere and asked for this session back while it still ran
#: here (its old connection died without this relay seeing it): parked for that resume.
SUPERSEDED = Disconnect("superseded", 4008, "Session resumed on another connection", True)
REFUSED = Disconnect("refused", 4500, "Connection refused by the server", False)
CLOSED_BY_SERVER = Disconnect("closed_by_server", 4501, "Closed by the server", False)
