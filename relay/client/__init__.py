"""A Python DDP client (raw WebSocket or SockJS) with Meteor's cache and reconnect rules.

The public API: ``DDPClient``, ``DDPClientError``, ``retry_delay``. Inside:

- ``connection``: ``DDPClient``, the socket, its reader thread, calls and subscriptions;
- ``cache``: the document cache with Meteor's merge rules, and the quiescence buffer;
- ``reconnect``: Meteor's ``Retry`` policy and the resume decisions (what is re-sent);
- ``errors``: ``DDPClientError``;
- ``xhr``: ``XhrClient``, a minimal client over SockJS's xhr-polling (standard library).

``DDPClient`` needs websocket-client, the ``client`` extra (``pip install
'ddp-relay[client]'``). It is imported on first use, so that this package, the pure
modules and ``DDPClientError``/``retry_delay`` import without it; without it,
``from relay.client import DDPClient`` raises ``ModuleNotFoundError`` naming the extra.

Must not: import the relay runtime (sessions, gevent, Django); only ``relay.protocol`` of
the project.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from relay.client.errors import DDPClientError
from relay.client.reconnect import retry_delay

if TYPE_CHECKING:
    from relay.client.connection import DDPClient

__all__ = ["DDPClient", "DDPClientError", "retry_delay"]


if not TYPE_CHECKING:  # type checkers see the import above, and no catch-all attribute

    def __getattr__(name: str) -> Any:
        # PEP 562: only ``DDPClient`` needs the optional websocket-client, so only it is lazy.
        if name == "DDPClient":
            from relay.client.connection import DDPClient

            globals()["DDPClient"] = DDPClient  # later look-ups skip this function
            return DDPClient
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
