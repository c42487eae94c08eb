"""Which relay endpoint a WSGI request is for, and the plain-HTTP SockJS answers.

Layer: runtime (HTTP only: no sockets, no greenlets). ``route`` classifies ``PATH_INFO``
(the query string is never part of it: ``/sockjs/info?t=...`` is still INFO). The
``*_response`` helpers return ``(status, headers, body)`` for the SockJS endpoints that
are plain HTTP, with the headers sockjs-node sends (reference ``ddp-protocol.md`` 2.1).
The WebSocket upgrades are ``relay.transport.handshake``'s job; everything else goes to Django.

A session's HTTP transports (xhr, xhr_send, eventsource, ...) are ``relay.httpsession``'s;
the iframe pages (they would load the SockJS client from a CDN) and ``chunking_test``,
and the HTTP transports when they are off, get a 404 that sockjs-client treats as "this
transport failed".
"""

from __future__ import annotations

import email.utils
import enum
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any, Final

from relay.protocol import sockjs

__all__ = [
    "FALLBACK_MESSAGE",
    "NO_CACHE",
    "Response",
    "Route",
    "cors_headers",
    "fallback_response",
    "info_response",
    "preflight_headers",
    "respond",
    "route",
    "text_response",
    "welcome_response",
]

#: (status line, headers, body) for a WSGI ``start_response`` and a one-item iterable.
Response = tuple[str, list[tuple[str, str]], bytes]

FALLBACK_MESSAGE: Final = (
    "ddp-relay: this SockJS transport is not served here (the iframe transports are not;"
    " the HTTP transports only when RELAY_SOCKJS_HTTP is on); use the websocket transport"
)
#: What a SockJS answer that must never be cached says (sockjs-node's).
NO_CACHE: Final = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
#: sockjs-node's ``cache_for`` default: one year, for the OPTIONS preflight answer.
_CACHE_FOR_SECONDS: Final = 365 * 24 * 60 * 60


class Route(enum.Enum):
    """What the relay does with a request."""

    #: ``/websocket``, ``/websocket/``, ``/sockjs/websocket[/]``: raw DDP over WebSocket.
    DDP_WEBSOCKET = "ddp_websocket"
    #: ``/sockjs/<server>/<session>/websocket``: DDP in SockJS frames over WebSocket.
    SOCKJS_WEBSOCKET = "sockjs_websocket"
    #: ``/sockjs/info``: JSON describing the SockJS server.
    SOCKJS_INFO = "sockjs_info"
    #: ``/sockjs``: the welcome text.
    SOCKJS_WELCOME = "sockjs_welcome"
    #: A SockJS session's HTTP transport (xhr, xhr_send, xhr_streaming, eventsource,
    #: htmlfile, jsonp, jsonp_send): ``relay.httpsession`` (a 404 when they are disabled).
    SOCKJS_HTTP = "sockjs_http"
    #: The iframe pages and chunking_test: refused with a 404.
    SOCKJS_FALLBACK = "sockjs_fallback"
    #: Not ours: the app hands it to Django.
    OTHER = "other"


_FROM_SOCKJS: Final = {
    sockjs.SockJSRoute.RAW_WEBSOCKET: Route.DDP_WEBSOCKET,
    sockjs.SockJSRoute.WEBSOCKET: Route.SOCKJS_WEBSOCKET,
    sockjs.SockJSRoute.INFO: Route.SOCKJS_INFO,
    sockjs.SockJSRoute.WELCOME: Route.SOCKJS_WELCOME,
    sockjs.SockJSRoute.HTTP: Route.SOCKJS_HTTP,
    sockjs.SockJSRoute.FALLBACK: Route.SOCKJS_FALLBACK,
    sockjs.SockJSRoute.NOT_FOUND: Route.OTHER,
}


