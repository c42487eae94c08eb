"""Accounts and their limits, end to end: two real relays (gunicorn gevent workers) on one
database, the example app, clients speaking raw DDP (``relay.client``).

What users rely on (issue 9): logging in and out re-runs the session's subscriptions and
sends exactly the difference before the method's ``updated``; the ``users`` collection
holds the logged-in user's document; a resume token from one relay logs in on another;
revoking a token (``removeOtherTokens``, ``changePassword``, a password change through
the Django admin's own forms, a password change or a deactivation made with the Django
ORM) closes every session
logged in with it, on every relay, within 2 seconds; the sixth login within 10 seconds is
refused with Meteor's ``too-many-requests``; sockets over the per-address limit are
refused while an honest client from another address goes on.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

from devstack.launch import ROOT, example_env
from relay.client.connection import DDPClient
from relay.client.errors import DDPClientError
from tests.fixtures.relays import RelayStack, RelayStacks

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

READER = {"user": {"username": "reader"}, "password": "bookworm-2026"}
#: How fast a revocation must reach an open socket on any relay.
REVOCATION_SECONDS = 2.0


def _digest(password: str) -> dict[str, str]:
    return {"digest": hashlib.sha256(password.encode()).hexdigest(), "algorithm": "sha-256"}


@pytest.fixture(scope="module")
def stack(module_relay_stack: RelayStacks) -> RelayStack:
    # Small per-address limit on one relay only, for the connection-limit test.
    return module_relay_stack(2, workers=1)


@pytest.fixture
def clients() -> Iterator[list[DDPClient]]:
    made: list[DDPClient] = []
    yield made
    for client in made:
        client.close()


def _client(clients: list[DDPClient], url: str) -> DDPClient:
    client = DDPClient(url.replace("http://", "ws://") + "/websocket", timeout=10)
    client.connect()
    clients.append(client)
    return client


def _django(stack: RelayStack, code: str) -> None:
    """Run ``code`` with the example's Django, as the admin (or any Django code) would."""
    script = "import django; django.setup()\n" + code
    subprocess.run(
        [sys.executable, "-c", script],
        env=example_env(stack.database_url),
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def _reset_reader(stack: RelayStack) -> None:
    _django(
        stack,
        "from django.contrib.auth import get_user_model\n"
        "u = get_user_model().objects.get(username='reader')\n"
        "u.set_password('bookworm-2026'); u.is_active = True; u.save()\n"
        "from bookstore.models import Favorite; Favorite.objects.filter(user=u).delete()\n",
    )


def _since(client: DDPClient, start: int) -> list[dict[str, Any]]:
    with client._lock:
        return [m for m in client.received[start:] if m.get("msg") not in ("ping", "pong")]


def test_login_and_logout_rerun_subscriptions_before_updated(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    _reset_reader(stack)
    writer = _client(clients, stack.relays[1].url)
    writer.call("login", READER)
    favorite = writer.call("favorites.add", "earthsea-1")

    client = _client(clients, stack.relay.url)
    client.subscribe("favorites.mine")
    assert client.docs("bookstore.favorite") == {}  # logged out: nothing
    start = len(client.received)
    result = client.call(
        "login", {"user": {"username": "reader"}, "password": _digest("bookworm-2026")}
    )
    msgs = _since(client, start)
    kinds = [(m["msg"], m.get("collection")) for m in msgs]
    result_at = kinds.index(("result", None))
    assert kinds[result_at + 1 :] == [("updated", None)]
    before = kinds[:result_at]
    # Exactly the user's document and the favorite, each added once, before result.
    assert sorted(before) == [("added", "bookstore.favorite"), ("added", "users")]
    user_doc = client.docs("users")[result["id"]]
    assert user_doc["username"] == "reader"
    assert user_doc["emails"] == [{"address": "reader@example.com", "verified": False}]
    assert set(result) == {"id", "token", "tokenExpires", "type"} and result["type"] == "password"
    assert client.docs("bookstore.favorite")[favorite]["bookId"] == "earthsea-1"

    start = len(client.received)
    assert client.call("logout") is None
    kinds = [(m["msg"], m.get("collection")) for m in _since(client, start)]
    assert sorted(kinds[:-2]) == [("removed", "bookstore.favorite"), ("removed", "users")]
    assert kinds[-2:] == [("result", None), ("updated", None)]
    assert client.docs("users") == {} and client.docs("bookstore.favorite") == {}


def test_a_resume_token_logs_in_on_another_relay_and_favorites_arrive_live(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    _reset_reader(stack)
    first = _client(clients, stack.relays[0].url)
    login = first.call("login", READER)
    first.subscribe("favorites.mine")
    second = _client(clients, stack.relays[1].url)
    resumed = second.call("login", {"resume": login["token"]})
    assert resumed["id"] == login["id"] and resumed["type"] == "resume"
    assert resumed["token"] == login["token"] and resumed["tokenExpires"] == login["tokenExpires"]
    added = second.call("favorites.add", "left-hand")
    first.wait_for(lambda: added in first.docs("bookstore.favorite"), timeout=5)


def _two_sessions(
    stack: RelayStack, clients: list[DDPClient], *, shared_token: bool = True
) -> tuple[DDPClient, DDPClient, str]:
    """The reader logged in on relay 0 and on relay 1: with the same token (a second tab
    of one browser), or with a password login of its own (another device)."""
    _reset_reader(stack)
    one = _client(clients, stack.relays[0].url)
    token = one.call("login", READER)["token"]
    other = _client(clients, stack.relays[1].url)
    other.call("login", {"resume": token} if shared_token else READER)
    return one, other, token


def _closed_within(client: DDPClient, seconds: float) -> float:
    started = time.monotonic()
    assert client.closed.wait(seconds), f"still open after {seconds} s"
    return time.monotonic() - started


def test_logout_other_clients_closes_the_other_relays_session(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    one, other, token = _two_sessions(stack, clients)
    # Meteor.logoutOtherClients: getNewToken, then removeOtherTokens.
    fresh = one.call("getNewToken")
    assert (
        fresh["token"] != token and fresh["tokenExpires"] == one.call("getNewToken")["tokenExpires"]
    )
    one.call("removeOtherTokens")
    _closed_within(other, REVOCATION_SECONDS)
    assert not one.closed.is_set()
    again = _client(clients, stack.relays[1].url)
    with pytest.raises(DDPClientError) as refused:
        again.call("login", {"resume": token})
    assert refused.value.reason == "You've been logged out by the server. Please log in again."


def test_change_password_keeps_the_caller_and_closes_the_others(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    # Another device: Meteor's changePassword removes every token but the caller's.
    one, other, _ = _two_sessions(stack, clients, shared_token=False)
    done = one.call("changePassword", _digest("bookworm-2026"), _digest("new-bookworm-2026"))
    assert done == {"passwordChanged": True}
    _closed_within(other, REVOCATION_SECONDS)
    assert one.call("users.whoami")["username"] == "reader"  # still logged in
    fresh = _client(clients, stack.relays[1].url)
    fresh.call("login", {"user": {"username": "reader"}, "password": "new-bookworm-2026"})


@pytest.mark.parametrize(
    "change",
    [
        "u.set_password('changed-in-the-admin'); u.save()",
        "type(u).objects.filter(pk=u.pk).update(is_active=False)",
    ],
    ids=["password-changed-in-django", "deactivated-in-django"],
)
def test_a_change_made_in_django_closes_every_session_of_the_user(
    stack: RelayStack, clients: list[DDPClient], change: str
) -> None:
    one, other, _ = _two_sessions(stack, clients)
    _django(
        stack,
        "from django.contrib.auth import get_user_model\n"
        f"u = get_user_model().objects.get(username='reader')\n{change}\n",
    )
    _closed_within(one, REVOCATION_SECONDS)
    _closed_within(other, REVOCATION_SECONDS)


def _admin_form(opener: urllib.request.OpenerDirector, url: str, data: dict[str, str]) -> str:
    """GET an admin form, POST it back with ``data`` and its CSRF token; the final URL."""
    with opener.open(url, timeout=10) as page:
        found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.read().decode())
    assert found, f"no CSRF token on {url}"
    body = urllib.parse.urlencode({"csrfmiddlewaretoken": found.group(1), **data}).encode()
    request = urllib.request.Request(url, data=body, headers={"Referer": url})
    with opener.open(request, timeout=10) as answer:
        return str(answer.geturl())


def test_a_password_change_through_the_django_admin_closes_every_session(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    # What an operator does: the admin's own login and "change password" forms, over HTTP,
    # served by one relay; the reader's sessions on both relays close.
    one, other, _ = _two_sessions(stack, clients)
    admin = stack.relays[0].url + "/admin/"
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    landed = _admin_form(
        opener,
        admin + "login/",
        {"username": "admin", "password": "ddp-relay-demo", "next": "/admin/"},
    )
    assert landed.endswith("/admin/"), landed
    user_id = one.call("users.whoami")["userId"]
    new = "changed-through-the-admin-2026"
    landed = _admin_form(
        opener,
        f"{admin}auth/user/{user_id}/password/",
        {"password1": new, "password2": new, "usable_password": "true"},
    )
    assert landed.endswith(f"/auth/user/{user_id}/change/"), landed  # the form was accepted
    _closed_within(one, REVOCATION_SECONDS)
    _closed_within(other, REVOCATION_SECONDS)
    fresh = _client(clients, stack.relays[1].url)
    fresh.call("login", {"user": {"username": "reader"}, "password": new})


def test_the_sixth_login_within_ten_seconds_is_refused(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    _reset_reader(stack)
    client = _client(clients, stack.relay.url)
    wrong = {"user": {"username": "reader"}, "password": _digest("guess")}
    errors = []
    for _ in range(6):
        with pytest.raises(DDPClientError) as refused:
            client.call("login", wrong)
        errors.append(refused.value)
    assert [e.error for e in errors[:5]] == [403] * 5
    assert {e.reason for e in errors[:5]} == {
        "Something went wrong. Please check your credentials."
    }
    assert errors[5].error == "too-many-requests"
    assert 0 < errors[5].details["timeToReset"] <= 10_000
    # Another connection is not affected, and logs in.
    honest = _client(clients, stack.relay.url)
    assert honest.call("login", READER)["type"] == "password"


def test_connections_over_the_per_address_limit_are_refused(
    relay_stack: RelayStacks, clients: list[DDPClient]
) -> None:
    limited = relay_stack(
        workers=1, env={"RELAY_MAX_CONNECTIONS_PER_ADDRESS": "3", "RELAY_FORWARDED_COUNT": "1"}
    )
    url = limited.relay.url.replace("http://", "ws://") + "/websocket"
    held = []
    for _ in range(3):
        held.append(websocket.create_connection(url, header=["X-Forwarded-For: 198.51.100.7"]))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, header=["X-Forwarded-For: 198.51.100.7"])
    assert refused.value.status_code == 429
    honest = DDPClient(url, headers=["X-Forwarded-For: 203.0.113.9"], timeout=10)
    honest.connect()
    clients.append(honest)
    assert honest.call("users.whoami") == {"userId": None, "username": None}
    held.pop().close()
    time.sleep(0.5)  # the relay sees the close and frees the slot
    held.append(websocket.create_connection(url, header=["X-Forwarded-For: 198.51.100.7"]))
    for ws in held:
        ws.close()


def test_per_session_limits_hold_and_an_honest_client_is_unaffected(
    relay_stack: RelayStacks, clients: list[DDPClient]
) -> None:
    limited = relay_stack(
        workers=1,
        env={"RELAY_MAX_SUBS_PER_SESSION": "3", "RELAY_MAX_PENDING_MESSAGES": "20"},
    )
    url = limited.relay.url.replace("http://", "ws://") + "/websocket"
    greedy = DDPClient(url, timeout=10)
    greedy.connect()
    clients.append(greedy)
    for _ in range(3):
        greedy.subscribe("books.all")
    with pytest.raises(DDPClientError) as refused:
        greedy.subscribe("books.all")
    assert refused.value.error == "too-many-subscriptions"
    # Methods piled up behind a slow one: past the cap the session is closed (4004).
    greedy.send(
        {
            "msg": "method",
            "id": "slow",
            "method": "books.slowRename",
            "params": ["lathe", "The Lathe of Heaven", 2000],
        }
    )
    for n in range(40):
        greedy.send({"msg": "method", "id": f"m{n}", "method": "users.whoami", "params": []})
    assert greedy.closed.wait(5)
    honest = DDPClient(url, timeout=10)
    honest.connect()
    clients.append(honest)
    started = time.monotonic()
    honest.subscribe("books.all")
    assert honest.call("users.whoami") == {"userId": None, "username": None}
    assert time.monotonic() - started < 2.0


def test_a_logged_in_client_resumes_its_session_after_a_drop(
    stack: RelayStack, clients: list[DDPClient]
) -> None:
    # The project's client logs in again right behind connect (as Meteor's does): the
    # relay resumes the session (same id, subscriptions kept) and it stays logged in.
    _reset_reader(stack)
    url = stack.relay.url.replace("http://", "ws://") + "/websocket"
    client = DDPClient(url, timeout=10, auto_reconnect=True, resume=True)
    client.connect()
    clients.append(client)
    client.call("login", READER)
    client.subscribe("favorites.mine")
    session = client.session
    with client._send_lock:
        assert client._ws is not None
        client._ws.sock.shutdown(2)  # the network drops: no close frame, no disconnect
    client.wait_for(lambda: client.reconnects == 1, timeout=10)
    assert (client.session, client.resumes) == (session, 1)
    assert client.call("users.whoami")["username"] == "reader"
