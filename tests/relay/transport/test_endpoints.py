"""relay.transport.endpoints: request routing and the plain-HTTP SockJS answers."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from relay.transport.endpoints import (
    FALLBACK_MESSAGE,
    Route,
    fallback_response,
    info_response,
    respond,
    route,
    welcome_response,
)
from tests.relay.transport._ws_echo_server import Server, serve

pytestmark = pytest.mark.timeout(60)


def environ(path: str = "/", method: str = "GET", **headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method, "QUERY_STRING": ""}
    env.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    return env


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/websocket", Route.DDP_WEBSOCKET),
        ("/websocket/", Route.DDP_WEBSOCKET),
        ("/sockjs/websocket", Route.DDP_WEBSOCKET),
        ("/sockjs/websocket/", Route.DDP_WEBSOCKET),
        ("/sockjs/928/zql405yy/websocket", Route.SOCKJS_WEBSOCKET),
        ("/sockjs/info", Route.SOCKJS_INFO),
        ("/sockjs/info/", Route.SOCKJS_INFO),
        ("/sockjs", Route.SOCKJS_WELCOME),
        ("/sockjs/", Route.SOCKJS_WELCOME),
        ("/sockjs/928/zql405yy/xhr", Route.SOCKJS_HTTP),
        ("/sockjs/928/zql405yy/xhr_send", Route.SOCKJS_HTTP),
        ("/sockjs/928/zql405yy/eventsource", Route.SOCKJS_HTTP),
        ("/sockjs/928/zql405yy/jsonp", Route.SOCKJS_HTTP),
        ("/sockjs/iframe.html", Route.SOCKJS_FALLBACK),
        ("/sockjs/chunking_test", Route.SOCKJS_FALLBACK),
        ("/", Route.OTHER),
        ("/admin/", Route.OTHER),
        ("/websocketx", Route.OTHER),
        ("/websocket//", Route.OTHER),
        ("/api/websocket", Route.OTHER),
        ("/sockjs/unknown", Route.OTHER),
        ("", Route.OTHER),
    ],
)
def test_route(path: str, expected: Route) -> None:
    assert route(environ(path)) is expected


def test_route_ignores_the_query_string() -> None:
    env = environ("/sockjs/info")
    env["QUERY_STRING"] = "cb=abc123"
    assert route(env) is Route.SOCKJS_INFO
    env["QUERY_STRING"] = "t=1700000000000"
    assert route(env) is Route.SOCKJS_INFO
    assert route({}) is Route.OTHER


def test_info_without_origin() -> None:
    status, headers, body = info_response(environ("/sockjs/info"), entropy=12345)
    assert status == "200 OK"
    assert json.loads(body) == {
        "websocket": True,
        "origins": ["*:*"],
        "cookie_needed": False,
        "entropy": 12345,
    }
    assert body == b'{"websocket":true,"origins":["*:*"],"cookie_needed":false,"entropy":12345}'
    h = dict(headers)
    assert h["Content-Type"] == "application/json; charset=UTF-8"
    assert h["Cache-Control"] == "no-store, no-cache, no-transform, must-revalidate, max-age=0"
    assert h["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in h
    assert h["Vary"] == "Origin"
    assert h["Content-Length"] == str(len(body))


def test_info_with_origin_and_random_entropy() -> None:
    env = environ("/sockjs/info", origin="https://app.example")
    _, headers, _ = info_response(env)
    h = dict(headers)
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Allow-Credentials"] == "true"
    entropies = {json.loads(info_response(env)[2])["entropy"] for _ in range(5)}
    assert len(entropies) > 1
    assert all(0 <= e < 2**32 for e in entropies)


def test_info_options_preflight() -> None:
    env = environ(
        "/sockjs/info",
        "OPTIONS",
        origin="https://app.example",
        access_control_request_headers="x-requested-with",
    )
    status, headers, body = info_response(env)
    assert status == "204 No Content"
    assert body == b""
    h = dict(headers)
    assert h["Access-Control-Allow-Methods"] == "OPTIONS, GET"
    assert h["Access-Control-Max-Age"] == "31536000"
    assert h["Cache-Control"] == "public, max-age=31536000"
    assert "Expires" in h
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Allow-Headers"] == "x-requested-with"


def test_info_other_methods() -> None:
    assert info_response(environ("/sockjs/info", "HEAD"))[0] == "200 OK"
    status, headers, _ = info_response(environ("/sockjs/info", "POST"))
    assert status == "405 Method Not Allowed"
    assert dict(headers)["Allow"] == "OPTIONS, GET"


def test_welcome() -> None:
    status, headers, body = welcome_response(environ("/sockjs"))
    assert (status, body) == ("200 OK", b"Welcome to SockJS!\n")
    assert dict(headers)["Content-Type"] == "text/plain; charset=UTF-8"
    assert welcome_response(environ("/sockjs", "DELETE"))[0] == "405 Method Not Allowed"


def test_fallback_is_a_clear_404_with_cors() -> None:
    env = environ("/sockjs/1/abc/xhr", "POST", origin="https://app.example")
    status, headers, body = fallback_response(env)
    assert status == "404 Not Found"
    assert body.decode() == FALLBACK_MESSAGE + "\n"
    assert "not served" in FALLBACK_MESSAGE and "RELAY_SOCKJS_HTTP" in FALLBACK_MESSAGE
    h = dict(headers)
    assert h["Access-Control-Allow-Origin"] == "https://app.example"
    assert h["Access-Control-Allow-Credentials"] == "true"
    assert h["Content-Type"] == "text/plain; charset=UTF-8"


def test_respond_dispatches() -> None:
    assert respond(environ("/sockjs/info"), Route.SOCKJS_INFO)[0] == "200 OK"
    assert respond(environ("/sockjs"), Route.SOCKJS_WELCOME)[2] == b"Welcome to SockJS!\n"
    assert respond(environ("/sockjs/iframe.html"), Route.SOCKJS_FALLBACK)[0] == "404 Not Found"
    for other in (Route.OTHER, Route.DDP_WEBSOCKET, Route.SOCKJS_WEBSOCKET):
        with pytest.raises(ValueError):
            respond(environ("/"), other)


# -- live: through gunicorn ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("endpoints")) as running:
        yield running


def fetch(server: Server, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, target, headers={"Origin": "https://app.example"})
        response = conn.getresponse()
        result = (response.status, dict(response.getheaders()), response.read())
        response.close()
        return result
    finally:
        conn.close()


def test_live_sockjs_http_endpoints(server: Server) -> None:
    for target in ("/sockjs/info?cb=x8fa0q2", "/sockjs/info?t=1700000000000"):
        status, headers, body = fetch(server, "GET", target)
        assert status == 200
        assert json.loads(body)["websocket"] is True
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert fetch(server, "OPTIONS", "/sockjs/info")[0] == 204
    assert fetch(server, "GET", "/sockjs")[2] == b"Welcome to SockJS!\n"
    status, _, body = fetch(server, "POST", "/sockjs/123/abcdefgh/xhr")
    assert status == 404
    assert b"not served" in body
