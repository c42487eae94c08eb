"""relay.live.query: one maintained query per distinct key, applied to every member.

Each test drives a real ``LiveQuery`` attached to real channel streams, fed by
transactions that also change a fake database (``tests.relay.stream.helpers.World``), so
what a member session holds can be compared with what the database holds after every
step (I4). Refetches run in their own greenlet, as in a worker; a fetch that must stay in
flight waits on the database's gate, and tests wait on conditions, never on the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from relay.backend import CountOf, Order, QueryData, QuerySpec, Route, Window
from relay.live.query import LiveQuery
from tests.relay.stream.helpers import (
    BOOKS,
    BY_ANN,
    OPAQUE,
    FakeSession,
    Recorder,
    World,
    ins,
    join,
    rm,
    settle,
    spec_of,
    upd,
)

#: The two first by ``n`` (a fetch reads four: the window and as many again as a buffer).
LATEST = spec_of(BOOKS, "latest", Window((Order("n"), Order("id")), limit=2))
ANN_COUNT = spec_of(BY_ANN, "count", count=CountOf("counts", "ann"))


def numbered(*ns: int) -> dict[str, dict[str, Any]]:
    """Rows ``d<n>`` with ``n``: in window order by their number."""
    return {f"d{n}": {"n": n} for n in ns}


def converged(world: World, query: LiveQuery, *sessions: FakeSession) -> bool:
    """Every member holds what the database holds, and so does the query's view (in the
    window's order, for a window)."""
    expected = world.db.view(query.spec)
    view = dict(query.view())
    if query.spec.window is not None and list(view) != list(expected):
        return False
    return view == expected and all(s.docs(query.collection) == expected for s in sessions)


def wait_until(condition: Callable[[], object], what: str) -> None:
    with gevent.Timeout(5, AssertionError(f"timed out waiting: {what}")):
        while not condition():
            gevent.sleep(0.001)


def wait_until_fetching(world: World) -> None:
    wait_until(lambda: world.db.running, "a fetch waiting for the database")


# -- a filtered set --------------------------------------------------------------------


def test_a_filtered_set_follows_inserts_changes_removals_and_moves() -> None:
    world = World({"b0": {"title": "Zero", "author": "ann"}})
    query, first = world.query(spec_of(Route("ddp_books", "books", BY_ANN.conditions, ("title",))))
    second = join(query, FakeSession())
    steps = [
        (ins("b1", title="One", author="ann"), ("added", "b1")),
        (ins("b2", title="Two", author="bob"), None),  # not a member
        (upd("b1", title="Uno", author="ann"), ("changed", "b1")),
        (upd("b1", title="Uno", author="ann", pages=3), None),  # an unpublished field
        (upd("b2", title="Two", author="ann"), ("added", "b2")),  # moves in
        (upd("b1", title="Uno", author="bob"), ("removed", "b1")),  # moves out
        (rm("b2"), ("removed", "b2")),
        (rm("b1"), None),  # not a member any more
    ]
    for change, message in steps:
        before = len(first.sent)
        world.commit(change)
        assert first.kinds()[before:] == ([message] if message else [])
        assert converged(world, query, first, second)
    assert first.sent == second.sent
    assert first.sent[1]["fields"] == {"title": "One"}  # only the route's fields
    assert world.db.calls == 1  # all of it routed in memory


# -- a sorted, limited window ----------------------------------------------------------


def test_a_new_document_pushes_the_last_one_out_of_the_window() -> None:
    world = World(numbered(10, 20, 30))
    query, session = world.query(LATEST)
    assert session.docs() == {"d10": {"n": 10}, "d20": {"n": 20}}
    world.commit(ins("d5", n=5))
    assert session.kinds()[2:] == [("added", "d5"), ("removed", "d20")]
    world.commit(upd("d30", n=1))  # from the buffer straight to the top
    assert session.kinds()[4:] == [("added", "d30"), ("removed", "d10")]
    assert converged(world, query, session) and world.db.calls == 1


def test_a_removal_shifts_one_in_from_the_buffer_without_a_fetch() -> None:
    world = World(numbered(1, 2, 3, 4, 5, 6))
    query, session = world.query(LATEST)
    world.commit(rm("d1"))
    assert session.kinds()[2:] == [("removed", "d1"), ("added", "d3")]
    world.commit(upd("d2", n=9))  # moves behind the buffer's end: out of what it knows
    assert session.kinds()[4:] == [("removed", "d2"), ("added", "d4")]
    assert converged(world, query, session) and world.db.calls == 1


