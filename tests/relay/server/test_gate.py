"""The worker's limits, as sessions meet them: Meteor's rate limiter on calls and subs, the
per-address login budget, and the bytes a session may queue."""

from __future__ import annotations

import json

import gevent
from prometheus_client import REGISTRY

from relay import disconnect
from relay.config import Settings
from relay.limits import Rule
from relay.metrics import get_metrics
from relay.server.gate import Gate
from tests.relay.server.helpers import FakeContext, Peer


def _limited(label: str) -> float:
    return REGISTRY.get_sample_value("ddp_relay_limited_total", {"limit": label}) or 0.0


def _login(peer: Peer, n: int) -> dict[str, object]:
    peer.send({"msg": "method", "id": str(n), "method": "login", "params": [{"user": "7"}]})
    return peer.expect("result")


def test_the_sixth_login_within_ten_seconds_is_refused_as_meteor_refuses_it() -> None:
    ctx = FakeContext()
    peer = Peer(ctx)
    peer.connect()
    before = _limited("accounts")
    for n in range(5):
        assert "error" not in _login(peer, n)
    start = len(peer.messages())
    refused = _login(peer, 5)
    error = refused["error"]
    assert isinstance(error, dict) and error["error"] == "too-many-requests"
    assert 0 < error["details"]["timeToReset"] <= 10_000
    seconds = -(-error["details"]["timeToReset"] // 1000)
    assert error["reason"] == (
        "Error, too many requests. Please slow down. You must wait"
        f" {seconds} seconds before trying again."
    )
    # updated first (nothing was written), then the result, as Meteor's finish() sends.
    assert [m["msg"] for m in peer.messages()[start:]] == ["updated", "result"]
    assert _limited("accounts") == before + 1
    # Other methods, and another connection's logins, are not limited by it.
    peer.send({"msg": "method", "id": "e", "method": "echo", "params": [1]})
    assert peer.expect("result")["result"] == 1
    other = Peer(ctx)
    other.connect()
    assert "error" not in _login(other, 0)


def test_an_application_rule_limits_subscriptions_with_nosub() -> None:
    ctx = FakeContext()
    ctx.gate = Gate(ctx.settings, ctx.metrics, [Rule(type="subscription", name="all", limit=1)])
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "sub", "id": "a", "name": "all"})
    peer.expect("ready")
    peer.send({"msg": "sub", "id": "b", "name": "all"})
    nosub = peer.expect("nosub")
    assert nosub["id"] == "b" and nosub["error"]["error"] == "too-many-requests"


def test_login_attempts_are_budgeted_per_address_across_connections() -> None:
    ctx = FakeContext(Settings(login_attempts_per_address=3))
    ctx.gate = Gate(ctx.settings, ctx.metrics, [])  # no per-connection rule: only the budget
    results = []
    for n in range(4):
        peer = Peer(ctx)
        peer.connect()
        results.append(_login(peer, n))
    assert ["error" in r for r in results] == [False, False, False, True]


def test_a_session_queueing_more_bytes_than_its_budget_is_closed_and_the_worker_recovers() -> None:
    settings = Settings(max_pending_bytes=2_000_000, max_message_bytes=1_048_576)
    ctx = FakeContext(settings)
    peer = Peer(ctx)
    peer.connect()
    before = _limited("pending_bytes_session")
    # A slow method, then big calls queued behind it.
    peer.send({"msg": "method", "id": "s", "method": "sleep", "params": [0.3]})
    big = json.dumps({"msg": "method", "id": "x", "method": "echo", "params": ["a" * 900_000]})
    peer.send(big, big, big)
    with gevent.Timeout(2):
        while not peer.session.closed:
            gevent.sleep(0.01)
    assert peer.session.close_reason == disconnect.PENDING_BYTES.reason
    assert _limited("pending_bytes_session") == before + 1
    peer.greenlet.join(timeout=2)
    # Everything it held was given back: the worker's budget is whole for the others.
    assert ctx.gate._pending.used == 0
    honest = Peer(ctx)
    honest.connect()
    honest.send(big)
    assert len(honest.expect("result")["result"]) == 900_000


def test_a_full_worker_closes_its_largest_holder_not_the_honest_client() -> None:
    settings = Settings(max_pending_bytes=1_500_000, max_worker_pending_bytes=2_500_000)
    ctx = FakeContext(settings)
    big = json.dumps({"msg": "method", "id": "x", "method": "echo", "params": ["a" * 900_000]})
    hogs = []
    for _ in range(2):
        hog = Peer(ctx)
        hog.connect()
        hog.send({"msg": "method", "id": "s", "method": "sleep", "params": [0.3]})
        hog.send(big)
        hogs.append(hog)
    honest = Peer(ctx)
    honest.connect()
    honest.send({"msg": "method", "id": "s", "method": "sleep", "params": [0.3]})
    before = _limited("pending_bytes_worker")
    honest.send(big)  # would pass the worker's budget: a hog gives way, not this one
    gevent.sleep(0.05)
    assert [p.session.closed for p in hogs].count(True) == 1
    assert not honest.session.closed
    assert _limited("pending_bytes_worker") == before + 1
    assert ctx.gate._pending.used <= 2_500_000
    honest.expect("result", timeout=3)  # the sleep's
    assert len(honest.expect("result", timeout=3)["result"]) == 900_000


def test_connections_per_address() -> None:
    gate = Gate(Settings(max_connections_per_address=2), get_metrics())
    assert gate.open_socket("10.0.0.1") and gate.open_socket("10.0.0.1")
    assert not gate.open_socket("10.0.0.1")
    assert gate.open_socket("10.0.0.2")
    gate.socket_closed("10.0.0.1")
    assert gate.open_socket("10.0.0.1")
