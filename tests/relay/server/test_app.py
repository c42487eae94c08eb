"""relay.server.app: what the WSGI callable answers before a socket is taken over."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.config import Settings
from relay.server.app import RelayApp, handshake_of
from relay.server.node import Node
from tests.relay.server.helpers import FakeBackend, FakeMember


def call(app: RelayApp, path: str = "/websocket", **extra: str) -> tuple[str, bytes]:
    """A WebSocket upgrade request (a plain ``get`` with the handshake's headers)."""
    upgrade = {
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    return get(app, path, **{**upgrade, **extra})


def test_upgrades_past_the_connection_limit_are_refused_with_503() -> None:
    settings = Settings(worker_connections=2)
    node = Node(settings, FakeBackend())
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
    node = Node(settings, FakeBackend())
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


# -- the public and the internal port ----------------------------------------------------------


class Fallback:
    """The project's WSGI app: records what reached it."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.paths.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"django\n"]


def get(app: RelayApp, path: str, port: int = 8000, **extra: str) -> tuple[str, bytes]:
    """A plain GET that came in on the listener of ``port``."""
    seen: list[str] = []

    def start_response(status: str, headers: Any) -> None:
        seen.append(status)

    environ = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(port),
        "PATH_INFO": path,
        "REMOTE_ADDR": "10.0.0.9",
        **extra,
    }
    body = b"".join(app(environ, start_response))
    return seen[0], body


MakeApp = Callable[..., tuple[RelayApp, Fallback]]


@pytest.fixture
def relay_app() -> Iterator[MakeApp]:
    """A relay app whose node has started (``create_app`` starts it; a node that has not
    is not ready: the pod is still starting), stopped after the test."""
    nodes: list[Node] = []

    def make(*, start: bool = True, **settings: Any) -> tuple[RelayApp, Fallback]:
        config = Settings(**settings)
        fallback = Fallback()
        node = Node(config, FakeBackend())
        nodes.append(node)
        if start:
            node.start()
        return RelayApp(config, node, fallback), fallback

    yield make
    for node in nodes:
        node.stop()


def test_one_port_serves_ddp_health_metrics_and_the_project(relay_app: MakeApp) -> None:
    app, fallback = relay_app()
    status, body = get(app, "/metrics")
    assert status == "200 OK" and b"ddp_relay_ready" in body
    status, body = get(app, "/readyz")
    assert status == "200 OK" and json.loads(body)["status"] == "ready"
    assert get(app, "/livez") == ("200 OK", b"live: every worker's loop is running\n")
    assert get(app, "/healthz")[0] == "200 OK"
    assert get(app, "/startupz") == ("200 OK", b"started: 1 of 1 workers started\n")
    assert get(app, "/admin/") == ("200 OK", b"django\n")
    assert fallback.paths == ["/admin/"]


def test_the_internal_port_serves_health_and_metrics_only(relay_app: MakeApp) -> None:
    app, fallback = relay_app(internal_port=9000)
    status, body = get(app, "/metrics", 9000)
    assert status == "200 OK" and b"ddp_relay_ready" in body
    status, body = get(app, "/readyz", 9000)
    detail = json.loads(body)
    assert status == "200 OK" and detail["status"] == "ready"
    assert set(detail["checks"]) == {"draining", "postgres", "listener", "coordinator"}
    assert detail["checks"]["coordinator"] == {
        "ok": True,
        "reason": "resuming off",
        "required": True,
        "state": None,
    }
    assert get(app, "/livez", 9000)[0] == "200 OK"
    assert get(app, "/healthz", 9000)[0] == "200 OK"
    assert get(app, "/startupz", 9000)[0] == "200 OK"
    # Neither DDP nor the project is reachable on it.
    assert get(app, "/admin/", 9000) == ("404 Not Found", b"Not found\n")
    assert get(app, "/sockjs/info", 9000)[0] == "404 Not Found"
    assert call(app, "/websocket", SERVER_PORT="9000")[0] == "404 Not Found"
    assert fallback.paths == []


def test_the_public_port_hides_metrics_and_answers_readyz_tersely(relay_app: MakeApp) -> None:
    app, fallback = relay_app(internal_port=9000)
    assert get(app, "/metrics") == ("404 Not Found", b"Not found\n")
    assert get(app, "/readyz") == ("200 OK", b"ready\n")
    assert get(app, "/sockjs/info")[0] == "200 OK"
    # The other health paths are the project's: the relay claims only /readyz there.
    assert get(app, "/livez") == ("200 OK", b"django\n")
    assert get(app, "/healthz") == ("200 OK", b"django\n")
    assert fallback.paths == ["/livez", "/healthz"]


def test_the_listener_is_told_by_its_port_never_by_the_host_header(relay_app: MakeApp) -> None:
    app, _ = relay_app(internal_port=9000)
    spoofed = get(app, "/metrics", 8000, HTTP_HOST="relay:9000", HTTP_X_FORWARDED_PORT="9000")
    assert spoofed == ("404 Not Found", b"Not found\n")
    assert get(app, "/metrics", 9000, HTTP_HOST="relay:8000")[0] == "200 OK"


def test_draining_is_503_on_both_ports_with_the_reason_inside(relay_app: MakeApp) -> None:
    app, _ = relay_app(internal_port=9000)
    app.node.drain()
    assert get(app, "/readyz") == ("503 Service Unavailable", b"not ready\n")
    status, body = get(app, "/readyz", 9000)
    detail = json.loads(body)
    assert status == "503 Service Unavailable" and detail["status"] == "not ready"
    assert detail["checks"]["draining"]["ok"] is False
    assert detail["checks"]["draining"]["failing_workers"] == [os.getpid()]
    # A worker that drains is still live: a restart would not help it.
    assert get(app, "/livez", 9000)[0] == "200 OK"


def test_metrics_switched_off_are_404_on_the_internal_port_too(relay_app: MakeApp) -> None:
    app, _ = relay_app(internal_port=9000, metrics=False)
    assert get(app, "/metrics", 9000)[0] == "404 Not Found"
    assert get(app, "/readyz", 9000)[0] == "200 OK"


def test_a_node_that_has_not_started_is_not_ready(relay_app: MakeApp) -> None:
    """Before ``create_app`` has started the node (backend loaded, first listener
    connection), the pod is starting: not ready, whatever its checks say."""
    app, _ = relay_app(start=False)
    status, body = get(app, "/readyz")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["reason"] == "starting: 0 of 1 workers started"
    assert get(app, "/startupz") == (
        "503 Service Unavailable",
        b"starting: 0 of 1 workers started\n",
    )


def test_sockjs_http_transports_are_served_unless_switched_off(relay_app: MakeApp) -> None:
    on, _ = relay_app()
    # An htmlfile request without its callback: answered by the transport (500), not 404.
    status, body = get(on, "/sockjs/1/abcdefgh/htmlfile")
    assert status.startswith("500") and b'"callback" parameter required' in body
    assert get(on, "/sockjs/1/abcdefgh/xhr_send", REQUEST_METHOD="POST")[0].startswith("500")
    off, _ = relay_app(sockjs_http=False)
    for transport in ("xhr", "xhr_send", "xhr_streaming", "eventsource", "htmlfile", "jsonp"):
        status, body = get(off, f"/sockjs/1/abcdefgh/{transport}", REQUEST_METHOD="POST")
        assert status == "404 Not Found" and b"RELAY_SOCKJS_HTTP" in body
    # The iframe page is never served.
    assert get(on, "/sockjs/iframe.html")[0] == "404 Not Found"
