"""The composition root: a WSGI application serving DDP, SockJS, metrics and health.

Layer: composition. ``create_app()`` reads the settings once, loads the backend and the fallback
WSGI app by dotted path (so ``relay`` never imports Django), starts the worker's node and
returns the WSGI callable gunicorn serves. DDP sockets (``/websocket``, ``/sockjs/...``)
are taken over from gunicorn; every other request goes to the fallback app (the Django
project), but for the health and metrics endpoints, answered here:

- with ``RELAY_INTERNAL_PORT`` set, gunicorn binds a second listener and a request is
  told apart by the port of the listener it came in on (``SERVER_PORT``, which gunicorn
  takes from the listening socket, never from a header). The internal port serves
  ``/metrics``, ``/livez`` (``/healthz``), ``/readyz`` (JSON, ``relay.server.health``) and
  ``/startupz``, and nothing else (404); the public port serves DDP, the fallback app, and
  ``/readyz`` as a terse ``ready``/``not ready`` for the load balancer, and answers
  ``/metrics`` with 404;
- with it at 0 (``make run``, small installs) one port serves all of it.

At start it also sets ``ddp_relay_build_info`` (the relay's, Python's and Django's
versions: Django's read from its installed metadata, not imported).

Must not: monkey-patch (only ``relay.server.worker`` does), hold protocol logic, or do
database work for a health request (``relay.server.readiness`` reads memory and files).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import logging
import os
import platform
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any

import relay
from relay import metrics
from relay.backend import Backend, Handshake
from relay.config import Settings
from relay.limits import client_address
from relay.protocol.sockjs import session_path
from relay.server.health import Verdict
from relay.server.node import Node
from relay.transport import RawTransport, SockJSTransport, Transport, endpoints, handshake

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def load(path: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted)."""
    module_name, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _not_found(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"Not found\n"]


