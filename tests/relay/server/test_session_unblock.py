"""A session's method order and Meteor's ``this.unblock()``: methods hold the session's later
messages until they end, unless they unblock; at most ``RELAY_MAX_UNBLOCKED_METHODS`` of
them run on at once; a closing session waits for them (bounded) and parks their results.

Every ordering test runs twice: with backend calls inline in the session's greenlet (the
fake context) and on a real ``WorkPool``, where ``unblock()`` comes from the pool's
greenlet, as in a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import gevent
import pytest

from relay import disconnect
from relay.backend import CallContext, Identity, MethodOutcome
from relay.config import Settings
from relay.protocol.changestream import Change
from relay.server import session as session_module
from relay.server.workpool import WorkPool
from tests.relay.server.helpers import (
    TOKENS,
    FakeBackend,
    FakeContext,
    FakeResumer,
    Peer,
    token_identity,
)

T = TypeVar("T")

#: The methods of ``NappingBackend``.
NAPS = ("nap", "nap_login", "keep_hook")


class NappingBackend(FakeBackend):
    """The fake backend plus methods that may unblock, and a count of methods running.

    ``nap(seconds, unblock, label)``: unblock first when asked (twice: it is idempotent),
    sleep, return ``label``. ``nap_login(unblock)``: log in after unblocking (a backend
    breaking the rule). ``keep_hook()``: return at once, keeping the hook for later.
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.peak = 0
        self.kept_hooks: list[Callable[[], None]] = []

    def has_method(self, name: str) -> bool:
        return name in NAPS or super().has_method(name)

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        if name not in NAPS:
            return super().call(ctx, name, params)
        self.calls.append((name, tuple(params)))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if name == "keep_hook":
                assert ctx.unblock is not None
                self.kept_hooks.append(ctx.unblock)
                return MethodOutcome(result="kept")
            if name == "nap_login":
                assert ctx.unblock is not None
                ctx.unblock()
                return MethodOutcome(result="in", identity=token_identity("9", "t9"))
            seconds, unblock, label = params
            if unblock:
                assert ctx.unblock is not None
                ctx.unblock()
                ctx.unblock()
            gevent.sleep(seconds)
            return MethodOutcome(result=label)
        finally:
            self.running -= 1


class PoolContext(FakeContext):
    """The fake context with backend calls on a real work pool (as a node runs them)."""

    def __init__(self, settings: Settings, resumer: FakeResumer | None = None) -> None:
        super().__init__(settings, NappingBackend(), resumer)
        self.pool = WorkPool(8)

    def run(
        self, fn: Callable[..., T], *args: Any, owner: Hashable | None = None, urgent: bool = False
    ) -> T:
        return self.pool.run(fn, *args, owner=owner, urgent=urgent)


def make_ctx(kind: str, settings: Settings | None = None, **kw: Any) -> FakeContext:
    settings = settings or Settings()
    if kind == "pool":
        return PoolContext(settings, **kw)
    return FakeContext(settings, NappingBackend(), **kw)


