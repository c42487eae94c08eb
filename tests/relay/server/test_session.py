"""Sessions against the in-memory transport and a fake backend: Meteor's behaviour, no socket."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import gevent
import pytest

from relay import disconnect
from relay.backend import (
    CallContext,
    ClientError,
    Document,
    Handshake,
    Identity,
    MethodOutcome,
    SubscriptionData,
)
from relay.config import Settings
from relay.server.node import Node
from relay.server.session import Session
from relay.transport import MemoryTransport

HANDSHAKE = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.docs = {
            "all": [
                Document("things", "a", {"n": 1, "tag": "x"}),
                Document("things", "b", {"n": 2}),
            ],
            "some": [Document("things", "a", {"n": 1, "extra": True})],
        }

    def authenticate(self, handshake: Handshake) -> Identity:
        return Identity(user="u", user_id="42")

    def has_publication(self, name: str) -> bool:
        return name in self.docs or name in ("boom", "denied", "slow")

    def has_method(self, name: str) -> bool:
        return name in ("echo", "boom", "denied", "sleep", "seed")

    def subscribe(self, ctx: CallContext, name: str, params: Sequence[Any]) -> SubscriptionData:
        if name == "boom":
            raise RuntimeError("publication bug")
        if name == "denied":
            raise ClientError(403, "Access denied")
        if name == "slow":
            gevent.sleep(0.2)
        return SubscriptionData(documents=self.docs.get(name, []))

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        self.calls.append((name, tuple(params)))
        if name == "boom":
            raise ValueError("secret internals")
        if name == "denied":
            raise ClientError("not-allowed", "No", {"why": 1})
        if name == "sleep":
            gevent.sleep(params[0])
        if name == "seed":
            return MethodOutcome(result=[ctx.random_seed, ctx.identity.user_id])
        return MethodOutcome(result=params[0] if params else None)

    def close(self) -> None:
        pass


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node(Settings(heartbeat_interval=0.2, heartbeat_timeout=0.2), FakeBackend())
    n.start()
    yield n
    n.stop()


class Peer:
    """Drives one session over a MemoryTransport."""

    def __init__(self, node: Node) -> None:
        self.transport = MemoryTransport()
        self.session = Session(node, self.transport, HANDSHAKE)
        self.greenlet = gevent.spawn(self.session.serve)
        self.seen = 0

    def send(self, *msgs: Any) -> None:
        self.transport.feed(*(m if isinstance(m, str) else json.dumps(m) for m in msgs))

    def connect(self) -> dict[str, Any]:
        self.send({"msg": "connect", "version": "1", "support": ["1", "pre2", "pre1"]})
        return self.expect("connected")

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.transport.sent]

    def expect(self, kind: str, timeout: float = 2.0) -> dict[str, Any]:
        with gevent.Timeout(timeout):
            while True:
                msgs = self.messages()
                for i in range(self.seen, len(msgs)):
                    if msgs[i]["msg"] == kind:
                        self.seen = i + 1
                        return msgs[i]
                gevent.sleep(0.005)

    def new(self) -> list[dict[str, Any]]:
        msgs = self.messages()[self.seen :]
        self.seen += len(msgs)
        return msgs


def test_connect_gets_a_fresh_session_even_when_one_is_named(node: Node) -> None:
    peer = Peer(node)
    peer.send({"msg": "connect", "version": "1", "support": ["1"], "session": "old"})
    connected = peer.expect("connected")
    assert connected["session"] != "old" and len(connected["session"]) == 17
    assert peer.session.identity.user_id == "42"


def test_messages_pipelined_behind_connect_are_processed_in_order(node: Node) -> None:
    peer = Peer(node)
    peer.send(
        {"msg": "connect", "version": "1", "support": ["1"]},
        {"msg": "method", "id": "1", "method": "echo", "params": [1]},
        {"msg": "sub", "id": "s", "name": "all"},
    )
    peer.expect("ready")
    kinds = [m["msg"] for m in peer.messages()]
    assert kinds == ["connected", "result", "updated", "added", "added", "ready"]


def test_sub_sends_added_then_ready_and_duplicate_id_is_not_rerun(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "sub", "id": "s1", "name": "all"})
    assert peer.expect("ready") == {"msg": "ready", "subs": ["s1"]}
    added = [m for m in peer.messages() if m["msg"] == "added"]
    assert added[0] == {
        "msg": "added",
        "collection": "things",
        "id": "a",
        "fields": {"n": 1, "tag": "x"},
    }
    before = len(peer.messages())
    peer.send(
        {"msg": "sub", "id": "s1", "name": "all"}, {"msg": "method", "id": "9", "method": "echo"}
    )
    peer.expect("updated")
    # not re-run (no added), only confirmed ready again: what a resumed client needs
    assert [m["msg"] for m in peer.messages()[before:]] == ["ready", "result", "updated"]


def test_overlapping_subs_merge_and_unsub_keeps_shared_docs(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "sub", "id": "s1", "name": "all"})
    peer.expect("ready")
    peer.send({"msg": "sub", "id": "s2", "name": "some"})
    peer.expect("ready")
    changed = [m for m in peer.messages() if m["msg"] == "changed"]
    assert changed == [
        {"msg": "changed", "collection": "things", "id": "a", "fields": {"extra": True}}
    ]
    peer.send({"msg": "unsub", "id": "s1"})
    assert peer.expect("nosub") == {"msg": "nosub", "id": "s1"}
    tail = [m for m in peer.messages() if m["msg"] in ("removed", "changed")][-2:]
    assert {"msg": "removed", "collection": "things", "id": "b"} in tail
    assert {"msg": "changed", "collection": "things", "id": "a", "cleared": ["tag"]} in tail


def test_unknown_publication_and_unknown_unsub(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "sub", "id": "x", "name": "nope"})
    nosub = peer.expect("nosub")
    assert nosub["error"]["error"] == 404
    assert nosub["error"]["reason"] == "Subscription 'nope' not found"
    peer.send({"msg": "unsub", "id": "never"})
    assert peer.expect("nosub") == {"msg": "nosub", "id": "never"}


def test_publication_errors_become_nosub_with_safe_errors(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send(
        {"msg": "sub", "id": "b", "name": "boom"}, {"msg": "sub", "id": "d", "name": "denied"}
    )
    first, second = peer.expect("nosub"), peer.expect("nosub")
    assert first["error"]["error"] == 500 and first["error"]["reason"] == "Internal server error"
    assert "publication bug" not in json.dumps(first)
    assert second["error"]["error"] == 403
    assert not peer.session.subs


def test_methods_results_errors_and_unknown(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send(
        {"msg": "method", "id": "1", "method": "echo", "params": [{"$date": 1000}]},
        {"msg": "method", "id": "2", "method": "boom", "params": []},
        {"msg": "method", "id": "3", "method": "denied", "params": []},
        {"msg": "method", "id": "4", "method": "nope", "params": []},
        {"msg": "method", "id": "5", "method": "seed", "params": [], "randomSeed": "abc"},
    )
    for _ in range(5):
        peer.expect("updated")
    results = {m["id"]: m for m in peer.messages() if m["msg"] == "result"}
    assert results["1"]["result"] == {"$date": 1000}
    assert results["2"]["error"]["reason"] == "Internal server error"
    assert "secret" not in json.dumps(results["2"])
    assert results["3"]["error"]["error"] == "not-allowed"
    assert results["3"]["error"]["details"] == {"why": 1}
    assert results["4"]["error"]["reason"] == "Method 'nope' not found"
    assert results["5"]["result"] == ["abc", "42"]


def test_ping_is_answered_while_a_slow_method_runs(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "method", "id": "1", "method": "sleep", "params": [0.3]})
    gevent.sleep(0.05)
    peer.send({"msg": "ping", "id": "p"})
    assert peer.expect("pong", timeout=0.2) == {"msg": "pong", "id": "p"}
    peer.expect("updated")


def test_bad_input_gets_errors_and_the_session_survives(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send("not json", "[1]", {"msg": "what"}, {"msg": "sub", "id": 5, "name": "all"})
    peer.send({"msg": "method", "id": "1", "method": "echo", "params": ["still here"]})
    peer.expect("updated")
    errors = [m for m in peer.messages() if m["msg"] == "error"]
    assert [e["reason"] for e in errors] == [
        "Bad request",
        "Bad request",
        "Bad request",
        "Malformed subscription",
    ]
    assert all("offendingMessage" in e for e in errors)
    assert not peer.session.closed


def test_must_connect_first_and_version_failure_closes(node: Node) -> None:
    peer = Peer(node)
    peer.send({"msg": "sub", "id": "s", "name": "all"})
    assert peer.expect("error")["reason"] == "Must connect first"
    peer.send({"msg": "connect", "version": "9", "support": ["9"]})
    assert peer.expect("failed") == {"msg": "failed", "version": "1"}
    peer.greenlet.join(timeout=1)
    assert peer.transport.close_code == disconnect.PROTOCOL_ERROR.code


def test_heartbeat_pings_and_closes_a_silent_client(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    # ticker runs once a second: one ping, then close after interval + timeout
    with gevent.Timeout(5):
        peer.greenlet.join()
    kinds = [m["msg"] for m in peer.messages()]
    assert "ping" in kinds
    assert peer.transport.close_code == disconnect.HEARTBEAT_TIMEOUT.code


def test_sent_count_excludes_ping_and_pong(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "ping"}, {"msg": "method", "id": "1", "method": "echo"})
    peer.expect("updated")
    # connected, result, updated (the pong is not counted)
    assert peer.session.sent_count == 3


def test_disconnect_message_closes_normally(node: Node) -> None:
    peer = Peer(node)
    peer.connect()
    peer.send({"msg": "disconnect"})
    peer.greenlet.join(timeout=1)
    assert peer.transport.close_code == 1000
    assert not node.by_id


def test_subscription_limit(node: Node) -> None:
    small = Node(Settings(max_subs_per_session=1), FakeBackend())
    try:
        peer = Peer(small)
        peer.connect()
        peer.send(
            {"msg": "sub", "id": "1", "name": "all"}, {"msg": "sub", "id": "2", "name": "some"}
        )
        nosub = peer.expect("nosub")
        assert nosub["id"] == "2" and nosub["error"]["error"] == "too-many-subscriptions"
    finally:
        small.stop()


def test_a_broken_session_does_not_touch_another(node: Node) -> None:
    good, bad = Peer(node), Peer(node)
    good.connect()
    bad.connect()
    bad.send("\x00garbage", {"msg": "sub", "id": "b", "name": "boom"})
    bad.transport.disconnect()
    good.send({"msg": "sub", "id": "s", "name": "all"})
    good.expect("ready")
    assert not good.session.closed


def test_oversized_message_gets_an_error_and_the_session_survives(node: Node) -> None:
    from relay.transport import Oversized

    peer = Peer(node)
    peer.connect()
    peer.transport.feed(Oversized(size=2_000_000, limit=1_048_576, prefix='{"msg":"method"'))
    err = peer.expect("error")
    assert err["reason"] == "Message too large (2000000 bytes; the limit is 1048576)"
    assert err["offendingMessage"] == '{"msg":"method"'
    peer.send({"msg": "method", "id": "1", "method": "echo", "params": [1]})
    peer.expect("updated")
    assert not peer.session.closed


class OddBackend(FakeBackend):
    def has_publication(self, name: str) -> bool:
        return name in ("unsendable", "odd-error")

    def has_method(self, name: str) -> bool:
        return name in ("unsendable", "odd-error")

    def subscribe(self, ctx: CallContext, name: str, params: Sequence[Any]) -> SubscriptionData:
        if name == "odd-error":
            raise ClientError("bad", "details are not JSON", {1, 2})
        return SubscriptionData(documents=[Document("things", "a", {"s": {1, 2}})])

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        if name == "odd-error":
            raise ClientError("bad", "details are not JSON", object())
        return MethodOutcome(result={1, 2})


def test_unsendable_values_become_500s_and_never_leak_removed() -> None:
    odd = Node(Settings(), OddBackend())
    try:
        peer = Peer(odd)
        peer.connect()
        peer.send(
            {"msg": "sub", "id": "u", "name": "unsendable"},
            {"msg": "sub", "id": "o", "name": "odd-error"},
            {"msg": "method", "id": "1", "method": "unsendable", "params": []},
            {"msg": "method", "id": "2", "method": "odd-error", "params": []},
        )
        peer.expect("updated")
        peer.expect("updated")
        kinds = [m["msg"] for m in peer.messages()]
        assert "added" not in kinds and "removed" not in kinds
        errors = [m["error"]["error"] for m in peer.messages() if "error" in m]
        assert errors == [500, 500, 500, 500]
        assert not peer.session.mergebox.documents("things")
    finally:
        odd.stop()