def test_a_window_out_of_buffer_fetches_again_once_and_the_fence_waits_for_it() -> None:
    world = World(numbered(1, 2, 3, 4, 5, 6, 7))
    query, session = world.query(LATEST)
    other = join(query, FakeSession())
    gate = world.db.hold()
    seq = world.commit(rm("d1"), rm("d2"), rm("d3"))  # d4 is all the buffer has left
    fence = gevent.spawn(query.wait_settled, seq, 5.0)
    wait_until_fetching(world)
    assert not fence.ready() and not query.wait_settled(seq, 0.01)
    assert query.wait_settled(seq - 1, 0.01)  # what came before owes nothing
    world.commit(rm("d4"))  # empty now: still the one fetch
    # Changes wait for the fetch (then replayed from the ring): applied now, they would
    # be taken back by the fetch's older snapshot and applied again, a flicker.
    assert world.db.calls == 2 and session.docs() == {"d4": {"n": 4}}
    gate.set()
    assert fence.get(timeout=5) is True
    settle(query)
    assert world.db.calls == 2
    assert converged(world, query, session, other)
    assert session.docs() == {"d5": {"n": 5}, "d6": {"n": 6}}
    world.commit(rm("d5"))  # the refetch filled the buffer again
    assert world.db.calls == 2 and converged(world, query, session, other)


def test_the_fence_waits_for_a_refill_owed_to_an_earlier_commit_of_a_coalesced_run() -> None:
    world = World(numbered(1, 2, 3, 4, 5, 6, 7))
    query, _ = world.query(LATEST)
    gate = world.db.hold()
    seq = world.commit(rm("d1"), rm("d2"), rm("d3"), deliver=False)  # the method's write
    world.commit(upd("d7", n=8), deliver=False)  # anyone's, committed right after
    world.deliver()  # the listener hands both over in one run
    wait_until_fetching(world)
    try:
        # The window shows d4 alone until the refill: ``updated`` must wait for it.
        assert not query.wait_settled(seq, 0.01)
    finally:
        gate.set()
        settle(query)


# -- a count ---------------------------------------------------------------------------


def test_a_count_follows_inserts_removals_and_moves_across_its_filter() -> None:
    world = World({"b1": {"author": "ann"}})
    query, session = world.query(ANN_COUNT)
    assert session.sent == [
        {"msg": "added", "collection": "counts", "id": "ann", "fields": {"count": 1}}
    ]
    steps = [
        (ins("b2", author="ann"), 2),
        (ins("b3", author="bob"), None),
        (upd("b3", author="ann"), 3),  # moves in
        (upd("b2", author="ann", title="x"), None),  # still a member
        (upd("b1", author="bob"), 2),  # moves out
        (rm("b1"), None),  # not a member any more
        (rm("b2"), 1),
        (rm("b3"), 0),
    ]
    for change, count in steps:
        before = len(session.sent)
        world.commit(change)
        expected = [] if count is None else [("changed", "ann", count)]
        got = [(m["msg"], m["id"], m["fields"]["count"]) for m in session.sent[before:]]
        assert got == expected
        assert converged(world, query, session)
    assert world.db.calls == 1


# -- reading the query again -----------------------------------------------------------


def test_an_undecidable_change_is_read_once_for_every_member_and_every_change_meanwhile() -> None:
    world = World({"b1": {"title": "One"}})
    query, first = world.query(OPAQUE)
    members = [first, join(query, FakeSession()), join(query, FakeSession())]
    for member in members:
        member.sent.clear()
    gate = world.db.hold()
    seq = world.commit(upd("b1", title="Uno"))
    wait_until_fetching(world)
    fence = gevent.spawn(query.wait_settled, seq, 5.0)
    for n in range(2, 7):  # committed while the fetch waits for the work pool
        world.commit(ins(f"b{n}", title=str(n)))
    world.commit(rm("b1"))
    assert not fence.ready() and world.db.calls == 2
    assert all(member.sent == [] for member in members)  # nothing guessed meanwhile
    gate.set()
    assert fence.get(timeout=5) is True
    settle(query)
    assert world.db.calls == 2  # one read for three members and seven commits
    assert converged(world, query, *members)
    for member in members:
        assert member.writes == [6]  # the difference, in one write
        assert sorted(member.kinds()) == [("added", f"b{n}") for n in range(2, 7)] + [
            ("removed", "b1")
        ]