@pytest.fixture(params=["inline", "pool"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def backend_of(ctx: FakeContext) -> NappingBackend:
    backend = ctx.backend
    assert isinstance(backend, NappingBackend)
    return backend


def nap(method_id: str, seconds: float, unblock: bool) -> dict[str, Any]:
    return {
        "msg": "method",
        "id": method_id,
        "method": "nap",
        "params": [seconds, unblock, method_id],
    }


def echo(method_id: str) -> dict[str, Any]:
    return {"msg": "method", "id": method_id, "method": "echo", "params": [method_id]}


def answered(peer: Peer, ids: Sequence[str], timeout: float = 5.0) -> list[str]:
    """Wait until every method of ``ids`` got ``result`` and ``updated``; the order of
    their results."""
    with gevent.Timeout(timeout):
        while True:
            msgs = peer.messages()
            results = [m["id"] for m in msgs if m["msg"] == "result" and m["id"] in ids]
            updated = {i for m in msgs if m["msg"] == "updated" for i in m["methods"]}
            if len(results) == len(ids) and updated >= set(ids):
                return results
            gevent.sleep(0.005)


def test_without_unblock_a_slow_method_holds_the_later_messages(kind: str) -> None:
    ctx = make_ctx(kind)
    peer = Peer(ctx)
    peer.connect()
    peer.send(nap("slow", 0.2, False), echo("fast"), {"msg": "sub", "id": "s", "name": "all"})
    assert answered(peer, ["slow", "fast"]) == ["slow", "fast"]
    kinds = [(m["msg"], m.get("id")) for m in peer.messages()[1:]]
    # The sub waited too: the session's messages run one at a time, in order.
    assert kinds.index(("result", "fast")) < kinds.index(("ready", None))
    assert backend_of(ctx).peak == 1


def test_an_unblocked_method_lets_later_messages_run_first(kind: str) -> None:
    ctx = make_ctx(kind)
    peer = Peer(ctx)
    peer.connect()
    peer.send(nap("slow", 0.3, True), echo("fast"), {"msg": "sub", "id": "s", "name": "all"})
    assert answered(peer, ["slow", "fast"]) == ["fast", "slow"]
    msgs = [(m["msg"], m.get("id") or m.get("methods") or m.get("subs")) for m in peer.messages()]
    # The sub too went ahead; the slow method's own result still precedes its updated.
    assert msgs.index(("ready", ["s"])) < msgs.index(("result", "slow"))
    assert msgs.index(("result", "slow")) < msgs.index(("updated", ["slow"]))
    assert peer.session.results.keys() >= {"slow", "fast"}
    assert not peer.session._unblocked and peer.session._blocking is None


def test_unblocked_methods_run_side_by_side_in_order_of_their_end(kind: str) -> None:
    ctx = make_ctx(kind)
    peer = Peer(ctx)
    peer.connect()
    started = time.monotonic()
    peer.send(nap("a", 0.3, True), nap("b", 0.2, True), nap("c", 0.1, True))
    assert answered(peer, ["a", "b", "c"]) == ["c", "b", "a"]
    assert time.monotonic() - started < 0.55  # overlapped, not 0.6 s one after another
    assert backend_of(ctx).peak == 3


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_at_most_the_bound_of_unblocked_methods_run_at_once(kind: str, bound: int) -> None:
    ctx = make_ctx(kind, Settings(max_unblocked_methods=bound))
    peer = Peer(ctx)
    peer.connect()
    ids = [f"n{i}" for i in range(6)]
    peer.send(*(nap(i, 0.05, True) for i in ids), echo("last"))
    order = answered(peer, [*ids, "last"])
    # ``bound`` unblocked methods, plus the one the queue waits for (it asked too late).
    assert backend_of(ctx).peak == bound + 1
    if bound == 0:
        assert order == [*ids, "last"]  # unblock() has no effect: the order holds
    else:
        # ``last`` waits until the last nap could unblock, i.e. several naps ended.
        assert order.index("last") >= len(ids) - bound - 1


def test_a_flood_of_unblocking_calls_is_held_to_the_bound() -> None:
    # A hostile client fires 10,000 unblocking calls: they queue (bounded by the pending
    # limits) and run at most RELAY_MAX_UNBLOCKED_METHODS + 1 at once, never all together.
    settings = Settings(max_pending_messages=20_000)
    ctx = make_ctx("pool", settings)
    peer = Peer(ctx)
    peer.connect()
    calls = 10_000
    peer.send(*(nap(str(i), 0.0005, True) for i in range(calls)))
    with gevent.Timeout(60):
        # Counted on the raw texts: parsing 20,000 messages at every look would be slower
        # than the session.
        while sum(text.startswith('{"msg":"updated"') for text in peer.transport.sent) < calls:
            gevent.sleep(0.05)
    results = [m["id"] for m in peer.messages() if m["msg"] == "result"]
    assert sorted(results) == sorted(str(i) for i in range(calls))
    assert backend_of(ctx).peak <= settings.max_unblocked_methods + 1
    assert not peer.session.closed


def test_the_pending_limit_still_closes_a_flooding_session() -> None:
    ctx = make_ctx("pool", Settings(max_pending_messages=50))
    peer = Peer(ctx)
    peer.connect()
    peer.send(*(nap(str(i), 0.05, True) for i in range(200)))
    peer.greenlet.join(timeout=5)
    assert peer.session.close_reason == disconnect.TOO_MANY_PENDING.reason
    assert backend_of(ctx).peak <= ctx.settings.max_unblocked_methods + 1


def test_unblock_is_a_no_op_once_the_method_returned() -> None:
    ctx = make_ctx("pool")
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "k", "method": "keep_hook", "params": []})
    answered(peer, ["k"])
    peer.send(nap("slow", 0.2, False), echo("fast"))
    gevent.sleep(0.05)
    (hook,) = backend_of(ctx).kept_hooks
    hook()  # a stale hook must not let the queue skip the slow method
    assert answered(peer, ["slow", "fast"]) == ["slow", "fast"]


