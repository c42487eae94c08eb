"""relay.server.app: what the WSGI callable answers before a socket is taken over."""

from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.server.app import RelayApp, handshake_of
from relay.server.node import Node
from tests.relay.server.helpers import FakeBackend, FakeMember


def call(app: RelayApp, path: str = "/websocket", **extra: str) -> tuple[str, bytes]:
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
        "REMOTE_ADDR": "10.0.0.9",
        **extra,
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


def test_upgrades_past_the_limit_per_address_are_refused_with_429() -> None:
    settings = Settings(max_connections_per_address=1, forwarded_count=1)
    node = Node(settings, FakeBackend())  # type: ignore[arg-type]
    app = RelayApp(settings, node, lambda environ, start_response: [])
    assert node.gate.open_socket("203.0.113.7")  # one socket of that client is open
    refused = call(app, HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert refused == ("429 Too Many Requests", b"too many connections\n")
    # Another client behind the same proxy is not affected (its upgrade goes on: 400
    # here only because this fake request is not a complete WebSocket handshake).
    assert call(app, HTTP_X_FORWARDED_FOR="203.0.113.8")[0] != "429 Too Many Requests"


def test_the_client_address_is_the_socket_or_what_trusted_proxies_forwarded() -> None:
    environ = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"}
    assert handshake_of(environ).remote_addr == "10.0.0.1"  # no proxy trusted
    assert handshake_of(environ, 1).remote_addr == "203.0.113.7"  # the one ours appended
    assert handshake_of(environ, 2).remote_addr == "6.6.6.6"
    assert handshake_of(environ, 3).remote_addr == ""  # fewer entries than proxies
