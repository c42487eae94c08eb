"""The web tier's WSGI app: its health path before the project, everything else to it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.server import web


def _project(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    # Django's answer to a Host outside ALLOWED_HOSTS, on every path.
    start_response("400 Bad Request", [("Content-Type", "text/html")])
    return [b"<h1>Bad Request (400)</h1>"]


def _call(app: web.WebApp, path: str, host: str = "10.0.0.7") -> tuple[str, bytes]:
    seen: list[str] = []
    body = b"".join(
        app(
            {"PATH_INFO": path, "HTTP_HOST": host, "REQUEST_METHOD": "GET"},
            lambda s, h: seen.append(s),
        )
    )
    return seen[0], body


def test_the_health_path_is_answered_whatever_the_host() -> None:
    assert _call(web.WebApp(_project), web.HEALTH_PATH) == ("200 OK", b"ok\n")


@given(st.text(max_size=50).filter(lambda p: p != web.HEALTH_PATH), st.text(max_size=30))
def test_every_other_path_is_the_projects(path: str, host: str) -> None:
    assert _call(web.WebApp(_project), path, host) == (
        "400 Bad Request",
        b"<h1>Bad Request (400)</h1>",
    )


def test_create_app_loads_the_project_by_its_dotted_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_WSGI_APP", f"{__name__}:_project")
    assert web.create_app().app is _project
    assert web.create_app(f"{__name__}:_project").app is _project


def test_create_app_refuses_an_empty_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_WSGI_APP", "")
    with pytest.raises(RuntimeError, match="RELAY_WSGI_APP is empty"):
        web.create_app()
