"""The server side of one DDP connection as a pure state machine, plus the heartbeat.

Layer: pure core. ``ServerConnection.receive(text)`` turns one inbound DDP frame into a
typed client message or raises ``RemoteProtocolError`` with the reply; it tracks whether
``connect`` happened and which version was negotiated. Every state transition lives in
``_TRANSITIONS`` below (the h11 rule). ``Heartbeat`` is Meteor's ping/timeout algorithm
with time passed in, so it is testable without a clock.

Must not: do I/O, read the clock, or decide anything about sessions, subscriptions or
resumption (that is ``relay.server.session``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from relay.protocol import messages
from relay.protocol.errors import LocalProtocolError, RemoteProtocolError
from relay.protocol.messages import ClientMessage, Connect, Disconnect


class State(enum.Enum):
    #: Socket open, nothing but ``connect`` is acceptable yet.
    AWAITING_CONNECT = "awaiting_connect"
    #: ``connect`` accepted (the session may still be deciding what to answer).
    CONNECTED = "connected"
    #: Version negotiation failed, the client said ``disconnect``, or we closed.
    CLOSED = "closed"


#: (state, message type) -> next state. A message type absent for a state is refused.
_TRANSITIONS: dict[tuple[State, type], State] = {
    (State.AWAITING_CONNECT, Connect): State.CONNECTED,
    (State.CONNECTED, Disconnect): State.CLOSED,
}


class ServerConnection:
    """Validates the inbound DDP stream of one socket. One instance per socket."""

    __slots__ = ("state", "version")

    def __init__(self) -> None:
        self.state = State.AWAITING_CONNECT
        self.version: str | None = None

    def receive(self, text: str) -> ClientMessage:
        """Parse and validate one frame; raise RemoteProtocolError carrying the reply."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("receive() after the connection closed")
        obj = messages.parse_json(text)
        if (
            self.state is not State.AWAITING_CONNECT
            and isinstance(obj, dict)
            and obj.get("msg") == "connect"
        ):
            # Well-formed or not, a second connect changes nothing: Meteor's answer, and
            # the session goes on (a malformed one must not close what the first opened).
            raise messages.bad("Already connected", obj)
        msg = messages.parse_client_message(obj, self.version)
        if self.state is State.AWAITING_CONNECT:
            if not isinstance(msg, Connect):
                raise messages.bad("Must connect first", obj)
            version = messages.negotiate(msg)
            if version != msg.version:
                self.state = State.CLOSED
                raise RemoteProtocolError(
                    "Version negotiation failed", {"msg": "failed", "version": version}, close=True
                )
            self.version = version
        self.state = _TRANSITIONS.get((self.state, type(msg)), self.state)
        return msg

    def close(self) -> None:
        self.state = State.CLOSED

    def adopt(self, version: str) -> None:
        """Go on from another server's ``connect`` (a session moved between relays)."""
        if self.state is State.AWAITING_CONNECT:
            self.state = State.CONNECTED
            self.version = version

    @property
    def heartbeats(self) -> bool:
        """``pre1`` sessions get no heartbeats (ping/pong did not exist yet)."""
        return self.version is not None and self.version != "pre1"


class HeartbeatAction(enum.Enum):
    NONE = "none"
    #: Send ``{"msg": "ping"}`` now.
    PING = "ping"
    #: Nothing arrived within the timeout after our ping: close the session.
    TIMEOUT = "timeout"


@dataclass(slots=True)
class Heartbeat:
    """Meteor's heartbeat: ping after ``interval`` s of inbound silence, give up ``timeout``
    s later. Any inbound message counts as liveness (reference 1.5). 0 disables it."""

    interval: float
    timeout: float
    last_received: float = 0.0
    ping_sent_at: float | None = None

    def received(self, now: float) -> None:
        self.last_received = now
        self.ping_sent_at = None

    def poll(self, now: float) -> HeartbeatAction:
        if self.interval <= 0:
            return HeartbeatAction.NONE
        if self.ping_sent_at is not None:
            if self.timeout > 0 and now - self.ping_sent_at >= self.timeout:
                return HeartbeatAction.TIMEOUT
            return HeartbeatAction.NONE
        if now - self.last_received >= self.interval:
            self.ping_sent_at = now
            return HeartbeatAction.PING
        return HeartbeatAction.NONE

    def due(self) -> float:
        """The earliest time ``poll`` can act (a ping or a timeout); inf: never. Until the
        next ``poll`` or ``received`` (an inbound message after a ping makes the next ping
        due at ``received + interval``, earlier than the timeout when interval < timeout)."""
        if self.interval <= 0:
            return math.inf
        if self.ping_sent_at is not None:
            return self.ping_sent_at + self.timeout if self.timeout > 0 else math.inf
        return self.last_received + self.interval
