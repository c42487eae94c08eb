"""relay.transport.handshake: upgrade checks, Origin check, deflate negotiation, ``accept``.

In-process tests call ``accept`` on a WSGI environ whose ``gunicorn.socket`` is one end of
a gevent socketpair (helpers in ``_ws_helpers.py``). Live ones send upgrade requests to
``gunicorn -k gevent`` serving ``tests/relay/transport/_ws_echo_server.py``.
"""

from __future__ import annotations

import base64
import http.client
import socket
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from relay.config import Settings
from relay.transport.handshake import HandshakeRefusal, _negotiate_deflate, accept, origin_allowed
from relay.transport.websocket import WebSocket
from tests.relay.transport._ws_echo_server import Server, serve
from tests.relay.transport._ws_helpers import close_sockets, masked_frame, socketpair

pytestmark = pytest.mark.timeout(60)

_ACCEPTED: list[WebSocket] = []


def accepted(environ: dict[str, Any], settings: Settings) -> WebSocket | HandshakeRefusal:
    """``accept``, with the WebSocket closed after the test."""
    ws = accept(environ, settings)
    if isinstance(ws, WebSocket):
        _ACCEPTED.append(ws)
    return ws


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _ACCEPTED:
        ws = _ACCEPTED.pop()
        ws.abort()
        ws.wait_closed()  # releases the descriptor accept() duplicated
    close_sockets()


# -- permessage-deflate negotiation ----------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ("", None),
        ("x-webkit-deflate-frame", None),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; "
            "client_max_window_bits=15",
        ),
        (
            "permessage-deflate",
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        ),
        # An unacceptable offer is skipped; the next acceptable one wins.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
        ),
        ("permessage-deflate; client_max_window_bits=abc", None),
    ],
)
def test_negotiate_deflate(offer: str, expected: str | None) -> None:
    negotiated = _negotiate_deflate(offer, 1024)
    assert (negotiated[1] if negotiated else None) == expected


# -- the handshake ---------------------------------------------------------------------

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3: accepts as s3pPLMBiTxaQ9kYGzzhZRbK+xOo=


def upgrade_environ(**overrides: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "PATH_INFO": "/websocket",
        "HTTP_HOST": "relay.example:8000",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": RFC_KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    environ.update(overrides)
    return {key: value for key, value in environ.items() if value is not None}


def read_response(sock: Any) -> bytes:
    data = b""
    with gevent.Timeout(3):
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
    return data


def test_accept_writes_101() -> None:
    server_sock, client_sock = socketpair()
    ws = accepted(upgrade_environ(**{"gunicorn.socket": server_sock}), Settings())
    assert isinstance(ws, WebSocket)
    assert not ws.deflate
    head = read_response(client_sock).decode()
    assert head == (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )


def test_accept_negotiates_deflate_only_when_offered_and_enabled() -> None:
    offer = {"HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate; client_max_window_bits"}
    for settings, extra, expected in [
        (Settings(), offer, True),
        (Settings(permessage_deflate=False), offer, False),
        (Settings(), {}, False),
    ]:
        server_sock, client_sock = socketpair()
        ws = accepted(upgrade_environ(**{"gunicorn.socket": server_sock}, **extra), settings)
        assert isinstance(ws, WebSocket)
        assert ws.deflate is expected
        head = read_response(client_sock).decode()
        assert ("Sec-WebSocket-Extensions: permessage-deflate;" in head) is expected


def test_accept_takes_bytes_gunicorn_already_buffered() -> None:
    class Unreader:
        def take_buffered(self) -> bytes:
            return masked_frame(0x1, b"pipelined")

    class Reader:
        unreader = Unreader()

    class Body:
        reader = Reader()

    server_sock, _client_sock = socketpair()
    environ = upgrade_environ(**{"gunicorn.socket": server_sock, "wsgi.input": Body()})
    ws = accepted(environ, Settings())
    assert isinstance(ws, WebSocket)
    assert ws.receive() == "pipelined"


def test_accept_when_the_client_left_returns_a_closed_socket() -> None:
    server_sock, client_sock = socketpair()
    client_sock.close()
    server_sock.shutdown(socket.SHUT_WR)  # sendall now fails like on a vanished peer
    ws = accepted(upgrade_environ(**{"gunicorn.socket": server_sock}), Settings())
    assert isinstance(ws, WebSocket)
    assert ws.closed
    assert ws.receive() is None


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"REQUEST_METHOD": "POST"}, "400 Bad Request"),
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, "400 Bad Request"),
        ({"HTTP_UPGRADE": None}, "400 Bad Request"),
        ({"HTTP_UPGRADE": "h2c"}, "400 Bad Request"),
        ({"HTTP_CONNECTION": "keep-alive"}, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": None}, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": "not base64!"}, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"x" * 15).decode()}, "400 Bad Request"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": "12"}, "426 Upgrade Required"),
        ({"HTTP_SEC_WEBSOCKET_VERSION": None}, "426 Upgrade Required"),
        ({"HTTP_ORIGIN": "https://evil.example"}, "403 Forbidden"),
        ({}, "500 Internal Server Error"),  # no gunicorn.socket
    ],
)
def test_accept_refusals(overrides: dict[str, Any], status: str) -> None:
    refusal = accept(upgrade_environ(**overrides), Settings())
    assert isinstance(refusal, HandshakeRefusal)
    assert refusal.status == status
    headers = dict(refusal.headers)
    assert headers["Content-Length"] == str(len(refusal.body))
    if status.startswith("426"):
        assert headers["Sec-WebSocket-Version"] == "13"


