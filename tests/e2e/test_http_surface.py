"""The relay's HTTP side as users meet it: Django admin login, the session cookie on the
DDP upgrade, Origin checks, SockJS info, metrics and health endpoints."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from typing import Any

import pytest
import websocket

from relay.client import DDPClient

pytestmark = pytest.mark.e2e


def admin_session_cookie(base: str, password: str = "ddp-relay-demo") -> str:
    """Log in through the Django admin's login form, as a person would."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/admin/login/?next=/admin/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    form = urllib.parse.urlencode(
        {
            "csrfmiddlewaretoken": token.group(1),
            "username": "admin",
            "password": password,
            "next": "/admin/",
        }
    ).encode()
    request = urllib.request.Request(f"{base}/admin/login/", data=form, headers={"Referer": base})
    with opener.open(request, timeout=10) as resp:
        assert resp.status == 200 and "/admin/" in resp.url
    cookies = {c.name: c.value for c in jar}
    assert "sessionid" in cookies
    return cookies["sessionid"]


def test_session_cookie_identifies_the_user(relay_server: Any) -> None:
    session_id = admin_session_cookie(relay_server.url)
    client = DDPClient(relay_server.ws_url, headers=[f"Cookie: sessionid={session_id}"])
    client.connect()
    try:
        assert client.call("users.whoami")["username"] == "admin"
    finally:
        client.close()
    anonymous = DDPClient(relay_server.ws_url)
    anonymous.connect()
    try:
        assert anonymous.call("users.whoami") == {"userId": None, "username": None}
    finally:
        anonymous.close()


def test_foreign_origin_is_refused_and_same_origin_allowed(relay_server: Any) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        websocket.create_connection(
            relay_server.ws_url, origin="http://evil.example", timeout=5
        ).close()
    assert info.value.status_code == 403
    ws = websocket.create_connection(relay_server.ws_url, origin=relay_server.url, timeout=5)
    ws.send(json.dumps({"msg": "connect", "version": "1", "support": ["1"]}))
    assert json.loads(ws.recv())["msg"] == "connected"
    ws.close()


def test_sockjs_info_welcome_and_fallbacks(relay_server: Any) -> None:
    with urllib.request.urlopen(f"{relay_server.url}/sockjs/info?cb=x1y2", timeout=5) as resp:
        info = json.loads(resp.read())
        assert resp.headers["Cache-Control"].startswith("no-store")
    assert info["websocket"] is True and info["cookie_needed"] is False
    with urllib.request.urlopen(f"{relay_server.url}/sockjs", timeout=5) as resp:
        assert resp.read() == b"Welcome to SockJS!\n"
    # The HTTP transports are served (relay.httpsession); the iframe page is not.
    request = urllib.request.Request(f"{relay_server.url}/sockjs/000/abcdefgh/xhr", method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.read() == b"o\n"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{relay_server.url}/sockjs/iframe.html", timeout=5)
    assert err.value.code == 404
    assert b"not served" in err.value.read()


def test_metrics_and_health(relay_server: Any) -> None:
    client = DDPClient(relay_server.ws_url)
    client.connect()
    client.subscribe("books.all")
    client.close()
    with urllib.request.urlopen(f"{relay_server.url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert "ddp_relay_sessions_opened_total" in text
    assert "ddp_relay_messages_sent_total" in text
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(relay_server.url + path, timeout=5) as resp:
            assert resp.status == 200
