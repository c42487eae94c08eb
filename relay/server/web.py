"""The web tier's WSGI app: the Django project's, behind a health path it answers itself.

Layer: composition, for ``ddp-relay web`` (gunicorn's threaded workers, no gevent). A load
balancer's health check and the kubelet's probes reach a pod by its IP, which Django's
``ALLOWED_HOSTS`` refuses with 400 (and ``SECURE_SSL_REDIRECT`` answers with 301): neither
says whether the process serves. ``HEALTH_PATH`` is answered here, before the project,
whatever the ``Host``; every other request goes to the project (``RELAY_WSGI_APP``).

Must not: import Django (the project is loaded by its dotted path), do I/O per health
request, or answer anything but ``HEALTH_PATH``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from relay.server.app import load

#: The one path the web tier answers itself (the relays' liveness path, for symmetry).
HEALTH_PATH: Final = "/livez"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WebApp:
    """``app`` with ``HEALTH_PATH`` answered "ok" (200) for any method and ``Host``."""

    __slots__ = ("app",)

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            start_response(
                "200 OK",
                [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")],
            )
            return [b"ok\n"]
        return self.app(environ, start_response)


def create_app(path: str | None = None) -> WebApp:
    """The project's WSGI app (``path``, default ``RELAY_WSGI_APP``) behind the health path."""
    target = path if path is not None else os.environ.get("RELAY_WSGI_APP", "")
    if not target:
        raise RuntimeError("RELAY_WSGI_APP is empty: the web tier has no Django project to serve")
    app: WSGIApp = load(target)
    return WebApp(app)