def slow_reads(world: World, query: LiveQuery) -> list[gevent.event.Event]:
    """Make the query's fetches read the database at once and return later: a slow query,
    whose snapshot is older than what commits while it runs. Returns one event per read,
    set to let it return."""
    returns: list[gevent.event.Event] = []

    def fetch(specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        data = world.db.fetch(specs)
        back = gevent.event.Event()
        returns.append(back)
        back.wait()
        return data

    query.host.fetch = fetch
    return returns


def test_the_reattachment_replays_what_committed_after_the_fetchs_snapshot() -> None:
    world = World({"b1": {"title": "One"}})
    query, session = world.query(BOOKS)
    returns = slow_reads(world, query)
    world.streams.lost_history("ddp_books", world.seq, "E")
    wait_until(lambda: returns, "the snapshot read")  # b1 only
    world.commit(ins("b2", title="Two"))
    world.commit(upd("b1", title="Uno"))
    returns[0].set()
    settle(query)
    # The snapshot had neither change; the ring replayed both, with no second read.
    assert len(returns) == 1 and world.db.calls == 2
    assert converged(world, query, session)
    world.commit(ins("b3", title="Three"))
    assert converged(world, query, session)


def test_an_undecidable_change_replayed_after_the_snapshot_is_read_again() -> None:
    world = World({"b1": {"title": "One"}})
    query, session = world.query(OPAQUE)
    returns = slow_reads(world, query)
    world.commit(upd("b1", title="Uno"))
    wait_until(lambda: returns, "the snapshot read")  # it has Uno
    world.commit(ins("b2", title="Two"))  # after the snapshot: the replay sees it
    returns[0].set()
    wait_until(lambda: len(returns) == 2, "a second read")
    assert world.db.calls == 3
    returns[1].set()
    settle(query)
    assert world.db.calls == 3 and converged(world, query, session)
    assert session.kinds()[1:] == [("changed", "b1"), ("added", "b2")]


def test_changes_delivered_while_a_refetch_runs_are_not_taken_back() -> None:
    world = World({"b1": {"title": "One"}})
    query, session = world.query(BOOKS)
    returns = slow_reads(world, query)
    world.streams.lost_history("ddp_books", world.seq, "E")
    wait_until(lambda: returns, "the snapshot read")  # b1 only
    world.commit(ins("b2", title="Two"))
    returns[0].set()
    settle(query)
    assert converged(world, query, session)
    assert [k for k in session.kinds() if k[1] == "b2"] == [("added", "b2")]


def test_lost_history_makes_each_query_read_itself_again_once() -> None:
    world = World({"b1": {"title": "One", "author": "ann", "tag": "x"}})
    every, every_session = world.query(spec_of(BOOKS, "every"))
    ann, ann_session = world.query(spec_of(BY_ANN, "ann"))
    for session in (every_session, ann_session):
        session.sent.clear()
    # Committed while the listener was away, then lost with the changelog's history.
    world.commit(upd("b1", title="One", author="ann"), deliver=False)
    world.commit(ins("b2", title="Two", author="bob"), deliver=False)
    world.pending.clear()
    world.streams.lost_history("ddp_books", world.seq, "E")
    settle(every)
    settle(ann)
    assert world.db.calls == 4  # two loads, one read each since
    for query, session in ((every, every_session), (ann, ann_session)):
        assert converged(world, query, session)
        assert session.sent[0] == {
            "msg": "changed",
            "collection": "books",
            "id": "b1",
            "cleared": ["tag"],
        }
    assert every_session.kinds() == [("changed", "b1"), ("added", "b2")]


# -- failures --------------------------------------------------------------------------


def test_a_target_raising_in_deliver_does_not_stop_the_other_targets() -> None:
    world = World()
    _, first = world.query(spec_of(BOOKS, "first"))
    broken = Recorder()
    world.streams.attach(broken, BOOKS, (0, "E"))
    _, healthy = world.query(spec_of(BOOKS, "healthy"))
    broken.fail = RuntimeError("a bug in a target")
    world.commit(ins("b1", title="One"))
    assert first.kinds() == healthy.kinds() == [("added", "b1")]
    assert broken.lost_at == [1]  # told it lost that delivery (it must read itself again)
    broken.fail = None
    world.commit(ins("b2", title="Two"))
    assert healthy.kinds() == [("added", "b1"), ("added", "b2")]
    assert broken.seqs == [2]


def test_a_member_that_raises_does_not_cost_the_other_members_the_change() -> None:
    world = World()
    query, broken = world.query(BOOKS)
    healthy = join(query, FakeSession())
    broken.fail = RuntimeError("a bug in a session")
    world.commit(ins("b1", title="One"))
    broken.fail = None
    settle(query)
    assert healthy.docs() == world.db.view(query.spec)
    assert broken.desyncs == 1  # its session starts afresh (closed with a server error)


def test_a_dropped_query_ignores_a_fetch_that_completes_after_the_drop() -> None:
    world = World({"b1": {"title": "One"}})
    query, session = world.query(OPAQUE)
    gate = world.db.hold()
    world.commit(upd("b1", title="Uno"))
    wait_until_fetching(world)
    query.drop()
    assert query.closed and world.unlistened == ["ddp_books"]
    assert query.wait_settled(world.seq, 0.01)  # nobody to owe anything to
    sent = list(session.sent)
    gate.set()
    with gevent.Timeout(5):
        while world.db.running:
            gevent.sleep(0.001)
    gevent.sleep(0)
    assert session.sent == sent and world.listened == ["ddp_books"]
    assert not world.streams.streams  # not attached again by the late fetch
    world.commit(upd("b1", title="One again"))
    assert session.sent == sent and world.db.calls == 2


# -- against the database, whatever happens ----------------------------------------------

KINDS = ("set", "opaque", "window", "count")
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.integers(0, 7),
            st.integers(0, 4),
            st.sampled_from(["ann", "ann", "bob"]),
            st.booleans(),
        ),
        st.tuples(st.just("rm"), st.integers(0, 7), st.just(0), st.just(""), st.booleans()),
        st.tuples(st.just("join"), st.just(0), st.just(0), st.just(""), st.just(False)),
        st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(""), st.just(False)),
    ),
    min_size=5,
    max_size=30,
)