def test_a_method_cannot_change_the_user_after_unblocking(kind: str) -> None:
    ctx = make_ctx(kind)
    peer = Peer(ctx)
    peer.connect()
    before = peer.session.identity
    peer.send({"msg": "method", "id": "l", "method": "nap_login", "params": []})
    answered(peer, ["l"])
    (result,) = [m for m in peer.messages() if m["msg"] == "result"]
    assert result["error"]["error"] == 500
    assert peer.session.identity == before


def test_a_revocation_held_for_a_method_stands_once_it_unblocks() -> None:
    # A revocation seen while the queue waits for a method waits for its outcome (it may
    # be logout). A method that unblocks can no longer change the user: it stands at once.
    ctx = make_ctx("inline")
    ctx.backend.identity = Identity()
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "method", "id": "in", "method": "login", "params": [{"user": "7"}]})
    answered(peer, ["in"])
    call = ctx.backend.call
    closed_before_unblock: list[bool] = []

    def revoked_then_unblocked(call_ctx: CallContext, name: str, params: Any) -> Any:
        ctx.streams.deliver(TOKENS, 4, "E", 100, [Change("d", "t1", {})])
        closed_before_unblock.append(peer.session.closed)
        return call(call_ctx, name, params)

    ctx.backend.call = revoked_then_unblocked
    peer.send(nap("n", 0.1, True))
    peer.greenlet.join(timeout=5)
    assert closed_before_unblock == [False]
    assert peer.session.close_reason == disconnect.REVOKED.reason


def test_the_teardown_waits_for_unblocked_methods_and_parks_their_results(kind: str) -> None:
    resumer = FakeResumer()
    ctx = make_ctx(kind, resumer=resumer)
    peer = Peer(ctx)
    peer.connect()
    peer.send(nap("slow", 0.3, True), echo("fast"))
    answered(peer, ["fast"])
    sent_before = len(peer.transport.sent)
    peer.lose()  # the socket dies while "slow" still runs
    assert peer.session.ended.wait(5)
    ((state, _epoch),) = resumer.parked
    assert state.results.keys() >= {"slow", "fast"}
    assert '"slow"' in state.results["slow"]
    # Nothing went out after the close; what "slow" answered is in the log to replay.
    assert len(peer.transport.sent) == sent_before
    assert any('"id":"slow"' in text for text in state.log)


def test_the_teardown_waits_for_unblocked_methods_no_longer_than_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session_module, "PARK_DRAIN_SECONDS", 0.05)
    resumer = FakeResumer()
    ctx = make_ctx("pool", resumer=resumer)
    peer = Peer(ctx)
    peer.connect()
    peer.send(nap("slow", 0.5, True))
    gevent.sleep(0.05)
    started = time.monotonic()
    peer.lose()
    assert peer.session.ended.wait(2)
    assert time.monotonic() - started < 0.4
    sent = len(peer.transport.sent)
    with gevent.Timeout(2):
        while peer.session._unblocked:
            gevent.sleep(0.01)
    # It ended after the session was parked: nothing was sent, nothing broke.
    assert len(peer.transport.sent) == sent
    assert "slow" in peer.session.results


def test_a_resent_unblocked_method_is_answered_from_its_result(kind: str) -> None:
    ctx = make_ctx(kind)
    peer = Peer(ctx)
    peer.connect()
    peer.send(nap("n", 0.05, True))
    answered(peer, ["n"])
    peer.seen = len(peer.messages())
    peer.send(nap("n", 0.05, True))  # a resumed client re-sends what it has no answer to
    assert peer.expect("result") == {"msg": "result", "id": "n", "result": "n"}
    assert peer.expect("updated") == {"msg": "updated", "methods": ["n"]}
    assert [c for c in backend_of(ctx).calls if c[0] == "nap"] == [("nap", (0.05, True, "n"))]
