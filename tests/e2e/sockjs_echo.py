"""The SockJS test services of ``sockjs-protocol``, built from the relay's own SockJS code.

``tests/e2e/test_sockjs_protocol.py`` serves this with ``gunicorn -k gevent -w 1
tests.e2e.sockjs_echo:app`` and runs its port of the ``sockjs-protocol`` suite against it,
as sockjs-node's own test server is what that suite runs against. The services, one
``relay.httpsession.directory.Directory`` each (no coordinator: this process only, a
``MemoryInbox``), answered by ``relay.httpsession.handler.Handler``:

- ``/echo``: every message a session receives is sent back to it;
- ``/close``: a session is closed as soon as it opens, with ``c[3000,"Go away!"]``;
- ``/disabled_websocket_echo``: ``/echo`` whose ``/info`` says ``"websocket": false``.

``/<prefix>`` (the greeting) and ``/<prefix>/info`` are ``relay.transport.endpoints``';
every other path is a 404 (no WebSocket here: the WebSocket transports are tested
elsewhere). The suite's settings: streaming responses end after 4096 bytes, heartbeats
every 25 s, a session without a receiving request ends after 5 s. One greenlet per
process ticks the directories and transports every 0.5 s (what the worker's heartbeat
registry does in the relay), started by the first request: importing this module starts
nothing.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Final

import gevent

from relay.backend import Handshake
from relay.httpsession.directory import Directory
from relay.httpsession.handler import Handler
from relay.httpsession.inbox import MemoryInbox
from relay.protocol.sockjs import GO_AWAY, session_path
from relay.transport import endpoints
from relay.transport.http import HttpTransport

__all__ = ["RESPONSE_LIMIT", "app"]

StartResponse = Callable[..., Any]

#: What sockjs-protocol expects of its test server (sockjs-node's defaults but the limit).
RESPONSE_LIMIT: Final = 4096
HEARTBEAT_INTERVAL: Final = 25.0
DISCONNECT_DELAY: Final = 5.0
SEND_BUFFER: Final = 1 << 20
MAX_MESSAGE_BYTES: Final = 1 << 20
TICK: Final = 0.5

#: Every transport made, for the ticker (a session's transport is gone with its session).
_transports: weakref.WeakSet[HttpTransport] = weakref.WeakSet()


def _new_transport(opened: bool) -> HttpTransport:
    transport = HttpTransport(
        heartbeat_interval=HEARTBEAT_INTERVAL,
        disconnect_delay=DISCONNECT_DELAY,
        response_limit=RESPONSE_LIMIT,
        send_buffer=SEND_BUFFER,
        opened=opened,
    )
    _transports.add(transport)
    return transport


class _Host:
    """A ``relay.httpsession.directory.Host`` of sessions held in this process only: they
    are never handed over or taken over (there is no coordinator)."""

    def refusal(self, handshake: Handshake) -> str | None:
        return None

    def open(self, transport: HttpTransport, handshake: Handshake) -> Any:
        raise NotImplementedError

    def hand_over(self, held: Any, transport: HttpTransport) -> tuple[str, int] | None:
        return None

    def take_over(
        self, transport: HttpTransport, handshake: Handshake, session_id: str, delivered: int
    ) -> Any | None:
        return None

    def close(self, held: Any) -> None:
        if isinstance(held, HttpTransport):
            held.close(*GO_AWAY)


class EchoHost(_Host):
    """Each session sends back every message it receives."""

    def open(self, transport: HttpTransport, handshake: Handshake) -> HttpTransport:
        transport.start(
            lambda texts: transport.send([t for t in texts if isinstance(t, str)]), lambda: None
        )
        return transport


class CloseHost(_Host):
    """Each session is closed by the server as soon as it opens."""

    def open(self, transport: HttpTransport, handshake: Handshake) -> HttpTransport:
        transport.close(*GO_AWAY)
        return transport


def _handshake(environ: dict[str, Any]) -> Handshake:
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    return Handshake(
        headers=headers,
        cookies={},
        remote_addr=str(environ.get("REMOTE_ADDR", "")),
        path=str(environ.get("PATH_INFO", "")),
    )


def _answer(start_response: StartResponse, response: endpoints.Response) -> Iterable[bytes]:
    status, headers, body = response
    start_response(status, headers)
    return [body]


def _not_found(start_response: StartResponse) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=UTF-8")])
    return [b"Not found\n"]


def _without_websocket(response: endpoints.Response) -> endpoints.Response:
    """``/info``'s answer with ``"websocket": false`` (sockjs-node's ``websocket: false``)."""
    status, headers, body = response
    if not status.startswith("200"):
        return response
    document = json.loads(body)
    document["websocket"] = False
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    headers = [
        (name, str(len(body)) if name.lower() == "content-length" else value)
        for name, value in headers
    ]
    return status, headers, body


class Service:
    """One SockJS service under ``prefix``."""

    def __init__(self, prefix: str, host: _Host, *, websocket: bool = True) -> None:
        self.prefix = prefix
        self.websocket = websocket
        inbox = MemoryInbox()
        self.directory = Directory(
            host=host,
            inbox=inbox,
            coordinator=None,
            relay_id="sockjs-echo" + prefix.replace("/", "-"),
            new_transport=_new_transport,
        )
        inbox.rung = self.directory.on_ring
        self.handler = Handler(self.directory, MAX_MESSAGE_BYTES)

    def owns(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        route = endpoints.route(environ, self.prefix)
        if route is endpoints.Route.SOCKJS_HTTP:
            found = session_path(path, self.prefix)
            if found is not None:
                return self.handler(environ, start_response, found, _handshake(environ))
        if route is endpoints.Route.SOCKJS_INFO:
            info = endpoints.info_response(environ)
            return _answer(start_response, info if self.websocket else _without_websocket(info))
        if route is endpoints.Route.SOCKJS_WELCOME:
            return _answer(start_response, endpoints.welcome_response(environ))
        return _not_found(start_response)


SERVICES: Final = (
    Service("/echo", EchoHost()),
    Service("/close", CloseHost()),
    Service("/disabled_websocket_echo", EchoHost(), websocket=False),
)

_ticker: gevent.Greenlet | None = None


def _tick() -> None:
    while True:
        gevent.sleep(TICK)
        now = time.monotonic()
        for service in SERVICES:
            service.directory.heartbeat(now)
        for transport in list(_transports):
            transport.heartbeat(now)


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI application: the services above, by path prefix."""
    global _ticker
    if _ticker is None:
        _ticker = gevent.spawn(_tick)
    path = str(environ.get("PATH_INFO", ""))
    for service in SERVICES:
        if service.owns(path):
            return service(environ, start_response)
    return _not_found(start_response)
