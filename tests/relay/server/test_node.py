"""The node and the parts it composes: hub, ticker, housekeeper, keepalive, and the session
context."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import gevent
import pytest
from prometheus_client import REGISTRY

from relay import disconnect
from relay.config import Settings
from relay.metrics import get_metrics
from relay.protocol.ids import session_tag
from relay.server.context import NodeContext
from relay.server.housekeeper import Housekeeper
from relay.server.hub import Hub
from relay.server.keepalive import Keepalive
from relay.server.node import Node
from relay.server.ticker import Ticker
from relay.server.workpool import WorkPool
from relay.transport import HeartbeatRegistry, MemoryTransport
from tests.relay.server.helpers import HANDSHAKE, FakeBackend, FakeMember


def gauge() -> float:
    return REGISTRY.get_sample_value("ddp_relay_sessions") or 0.0


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node(Settings(), FakeBackend())
    yield n
    n.stop()


# -- composition --------------------------------------------------------------------------------


def test_without_a_database_the_node_has_no_listener_resumer_or_housekeeper(node: Node) -> None:
    assert node.listener is None and node.resumer is None and node.housekeeper is None
    assert node.keepalive is None
    ctx = node.context
    assert isinstance(ctx, NodeContext)
    assert ctx.settings is node.settings and ctx.backend is node.backend
    assert ctx.metrics is node.metrics and ctx.streams is node.streams
    assert ctx.resumer is None
    # The hub's own bound methods, no wrapper between a session and the hub.
    assert ctx.session_opened == node.hub.opened
    assert ctx.session_connected == node.hub.connected
    assert ctx.session_closed == node.hub.closed
    assert ctx.queries is node.queries and node.queries.host.streams is node.streams
    assert ctx.run(lambda a, b: a + b, 2, 3) == 5  # on the node's work pool


def test_with_a_database_the_node_composes_listener_resumer_and_housekeeper() -> None:
    settings = Settings(database_url="postgresql://relay@127.0.0.1:1/none", resume_window=60)
    node = Node(settings, FakeBackend())
    try:
        assert node.listener is not None and node.resumer is not None
        assert node.housekeeper is not None and node.keepalive is not None
        assert node.context.resumer is node.resumer
    finally:
        node.stop()
    no_resume = Node(replace(settings, resume_window=0), FakeBackend())
    try:
        assert no_resume.listener is not None and no_resume.housekeeper is not None
        assert no_resume.resumer is None and no_resume.context.resumer is None
    finally:
        no_resume.stop()


def test_adopt_serves_a_socket_and_the_hub_follows_its_life(node: Node) -> None:
    transport = MemoryTransport()
    before = gauge()
    ended = node.adopt(transport, HANDSHAKE)
    gevent.sleep(0)
    assert len(node.sessions) == 1
    transport.feed('{"msg":"connect","version":"1","support":["1"]}')
    with gevent.Timeout(2):
        while not transport.sent:
            gevent.sleep(0.005)
    assert '"msg":"connected"' in transport.sent[0]
    (session_id,) = node.hub.by_id
    assert session_id in transport.sent[0]
    assert gauge() == before + 1
    transport.feed('{"msg":"disconnect"}')
    assert ended.wait(2)
    assert not node.sessions and not node.hub.by_id
    assert gauge() == before


def test_drain_turns_readiness_off_and_closes_every_session_as_going_away(node: Node) -> None:
    members = [FakeMember(), FakeMember("x")]
    for member in members:
        node.hub.opened(member)
    assert node.ready
    node.drain()
    assert not node.ready
    assert [m.closed_with for m in members] == [[disconnect.SHUTDOWN], [disconnect.SHUTDOWN]]
    late = FakeMember()
    node.hub.opened(late)  # a socket accepted while draining is closed at once
    assert late.closed_with == [disconnect.SHUTDOWN]


def test_wait_sessions_waits_for_the_last_session_and_beats_meanwhile(node: Node) -> None:
    member = FakeMember()
    node.hub.opened(member)
    beats: list[float] = []
    assert node.wait_sessions(0.15, lambda: beats.append(time.monotonic())) is False
    assert beats
    gevent.spawn_later(0.1, node.hub.closed, member)
    assert node.wait_sessions(2) is True
    assert node.wait_sessions(0) is True  # nothing open: at once


def test_stop_drains_and_closes_the_work_pool() -> None:
    backend = FakeBackend()
    node = Node(Settings(backend_concurrency=2), backend)
    node.start()
    assert node.context.run(lambda: 1) == 1  # one pool greenlet exists now
    member = FakeMember()
    node.hub.opened(member)
    node.stop()
    assert member.closed_with == [disconnect.SHUTDOWN]
    assert backend.closed == 1  # the pool greenlet's exit hook released the backend
    with pytest.raises(RuntimeError, match="closed"):
        node.context.run(lambda: 1)


# -- the hub ------------------------------------------------------------------------------------


def test_hub_indexes_connected_sessions_and_keeps_the_gauge() -> None:
    hub = Hub(get_metrics())
    before = gauge()
    a, b = FakeMember(), FakeMember()
    hub.opened(a)
    hub.opened(b)
    assert len(hub) == 2 and not hub.by_id
    a.id = "A"
    hub.connected(a)
    assert hub.by_id == {"A": a} and gauge() == before + 1
    hub.closed(b)  # never connected: the gauge does not move
    assert gauge() == before + 1 and hub.members() == [a]
    impostor = FakeMember("A")
    hub.closed(impostor)  # another object with the same id does not evict the session
    assert hub.by_id == {"A": a} and gauge() == before + 1
    hub.closed(a)
    assert not hub.by_id and len(hub) == 0 and gauge() == before
    hub.closed(a)  # twice is harmless
    assert gauge() == before


def test_a_session_resumed_while_its_old_one_tears_down_is_counted_once() -> None:
    hub = Hub(get_metrics())
    before = gauge()
    old, new = FakeMember("X"), FakeMember("X")
    hub.opened(old)
    hub.connected(old)
    hub.opened(new)
    hub.connected(new)  # resumed here before the old session finished parking
    assert hub.by_id == {"X": new} and gauge() == before + 1
    hub.closed(old)
    assert hub.by_id == {"X": new} and gauge() == before + 1
    hub.closed(new)
    assert not hub.by_id and gauge() == before


# -- the ticker ---------------------------------------------------------------------------------


class Boom(FakeMember):
    def tick(self, now: float) -> None:
        raise RuntimeError("tick bug")


def test_ticker_ticks_every_session_and_one_failure_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = Hub(get_metrics())
    good, bad = FakeMember(), Boom("b")
    hub.opened(bad)
    hub.opened(good)
    ticker = Ticker(hub, HeartbeatRegistry())
    with caplog.at_level(logging.ERROR, logger="relay.server.ticker"):
        ticker.tick(12.5)
    assert good.ticks == [12.5]
    assert f"tick failed for session {session_tag('b')}" in caplog.text
    assert "session b" not in caplog.text  # a session id is a credential: never logged


def test_ticker_skips_a_session_until_it_is_due() -> None:
    hub = Hub(get_metrics())
    due, later = FakeMember("a"), FakeMember("b")
    later.tick_due = 20.0
    hub.opened(due)
    hub.opened(later)
    ticker = Ticker(hub, HeartbeatRegistry())
    ticker.tick(12.5)
    ticker.tick(20.0)
    assert due.ticks == [12.5, 20.0]
    assert later.ticks == [20.0]


def test_ticker_runs_in_the_background_until_stopped() -> None:
    hub = Hub(get_metrics())
    member = FakeMember()
    hub.opened(member)
    ticker = Ticker(hub, HeartbeatRegistry(), interval=0.01)
    ticker.start()
    ticker.start()  # idempotent: still one greenlet
    gevent.sleep(0.1)
    ticker.stop()
    seen = len(member.ticks)
    assert seen >= 3
    assert member.ticks == sorted(member.ticks)
    gevent.sleep(0.05)
    assert len(member.ticks) == seen


def test_the_node_starts_its_ticker() -> None:
    node = Node(Settings(), FakeBackend())
    node.ticker.interval = 0.01
    member = FakeMember()
    node.hub.opened(member)
    node.start()
    try:
        with gevent.Timeout(2):
            while not member.ticks:
                gevent.sleep(0.01)
    finally:
        node.stop()


# -- the housekeeper ----------------------------------------------------------------------------


class Leadership:
    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self.chores = 0

    def is_leader(self) -> bool:
        return self.leader

    def housekeeping(self) -> None:
        self.chores += 1


def inline(fn: Callable[[], None]) -> None:
    fn()


def test_housekeeping_runs_on_the_leader_only() -> None:
    backend = FakeBackend()
    follower = Leadership(leader=False)
    keeper = Housekeeper(inline, backend.housekeeping, follower)
    assert keeper.run_once() is False
    assert backend.housekept == 0 and follower.chores == 0
    follower.leader = True
    assert keeper.run_once() is True
    assert backend.housekept == 1 and follower.chores == 1


def test_without_a_coordinator_every_worker_does_the_housekeeping() -> None:
    backend = FakeBackend()
    assert Housekeeper(inline, backend.housekeeping, None).run_once() is True
    assert backend.housekept == 1


def test_a_failed_chore_is_logged_and_the_leaders_chores_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing() -> None:
        raise RuntimeError("database down")

    leadership = Leadership(leader=True)
    with caplog.at_level(logging.ERROR, logger="relay.server.housekeeper"):
        assert Housekeeper(inline, failing, leadership).run_once() is True
    assert "housekeeping failed" in caplog.text
    assert leadership.chores == 1


def test_housekeeper_loops_in_the_background_through_the_runner() -> None:
    backend = FakeBackend()
    ran: list[Callable[[], None]] = []

    def run(fn: Callable[[], None]) -> None:
        ran.append(fn)
        fn()

    keeper = Housekeeper(run, backend.housekeeping, Leadership(leader=True), interval=0.01)
    keeper.start()
    try:
        with gevent.Timeout(2):
            while backend.housekept < 2:
                gevent.sleep(0.01)
    finally:
        keeper.stop()
    assert ran and all(fn == backend.housekeeping for fn in ran)


# -- the keepalive ------------------------------------------------------------------------------


def test_keepalive_runs_on_every_worker_through_the_runner() -> None:
    """Leader or not: a lease is per worker (no leadership is even asked)."""
    backend = FakeBackend()
    ran: list[Callable[[], None]] = []

    def run(fn: Callable[[], None]) -> None:
        ran.append(fn)
        fn()

    keeper = Keepalive(run, backend.keepalive, interval=0.01)
    keeper.start()
    try:
        with gevent.Timeout(2):
            while backend.kept_alive < 3:
                gevent.sleep(0.01)
    finally:
        keeper.stop()
    assert all(fn == backend.keepalive for fn in ran)


def test_a_failed_keepalive_is_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise RuntimeError("database down")

    keeper = Keepalive(inline, failing, interval=0.01)
    with caplog.at_level(logging.ERROR, logger="relay.server.keepalive"):
        keeper.start()
        try:
            with gevent.Timeout(2):
                while len(calls) < 2:
                    gevent.sleep(0.01)
        finally:
            keeper.stop()
    assert "keepalive failed" in caplog.text


def test_the_lease_renewal_never_waits_behind_client_methods() -> None:
    """Two addresses' slow methods fill every normal slot of the pool; the node's
    keepalive runs urgent, so the lease does not lapse while its subscribers are here
    (else other workers would sweep their presence)."""
    settings = Settings(database_url="postgresql://relay@127.0.0.1:1/none", resume_window=0)
    node = Node(settings, FakeBackend())
    try:
        assert node.keepalive is not None
        pool = WorkPool(8)  # RELAY_BACKEND_CONCURRENCY's default
        slow = [
            gevent.spawn(pool.run, gevent.sleep, 1.0, owner=address)
            for address in ("10.0.0.1", "10.0.0.2")
            for _ in range(5)
        ]
        gevent.sleep(0.01)
        renewed: list[float] = []
        # The node's own runner, bound to this pool.
        runner = node.keepalive._run
        assert isinstance(runner, functools.partial) and runner.keywords == {"urgent": True}
        keeper = Keepalive(
            functools.partial(pool.run, **runner.keywords),
            lambda: renewed.append(time.monotonic()),
        )
        started = time.monotonic()
        keeper.run_round()
        assert renewed[0] - started < 0.2
        gevent.joinall(slow)
        pool.close()
    finally:
        node.stop()


def test_a_started_node_has_its_gauges_and_alerting_labels_from_the_first_scrape(
    node: Node,
) -> None:
    """The sampler's first round runs in ``start``; every close reason is pre-created."""

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    node.start()
    for d in vars(disconnect).values():
        if isinstance(d, disconnect.Disconnect):
            assert value("ddp_relay_disconnects_total", reason=d.name) is not None, d.name
    assert value("ddp_relay_workpool_size") == node.settings.backend_concurrency
    assert value("ddp_relay_listener_connected") == 1  # no database: nothing to lose
    assert value("ddp_relay_coordinator_connected") == 1
    assert (value("ddp_relay_process_open_fds") or 0) > 0
