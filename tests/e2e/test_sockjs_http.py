"""SockJS's HTTP transports across relays (``relay.httpsession``), with real relays, a
real ZooKeeper and PostgreSQL: every request of one xhr-polling session goes to the
other relay than the last, as a round-robin balancer without stickiness may send it.

What a client relies on: its messages arrive in order and once, whichever relay each
request lands on; what the server sends arrives once (no duplicate ``added``, every
method answered); live changes keep coming; a relay stopped under the session leaves a
client that resumes exactly, as over a WebSocket; and what an attacker sends over HTTP is
bounded like what it sends over a WebSocket."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.client import DDPClient
from relay.client.xhr import SessionLost, XhrClient, XhrError, request
from tests.fixtures.relays import RelayStack, RelayStacks

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

BOOKS = "bookstore.book"


def metric(stack: RelayStack, name: str, labels: str) -> float:
    total = 0.0
    for relay in stack.relays:
        with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for found in re.finditer(rf"^{name}\{{{labels}\}} (\S+)$", text, re.MULTILINE):
            total += float(found.group(1))
    return total


def book_ids(client: XhrClient) -> list[str]:
    return [
        m["id"] for m in client.messages if m.get("msg") == "added" and m["collection"] == BOOKS
    ]


def test_one_xhr_session_spread_over_two_relays(relay_stack: RelayStacks) -> None:
    stack = relay_stack(2, workers=1, zookeeper=True)
    client = XhrClient([relay.url for relay in stack.relays])
    first = client.open()
    client.send({"msg": "sub", "id": "s1", "name": "books.all", "params": []})
    client.wait_for(lambda m: m.get("msg") == "ready")
    books = book_ids(client)
    assert len(books) >= 10 and len(set(books)) == len(books)

    # Methods, each answered once, in the order sent, wherever the requests land.
    for i in range(6):
        client.send(
            {
                "msg": "method",
                "id": f"m{i}",
                "method": "books.rename",
                "params": [books[0], f"Renamed over xhr {i}"],
            }
        )
    client.wait_for(lambda m: m.get("msg") == "result" and m.get("id") == "m5")
    results = [m["id"] for m in client.messages if m.get("msg") == "result"]
    assert results == [f"m{i}" for i in range(6)]

    # A change made elsewhere (a WebSocket client on the other relay) arrives.
    other = DDPClient(stack.relays[1].ws_url, timeout=20)
    try:
        other.connect()
        other.call("books.rename", books[1], "Renamed over a WebSocket")
    finally:
        other.close()
    client.wait_for(
        lambda m: (
            m.get("msg") == "changed"
            and m.get("id") == books[1]
            and m.get("fields", {}).get("title") == "Renamed over a WebSocket"
        )
    )
    # The session moved between the relays and stayed the same one, each message once.
    assert metric(stack, "ddp_relay_sockjs_moves_total", 'outcome="taken_over"') >= 2
    assert metric(stack, "ddp_relay_sockjs_moves_total", 'outcome="relayed"') >= 1
    assert [m for m in client.messages if m.get("msg") == "connected"] == [first]
    assert len(set(book_ids(client))) == len(book_ids(client))

    # The relay holding it stops (SIGTERM): the client starts a new SockJS session and
    # its connect resumes the DDP session exactly, as over a WebSocket.
    holder = next(i for i, r in enumerate(stack.relays) if _holds(r.url))
    stack.relays[holder].stop()
    client.bases = [stack.relays[1 - holder].url]
    with contextlib.suppress(XhrError, OSError):
        client.poll()
    again = client.open(resume=True)
    assert again["session"] == first["session"]
    client.send(
        {
            "msg": "method",
            "id": "after",
            "method": "books.rename",
            "params": [books[2], "After the restart"],
        }
    )
    client.wait_for(lambda m: m.get("msg") == "result" and m.get("id") == "after")
    assert len(set(book_ids(client))) == len(book_ids(client))


def _holds(url: str) -> bool:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found = re.search(r"^ddp_relay_sessions(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return bool(found and float(found.group(1)) >= 1)


def test_what_an_attacker_sends_over_http_is_bounded_like_over_a_websocket(
    relay_stack: RelayStacks,
) -> None:
    stack = relay_stack(
        workers=1,
        env={
            "RELAY_MAX_CONNECTIONS_PER_ADDRESS": "3",
            "RELAY_MAX_MESSAGE_BYTES": "65536",
            "RELAY_SEND_BUFFER_BYTES": "16384",
        },
    )
    base = stack.relays[0].url
    honest = XhrClient([base])
    honest.open()
    honest.send({"msg": "sub", "id": "s1", "name": "books.all", "params": []})
    honest.wait_for(lambda m: m.get("msg") == "ready")

    # Sessions count against the address's connections like sockets: the fourth is
    # told at once why it is refused, and leaves nothing behind.
    others = [XhrClient([base]) for _ in range(2)]
    for other in others:
        other.open()
    refused = f"{base}/sockjs/1/{secrets.token_hex(8)}"
    for _ in range(3):
        assert request(refused + "/xhr") == (200, 'c[3000,"Too many connections"]\n')
    assert request(refused + "/xhr_send", body=b'["x"]')[0] == 404

    # A page of another site may not drive a session (RELAY_ALLOWED_ORIGINS, as for an
    # upgrade), nor load one as a script without an Origin (jsonp).
    evil = {"Origin": "https://evil.example"}
    assert request(honest._url("xhr"), headers=evil)[0] == 403
    assert request(honest._url("xhr_send"), body=b'["x"]', headers=evil)[0] == 403
    script = {"Sec-Fetch-Site": "cross-site"}
    assert request(honest._url("jsonp") + "?c=cb", method="GET", headers=script)[0] == 403

    # A send larger than the limit is not read; the session answers with a DDP error,
    # as for a WebSocket message too large, and goes on.
    huge = json.dumps(
        [json.dumps({"msg": "method", "id": "x", "method": "m", "params": ["a" * 200_000]})]
    )
    status, _ = request(honest._url("xhr_send"), body=huge.encode())
    assert status == 204
    error = honest.wait_for(lambda m: m.get("msg") == "error")
    assert error["reason"].startswith("Message too large"), error
    # Broken framing and a bad callback are refused by the transport, nothing reaches DDP.
    assert request(honest._url("xhr_send"), body=b'["x')[0] == 500
    assert request(honest._url("xhr_send"), body=b"")[0] == 500
    assert request(honest._url("jsonp") + "?c=alert(1)", method="GET")[0] == 500
    assert request(f"{base}/sockjs/1/nobody/xhr_send", body=b'["x"]')[0] == 404

    # A storm of receiving requests for one session: one holds it, the rest are told
    # another connection is open, at once; the session is unharmed.
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: request(honest._url("xhr"), timeout=60), range(20)))
    assert sum(body.startswith("c[2010") for _, body in answers) >= 18, answers
    honest.send({"msg": "method", "id": "after", "method": "books.rename", "params": ["x", "y"]})
    honest.wait_for(lambda m: m.get("msg") == "result" and m.get("id") == "after")

    # A client that never receives: its outbox passes the send buffer and the session
    # is closed as too slow (resumable), not kept growing.
    sink = XhrClient([base])
    for other in others:  # room under the address's cap (idle, they may have ended)
        with contextlib.suppress(SessionLost):
            other.send({"msg": "disconnect"})
    sink.open()
    sink.send({"msg": "sub", "id": "s1", "name": "books.all", "params": []})
    books = book_ids(honest)[:3]
    writer = DDPClient(stack.relays[0].ws_url, timeout=20)
    try:
        writer.connect()
        for i in range(60):
            writer.call("books.rename", books[i % len(books)], "long title " * 25 + str(i))
    finally:
        writer.close()
    with contextlib.suppress(SessionLost):
        for _ in range(10):
            sink.poll()
    assert metric(stack, "ddp_relay_disconnects_total", 'reason="slow"') >= 1