def spec_for(kind: str, limit: int, skip: int) -> QuerySpec:
    if kind == "count":
        return ANN_COUNT
    if kind == "opaque":
        return spec_of(OPAQUE)
    if kind == "window":
        order = (Order("n", descending=True), Order("id"))
        return spec_of(BY_ANN, "window", Window(order, limit=limit, skip=skip))
    return spec_of(BY_ANN)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(0, 2),
    st.dictionaries(st.integers(0, 7), st.tuples(st.integers(0, 4), st.booleans()), min_size=2),
    OPS,
)
def test_every_member_holds_what_the_database_holds(
    kind: str,
    limit: int,
    skip: int,
    initial: dict[int, tuple[int, bool]],
    ops: list[tuple[str, int, int, str, bool]],
) -> None:
    """Random commits (some delivered late, in runs), members joining at any time: after
    every delivery, once settled, each member holds exactly the database's result."""
    rows = {f"d{pk}": {"n": n, "author": "ann" if a else "bob"} for pk, (n, a) in initial.items()}
    world = World(rows)
    world.db.member = lambda routing: routing.get("author") == "ann"
    query, first = world.query(spec_for(kind, limit, skip))
    members = [first]
    for op, pk, n, author, now in ops:
        if op == "put":
            change = (upd if f"d{pk}" in world.db.rows else ins)(f"d{pk}", n=n, author=author)
            world.commit(change, deliver=now)
        elif op == "rm":
            world.commit(rm(f"d{pk}"), deliver=now)
        elif op == "join":
            members.append(join(query, FakeSession()))
        else:
            world.deliver()
        if not world.pending:
            settle(query)
            assert converged(world, query, *members)
    world.deliver()
    settle(query)
    assert converged(world, query, *members)
    if kind in ("set", "count"):
        assert world.db.calls == 1  # decided in memory, always
    event(f"{kind}: {min(world.db.calls - 1, 2)} reads after the load")
