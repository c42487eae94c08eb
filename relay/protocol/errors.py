"""Protocol errors, split the h11 way: the peer broke the protocol, or we misused the API.

Layer: pure core. A ``RemoteProtocolError`` carries the DDP reply the caller should send
(``reply``) and whether the transport must then be closed (``close``). Nothing here
formats tracebacks or logs.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """Base class of every error raised by ``relay.protocol``."""


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol API (a bug on this side, never the peer's)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``reply`` is the DDP message to send back (``{"msg": "error", ...}`` or
    ``{"msg": "failed", ...}``), or None when nothing should be sent; ``close`` says
    whether the connection must be closed after the reply.
    """

    def __init__(
        self, reason: str, reply: dict[str, Any] | None = None, *, close: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.close = close


class EJSONError(RemoteProtocolError):
    """A value could not be decoded as EJSON (for example an unknown ``$type``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, None)


class FramingError(RemoteProtocolError):
    """A transport frame (SockJS) could not be parsed; the transport must close."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, None, close=True)
