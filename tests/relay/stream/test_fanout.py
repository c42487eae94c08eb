"""Channel streams: committed changes handed, in order and once, to the targets attached to
a channel, and from shared live queries to their sessions' mergeboxes.

Where the point is the stream itself (cursors, the ring, the keyed index, a failing
target) a ``Recorder`` is the target; where it is what sessions see, real ``LiveQuery``
objects are attached (``tests.relay.stream.helpers.World``), so every message asserted
here went through routing, a maintained result and a mergebox.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gevent
from prometheus_client import REGISTRY

from relay.backend import Condition, Route
from relay.metrics import get_metrics
from relay.protocol.mergebox import MergeBox
from relay.stream.fanout import RING_SIZE, Attachment, Batch, BatchCache, Streams, Transaction
from tests.relay.stream.helpers import (
    BOOKS,
    BY_ANN,
    OPAQUE,
    Db,
    FakeSession,
    Recorder,
    RowDecoder,
    World,
    ins,
    join,
    live_query,
    make,
    rm,
    settle,
    spec_of,
    upd,
)


def test_first_attach_listens_and_changes_become_ddp_messages() -> None:
    world = World()
    world.seq = 5
    world.db.position = (5, "E")
    query, session = world.query(BOOKS)
    assert world.listened == ["ddp_books"]
    world.commit(ins("b1", title="One"))
    world.commit(upd("b1", title="Uno"), upd("b1", title="Uno"))
    world.commit(rm("b1"))
    assert session.sent == [
        {"msg": "added", "collection": "books", "id": "b1", "fields": {"title": "One"}},
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Uno"}},
        {"msg": "removed", "collection": "books", "id": "b1"},
    ]
    query.drop()
    assert world.unlistened == ["ddp_books"] and not world.streams.streams
    assert world.db.calls == 1  # routed in memory: the load was the only read


def test_documents_move_in_and_out_of_a_filtered_query() -> None:
    world = World()
    _, session = world.query(BY_ANN)
    world.commit(ins("b1", title="One", author="bob"))
    assert session.sent == []
    world.commit(upd("b1", title="One", author="ann"))
    world.commit(upd("b1", title="One", author="bob"))
    assert session.kinds() == [("added", "b1"), ("removed", "b1")]


def test_overlapping_queries_share_a_document_through_the_mergebox() -> None:
    world = World()
    session = FakeSession()
    world.query(spec_of(BOOKS, "all"), session, "all")
    world.query(spec_of(BY_ANN, "ann"), session, "ann")
    world.commit(ins("b1", title="One", author="ann"))
    world.commit(upd("b1", title="One", author="bob"))
    # One added (the second provider is silent); leaving "ann" keeps it under "all".
    assert session.kinds() == [("added", "b1"), ("changed", "b1")]
    assert session.sent[1]["fields"] == {"author": "bob"}
    assert session.mergebox.publishes("all", "books", "b1")
    assert not session.mergebox.publishes("ann", "books", "b1")


def test_each_query_skips_what_its_snapshot_already_had() -> None:
    world = World()
    _, early = world.query(spec_of(BOOKS, "early"))
    world.commit(ins("b1", title="One"), deliver=False)
    world.commit(upd("b1", title="Two"), deliver=False)
    # Read at seq 2, while the listener has not delivered 1 and 2 yet.
    _, late = world.query(spec_of(BOOKS, "late"))
    assert late.kinds() == [("added", "b1")]
    world.deliver()
    world.commit(upd("b1", title="Three"))
    assert early.kinds() == [("added", "b1"), ("changed", "b1")]  # 1 and 2 coalesced
    assert late.sent[1:] == [
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Three"}}
    ]
    assert early.docs() == late.docs() == world.db.view(spec_of(BOOKS))


def test_a_late_target_catches_up_from_the_ring_or_is_told_it_lost_history() -> None:
    streams, _, _ = make()
    first = Recorder()
    streams.attach(first, BOOKS, (0, "E"))
    for seq in range(1, 4):
        streams.deliver("ddp_books", seq, "E", seq, [ins(f"b{seq}", title="t")])
    behind = Recorder()
    streams.attach(behind, BOOKS, (1, "E"))
    assert behind.deliveries == [[2, 3]] and behind.lost_at == []  # in attach, one call
    for seq in range(4, 4 + RING_SIZE + 1):
        streams.deliver("ddp_books", seq, "E", seq, [ins(f"b{seq}", title="t")])
    far = Recorder()
    streams.attach(far, BOOKS, (1, "E"))
    assert far.deliveries == [] and far.lost_at == [1]
    assert first.seqs == list(range(1, 5 + RING_SIZE)) and first.lost_at == []


def test_a_late_query_catches_up_from_the_ring_or_fetches_again_once() -> None:
    world = World()
    world.query(spec_of(BOOKS, "first"))  # keeps the stream (and its ring) going
    world.commit(ins("b1", title="t1"))
    snapshot = Db(dict(world.db.rows), world.db.position)  # read at seq 1
    world.commit(ins("b2", title="t2"))
    world.commit(ins("b3", title="t3"))
    # The ring has 2 and 3: the view is caught up before anyone joins, with no read.
    _, behind = live_query(world.streams, spec_of(BOOKS, "behind"), snapshot.fetch)
    assert behind.kinds() == [("added", "b1"), ("added", "b2"), ("added", "b3")]
    assert snapshot.calls == 1
    for n in range(4, 4 + RING_SIZE + 1):
        world.commit(ins(f"b{n}", title="t"))
    # Read at seq 1 again, but the ring no longer reaches back so far: the query reads
    # itself again, once, and its subscriber gets what changed since.
    reads = [snapshot.fetch, world.db.fetch]
    query, far = live_query(world.streams, spec_of(BOOKS, "far"), lambda specs: reads.pop(0)(specs))
    assert far.docs() == {"b1": {"title": "t1"}}  # the refetch runs in its own greenlet
    settle(query)
    assert reads == [] and world.db.calls == 2  # the first query's load, and this refetch
    assert far.docs() == behind.docs() == world.db.view(query.spec)
    assert len(far.sent) == 4 + RING_SIZE and far.writes == [3 + RING_SIZE]


def test_an_epoch_change_and_lost_history_make_each_query_fetch_again_once() -> None:
    world = World()
    world.seq, world.db.position = 3, (3, "E")
    a_query, a = world.query(spec_of(BOOKS, "a"))
    # A snapshot in another epoch than the stream's: the query reads itself again.
    other = Db({"b1": {"title": "old"}}, (3, "OTHER"))
    b_query, b = live_query(world.streams, spec_of(BOOKS, "b"), other.fetch)
    assert b.docs() == {"b1": {"title": "old"}}
    other.rows, other.position = {}, (3, "E")  # the database, read in the stream's epoch
    settle(b_query)
    assert other.calls == 2 and b.kinds() == [("added", "b1"), ("removed", "b1")]
    # The changelog lost history: every query of the channel reads itself again, once.
    world.db.rows = {"b9": {"title": "new"}}
    world.seq, world.epoch, world.db.position = 10, "F", (10, "F")
    other.rows, other.position = dict(world.db.rows), (10, "F")
    world.streams.lost_history("ddp_books", 10, "F")
    settle(a_query)
    settle(b_query)
    assert world.streams.position("ddp_books") == (10, "F")
    assert world.db.calls == 2 and other.calls == 3
    assert a.docs() == b.docs() == {"b9": {"title": "new"}}
    world.commit(upd("b9", title="newer"))
    assert a.docs() == b.docs() == {"b9": {"title": "newer"}}


def test_an_undecidable_route_fetches_again_instead_of_guessing() -> None:
    world = World()
    query, session = world.query(OPAQUE)
    world.commit(ins("b1", title="One"))
    assert session.sent == []  # not guessed from the change
    settle(query)
    assert world.db.calls == 2
    assert session.sent == [
        {"msg": "added", "collection": "books", "id": "b1", "fields": {"title": "One"}}
    ]


def test_write_fence_waits_for_delivery() -> None:
    world = World()
    world.query(BOOKS)
    streams = world.streams
    assert streams.wait_for("ddp_books", 0, 0.01)
    assert not streams.wait_for("ddp_books", 1, 0.01)
    assert streams.wait_for("other_channel", 99, 0.01)  # not streamed here: nothing to wait for
    waiter = gevent.spawn(streams.wait_for, "ddp_books", 2, 2.0)
    gevent.sleep(0)
    world.commit(ins("b1", title="One"))
    gevent.sleep(0)
    assert not waiter.ready()
    world.commit(upd("b1", title="Two"))
    assert waiter.get(timeout=1) is True


def test_the_last_detach_releases_the_fence() -> None:
    world = World()
    query, _ = world.query(BOOKS)
    waiter = gevent.spawn(world.streams.wait_for, "ddp_books", 5, 2.0)
    gevent.sleep(0)
    query.drop()  # nobody here can get a message from the channel any more
    assert waiter.get(timeout=1) is True


def test_closed_targets_and_sessions_and_other_collections_are_skipped() -> None:
    world = World()
    closed = Recorder()
    closed.closed = True
    att = world.streams.attach(closed, BOOKS, (0, "E"))
    _, gone = world.query(spec_of(BOOKS, "gone"))
    gone.closed = True
    _, other = world.query(Route("ddp_books", "authors", ()))
    _, open_ = world.query(spec_of(BOOKS, "open"))
    world.commit(ins("b1", title="One"))
    assert closed.deliveries == [] and att.cursor == 1  # skipped, but not left behind
    assert gone.sent == [] and other.sent == []
    assert open_.kinds() == [("added", "b1")]


def test_consecutive_transactions_reach_each_session_in_one_write_in_order() -> None:
    world = World({"b0": {"title": "Zero"}})
    query, first = world.query(BOOKS)
    sessions = [first, join(query, FakeSession()), join(query, FakeSession())]
    for s in sessions:
        s.sent.clear()
    world.commit(ins("b1", title="One"), deliver=False)
    world.commit(upd("b1", title="Two"), ins("b2", title="B"), deliver=False)
    world.commit(rm("b0"), ins("b3", title="C"), deliver=False)
    world.deliver()  # one run of three transactions, as the listener hands it over
    for s in sessions:
        assert s.writes == [4]  # one write for the three transactions
        # The net effect per document, in the order documents were first touched.
        assert s.sent == [
            {"msg": "added", "collection": "books", "id": "b1", "fields": {"title": "Two"}},
            {"msg": "added", "collection": "books", "id": "b2", "fields": {"title": "B"}},
            {"msg": "removed", "collection": "books", "id": "b0"},
            {"msg": "added", "collection": "books", "id": "b3", "fields": {"title": "C"}},
        ]
    assert world.streams.position("ddp_books") == (3, "E")
    # What a stream already applied is never applied twice.
    world.streams.deliver_many("ddp_books", [Transaction(3, "E", 3, [ins("b9", title="x")])])
    assert all(s.writes == [4] for s in sessions)
    assert all(s.docs() == world.db.view(query.spec) for s in sessions)


def test_a_coalesced_delivery_respects_each_querys_cursor() -> None:
    world = World()
    _, early = world.query(spec_of(BOOKS, "early"))
    world.commit(ins("b1", title="One"), deliver=False)
    world.commit(upd("b1", title="Two"), deliver=False)
    _, late = world.query(spec_of(BOOKS, "late"))  # its snapshot is at seq 2
    late.sent.clear()
    world.commit(upd("b1", title="Three"), deliver=False)
    world.deliver()
    assert early.sent == [
        {"msg": "added", "collection": "books", "id": "b1", "fields": {"title": "Three"}}
    ]
    assert late.sent == [
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "Three"}}
    ]


def test_a_target_that_raises_loses_its_delivery_and_the_others_get_theirs() -> None:
    streams, _, _ = make()
    bad, good = Recorder(), Recorder()
    bad.fail = RuntimeError("a bug in a target")
    bad_att = streams.attach(bad, BOOKS, (0, "E"))
    streams.attach(good, BOOKS, (0, "E"))
    streams.deliver_many(
        "ddp_books",
        [Transaction(1, "E", 1, [ins("b1", title="t")]), Transaction(2, "E", 2, [])],
    )
    assert good.seqs == [1, 2]
    # Its cursor moved past the batches it failed on, and it was told to read again.
    assert bad_att.cursor == 2 and bad.lost_at == [2]
    bad.fail = None
    streams.deliver("ddp_books", 3, "E", 3, [])
    assert bad.seqs == [3] and good.seqs == [1, 2, 3]


def test_batches_after_reads_the_ring() -> None:
    streams, _, _ = make()
    assert streams.batches_after("ddp_books", 0) is None  # not streamed here
    streams.attach(Recorder(), BOOKS, (0, "E"))
    for seq in range(1, 4):
        streams.deliver("ddp_books", seq, "E", seq, [ins(f"b{seq}", title="t")])
    after = streams.batches_after("ddp_books", 1)
    assert after is not None and [b.seq for b in after] == [2, 3]
    assert [c.id for b in after for c in b.changes] == ["b2", "b3"]
    assert streams.batches_after("ddp_books", 3) == []
    assert streams.batches_after("ddp_books", 7) == []
    streams.lost_history("ddp_books", 9, "F")  # the ring is cleared with the history
    assert streams.batches_after("ddp_books", 3) is None


def test_sessions_share_the_value_objects_of_a_change() -> None:
    world = World()
    query, a = world.query(BOOKS)
    b = join(query, FakeSession())
    _, c = world.query(spec_of(BOOKS, "another query"))
    world.commit(ins("b1", title="Title"))
    world.commit(upd("b1", title="Title"))  # equal: nothing to send
    titles = {id((s.mergebox.get("books", "b1") or {})["title"]) for s in (a, b, c)}
    assert len(titles) == 1
    assert a.kinds() == b.kinds() == c.kinds() == [("added", "b1")]
    # Deleting the document forgets it in the worker's table too.
    world.commit(rm("b1"))
    assert len(world.streams.interner) == 0


def test_sessions_holding_one_version_of_a_document_share_one_dict() -> None:
    streams = Streams(RowDecoder(), lambda channel: None, lambda channel: None)  # type: ignore[arg-type]
    interner = streams.interner

    def row(n: int, title: str) -> dict[str, Any]:
        # Fresh objects every time, as each query's snapshot gives them.
        return {"title": "".join(title), "pages": 1000 + n * 1000, "tags": ["x", str(n)]}

    ids = ["b0", "b1", "b2"]
    sessions: list[FakeSession] = []
    for key in ("q1", "q2"):  # two distinct queries of the same rows, 50 sessions each
        db = Db({doc_id: row(n, f"T{n}") for n, doc_id in enumerate(ids)})
        query, first = live_query(streams, spec_of(BOOKS, key), db.fetch)
        sessions += [first] + [join(query, FakeSession()) for _ in range(49)]
    for k, session in enumerate(sessions):
        assert [m["fields"] for m in session.sent] == [row(n, f"T{n}") for n in range(3)]
        session.sent.clear()
        if k % 2:  # parked and resumed: its views are its own dicts again
            session.mergebox = MergeBox.from_state(session.mergebox.to_state())

    def views(doc_id: str, of: list[FakeSession] = sessions) -> set[int]:
        return {id(s.mergebox._docs["books"][doc_id]) for s in of}

    loaded = sessions[::2]
    assert all(len(views(doc_id, loaded)) == 1 for doc_id in ids)
    before = {doc_id: loaded[0].mergebox._docs["books"][doc_id] for doc_id in ids}

    # One transaction: b0's title changes, b1 is written unchanged (fresh objects, equal).
    streams.deliver("ddp_books", 1, "E", 1, [upd("b0", **row(0, "New")), upd("b1", **row(1, "T1"))])
    for session in sessions:
        assert session.sent == [
            {"msg": "changed", "collection": "books", "id": "b0", "fields": {"title": "New"}}
        ]
    # Every session, resumed or not, now holds the change's one dict for b0 and b1.
    for doc_id, n, title in (("b0", 0, "New"), ("b1", 1, "T1")):
        assert views(doc_id) == {id(interner.fields("books", doc_id, row(n, title)))}
        assert sessions[1].mergebox.get("books", doc_id) == row(n, title)
    assert views("b2", loaded) == {id(before["b2"])}
    assert all(len(views(doc_id, loaded)) == 1 for doc_id in ids)
    # Dicts are replaced, never changed: the old version is still what it was.
    assert before["b0"] == row(0, "T0") and before["b1"] == row(1, "T1")


def test_a_route_of_one_document_gets_only_that_documents_changes() -> None:
    # Routes keyed by document (a login token's watch, a user's own document) are found by
    # the change's id, not tested one by one against every change of the channel.
    world = World()
    keyed = Route("ddp_books", "books", (Condition("id", "exact", "b1"),), doc_id="b1")
    watch = Recorder()
    att = world.streams.attach(watch, keyed, (0, "E"))
    query, one = world.query(keyed)
    world.commit(ins("b2", t="x"))
    assert watch.deliveries == [] and att.cursor == 0  # not even looked at
    assert one.sent == []
    world.commit(ins("b1", t="y"))
    assert watch.seqs == [2] and one.kinds() == [("added", "b1")]
    world.commit(rm("b1"))
    assert watch.seqs == [2, 3] and one.kinds() == [("added", "b1"), ("removed", "b1")]
    world.streams.detach(att)
    query.drop()
    assert world.unlistened == ["ddp_books"] and not world.streams.streams


# -- metrics ------------------------------------------------------------------------------------


class Sending(Recorder):
    """A target that sends one message per new transaction (so a delivery writes)."""

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        before = len(self.seqs)
        super().deliver(att, batches, cache)
        return len(self.seqs) - before


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_commit_to_client_is_observed_once_per_transaction_that_reached_a_socket() -> None:
    backend: Any = RowDecoder()
    streams = Streams(backend, lambda _: None, lambda _: None, get_metrics())
    sending, idle = Sending(), Recorder()
    streams.attach(sending, BOOKS, (0, "E"))
    streams.attach(idle, BOOKS, (0, "E"))
    count = "ddp_relay_commit_to_client_seconds_count"
    total = "ddp_relay_commit_to_client_seconds_sum"
    slow_bucket = ("ddp_relay_commit_to_client_seconds_bucket", {"le": "2.5"})
    before, before_sum = _value(count), _value(total)
    before_fast = _value(slow_bucket[0], le="1.0")
    now = time.time()
    streams.deliver_many(
        "ddp_books",
        [
            Transaction(1, "E", 1, [ins("b1", title="t")], committed=now - 2.0),
            Transaction(2, "E", 2, [ins("b2", title="t")], committed=now + 60),  # skew
            Transaction(3, "E", 3, [ins("b3", title="t")]),  # an old writer: no time
        ],
    )
    assert _value(count) == before + 2
    assert 2.0 <= _value(total) - before_sum < 3.0  # the skewed one counts as 0
    assert _value(slow_bucket[0], le="1.0") == before_fast + 1  # only the skewed 0
    # Nobody written to: nothing observed.
    streams.detach(next(a for a in streams.streams["ddp_books"].attachments if a.target is sending))
    streams.deliver_many("ddp_books", [Transaction(4, "E", 4, [], committed=now)])
    assert _value(count) == before + 2 and idle.seqs == [1, 2, 3, 4]


def test_resyncs_are_counted_per_target_by_reason() -> None:
    streams = Streams(RowDecoder(), lambda _: None, lambda _: None, get_metrics())  # type: ignore[arg-type]
    targets = [Recorder(), Recorder()]
    for target in targets:
        streams.attach(target, BOOKS, (0, "E"))
    pruned = _value("ddp_relay_resyncs_total", reason="pruned")
    streams.lost_history("ddp_books", 5, "E", reason="pruned")
    assert _value("ddp_relay_resyncs_total", reason="pruned") == pruned + 2
    attach = _value("ddp_relay_resyncs_total", reason="attach")
    streams.attach(Recorder(), BOOKS, (5, "OTHER"))  # another epoch than the stream's
    assert _value("ddp_relay_resyncs_total", reason="attach") == attach + 1
    failing = _value("ddp_relay_resyncs_total", reason="target_error")
    targets[0].fail = RuntimeError("bug")
    streams.deliver("ddp_books", 6, "E", 6, [])
    assert _value("ddp_relay_resyncs_total", reason="target_error") == failing + 1
