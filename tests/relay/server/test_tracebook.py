"""Traces switched on at run time (``relay.server.tracebook``), over a real session.

A ``FakeBackend`` that also implements ``TraceBackend`` keeps the orders and what was
stored in memory; the session runs over a ``MemoryTransport`` with the real in-memory
channel streams, so a commit on the trace channel is what makes the book read again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gevent
import pytest

from relay.backend import Route, TraceOrder, TraceOrders
from relay.protocol.changestream import Change
from relay.server import tracebook
from relay.server.tracebook import TraceBook, Tracer
from tests.relay.server.helpers import FakeBackend, FakeContext, Peer

TRACES = Route("ddp_traces", "ddp.sessiontrace", (), fields=())


class TracingBackend(FakeBackend):
    """The fake backend, plus trace orders and a store (optionally failing)."""

    def __init__(self) -> None:
        super().__init__()
        self.orders: list[TraceOrder] = []
        self.stored: list[dict[str, Any]] = []
        self.reads = 0
        self.fail_reads = False
        self.fail_saves = False

    def trace_orders(self) -> TraceOrders:
        self.reads += 1
        if self.fail_reads:
            raise RuntimeError("database down")
        return TraceOrders(tuple(self.orders), TRACES, (0, "e"))

    def save_trace(
        self,
        trace_id: str,
        relay: str,
        session_id: str,
        first: int,
        frames: Sequence[Mapping[str, Any]],
        stats: Mapping[str, int],
    ) -> None:
        if self.fail_saves:
            raise RuntimeError("database down")
        self.stored.append(
            {"trace": trace_id, "relay": relay, "session": session_id, "first": first,
             "frames": list(frames), "stats": dict(stats)}
        )  # fmt: skip


@pytest.fixture
def backend() -> TracingBackend:
    return TracingBackend()


@pytest.fixture
def ctx(backend: TracingBackend) -> Iterator[FakeContext]:
    yield FakeContext(backend=backend)


def _commit(ctx: FakeContext, seq: int) -> None:
    """A change on the trace table, as the listener hands it over."""
    ctx.streams.deliver(TRACES.channel, seq, "e", seq, [Change("u", "t1", {})])


def _stored_frames(backend: TracingBackend, session: str) -> list[dict[str, Any]]:
    return [f for batch in backend.stored if batch["session"] == session for f in batch["frames"]]


def _book(ctx: FakeContext) -> TraceBook:
    book = ctx.traces
    assert book is not None
    return book


def _wait(predicate: Any, timeout: float = 3.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():
            gevent.sleep(0.01)


def test_off_by_default_and_nothing_recorded(ctx: FakeContext, backend: TracingBackend) -> None:
    peer = Peer(ctx)
    peer.connect()
    peer.send({"msg": "sub", "id": "a", "name": "live", "params": []})
    peer.expect("ready")
    assert peer.session.trace is None
    assert backend.reads == 1  # the book read the orders once for the worker
    peer.transport.disconnect()
    peer.greenlet.join(2)
    assert backend.stored == []


def test_a_trace_started_by_a_commit_records_both_directions(
    ctx: FakeContext, backend: TracingBackend
) -> None:
    peer = Peer(ctx)
    connected = peer.connect()
    session_id = connected["session"]
    assert peer.session.trace is None
    backend.orders = [TraceOrder("t1", session_id=session_id, until=time.time() + 60)]
    _commit(ctx, 1)  # the book reads again and starts this session's trace
    _wait(lambda: peer.session.trace is not None)
    peer.send({"msg": "sub", "id": "a", "name": "live", "params": []})
    peer.expect("ready")
    peer.send({"msg": "method", "id": "m1", "method": "login", "params": [{"resume": "zqSECRET"}]})
    peer.expect("updated")
    tracer = peer.session.trace
    assert isinstance(tracer, Tracer)
    tracer.finish()
    _wait(lambda: tracer.flushed(1.0) and tracer.recorder.waiting == 0)
    frames = _stored_frames(backend, session_id)
    kinds = [(f["d"], json.loads(f["m"]).get("msg")) for f in frames]
    assert kinds[:2] == [("in", "connect"), ("out", "connected")]  # synthetic: began late
    assert ("in", "sub") in kinds and ("out", "ready") in kinds and ("in", "method") in kinds
    assert all("zqSECRET" not in f["m"] for f in frames)
    assert {batch["trace"] for batch in backend.stored} == {"t1"}
    assert backend.stored[0]["relay"] == _book(ctx).relay

    # Stopped (the order is gone at the next read): recording ends for this session.
    backend.orders = []
    _commit(ctx, 2)
    _wait(lambda: peer.session.trace is None)
    assert tracer.recorder.stopped == "off"


def test_a_user_trace_starts_when_the_session_logs_in(
    ctx: FakeContext, backend: TracingBackend
) -> None:
    backend.orders = [TraceOrder("t2", user_id="u1", until=time.time() + 60)]
    peer = Peer(ctx)
    peer.connect()
    _wait(lambda: _book(ctx).loaded)
    assert peer.session.trace is None  # anonymous: not the traced user
    peer.send({"msg": "method", "id": "1", "method": "login", "params": [{"user": "u1"}]})
    peer.expect("updated")
    assert peer.session.trace is not None and peer.session.trace.order.id == "t2"


def test_the_bounds_end_recording_and_storing_failures_cost_nothing(
    ctx: FakeContext, backend: TracingBackend
) -> None:
    peer = Peer(ctx)
    session_id = peer.connect()["session"]
    backend.orders = [TraceOrder("t3", session_id=session_id, until=time.time() + 60, max_frames=4)]
    backend.fail_saves = True
    _commit(ctx, 1)
    _wait(lambda: peer.session.trace is not None)
    for n in range(5):
        peer.send({"msg": "sub", "id": f"s{n}", "name": "live", "params": []})
    peer.expect("ready")
    tracer = peer.session.trace
    assert tracer is not None
    assert tracer.recorder.recorded == 4 and tracer.recorder.stopped == "frames"
    _wait(lambda: tracer.flushed(1.0))
    assert backend.stored == []  # the failure was logged; the session went on
    peer.send({"msg": "method", "id": "m", "method": "echo", "params": [1]})
    peer.expect("updated")


def test_a_failed_read_is_retried_later_not_per_session(
    ctx: FakeContext, backend: TracingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.fail_reads = True
    first = Peer(ctx)
    first.connect()
    Peer(ctx).connect()
    assert backend.reads == 1  # the second connect did not read again at once
    backend.fail_reads = False
    monkeypatch.setattr(tracebook, "RETRY_SECONDS", 0.0)
    Peer(ctx).connect()
    _wait(lambda: _book(ctx).loaded)
    assert backend.reads == 2


def test_a_backend_without_traces_never_traces() -> None:
    ctx = FakeContext()
    peer = Peer(ctx)
    peer.connect()
    assert ctx.traces is None and peer.session.trace is None


def test_a_trace_extended_after_it_ran_out_records_again(
    ctx: FakeContext, backend: TracingBackend
) -> None:
    peer = Peer(ctx)
    session_id = peer.connect()["session"]
    backend.orders = [TraceOrder("t4", session_id=session_id, until=time.time() + 0.2)]
    _commit(ctx, 1)
    _wait(lambda: peer.session.trace is not None)
    first = peer.session.trace
    assert first is not None
    gevent.sleep(0.3)
    peer.send({"msg": "sub", "id": "late", "name": "live", "params": []})
    peer.expect("ready")
    assert first.recorder.stopped == "until"
    backend.orders = [TraceOrder("t4", session_id=session_id, until=time.time() + 60)]
    _commit(ctx, 2)
    _wait(lambda: peer.session.trace is not first)
    second = peer.session.trace
    assert second is not None and second.recorder.stopped is None
    assert second.order.id == "t4"
