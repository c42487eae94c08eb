"""The WebSocket opening handshake: turn a WSGI upgrade request into a ``WebSocket``.

Layer: runtime (gevent + wsproto). ``accept`` validates the upgrade request (method,
``Upgrade``/``Connection`` tokens, version, key), checks the Origin (``origin_allowed``),
negotiates permessage-deflate, writes the ``101`` itself on gunicorn's raw socket
(``environ["gunicorn.socket"]``) and hands the socket to ``relay.transport.websocket.WebSocket``.
A request it will not upgrade gets a ``HandshakeRefusal``: an HTTP response for the
caller to send, written before any WebSocket byte.

``accept`` duplicates gunicorn's descriptor (``_own_descriptor``) so that the WebSocket
can outlive the request handler, and passes on any bytes gunicorn already read past the
headers (``_take_buffered``).

Must not: read or write frames, or keep any state about a connection once ``accept``
returns: everything after the ``101`` is ``relay.transport.websocket``'s. This module imports
``relay.transport.websocket`` (the connection and its inbound inflater, ``_BoundedDeflate``), never
the reverse. Like it, it must not monkey-patch or spawn anything at import.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import gevent.socket
from wsproto.extensions import PerMessageDeflate

from relay.config import Settings
from relay.limits.budget import ByteBudget
from relay.transport.websocket import WebSocket, _BoundedDeflate, _is_tls

__all__ = [
    "HandshakeRefusal",
    "accept",
    "origin_allowed",
]

_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Versions sockjs-node (and so Meteor) accepts; 8 is draft-10 but frames identically.
_VERSIONS: Final = frozenset({"13", "8"})
_DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """An upgrade request refused before any WebSocket byte was sent: an HTTP response."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