def route(environ: Mapping[str, Any], prefix: str = "/sockjs") -> Route:
    """Classify a request by its ``PATH_INFO``."""
    path = str(environ.get("PATH_INFO", ""))
    # Meteor rewrites /websocket to /sockjs/websocket (_redirectWebsocketEndpoint).
    if path in ("/websocket", "/websocket/"):
        return Route.DDP_WEBSOCKET
    return _FROM_SOCKJS[sockjs.parse_path(path, prefix)]


def cors_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """sockjs-node's xhr_cors: echo the Origin (credentials allowed) or "*" without one,
    and the headers a preflight asks for."""
    origin = str(environ.get("HTTP_ORIGIN", ""))
    headers = [("Access-Control-Allow-Origin", origin or "*")]
    if origin:
        headers.append(("Access-Control-Allow-Credentials", "true"))
    headers.append(("Vary", "Origin"))
    requested = str(environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", ""))
    if requested:
        headers.append(("Access-Control-Allow-Headers", requested))
    return headers


def text_response(status: str, body: str, headers: list[tuple[str, str]]) -> Response:
    """A plain-text answer (UTF-8, with its length) with ``headers`` added."""
    data = body.encode("utf-8")
    return (
        status,
        [
            ("Content-Type", "text/plain; charset=UTF-8"),
            ("Content-Length", str(len(data))),
            *headers,
        ],
        data,
    )


def _method(environ: Mapping[str, Any]) -> str:
    return str(environ.get("REQUEST_METHOD", "GET")).upper()


def preflight_headers(environ: Mapping[str, Any], allowed: str) -> list[tuple[str, str]]:
    """A CORS preflight's answer for a route that allows ``allowed`` (and OPTIONS),
    cacheable for a year as sockjs-node's."""
    return [
        ("Cache-Control", f"public, max-age={_CACHE_FOR_SECONDS}"),
        ("Expires", email.utils.formatdate(time.time() + _CACHE_FOR_SECONDS, usegmt=True)),
        ("Access-Control-Max-Age", str(_CACHE_FOR_SECONDS)),
        ("Access-Control-Allow-Methods", f"OPTIONS, {allowed}"),
        *cors_headers(environ),
    ]


def info_response(environ: Mapping[str, Any], entropy: int | None = None) -> Response:
    """``/sockjs/info``: GET → the JSON document, OPTIONS → 204 preflight, else 405."""
    method = _method(environ)
    if method == "OPTIONS":
        return ("204 No Content", preflight_headers(environ, "GET"), b"")
    if method not in ("GET", "HEAD"):
        return text_response("405 Method Not Allowed", "", [("Allow", "OPTIONS, GET")])
    document = sockjs.info(secrets.randbits(32) if entropy is None else entropy)
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    headers = [
        ("Content-Type", "application/json; charset=UTF-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", NO_CACHE),
        *cors_headers(environ),
    ]
    return ("200 OK", headers, body)


def welcome_response(environ: Mapping[str, Any]) -> Response:
    """``/sockjs``: the text sockjs-node greets with."""
    if _method(environ) not in ("GET", "HEAD"):
        return text_response("405 Method Not Allowed", "", [("Allow", "GET")])
    return text_response("200 OK", "Welcome to SockJS!\n", [])


def fallback_response(environ: Mapping[str, Any]) -> Response:
    """A polling/streaming SockJS transport: 404, so the client gives that transport up."""
    return text_response("404 Not Found", FALLBACK_MESSAGE + "\n", cors_headers(environ))


def respond(environ: Mapping[str, Any], kind: Route) -> Response:
    """The answer for a plain-HTTP SockJS route (INFO, WELCOME, or FALLBACK and HTTP: 404)."""
    if kind is Route.SOCKJS_INFO:
        return info_response(environ)
    if kind is Route.SOCKJS_WELCOME:
        return welcome_response(environ)
    if kind in (Route.SOCKJS_FALLBACK, Route.SOCKJS_HTTP):
        return fallback_response(environ)
    raise ValueError(f"{kind} is not a plain-HTTP SockJS route")
