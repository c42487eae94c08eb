"""relay.live.queries: identical subscriptions share one live query, loaded by one fetch.

A reconnect storm is thousands of ``acquire`` calls for one key at once: they must cost
one read of the database (single-flight), a failed read must reach every one of them and
leave nothing behind (the next subscription reads again), and the last ``release`` must
let the channel go. The database and the channel are ``tests.relay.stream.helpers.World``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gevent
import pytest

from relay.backend import Order, QueryData, QuerySpec, Window
from relay.live.queries import LiveQueries
from relay.live.query import LiveQuery
from tests.relay.stream.helpers import (
    BOOKS,
    BY_ANN,
    FakeSession,
    World,
    ins,
    join,
    spec_of,
    upd,
)

Fetch = Callable[[Sequence[QuerySpec]], Sequence[QueryData]]

ALL = spec_of(BOOKS, "all")
ANN = spec_of(BY_ANN, "ann")


def world_and_queries() -> tuple[World, LiveQueries]:
    world = World({"b1": {"title": "One", "author": "ann"}, "b2": {"title": "Two"}})
    return world, LiveQueries(world.host)


def test_identical_concurrent_subscriptions_run_one_fetch_and_share_one_query() -> None:
    world, queries = world_and_queries()
    gate = world.db.hold()
    storm = [gevent.spawn(queries.acquire, [ALL]) for _ in range(50)]
    gevent.sleep(0)
    assert world.db.calls == 1 and world.db.running == 1  # the others wait for its load
    gate.set()
    gevent.joinall(storm, timeout=5, raise_error=True)
    (query,) = {id(g.value[0]): g.value[0] for g in storm}.values()
    assert world.db.calls == 1 and query.holders == 50 and len(queries) == 1
    assert queries.stats() == {"queries": 1, "members": 0}
    sessions = [join(query, FakeSession()) for _ in storm]
    assert queries.stats() == {"queries": 1, "members": 50}
    for session in sessions:
        assert session.docs() == world.db.view(ALL)
    # Joining later copies the maintained view: no read at all.
    (again,) = queries.acquire([ALL])
    assert again is query and world.db.calls == 1
    late = join(again, FakeSession())
    world.commit(upd("b2", title="Deux"))
    for session in [*sessions, late]:
        assert session.docs() == world.db.view(ALL)
        assert session.sent[-1]["fields"] == {"title": "Deux"}
    assert world.db.calls == 1 and world.listened == ["ddp_books"]


def test_the_missing_queries_of_a_subscription_are_read_in_one_fetch() -> None:
    world, queries = world_and_queries()
    (first,) = queries.acquire([ALL])
    window = spec_of(BOOKS, "latest", Window((Order("title"), Order("id")), limit=1))
    got = queries.acquire([ANN, ALL, window])
    assert got[1] is first and [q.spec.key for q in got] == ["ann", "all", "latest"]
    assert world.db.calls == 2 and world.db.fetched == ["all", "ann", "latest"]
    assert [dict(q.view()) for q in got] == [world.db.view(q.spec) for q in got]
    assert first.holders == 2 and len(queries) == 3


def test_a_subscription_may_bring_its_own_fetch() -> None:
    world, queries = world_and_queries()
    read: list[str] = []

    def fetch(specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        read.extend(spec.key for spec in specs)
        return world.db.read(specs[0]), world.db.read(specs[1])

    got = queries.acquire([ALL, ANN], fetch=fetch)
    assert read == ["all", "ann"] and world.db.calls == 0
    assert dict(got[1].view()) == world.db.view(ANN)


def test_a_failed_load_reaches_every_waiter_and_is_not_kept() -> None:
    world, queries = world_and_queries()
    (kept,) = queries.acquire([ANN])
    gate = world.db.hold()
    world.db.error = RuntimeError("the database is down")
    waiters = [gevent.spawn(queries.acquire, [ALL, ANN]) for _ in range(5)]
    gevent.sleep(0)
    assert world.db.calls == 2 and world.db.running == 1
    gate.set()
    gevent.joinall(waiters, timeout=5)
    for waiter in waiters:
        assert isinstance(waiter.exception, RuntimeError)
        assert str(waiter.exception) == "the database is down"
    # Nothing stays held: the failed query is gone, the one they joined is as it was.
    assert list(queries.by_key) == ["ann"] and kept.holders == 1
    world.db.error = None
    (query,) = queries.acquire([ALL])  # the next subscription reads again
    assert world.db.calls == 3 and dict(query.view()) == world.db.view(ALL)


def test_a_waiter_killed_while_a_load_runs_lets_go_of_it() -> None:
    world, queries = world_and_queries()
    gate = world.db.hold()
    loader = gevent.spawn(queries.acquire, [ALL])
    waiter = gevent.spawn(queries.acquire, [ALL])
    gevent.sleep(0)
    waiter.kill()
    gate.set()
    (query,) = loader.get(timeout=5)
    assert query.holders == 1
    queries.release(query)
    assert len(queries) == 0 and query.closed


def test_the_last_release_drops_the_query_and_unlistens() -> None:
    world, queries = world_and_queries()
    (query,) = queries.acquire([ALL])
    (same,) = queries.acquire([ALL])
    session = join(query, FakeSession())
    queries.release(query)
    assert len(queries) == 1 and not query.closed and world.unlistened == []
    queries.release(same)
    assert len(queries) == 0 and query.closed
    assert world.unlistened == ["ddp_books"] and not world.streams.streams
    before = list(session.sent)
    world.commit(ins("b3", title="Three"))
    assert session.sent == before  # dropped: nobody gets its changes any more
    (fresh,) = queries.acquire([ALL])
    assert fresh is not query and world.db.calls == 2
    assert world.listened == ["ddp_books", "ddp_books"]


def out_of_order(specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
    gevent.sleep(0.01)  # long enough for a second subscription to wait for this load
    return [QueryData(keys=None, complete=False)]  # a filtered set's fetch is complete


def too_few(specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
    gevent.sleep(0.01)
    return []


@pytest.mark.parametrize("fetch", [too_few, out_of_order], ids=["too-few", "load-raises"])
def test_a_load_that_cannot_be_used_fails_every_waiter_too(fetch: Fetch) -> None:
    world, queries = world_and_queries()
    world.host.fetch = fetch
    loader = gevent.spawn(queries.acquire, [ALL])
    waiter = gevent.spawn(queries.acquire, [ALL])
    try:
        with gevent.Timeout(0.5, AssertionError("a subscription waits for a load forever")):
            gevent.joinall([loader, waiter])
        assert isinstance(loader.exception, RuntimeError | ValueError)
        assert waiter.exception is not None
        assert len(queries) == 0
        world.host.fetch = world.db.fetch
        with gevent.Timeout(0.5, AssertionError("the key is taken by a query never loaded")):
            (query,) = queries.acquire([ALL])
        assert isinstance(query, LiveQuery) and query.loaded.is_set()
    finally:
        gevent.killall([loader, waiter])