def _refuse(status: str, message: str, extra: Sequence[tuple[str, str]] = ()) -> HandshakeRefusal:
    body = message.encode("utf-8") + b"\n"
    headers = [
        ("Content-Type", "text/plain; charset=UTF-8"),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    return HandshakeRefusal(status, headers, body)


def _tokens(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in lower case with a default port dropped; None if not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if not scheme or not host:
        return None
    if ":" in host:  # an IPv6 literal lost its brackets in urlsplit
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(environ: Mapping[str, Any], allowed_origins: Sequence[str]) -> bool:
    """Whether a browser on ``Origin`` may open a socket here (cross-site hijacking guard).

    No Origin header: allowed, browsers always send one and other clients cannot be
    stopped this way. An Origin naming this request's own Host (same site): allowed.
    ``"*"`` in ``allowed_origins``: allowed. Otherwise the Origin must equal one entry
    (``scheme://host[:port]``, case and default ports ignored).
    """
    raw = environ.get("HTTP_ORIGIN")
    if not raw:
        return True
    if "*" in allowed_origins:
        return True
    origin = _normalize_origin(raw)
    if origin is None:  # "null" (sandboxed frames, file://) and garbage
        return raw.strip() in allowed_origins
    host = str(environ.get("HTTP_HOST", "")).strip().lower()
    if host:
        scheme = origin.split("://", 1)[0]
        if _normalize_origin(f"{scheme}://{host}") == origin:
            return True
    return any(_normalize_origin(entry) == origin for entry in allowed_origins)


def _check_upgrade(environ: Mapping[str, Any]) -> HandshakeRefusal | None:
    if environ.get("REQUEST_METHOD") != "GET" or environ.get("SERVER_PROTOCOL") != "HTTP/1.1":
        return _refuse("400 Bad Request", "Can only upgrade a GET HTTP/1.1 request to WebSocket.")
    if "websocket" not in _tokens(str(environ.get("HTTP_UPGRADE", ""))):
        return _refuse("400 Bad Request", 'Can "Upgrade" only to "WebSocket".')
    if "upgrade" not in _tokens(str(environ.get("HTTP_CONNECTION", ""))):
        return _refuse("400 Bad Request", '"Connection" must be "Upgrade".')
    if str(environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")).strip() not in _VERSIONS:
        return _refuse(
            "426 Upgrade Required",
            "Unsupported WebSocket version.",
            [("Sec-WebSocket-Version", "13")],
        )
    try:
        key = base64.b64decode(
            str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip(), validate=True
        )
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 16:
        return _refuse("400 Bad Request", "Invalid Sec-WebSocket-Key.")
    return None


def _negotiate_deflate(header: str, limit: int) -> tuple[_BoundedDeflate, str] | None:
    """The first acceptable permessage-deflate offer: (extension, response header value)."""
    for offer in header.split(","):
        if offer.split(";", 1)[0].strip().lower() != PerMessageDeflate.name:
            continue
        extension = _BoundedDeflate(limit)  # accept() mutates: a fresh one per offer
        try:
            params = extension.accept(offer)
        except ValueError:  # e.g. "client_max_window_bits=x"
            continue
        if params is None or params is False:
            continue
        if isinstance(params, str) and params:
            return extension, f"{PerMessageDeflate.name}; {params}"
        return extension, PerMessageDeflate.name
    return None


def _take_buffered(environ: Mapping[str, Any]) -> bytes:
    # gunicorn reads the socket in 8 KiB chunks and keeps what follows the headers in the
    # parser's unreader, reachable as wsgi.input -> Body.reader -> unreader. A client must
    # wait for the 101 before sending frames, so this is empty in practice, but a
    # pipelining client would otherwise lose its first frames.
    reader = getattr(environ.get("wsgi.input"), "reader", None)
    take = getattr(getattr(reader, "unreader", None), "take_buffered", None)
    if callable(take):
        data = take()
        if isinstance(data, bytes):
            return data
    return b""


def _own_descriptor(sock: Any) -> Any:
    """A gevent socket on a duplicate of ``sock``'s descriptor, or None for TLS sockets.

    gunicorn closes its socket when the request handler returns. With a descriptor of its
    own the WebSocket outlives the handler, so the handler's greenlet, the WSGI environ and
    gunicorn's request objects (about 10 KiB per connection) are freed while the socket
    lives on (``WebSocket.start``). A TLS socket cannot be shared this way: it stays
    gunicorn's, and its handler stays for the connection's life.
    """
    if _is_tls(sock) or not hasattr(sock, "fileno"):
        return None
    try:
        fd = os.dup(sock.fileno())
    except OSError:
        return None
    return gevent.socket.socket(fileno=fd)


def accept(
    environ: Mapping[str, Any],
    settings: Settings,
    send_budget: ByteBudget | None = None,
    read_throttle: Callable[[int], float] | None = None,
) -> WebSocket | HandshakeRefusal:
    """Upgrade this WSGI request to a WebSocket, or say why not as an HTTP response.
    ``send_budget`` is the worker's budget of queued outbound bytes (all its sockets);
    ``read_throttle`` slows the reading of a client over its byte rate (``WebSocket``).

    Refusals: 400 for a malformed upgrade, 426 (with ``Sec-WebSocket-Version: 13``) for
    an unsupported version, 403 for a foreign Origin, 500 when not run under gunicorn's
    gevent worker. On success the ``101`` has been written; the app must not call
    ``start_response`` and must end the request with ``raise StopIteration`` once the
    socket is done (``WebSocket.wait_closed``), so that gunicorn writes nothing more.
    """
    refusal = _check_upgrade(environ)
    if refusal is not None:
        return refusal
    if not origin_allowed(environ, settings.allowed_origins):
        return _refuse("403 Forbidden", "Origin not allowed.")
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return _refuse("500 Internal Server Error", "No raw socket: run under gunicorn -k gevent.")

    key = str(environ["HTTP_SEC_WEBSOCKET_KEY"]).strip().encode("ascii")
    token = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest()).decode("ascii")
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {token}",
    ]
    extension: _BoundedDeflate | None = None
    if settings.permessage_deflate:
        negotiated = _negotiate_deflate(
            str(environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")), settings.max_message_bytes
        )
        if negotiated is not None:
            extension, value = negotiated
            lines.append(f"Sec-WebSocket-Extensions: {value}")
    owned = _own_descriptor(sock)
    ws = WebSocket(
        owned or sock,
        owns_socket=owned is not None,
        max_message_bytes=settings.max_message_bytes,
        send_buffer_bytes=settings.send_buffer_bytes,
        extension=extension,
        compress_threshold=settings.deflate_threshold,
        initial_data=_take_buffered(environ),
        send_budget=send_budget,
        read_throttle=read_throttle,
    )
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    except OSError:
        # The client left during the handshake: hand back a socket that is already
        # closed, so the caller's normal "receive() returned None" path cleans up.
        ws.abort()
    return ws
