"""relay.httpsession.handler: the HTTP answers of SockJS's transports, driven as WSGI
(the protocol's own tests run against a real server: tests/e2e/test_sockjs_protocol.py)."""

from __future__ import annotations

import io
import time
from typing import Any

from relay.backend import Handshake
from relay.httpsession.directory import Unavailable
from relay.httpsession.handler import Handler
from relay.protocol.sockjs import session_path
from relay.transport.base import Inbound, Oversized

HANDSHAKE = Handshake(headers={}, cookies={}, remote_addr="10.0.0.1", path="/")


class FakeDirectory:
    def __init__(self, answer: bool | Exception = True) -> None:
        self.answer = answer
        self.sent: list[list[Inbound]] = []

    def send(self, session_id: str, texts: list[Inbound]) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        self.sent.append(texts)
        return self.answer


def call(handler: Handler, path: str, body: bytes = b"", **extra: Any) -> tuple[str, bytes]:
    seen: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "HTTP_HOST": "relay.example",
        **extra,
    }
    found = session_path(path)
    assert found is not None
    out = b"".join(handler(environ, lambda status, headers: seen.append(status), found, HANDSHAKE))
    return seen[0], out


def handler(directory: FakeDirectory, **kwargs: Any) -> Handler:
    return Handler(directory, 1000, **kwargs)  # type: ignore[arg-type]


def test_a_send_is_delivered_and_answered_204() -> None:
    directory = FakeDirectory()
    assert call(handler(directory), "/sockjs/1/abc/xhr_send", b'["a","b"]')[0] == "204 No Content"
    assert directory.sent == [["a", "b"]]


def test_a_send_over_the_limit_is_not_read_and_reported_to_the_session() -> None:
    directory = FakeDirectory()
    body = b'["' + b"x" * 200_000 + b'"]'
    assert call(handler(directory), "/sockjs/1/abc/xhr_send", body)[0] == "204 No Content"
    assert directory.sent == [[Oversized(len(body), 1000, "")]]


def test_unknown_and_unreachable_sessions() -> None:
    assert call(handler(FakeDirectory(False)), "/sockjs/1/abc/xhr_send", b'["a"]')[0] == (
        "404 Not Found"
    )
    down = FakeDirectory(Unavailable("zookeeper"))
    assert call(handler(down), "/sockjs/1/abc/xhr_send", b'["a"]')[0] == "503 Service Unavailable"


def test_origins_are_checked_as_for_an_upgrade() -> None:
    directory = FakeDirectory()
    only_ours = handler(directory, allowed_origins=("https://app.example",))
    evil = {"HTTP_ORIGIN": "https://evil.example"}
    assert call(only_ours, "/sockjs/1/abc/xhr_send", b'["a"]', **evil)[0] == "403 Forbidden"
    ours = {"HTTP_ORIGIN": "https://app.example"}
    assert call(only_ours, "/sockjs/1/abc/xhr_send", b'["a"]', **ours)[0] == "204 No Content"
    script = {"HTTP_SEC_FETCH_SITE": "cross-site", "REQUEST_METHOD": "GET"}
    assert call(only_ours, "/sockjs/1/abc/jsonp", **script)[0] == "403 Forbidden"
    assert directory.sent == [["a"]]


def test_a_send_past_its_address_byte_rate_is_answered_later() -> None:
    directory = FakeDirectory()
    asked: list[tuple[str, int]] = []

    def throttle(address: str) -> Any:
        return lambda size: asked.append((address, size)) or 0.3

    started = time.monotonic()
    assert call(handler(directory, throttle=throttle), "/sockjs/1/abc/xhr_send", b'["a"]')[0] == (
        "204 No Content"
    )
    assert time.monotonic() - started >= 0.3
    assert asked == [("10.0.0.1", 5)]