def handshake_of(environ: dict[str, Any], forwarded_count: int = 0) -> Handshake:
    """The parts of the upgrade request a backend may use to identify the user.

    ``remote_addr`` is the client's address: the socket's, or with ``forwarded_count``
    trusted proxies in front (``RELAY_FORWARDED_COUNT``, Meteor's ``HTTP_FORWARDED_COUNT``)
    the entry they appended to ``X-Forwarded-For``; ``""`` when that header has fewer.
    """
    headers = {
        key[5:].replace("_", "-").lower(): str(value)
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    cookies: dict[str, str] = {}
    raw = headers.get("cookie")
    if raw:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except Exception:  # a malformed Cookie header means no cookies, not a crash
            jar = SimpleCookie()
        cookies = {key: morsel.value for key, morsel in jar.items()}
    return Handshake(
        headers=headers,
        cookies=cookies,
        remote_addr=client_address(
            str(environ.get("REMOTE_ADDR", "")), headers.get("x-forwarded-for"), forwarded_count
        )
        or "",
        path=str(environ.get("PATH_INFO", "")),
    )


class RelayApp:
    """The WSGI callable. ``node`` is exposed for the gunicorn worker's graceful drain."""

    def __init__(self, settings: Settings, node: Node, fallback: WSGIApp) -> None:
        self.settings = settings
        self.node = node
        self.fallback = fallback

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        split = self.settings.internal_port != 0
        if split and environ.get("SERVER_PORT") == str(self.settings.internal_port):
            answer = self._internal(environ, start_response)
            return _not_found(environ, start_response) if answer is None else answer
        route = endpoints.route(environ)
        if route in (endpoints.Route.DDP_WEBSOCKET, endpoints.Route.SOCKJS_WEBSOCKET):
            return self._websocket(environ, start_response, route)
        if route is endpoints.Route.SOCKJS_HTTP and self.node.http_handler is not None:
            path = session_path(str(environ.get("PATH_INFO", "")))
            if path is not None:
                request = handshake_of(environ, self.settings.forwarded_count)
                return self.node.http_handler(environ, start_response, path, request)
        if route is endpoints.Route.OTHER:
            path = environ.get("PATH_INFO", "")
            if not split:
                answer = self._internal(environ, start_response)
                return self.fallback(environ, start_response) if answer is None else answer
            if path == "/readyz":
                verdict = self.node.health.readiness()
                text = "ready\n" if verdict.ok else "not ready\n"
                return _text(start_response, verdict.http_status, text)
            if path == "/metrics":
                return _not_found(environ, start_response)
            return self.fallback(environ, start_response)
        status, headers, body = endpoints.respond(environ, route)
        start_response(status, headers)
        return [body]

    def _internal(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes] | None:
        """The metrics and health endpoints; None for any other path."""
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if not self.settings.metrics:
                return _not_found(environ, start_response)
            body, content_type = metrics.render()
            start_response("200 OK", [("Content-Type", content_type)])
            return [body]
        health = self.node.health
        if path in ("/livez", "/healthz"):
            verdict = health.liveness()
            return _text(start_response, verdict.http_status, _line(verdict))
        if path == "/startupz":
            verdict = health.startup()
            return _text(start_response, verdict.http_status, _line(verdict))
        if path == "/readyz":
            verdict = health.readiness()
            body = json.dumps(verdict.body, indent=1, sort_keys=True).encode() + b"\n"
            start_response(
                verdict.http_status,
                [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
            )
            return [body]
        return None

    def _websocket(
        self, environ: dict[str, Any], start_response: StartResponse, route: endpoints.Route
    ) -> Iterable[bytes]:
        if not self.node.ready:
            return _text(start_response, "503 Service Unavailable", "draining\n")
        if len(self.node.sessions) >= self.settings.worker_connections:
            return _text(start_response, "503 Service Unavailable", "too many connections\n")
        request = handshake_of(environ, self.settings.forwarded_count)
        kind = "sockjs-websocket" if route is endpoints.Route.SOCKJS_WEBSOCKET else "websocket"
        self.node.metrics.transport_requests.labels(transport=kind).inc()
        gate = self.node.gate
        if not gate.open_socket(request.remote_addr):
            # 429, not 503: a load balancer retries a 503 on another relay.
            return _text(start_response, "429 Too Many Requests", "too many connections\n")
        try:
            accepted = handshake.accept(
                environ,
                self.settings,
                gate.send_budget,
                gate.read_throttle(request.remote_addr),
            )
            if isinstance(accepted, handshake.HandshakeRefusal):
                gate.socket_closed(request.remote_addr)
                start_response(accepted.status, list(accepted.headers))
                return [accepted.body]
            transport: Transport
            if route is endpoints.Route.SOCKJS_WEBSOCKET:
                transport = SockJSTransport(
                    accepted, self.settings.sockjs_heartbeat, self.node.sockjs_heartbeats
                )
            else:
                transport = RawTransport(accepted)
            ended = self.node.adopt(transport, request)
        except Exception:
            # Counted at the upgrade: given back exactly once, here or when it ends.
            gate.socket_closed(request.remote_addr)
            raise
        ended.rawlink(lambda _: gate.socket_closed(request.remote_addr))
        if not accepted.owns_socket:
            # A TLS socket stays gunicorn's: keep this handler until the session is over.
            ended.wait()
        # The socket was taken over (or is done): gunicorn's async worker must write no
        # response. With its own descriptor the WebSocket lives on after this handler, and
        # the handler's greenlet, environ and request objects are freed.
        raise StopIteration()


def _text(start_response: StartResponse, status: str, text: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def _line(verdict: Verdict) -> str:
    return f"{verdict.status}: {verdict.reason}\n"


def create_app(settings: Settings | None = None) -> RelayApp:
    """Build the relay for this worker process (gunicorn calls this after the fork)."""
    settings = settings or Settings.from_env()
    backend_factory: Callable[[], Backend] = load(settings.backend)
    backend = backend_factory()
    fallback: WSGIApp = load(settings.wsgi_app) if settings.wsgi_app else _not_found
    # Made by the gunicorn master (relay.server.gunicorn_conf) for its workers' reports.
    node = Node(settings, backend, os.environ.get("RELAY_HEALTH_DIR", ""))
    metrics.set_build_info(
        node.metrics, relay.__version__, platform.python_version(), _version("django")
    )
    node.start()
    return RelayApp(settings, node, fallback)


def _version(distribution: str) -> str:
    """An installed distribution's version, or ``"none"``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"
