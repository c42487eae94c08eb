"""The HTTP side of SockJS's fallback transports: one request in, one WSGI answer out.

Layer: runtime. ``Handler`` answers ``/sockjs/<server>/<session>/<transport>`` requests with
the status, headers and bodies sockjs-node gives (the reference is the ``sockjs-protocol``
suite): CORS preflights, the receiving transports (a body iterated from the session's
``HttpTransport``), and the sends (``xhr_send`` 204, ``jsonp_send`` "ok", a bad body 500,
an unknown session 404, a coordinator or inbox that cannot be reached 503). Bounds: a
send's body is read up to ``max_message_bytes`` plus framing; a larger one is not read
(the connection is shut after the answer) and the session is told as for a WebSocket
message too large (a DDP ``error``); a send's bytes count against its address's inbound
rate (``RELAY_INBOUND_BYTES_PER_ADDRESS``): past it, the answer comes that much later.
Origins: ``RELAY_ALLOWED_ORIGINS`` as for a WebSocket
upgrade (403 otherwise), and a request another site's page makes without an ``Origin`` (a
jsonp script, an htmlfile frame: ``Sec-Fetch-Site: cross-site``) only when it allows any.

Must not: hold sessions (``relay.httpsession.directory``) or frame DDP messages.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import gevent

from relay.backend import Handshake
from relay.httpsession.directory import Directory, Unavailable
from relay.protocol.errors import FramingError
from relay.protocol.sockjs import (
    HttpKind,
    SessionPath,
    callback_error,
    decode_send_body,
    encode_for,
    prelude,
)
from relay.transport.base import Inbound, Oversized
from relay.transport.endpoints import NO_CACHE, cors_headers, preflight_headers, text_response
from relay.transport.handshake import origin_allowed

__all__ = ["Handler"]

StartResponse = Callable[..., Any]

#: Longest a send is held back for its address's byte rate (seconds).
_MAX_THROTTLE: Final = 10.0
#: Bytes of JSON framing allowed around a send's largest message (quotes, escapes).
_FRAMING_SLACK: Final = 65_536

_CONTENT_TYPES: Final = {
    HttpKind.XHR: "application/javascript; charset=UTF-8",
    HttpKind.XHR_STREAMING: "application/javascript; charset=UTF-8",
    # No charset: sockjs-node sends none, and EventSource is always UTF-8.
    HttpKind.EVENTSOURCE: "text/event-stream",
    HttpKind.HTMLFILE: "text/html; charset=UTF-8",
    HttpKind.JSONP: "application/javascript; charset=UTF-8",
}
_METHODS: Final = {
    HttpKind.XHR: "POST",
    HttpKind.XHR_STREAMING: "POST",
    HttpKind.XHR_SEND: "POST",
    HttpKind.JSONP_SEND: "POST",
    HttpKind.EVENTSOURCE: "GET",
    HttpKind.HTMLFILE: "GET",
    HttpKind.JSONP: "GET",
}


def _text(
    start_response: StartResponse, status: str, body: str, extra: list[tuple[str, str]]
) -> Iterable[bytes]:
    status, headers, data = text_response(status, body, extra)
    start_response(status, headers)
    return [data]


class Handler:
    """Answers the SockJS HTTP-transport requests of one worker."""

    def __init__(
        self,
        directory: Directory,
        max_message_bytes: int,
        count: Callable[[str], None] = lambda transport: None,
        allowed_origins: Sequence[str] = ("*",),
        throttle: Callable[[str], Callable[[int], float] | None] = lambda address: None,
    ) -> None:
        self.directory = directory
        self.max_message_bytes = max_message_bytes
        #: ``RELAY_ALLOWED_ORIGINS``, as for a WebSocket upgrade.
        self.allowed_origins = tuple(allowed_origins)
        #: The inbound byte rate of a client address (``Gate.read_throttle``): a send
        #: past it is answered that much later (its client sends one at a time).
        self.throttle = throttle
        #: Called with each request's transport name (the metrics' label).
        self.count = count

    def __call__(
        self,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        path: SessionPath,
        handshake: Handshake,
    ) -> Iterable[bytes]:
        if not self._origin_allowed(environ):
            # As for a WebSocket upgrade: a page of another site must not read or drive
            # a session its visitor's cookies would log in.
            return _text(start_response, "403 Forbidden", "origin not allowed\n", [])
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        kind = path.kind
        allowed = _METHODS[kind]
        if method == "OPTIONS":
            return self._options(environ, start_response, allowed)
        if method != allowed:
            start_response("405 Method Not Allowed", [("Allow", f"OPTIONS, {allowed}")])
            return [b""]
        self.count(kind.value)
        if kind.receiving:
            return self._receive(environ, start_response, path, handshake)
        return self._send(environ, start_response, path, handshake.remote_addr)

    def _origin_allowed(self, environ: Mapping[str, Any]) -> bool:
        if not origin_allowed(environ, self.allowed_origins):
            return False
        # A script or iframe of another site (jsonp, htmlfile) sends no Origin; the
        # browser says where it comes from in Sec-Fetch-Site.
        cross = str(environ.get("HTTP_SEC_FETCH_SITE", "")) == "cross-site"
        return not (cross and not environ.get("HTTP_ORIGIN") and "*" not in self.allowed_origins)

    def _options(
        self, environ: Mapping[str, Any], start_response: StartResponse, allowed: str
    ) -> Iterable[bytes]:
        start_response("204 No Content", preflight_headers(environ, allowed))
        return [b""]

    def _receive(
        self,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        path: SessionPath,
        handshake: Handshake,
    ) -> Iterable[bytes]:
        kind = path.kind
        callback = ""
        if kind.needs_callback:
            query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
            callback = (query.get("c") or query.get("callback") or [""])[0]
            error = callback_error(callback)
            if error is not None:
                return _text(start_response, "500 Internal Server Error", error, [])
        found = self.directory.receive(path.session, handshake)
        headers = [
            ("Content-Type", _CONTENT_TYPES[kind]),
            ("Cache-Control", NO_CACHE),
            *cors_headers(environ),
        ]
        start_response("200 OK", headers)
        if isinstance(found, str):
            return _one_frame(kind, found, callback)
        return found.receive_frames(kind, callback, environ.get("gunicorn.socket"))

    def _send(
        self,
        environ: Mapping[str, Any],
        start_response: StartResponse,
        path: SessionPath,
        address: str,
    ) -> Iterable[bytes]:
        kind = path.kind
        headers = [("Cache-Control", NO_CACHE), *cors_headers(environ)]
        limit = self.max_message_bytes + _FRAMING_SLACK
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        texts: list[Inbound]
        if length > limit:
            # Not read: the answer closes the connection instead. The session says why,
            # as for a WebSocket message over the limit.
            texts = [Oversized(length, self.max_message_bytes, "")]
        else:
            stream = environ.get("wsgi.input")
            raw = stream.read(length) if stream is not None and length > 0 else b""
            throttle = self.throttle(address)
            wait = throttle(len(raw)) if throttle is not None else 0.0
            if wait > 0:
                gevent.sleep(min(wait, _MAX_THROTTLE))
            body = raw.decode("utf-8", "replace")
            if kind is HttpKind.JSONP_SEND and str(environ.get("CONTENT_TYPE", "")).startswith(
                "application/x-www-form-urlencoded"
            ):
                body = (urllib.parse.parse_qs(body).get("d") or [""])[0]
            try:
                texts = list[Inbound](decode_send_body(body))
            except FramingError as exc:
                return _text(start_response, "500 Internal Server Error", exc.reason, headers)
        try:
            found = self.directory.send(path.session, texts)
        except Unavailable:
            return _text(start_response, "503 Service Unavailable", "try again\n", headers)
        if not found:
            return _text(start_response, "404 Not Found", "", headers)
        if length > limit:
            # Unread: the rest of the body is not drained (gunicorn would, for the next
            # request): the connection ends after this answer.
            return _closing(_text(start_response, "204 No Content", "", headers), environ)
        if kind is HttpKind.JSONP_SEND:
            return _text(start_response, "200 OK", "ok", headers)
        start_response("204 No Content", [("Content-Type", "text/plain; charset=UTF-8"), *headers])
        return [b""]


class _closing:
    """A response whose connection is shut once it is written (``close``, as WSGI calls
    it), so that an unread request body is never read."""

    def __init__(self, body: Iterable[bytes], environ: Mapping[str, Any]) -> None:
        self.body = body
        self.sock = environ.get("gunicorn.socket")

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _one_frame(kind: HttpKind, frame: str, callback: str) -> Iterator[bytes]:
    head = prelude(kind, callback)
    if head:
        yield head.encode()
    yield encode_for(kind, frame, callback).encode()
