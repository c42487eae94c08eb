"""The pure DDP core: messages, EJSON, ids, SockJS framing, heartbeats and the mergebox.

Nothing in this package does I/O, blocks, sleeps, reads the clock, logs or imports
gevent, Django or anything else of the project (an import-linter contract in
``pyproject.toml`` checks it). Time is passed in as an argument. Everything here is
testable without a socket, in the way h11 and wsproto are.

The modules, each with its own ``__all__``: ``messages`` (typed client messages, server
message builders, ``encode``), ``connection`` (the server's connection state machine and
the heartbeat algorithm), ``errors`` (Local/Remote protocol errors), ``ejson``, ``ids``
(Mongo id strings), ``alea`` (Meteor's seeded random streams), ``sockjs`` (SockJS framing),
``mergebox`` (a session's merged view of its subscriptions) and ``changestream`` (the
changelog/NOTIFY payload contract between the write side and the relays). The names most
callers need are re-exported here.
"""

from relay.protocol import alea, changestream, ejson, ids, messages, sockjs
from relay.protocol.alea import RandomStream, random_id
from relay.protocol.changestream import Change, Notification, PayloadError
from relay.protocol.connection import Heartbeat, HeartbeatAction, ServerConnection, State
from relay.protocol.errors import (
    EJSONError,
    FramingError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from relay.protocol.mergebox import MergeBox
from relay.protocol.messages import Connect, Disconnect, Method, Ping, Pong, Sub, Unsub

__all__ = [
    "Change",
    "Connect",
    "Disconnect",
    "EJSONError",
    "FramingError",
    "Heartbeat",
    "HeartbeatAction",
    "LocalProtocolError",
    "MergeBox",
    "Method",
    "Notification",
    "PayloadError",
    "Ping",
    "Pong",
    "ProtocolError",
    "RandomStream",
    "RemoteProtocolError",
    "ServerConnection",
    "State",
    "Sub",
    "Unsub",
    "alea",
    "changestream",
    "ejson",
    "ids",
    "messages",
    "random_id",
    "sockjs",
]
