"""relay.server.app: what the WSGI callable answers before a socket is taken over."""

from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.server.app import RelayApp
from relay.server.node import Node
from tests.relay.server.helpers import FakeBackend, FakeMember


def call(app: RelayApp, path: str = "/websocket") -> tuple[str, bytes]:
    seen: list[str] = []

    def start_response(status: str, headers: Any) -> None:
        seen.append(status)

    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": path,
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    body = b"".join(app(environ, start_response))
    return seen[0], body


def test_upgrades_past_the_connection_limit_are_refused_with_503() -> None:
    settings = Settings(worker_connections=2)
    node = Node(settings, FakeBackend())  # type: ignore[arg-type]
    app = RelayApp(settings, node, lambda environ, start_response: [])
    open_ = [FakeMember(), FakeMember()]
    for member in open_:
        node.hub.opened(member)
    assert call(app) == ("503 Service Unavailable", b"too many connections\n")
    for member in open_:
        node.hub.closed(member)
    node.drain()
    assert call(app) == ("503 Service Unavailable", b"draining\n")