def test_accept_versions_8_and_13_and_case_insensitive_headers() -> None:
    for version in ("13", "8"):
        server_sock, _ = socketpair()
        environ = upgrade_environ(
            **{
                "gunicorn.socket": server_sock,
                "HTTP_SEC_WEBSOCKET_VERSION": version,
                "HTTP_UPGRADE": "WebSocket",
                "HTTP_CONNECTION": "UPGRADE",
            }
        )
        assert isinstance(accepted(environ, Settings()), WebSocket)


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "relay.example", (), True),  # not a browser
        ("https://relay.example", "relay.example", (), True),  # same site
        ("http://relay.example:8000", "relay.example:8000", (), True),
        ("https://relay.example", "relay.example:443", (), True),  # default port
        ("HTTPS://Relay.Example", "relay.example", (), True),
        ("http://[::1]:8000", "[::1]:8000", (), True),
        ("https://relay.example:8443", "relay.example", (), False),
        ("https://evil.example", "relay.example", (), False),
        ("https://evil.example", "relay.example", ("*",), True),
        ("https://app.example", "relay.example", ("https://app.example",), True),
        ("https://app.example", "relay.example", ("https://app.example:443",), True),
        ("https://app.example", "relay.example", ("http://app.example",), False),
        ("https://app.example:8443", "relay.example", ("https://app.example",), False),
        ("null", "relay.example", (), False),
        ("null", "relay.example", ("null",), True),
        ("https://evil.example", None, (), False),
        ("garbage", "relay.example", (), False),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    environ = {"HTTP_ORIGIN": origin, "HTTP_HOST": host}
    environ = {key: value for key, value in environ.items() if value is not None}
    assert origin_allowed(environ, allowed) is expected


# -- live: gunicorn -k gevent in a subprocess --------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("handshake")) as running:
        yield running
    assert "Traceback" not in running.log_text()


def raw_upgrade(server: Server, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    base = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    conn.request("GET", "/websocket", headers={**base, **headers})
    response = conn.getresponse()
    status = response.status
    body = response.read() if status != 101 else b""
    result = (status, dict(response.getheaders()), body)
    response.close()  # it holds the socket open after conn.close()
    conn.close()
    return result


def test_live_foreign_origin_is_403(server: Server) -> None:
    status, _, body = raw_upgrade(server, {"Origin": "https://evil.example"})
    assert status == 403
    assert b"Origin" in body
    assert raw_upgrade(server, {"Origin": "https://allowed.example"})[0] == 101
    same_site = f"http://{server.host}:{server.port}"
    assert raw_upgrade(server, {"Origin": same_site})[0] == 101


def test_live_wrong_version_is_426(server: Server) -> None:
    status, headers, _ = raw_upgrade(server, {"Sec-WebSocket-Version": "7"})
    assert status == 426
    assert headers["Sec-WebSocket-Version"] == "13"


def test_live_plain_get_is_400(server: Server) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    conn.request("GET", "/websocket")
    response = conn.getresponse()
    assert response.status == 400
    assert response.read() == b'Can "Upgrade" only to "WebSocket".\n'
    response.close()
    conn.close()
