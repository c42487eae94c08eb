"""relay.server.subscriptions: publications written with the low-level API, through a real
``Session`` (a ``FakeContext``, a ``Peer``): what Meteor's ``this.added``/``changed``/
``removed``/``ready``/``error``/``stop``/``onStop`` do, merged with the queries of the
same subscription and of others, and ``observe``: a callback per commit, in order, one at
a time, re-run without a flicker when its channel lost history, stopped when it falls
too far behind. The backend is ``FakeBackend`` plus publications that keep the sink the
relay gives them, so a test can call it later, as a callback would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import gevent
import gevent.event
import pytest

from relay.backend import (
    CallContext,
    ClientError,
    DecodedChange,
    Document,
    PublicationSink,
    SubscriptionPlan,
)
from relay.config import Settings
from relay.protocol import messages
from relay.protocol.changestream import Change
from relay.resume.resumer import Resumed
from relay.server.subscriptions import MAX_OBSERVER_BACKLOG
from tests.relay.server.helpers import STATIC, FakeBackend, FakeContext, FakeResumer, Peer

#: The publications ``Publications`` adds (see ``Publications.subscribe``).
CUSTOM = ("manual", "prompt", "mixed", "refused", "quitter", "watching")


class Publications(FakeBackend):
    """``FakeBackend`` plus publications that use the sink ``subscribe`` is given:

    - ``manual``: adds ``things/x``; marks itself ready only when a test says so.
    - ``prompt``: adds ``things/x`` and calls ``ready()`` at once.
    - ``mixed``: adds ``things/a`` ``{extra}`` and returns a query publishing ``a`` ``{n}``.
    - ``refused``: adds ``things/x``, then fails with a ``ClientError``.
    - ``quitter``: stops itself at once.
    - ``watching``: publishes ``watched`` (what it reads now) and observes ``ddp_things``
      from ``position`` (its snapshot's), republishing each change; then ready.

    Every run registers an ``on_stop`` that records the publication's name in ``stops``.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Every run's sink, by publication name.
        self.sinks: dict[str, list[PublicationSink]] = {}
        #: Names of the runs whose ``on_stop`` callback ran, in order.
        self.stops: list[str] = []
        #: ddp_things' position a publication's snapshot reads.
        self.position: tuple[int, str] = (5, "E")
        #: The documents ``watching`` publishes when it runs.
        self.watched: dict[str, dict[str, Any]] = {"p": {"n": 1}}
        #: The ids of the changes each observe callback got, per call, in call order.
        self.seen: list[list[str]] = []
        self.active = 0
        self.most_active = 0
        #: Set: callbacks wait for it (a slow callback). ``fail``: they raise.
        self.hold: gevent.event.Event | None = None
        self.fail = False

    def has_publication(self, name: str) -> bool:
        return name in CUSTOM or super().has_publication(name)

    def subscribe(
        self, ctx: CallContext, name: str, params: Sequence[Any], sink: PublicationSink
    ) -> SubscriptionPlan:
        if name not in CUSTOM:
            return super().subscribe(ctx, name, params, sink)
        self.subscribed.append(name)
        self.sinks.setdefault(name, []).append(sink)
        sink.on_stop(lambda: self.stops.append(name))
        if name == "mixed":
            sink.added("things", "a", {"extra": True})
            return self.plan("mixed", STATIC, [Document("things", "a", {"n": 1})])
        if name in ("manual", "prompt", "refused"):
            sink.added("things", "x", {"n": 1})
        if name == "prompt":
            sink.ready()
        elif name == "refused":
            sink.error(ClientError(403, "Not yours"))
        elif name == "quitter":
            sink.stop()
        elif name == "watching":
            for doc_id, fields in self.watched.items():
                sink.added("things", doc_id, fields)
            sink.observe("ddp_things", "things", partial(self.on_changes, sink), self.position)
            sink.ready()
        return SubscriptionPlan(auto_ready=False)

    def on_changes(self, sink: PublicationSink, changes: Sequence[DecodedChange]) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.seen.append([c.id for c in changes])
            if self.hold is not None:
                self.hold.wait()
            else:
                gevent.sleep(0.001)  # work in the pool: other greenlets run meanwhile
            if self.fail:
                raise RuntimeError("a bug in a callback")
            for change in changes:
                if change.op == "d":
                    sink.removed("things", change.id)
                else:
                    sink.added("things", change.id, change.fields)
        finally:
            self.active -= 1


@pytest.fixture
def backend() -> Publications:
    return Publications()


@pytest.fixture
def ctx(backend: Publications) -> FakeContext:
    return FakeContext(Settings(), backend=backend)


def connected(ctx: FakeContext) -> Peer:
    peer = Peer(ctx)
    peer.connect()
    return peer


def subscribe(peer: Peer, name: str, sub_id: str = "s") -> None:
    """Send a ``sub`` and wait until the session handled it (a method sent behind it was
    answered), whatever the publication sent."""
    peer.send({"msg": "sub", "id": sub_id, "name": name})
    processed(peer)


def processed(peer: Peer) -> None:
    """Wait until the session handled every message sent so far: it handles them in order,
    so once a method sent now is answered, the earlier ones are done."""
    method_id = f"m{len(peer.messages())}"
    peer.send({"msg": "method", "id": method_id, "method": "echo", "params": []})
    with gevent.Timeout(2):
        while not any(m["msg"] == "updated" and method_id in m["methods"] for m in peer.messages()):
            gevent.sleep(0.002)


def wait_until(condition: Callable[[], object], what: str) -> None:
    with gevent.Timeout(2, AssertionError(f"timed out waiting: {what}")):
        while not condition():
            gevent.sleep(0.002)


def data(peer: Peer, since: int = 0) -> list[dict[str, Any]]:
    """The data and subscription messages among what the client got (from ``since``)."""
    kinds = ("added", "changed", "removed", "ready", "nosub")
    return [m for m in peer.messages()[since:] if m["msg"] in kinds]


def client_cache(peer: Peer) -> dict[str, dict[str, dict[str, Any]]]:
    """What a DDP client's cache holds after every message the peer got; a ``changed`` or
    ``removed`` of a document it does not hold fails (a client throws on it)."""
    cache: dict[str, dict[str, dict[str, Any]]] = {}
    for m in peer.messages():
        kind = m["msg"]
        if kind == "added":
            docs = cache.setdefault(m["collection"], {})
            assert m["id"] not in docs, f"added twice: {m}"
            docs[m["id"]] = dict(m.get("fields", {}))
        elif kind == "changed":
            doc = cache[m["collection"]][m["id"]]
            doc.update(m.get("fields", {}))
            for name in m.get("cleared", ()):
                del doc[name]
        elif kind == "removed":
            del cache[m["collection"]][m["id"]]
    return {c: docs for c, docs in cache.items() if docs}


def commit(ctx: FakeContext, seq: int, *changes: Change) -> None:
    """Transaction ``seq`` of ddp_things reaches the worker's streams."""
    ctx.streams.deliver("ddp_things", seq, "E", seq, list(changes))


def sink_of(backend: Publications, name: str) -> PublicationSink:
    """The sink of the latest run of ``name``."""
    return backend.sinks[name][-1]


# -- documents and ready ---------------------------------------------------------------


def test_low_level_calls_reach_the_client_and_ready_only_when_called(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "manual")
    assert data(peer) == [
        {"msg": "added", "collection": "things", "id": "x", "fields": {"n": 1}}
    ]  # no ready: the publication did not say so
    sink = sink_of(backend, "manual")
    mark = len(peer.messages())
    sink.changed("things", "x", {"n": 2, "k": "v"})
    sink.added("things", "y", {"n": 3})
    sink.changed("things", "x", {}, cleared=["k"])
    sink.removed("things", "y")
    assert data(peer, mark) == [
        {"msg": "changed", "collection": "things", "id": "x", "fields": {"n": 2, "k": "v"}},
        {"msg": "added", "collection": "things", "id": "y", "fields": {"n": 3}},
        {"msg": "changed", "collection": "things", "id": "x", "cleared": ["k"]},
        {"msg": "removed", "collection": "things", "id": "y"},
    ]
    with pytest.raises(ValueError):
        sink.changed("things", "y", {"n": 4})  # not one it publishes (Meteor throws too)
    sink.ready()
    sink.ready()
    assert data(peer, mark)[4:] == [{"msg": "ready", "subs": ["s"]}]
    assert client_cache(peer) == {"things": {"x": {"n": 2}}}


def test_ready_called_while_publishing_follows_the_documents(ctx: FakeContext) -> None:
    peer = connected(ctx)
    subscribe(peer, "prompt")
    assert [m["msg"] for m in data(peer)] == ["added", "ready"]


def test_documents_merge_with_the_subscriptions_queries_and_with_other_subscriptions(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "mixed", "m")
    # Its own document first (published while running), then its query's fields merged.
    assert data(peer) == [
        {"msg": "added", "collection": "things", "id": "a", "fields": {"extra": True}},
        {"msg": "changed", "collection": "things", "id": "a", "fields": {"n": 1}},
        {"msg": "ready", "subs": ["m"]},
    ]
    subscribe(peer, "all", "all")  # a: {n: 1, tag: x}, b: {n: 2}
    assert client_cache(peer) == {
        "things": {"a": {"extra": True, "n": 1, "tag": "x"}, "b": {"n": 2}}
    }
    mark = len(peer.messages())
    sink = sink_of(backend, "mixed")
    sink.removed("things", "a")  # its query and "all" still publish a
    sink.added("things", "b", {"n": 20, "mine": 1})  # "all" came first: its n stays
    assert data(peer, mark) == [
        {"msg": "changed", "collection": "things", "id": "a", "cleared": ["extra"]},
        {"msg": "changed", "collection": "things", "id": "b", "fields": {"mine": 1}},
    ]
    peer.send({"msg": "unsub", "id": "m"})
    peer.expect("nosub")
    assert client_cache(peer) == {"things": {"a": {"n": 1, "tag": "x"}, "b": {"n": 2}}}
    assert not any(m["msg"] == "removed" for m in peer.messages())


# -- stopping --------------------------------------------------------------------------


def test_error_stops_the_subscription_with_nosub_and_the_error(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "manual")
    sink_of(backend, "manual").error(ClientError(403, "Not yours any more"))
    assert peer.expect("nosub") == {
        "msg": "nosub",
        "id": "s",
        "error": messages.meteor_error(403, "Not yours any more"),
    }
    assert client_cache(peer) == {} and "s" not in peer.session.subs
    wait_until(lambda: backend.stops == ["manual"], "on_stop after error()")


def test_an_error_while_publishing_is_a_nosub_and_its_documents_go(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "refused")
    assert data(peer) == [
        {"msg": "added", "collection": "things", "id": "x", "fields": {"n": 1}},
        {"msg": "removed", "collection": "things", "id": "x"},
        {"msg": "nosub", "id": "s", "error": messages.meteor_error(403, "Not yours")},
    ]
    wait_until(lambda: backend.stops == ["refused"], "on_stop")


def test_stop_stops_the_subscription_with_a_plain_nosub(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "manual")
    sink_of(backend, "manual").stop()
    assert peer.expect("nosub") == {"msg": "nosub", "id": "s"}
    assert client_cache(peer) == {}
    subscribe(peer, "quitter", "q")  # stopped while publishing
    assert data(peer)[-1] == {"msg": "nosub", "id": "q"}
    wait_until(lambda: sorted(backend.stops) == ["manual", "quitter"], "on_stop after stop()")


def test_on_stop_runs_on_unsub_on_error_and_when_the_session_ends(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    for sub_id in ("u", "e", "end"):
        subscribe(peer, "manual", sub_id)
    first, second, third = backend.sinks["manual"]
    peer.send({"msg": "unsub", "id": "u"})
    wait_until(lambda: backend.stops == ["manual"], "on_stop after unsub")
    second.error(ClientError(400, "bad"))
    wait_until(lambda: backend.stops == ["manual"] * 2, "on_stop after error()")
    peer.send({"msg": "disconnect"})
    peer.greenlet.join(timeout=2)
    wait_until(lambda: backend.stops == ["manual"] * 3, "on_stop at the session's end")
    assert first.stopped and second.stopped and third.stopped
    ran: list[str] = []
    third.on_stop(lambda: ran.append("late"))  # registered once stopped: runs at once
    wait_until(lambda: ran == ["late"], "a late on_stop")


def test_calls_after_the_subscription_stopped_are_ignored(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "manual")
    sink = sink_of(backend, "manual")
    peer.send({"msg": "unsub", "id": "s"})
    peer.expect("nosub")
    processed(peer)
    mark = len(peer.messages())
    sink.added("things", "z", {"n": 1})
    sink.changed("things", "x", {"n": 9})
    sink.removed("things", "x")
    sink.ready()
    sink.error(ClientError(500, "late"))
    sink.stop()
    sink.observe("ddp_things", "things", lambda changes: None, (5, "E"))
    processed(peer)
    assert data(peer, mark) == [] and sink.stopped
    assert "ddp_things" not in ctx.streams.streams
    wait_until(lambda: backend.stops == ["manual"], "on_stop")
    gevent.sleep(0)
    assert backend.stops == ["manual"]  # once


# -- observe ---------------------------------------------------------------------------


def test_observe_callbacks_run_in_commit_order_one_at_a_time_until_unsub(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "watching")
    assert ctx.listened == ["ddp_things"]
    commit(ctx, 5, Change("i", "old", {"n": 0}))  # in its snapshot already: not handed over
    commit(ctx, 6, Change("i", "c6", {"n": 6}))
    commit(ctx, 7, Change("i", "c7", {"n": 7}), Change("u", "p", {"n": 10}))
    for seq in range(8, 11):
        commit(ctx, seq, Change("i", f"c{seq}", {"n": seq}))
    commit(ctx, 11, Change("d", "c6", {}))
    wait_until(lambda: len(backend.seen) == 6 and not backend.active, "six callbacks")
    assert backend.seen == [["c6"], ["c7", "p"], ["c8"], ["c9"], ["c10"], ["c6"]]
    assert backend.most_active == 1
    cache = client_cache(peer)["things"]
    assert cache == {"p": {"n": 10}, **{f"c{n}": {"n": n} for n in range(7, 11)}}
    peer.send({"msg": "unsub", "id": "s"})
    peer.expect("nosub")
    assert ctx.unlistened == ["ddp_things"]  # the observer let the channel go
    commit(ctx, 12, Change("i", "c12", {"n": 12}))
    gevent.sleep(0.01)
    assert len(backend.seen) == 6


def test_an_observed_channel_that_lost_history_reruns_the_subscription_without_flicker(
    ctx: FakeContext, backend: Publications
) -> None:
    backend.watched = {"p": {"n": 1}, "q": {"n": 2}}
    peer = connected(ctx)
    subscribe(peer, "watching")
    mark = len(peer.messages())
    # What the publication reads when it runs again, at the channel's new position.
    backend.watched = {"p": {"n": 1}, "r": {"n": 3}}
    backend.position = (10, "F")
    ctx.streams.lost_history("ddp_things", 10, "F")
    wait_until(lambda: backend.subscribed.count("watching") == 2, "the re-run")
    processed(peer)
    # p is published by both runs: untouched. q only by the old one, r by the new one.
    assert data(peer, mark) == [
        {"msg": "added", "collection": "things", "id": "r", "fields": {"n": 3}},
        {"msg": "removed", "collection": "things", "id": "q"},
    ]
    wait_until(lambda: backend.stops == ["watching"], "the old run's on_stop")
    ctx.streams.deliver("ddp_things", 11, "F", 11, [Change("i", "c11", {"n": 11})])
    wait_until(lambda: backend.seen == [["c11"]], "the new run's callback, once")
    assert client_cache(peer) == {"things": {"p": {"n": 1}, "r": {"n": 3}, "c11": {"n": 11}}}


def test_a_callback_that_falls_too_far_behind_stops_the_subscription_with_a_500(
    ctx: FakeContext, backend: Publications
) -> None:
    backend.hold = gevent.event.Event()
    peer = connected(ctx)
    subscribe(peer, "watching")
    for seq in range(6, 6 + MAX_OBSERVER_BACKLOG + 2):
        commit(ctx, seq, Change("i", f"c{seq}", {"n": seq}))
    assert peer.expect("nosub") == {"msg": "nosub", "id": "s", "error": messages.INTERNAL_ERROR}
    assert client_cache(peer) == {}
    wait_until(lambda: backend.stops == ["watching"], "on_stop")
    assert ctx.unlistened == ["ddp_things"]
    calls = len(backend.seen)
    backend.hold.set()
    wait_until(lambda: not backend.active, "the callback in flight to return")
    assert len(backend.seen) == calls <= 1  # nothing of the backlog ran after the stop
    assert client_cache(peer) == {}


def test_a_callback_that_raises_stops_the_subscription_with_a_500(
    ctx: FakeContext, backend: Publications
) -> None:
    backend.fail = True
    peer = connected(ctx)
    subscribe(peer, "watching")
    commit(ctx, 6, Change("i", "c6", {"n": 6}))
    commit(ctx, 7, Change("i", "c7", {"n": 7}))
    assert peer.expect("nosub") == {"msg": "nosub", "id": "s", "error": messages.INTERNAL_ERROR}
    wait_until(lambda: backend.stops == ["watching"], "on_stop")
    assert backend.seen == [["c6"]]  # the rest is not handed to a failed publication


def test_what_an_observe_callback_publishes_of_a_methods_write_precedes_updated(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "watching")
    peer.send({"msg": "method", "id": "w", "method": "write", "params": [6]})
    peer.expect("result")
    commit(ctx, 6, Change("i", "c6", {"n": 6}))  # the method's commit reaches the worker
    wait_until(lambda: backend.seen == [["c6"]] and not backend.active, "the callback")
    processed(peer)
    kinds = [(m["msg"], m.get("id") or m.get("methods")) for m in peer.messages()]
    assert kinds.index(("added", "c6")) < kinds.index(("updated", ["w"]))


def _updated(peer: Peer, method_id: str) -> bool:
    return any(m["msg"] == "updated" and method_id in m["methods"] for m in peer.messages())


def test_every_later_write_is_fenced_too_without_spinning(
    ctx: FakeContext, backend: Publications
) -> None:
    # Found by hand against `make run`: once a first callback had run, the observer's
    # event stayed set and the next fence spun until its timeout, starving the worker.
    peer = connected(ctx)
    subscribe(peer, "watching")
    for seq in (6, 7, 8):
        peer.send({"msg": "method", "id": f"w{seq}", "method": "write", "params": [seq]})
        peer.expect("result")
        began = time.monotonic()
        commit(ctx, seq, Change("i", f"c{seq}", {"n": seq}))
        wait_until(partial(_updated, peer, f"w{seq}"), f"updated of w{seq}")
        assert time.monotonic() - began < 1.0
    kinds = [(m["msg"], m.get("id") or m.get("methods")) for m in peer.messages()]
    for seq in (6, 7, 8):
        assert kinds.index(("added", f"c{seq}")) < kinds.index(("updated", [f"w{seq}"]))


# -- resuming --------------------------------------------------------------------------


def test_a_resumed_publication_that_never_called_ready_is_not_made_ready() -> None:
    resumer = FakeResumer()
    backend = Publications()
    ctx = FakeContext(Settings(), backend=backend, resumer=resumer)
    first = Peer(ctx)
    session_id = first.connect()["session"]
    subscribe(first, "manual")
    first.lose()
    ((state, epoch),) = resumer.parked
    resumer.resumed = Resumed(state, epoch + 1, [])
    again = Peer(ctx)
    again.connect(session=session_id, receivedCount=state.sent_count)
    processed(again)
    assert backend.subscribed == ["manual", "manual"]  # re-run on resume
    assert not any(m["msg"] == "ready" for m in again.messages())


def test_an_observer_whose_channel_lost_history_no_longer_holds_the_fence(
    ctx: FakeContext, backend: Publications
) -> None:
    peer = connected(ctx)
    subscribe(peer, "watching")
    (sub,) = [s for s in peer.session.subs.values() if s.name == "watching"]
    assert sub.run is not None
    (observer,) = sub.run.observers
    assert not observer.wait_done(99, 0.01)
    backend.position = (99, "E2")  # what the re-run's snapshot reads
    ctx.streams.lost_history("ddp_things", 99, "E2")
    assert observer.wait_done(99, 0.01)  # the re-run replaces what it would publish
    processed(peer)  # the re-run is done: nothing left running after the test
