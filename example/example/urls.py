"""URLs of the example project: the live demo page at ``/`` (``demo``), the admin, and
the static files both need.

The DDP endpoints (``/websocket``, ``/sockjs/...``) are served by the relay in front of
this WSGI app, not by Django.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import URLPattern, URLResolver, include, path, re_path

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("demo.urls")),
    path("admin/", admin.site.urls),
]

if settings.DEMO_SERVE_STATIC:
    # Demo only: staticfiles' finder-based view, allowed without DEBUG (see settings.py).
    urlpatterns.append(
        re_path(
            rf"^{settings.STATIC_URL.lstrip('/')}(?P<path>.*)$",
            serve_static,
            {"insecure": True},
        )
    )
