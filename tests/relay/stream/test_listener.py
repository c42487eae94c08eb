"""The listener: what one drain of the LISTEN connection brings (coalesced runs per
channel, gaps, duplicates, epoch changes), then the whole listener over ``MemorySource``
(backfills, spilled payloads, pruned history, reconnects), and I1/I3/I4 as properties.

What the streams feed is a real ``LiveQuery`` joined by a ``FakeSession``: a channel that
lost history makes the query read itself again (once), from a database the tests keep in
step with the source's commits, so a session's view can be compared with it.

The first tests stub the backfill out and feed notifications straight in. The rest drive
the listener against the in-memory twin of PostgreSQL (``relay.stream.source``), which
passes the same contract suite as the real one (``test_source_contract.py``). The same code
against a real PostgreSQL, with the listener's backend killed and the server restarted
mid-storm, is in ``tests/e2e/test_live.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from relay.backend import DecodedChange, QueryData, QuerySpec, Route
from relay.live.query import LiveQuery
from relay.metrics import BACKFILL_REASONS, RESYNC_REASONS, get_metrics
from relay.protocol.changestream import Change, encode_notification
from relay.stream.cursor import COALESCE_MAX
from relay.stream.fanout import Streams, Transaction
from relay.stream.listener import Listener
from relay.stream.source import MemorySource, SourceError
from tests.relay.stream.helpers import BOOKS, Db, FakeSession, live_query, make, settle


@dataclass
class Note:
    channel: str
    payload: str


def note(seq: int, title: str, epoch: str = "E", channel: str = "ddp_books") -> Note:
    """Commit ``seq`` inserts document ``b<seq>``: one message per commit however commits
    are coalesced (a delivery sends each document's net change once)."""
    change = {"o": "i", "id": f"b{seq}", "f": {"title": title, "author": "ann"}}
    return Note(channel, encode_notification(seq, epoch, seq, [change]))


@dataclass
class Fed:
    listener: Listener
    session: FakeSession
    query: LiveQuery
    db: Db
    backfills: list[str]
    lost: list[tuple[str, int, str]]


@pytest.fixture
def setup() -> Fed:
    streams, _, _ = make()
    db = Db()
    query, session = live_query(streams, BOOKS, db.fetch)
    listener = Listener("", streams)
    backfills: list[str] = []
    lost: list[tuple[str, int, str]] = []
    listener._backfill = lambda channel, reason="listen": backfills.append(channel)  # type: ignore[method-assign]
    real_lost = streams.lost_history

    def lost_history(channel: str, seq: int, epoch: str, reason: str = "epoch") -> None:
        lost.append((channel, seq, epoch))
        real_lost(channel, seq, epoch, reason)

    streams.lost_history = lost_history  # type: ignore[method-assign]
    return Fed(listener, session, query, db, backfills, lost)


def titles(session: FakeSession) -> list[Any]:
    return [m.get("fields", {}).get("title") for m in session.sent]


def test_a_drained_burst_is_one_write_per_session(setup: Fed) -> None:
    listener, session, backfills = setup.listener, setup.session, setup.backfills
    listener._on_notifies([note(i, f"t{i}") for i in range(1, 6)])
    assert session.writes == [5]
    assert titles(session) == ["t1", "t2", "t3", "t4", "t5"]
    assert backfills == []


def test_runs_are_bounded(setup: Fed) -> None:
    listener, session = setup.listener, setup.session
    listener._on_notifies([note(i, f"t{i}") for i in range(1, COALESCE_MAX + 3)])
    assert session.writes == [COALESCE_MAX, 2]


def test_duplicates_are_dropped_and_a_gap_backfills_after_the_run(setup: Fed) -> None:
    listener, session, backfills = setup.listener, setup.session, setup.backfills
    listener._on_notifies([note(1, "a"), note(1, "a"), note(2, "b"), note(4, "d"), note(3, "c")])
    # 1 and 2 went out together; 4 is past a gap: backfill (recorded here, so 3 then
    # arrives as the next one and is delivered).
    assert session.writes == [2, 1]
    assert titles(session) == ["a", "b", "c"]
    assert backfills == ["ddp_books"]


def test_an_epoch_change_delivers_the_run_then_the_query_reads_itself_again(
    setup: Fed,
) -> None:
    listener, session, db = setup.listener, setup.session, setup.db
    db.rows, db.position = {"b1": {"title": "x"}}, (1, "F")
    listener._on_notifies([note(1, "a"), note(2, "b"), note(1, "x", epoch="F")])
    assert setup.lost == [("ddp_books", 1, "F")]
    assert session.writes == [2] and titles(session) == ["a", "b"]
    settle(setup.query)
    assert db.calls == 2  # the load, and one read in the new epoch
    assert session.sent[2:] == [
        {"msg": "removed", "collection": "books", "id": "b2"},
        {"msg": "changed", "collection": "books", "id": "b1", "fields": {"title": "x"}},
    ]


def test_channels_nobody_needs_and_malformed_payloads_are_skipped(setup: Fed) -> None:
    listener, session, backfills = setup.listener, setup.session, setup.backfills
    listener._on_notifies(
        [Note("ddp_books", "not json"), note(1, "x", channel="ddp_authors"), note(1, "a")]
    )
    assert titles(session) == ["a"] and backfills == []


# -- driven by the in-memory source ---------------------------------------------------------
#
# ``MemorySource`` (relay.stream.source) stands in for PostgreSQL: commits go into its
# changelog and, when the listener LISTENs, its notification queue. The listener is
# driven turn by turn (``_step``), or as its own greenlet where reconnecting is the point.
# Every ``deliver_many`` is checked against the contract the listener owes the streams:
# the next seqs, consecutive, at most COALESCE_MAX.

AUTHORS = Route("ddp_authors", "authors", ())


class TwoChannels:
    """decode_change for 'ddp_books' and 'ddp_authors': values carry a title."""

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        collection = {"ddp_books": "books", "ddp_authors": "authors"}.get(channel)
        if collection is None:
            return None
        fields = {"title": change.values.get("title")} if change.op != "d" else {}
        return DecodedChange(collection, str(change.pk), change.op, fields, dict(change.values))


class SourceDb(Db):
    """The database behind ``source``: the tests keep its rows in step with the commits
    (``Wired.commit``); a fetch reads the channel's counter in the same snapshot."""

    def __init__(self, source: MemorySource, channel: str, collection: str) -> None:
        super().__init__(channel=channel, collection=collection)
        self.source = source

    def read(self, spec: QuerySpec) -> QueryData:
        self.position = self.source.read_counter(self.channel)
        return super().read(spec)


@dataclass
class Wired:
    source: MemorySource
    streams: Streams
    listener: Listener
    dbs: dict[str, SourceDb]
    #: The live query of each channel ``subscribe`` made, by channel.
    queries: dict[str, LiveQuery] = field(default_factory=dict)
    #: (channel, seqs) of every delivery.
    deliveries: list[tuple[str, list[int]]] = field(default_factory=list)
    #: (channel, seq, epoch) of every resync.
    lost: list[tuple[str, int, str]] = field(default_factory=list)
    #: Both, in order: (channel, seqs delivered) or (channel, seq resynced at).
    events: list[tuple[str, list[int] | int]] = field(default_factory=list)

    def step(self) -> None:
        self.listener._step(0)

    def reconnect(self) -> None:
        """What the listener's greenlet does when the connection was lost."""
        with pytest.raises(SourceError):
            self.listener._step(0)
        self.source.close()
        self.listener._connect()

    def subscribe(self, route: Route = BOOKS) -> FakeSession:
        """A session subscribed to a live query read now (at the channel's counter);
        the listener then LISTENs (and backfills)."""
        query, session = live_query(self.streams, route, self.dbs[route.channel].fetch)
        self.queries[route.channel] = query
        self.step()
        return session

    def refetches(self, channel: str = "ddp_books") -> int:
        """Times ``channel``'s query read itself again (once settled)."""
        settle(self.queries[channel])
        return self.dbs[channel].calls - 1

    def converged(self, channel: str, session: FakeSession) -> bool:
        """The session holds what the database holds (I4)."""
        db = self.dbs[channel]
        return session.docs(db.collection) == db.view(self.queries[channel].spec)

    def seqs(self, channel: str = "ddp_books") -> list[int]:
        return [s for c, seqs in self.deliveries if c == channel for s in seqs]

    def commit(self, title: str, channel: str = "ddp_books", **kwargs: bool) -> int:
        """Write the row whose id is ``title`` (a new document per title: one message
        per commit however commits are coalesced)."""
        change = {"o": "u", "id": title, "f": {"title": title}}
        self.dbs[channel].rows[title] = {"title": title}
        return self.source.commit(channel, [change], **kwargs)


def wire() -> Wired:
    source = MemorySource()
    listener: Listener | None = None

    def listen(channel: str) -> None:
        assert listener is not None
        listener.listen(channel)

    def unlisten(channel: str) -> None:
        assert listener is not None
        listener.unlisten(channel)

    streams = Streams(TwoChannels(), listen, unlisten)  # type: ignore[arg-type]
    listener = Listener("", streams, source=source)
    dbs = {
        "ddp_books": SourceDb(source, "ddp_books", "books"),
        "ddp_authors": SourceDb(source, "ddp_authors", "authors"),
    }
    wired = Wired(source, streams, listener, dbs)
    deliver_many, lost_history = streams.deliver_many, streams.lost_history

    def checked_deliver_many(channel: str, transactions: Sequence[Transaction]) -> None:
        position = streams.position(channel)
        assert position is not None
        seq, epoch = position
        got = [tx.seq for tx in transactions]
        assert got == list(range(seq + 1, seq + 1 + len(got))), (channel, position, got)
        assert not epoch or {tx.epoch for tx in transactions} == {epoch}
        assert 0 < len(got) <= COALESCE_MAX
        wired.deliveries.append((channel, got))
        wired.events.append((channel, got))
        deliver_many(channel, transactions)

    def recorded_lost_history(channel: str, seq: int, epoch: str, reason: str = "epoch") -> None:
        wired.lost.append((channel, seq, epoch))
        wired.events.append((channel, seq))
        lost_history(channel, seq, epoch, reason)

    streams.deliver_many = checked_deliver_many  # type: ignore[method-assign]
    streams.lost_history = recorded_lost_history  # type: ignore[method-assign]
    listener._connect()
    return wired


@pytest.fixture
def wired() -> Wired:
    return wire()


def test_a_fresh_listen_backfills_what_committed_since_the_snapshot(wired: Wired) -> None:
    wired.commit("t1")
    snapshot = Db({"t1": {"title": "t1"}}, wired.source.read_counter("ddp_books"))
    wired.commit("t2")  # unheard: nobody LISTENs yet
    wired.commit("t3")
    _, session = live_query(wired.streams, BOOKS, snapshot.fetch)
    wired.step()
    assert wired.source.listening == {"ddp_books"}
    assert wired.deliveries == [("ddp_books", [2, 3])]
    assert titles(session) == ["t1", "t2", "t3"] and session.writes == [2]


def test_a_gap_is_backfilled_from_the_changelog(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1")
    wired.commit("t2", notify=False)  # lost
    wired.commit("t3")
    wired.step()
    assert wired.deliveries == [("ddp_books", [1]), ("ddp_books", [2, 3])]
    assert titles(session) == ["t1", "t2", "t3"] and wired.lost == []


def test_a_duplicate_is_dropped(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1")
    wired.commit("t2")
    wired.step()
    wired.source.renotify("ddp_books", 2)
    wired.source.renotify("ddp_books", 1, spill=True)
    wired.step()
    wired.commit("t3")
    wired.step()
    assert wired.seqs() == [1, 2, 3] and titles(session) == ["t1", "t2", "t3"]


def test_a_spilled_payload_is_read_from_the_changelog(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1", spill=True)
    wired.commit("t2")
    wired.commit("t3", spill=True)
    wired.step()
    assert wired.deliveries == [("ddp_books", [1, 2, 3])]  # still one run, one write
    assert titles(session) == ["t1", "t2", "t3"] and session.writes == [3]


def test_a_spilled_row_pruned_before_it_is_read_resyncs(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1", spill=True)
    epoch = wired.source.read_counter("ddp_books")[1]
    wired.source.prune("ddp_books", 1)
    wired.step()
    assert wired.lost == [("ddp_books", 1, epoch)] and wired.refetches() == 1
    assert wired.deliveries == [] and titles(session) == ["t1"]


def test_history_pruned_past_the_position_resyncs_instead_of_skipping(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1")
    wired.step()
    wired.commit("t2", notify=False)
    wired.commit("t3", notify=False)
    wired.source.prune("ddp_books", 2)
    wired.commit("t4")
    wired.step()
    epoch = wired.source.read_counter("ddp_books")[1]
    assert wired.lost == [("ddp_books", 4, epoch)] and wired.refetches() == 1
    wired.commit("t5")
    wired.step()
    assert wired.seqs() == [1, 5]
    # The read after the loss has what the pruned rows wrote.
    assert titles(session) == ["t1", "t2", "t3", "t4", "t5"]
    assert wired.converged("ddp_books", session)


def test_an_epoch_change_resyncs_at_the_notification(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1")
    wired.commit("t2")
    wired.step()
    wired.source.reset("ddp_books", "F")
    wired.commit("f1")
    wired.commit("f2")
    wired.step()
    assert wired.lost == [("ddp_books", 1, "F")] and wired.refetches() == 1
    assert wired.streams.position("ddp_books") == (2, "F")
    assert wired.deliveries == [("ddp_books", [1, 2]), ("ddp_books", [2])]
    # The read in the new epoch and f2's delivery may come in either order; each
    # document is sent once.
    assert sorted(titles(session)) == ["f1", "f2", "t1", "t2"]
    assert wired.converged("ddp_books", session)


def test_an_epoch_change_found_by_a_backfill_resyncs_at_the_counter(wired: Wired) -> None:
    session = wired.subscribe()
    wired.commit("t1")
    wired.step()
    wired.source.drop_connection()
    wired.source.reset("ddp_books", "F")
    for n in range(3):
        wired.commit(f"f{n}")
    wired.reconnect()
    assert wired.lost == [("ddp_books", 3, "F")] and wired.refetches() == 1
    assert wired.seqs() == [1] and titles(session) == ["t1", "f0", "f1", "f2"]


def test_a_reconnect_backfills_every_channel(wired: Wired) -> None:
    books, authors = wired.subscribe(BOOKS), wired.subscribe(AUTHORS)
    wired.commit("b1")
    wired.commit("a1", channel="ddp_authors")
    wired.step()
    wired.source.drop_connection()
    wired.commit("b2")  # sent while the connection is down: never notified
    wired.commit("b3")
    wired.commit("a2", channel="ddp_authors")
    wired.reconnect()
    assert wired.source.listening == {"ddp_books", "ddp_authors"}
    assert wired.seqs("ddp_books") == [1, 2, 3] and wired.seqs("ddp_authors") == [1, 2]
    assert titles(books) == ["b1", "b2", "b3"] and titles(authors) == ["a1", "a2"]
    assert wired.lost == []


def test_the_last_detach_unlistens(wired: Wired) -> None:
    session = wired.subscribe()
    assert wired.source.listening == {"ddp_books"}
    wired.queries["ddp_books"].drop()
    wired.step()
    assert wired.source.listening == frozenset()
    wired.commit("unheard")
    wired.step()
    assert wired.deliveries == [] and session.sent == []


def test_a_stream_created_again_while_still_listened_catches_up_at_once(wired: Wired) -> None:
    """The last subscriber leaves and a new one comes, with an older snapshot, before the
    listener runs: the UNLISTEN is moot, the channel stays LISTENed, and the new stream
    must be backfilled now, not at the next commit."""
    wired.subscribe()
    wired.commit("t1")
    wired.commit("t2")
    wired.commit("t3")
    wired.step()
    epoch = wired.streams.position("ddp_books")[1]  # type: ignore[index]
    snapshot = Db({"t1": {"title": "t1"}}, (1, epoch))
    wired.queries["ddp_books"].drop()
    _, second = live_query(wired.streams, BOOKS, snapshot.fetch)
    wired.step()
    assert wired.source.listening == {"ddp_books"}
    assert titles(second) == ["t1", "t2", "t3"]
    assert wired.streams.position("ddp_books") == (3, epoch)


def test_a_run_for_a_stream_created_again_behind_it_is_backfilled_not_skipped() -> None:
    """The listener holds seqs 3-4 for a stream at 2; while it yields, the stream is
    dropped and created again at 1. Delivering 3-4 would lose 2: it backfills instead."""
    wired = wire()
    wired.subscribe()
    for title in ("t1", "t2"):
        wired.commit(title)
    wired.step()
    epoch = wired.streams.position("ddp_books")[1]  # type: ignore[index]
    wired.queries["ddp_books"].drop()
    snapshot = Db({"t1": {"title": "t1"}}, (1, epoch))
    _, second = live_query(wired.streams, BOOKS, snapshot.fetch)
    late = [Transaction(3, epoch, 3, [Change("u", "t3", {"title": "t3"})])]
    Streams.deliver_many(wired.streams, "ddp_books", late)  # a run in flight hands it over
    assert titles(second) == ["t1"]  # not applied past the hole
    wired.commit("t3", notify=False)
    wired.step()
    assert titles(second) == ["t1", "t2", "t3"]


def test_an_unreadable_changelog_row_resyncs_its_channel_and_the_rest_goes_on(
    wired: Wired,
) -> None:
    books, authors = wired.subscribe(BOOKS), wired.subscribe(AUTHORS)
    wired.commit("b1")
    wired.step()
    epoch = wired.streams.position("ddp_books")[1]  # type: ignore[index]
    wired.source.insert_row("ddp_books", 2, epoch, 2, [{"o": "?", "id": "b1"}])
    wired.source.set_counter("ddp_books", 2, epoch)
    wired.source.notify("ddp_books", json.dumps({"s": 2, "e": epoch, "x": 2, "r": True}))
    wired.commit("a1", channel="ddp_authors")
    wired.step()
    assert wired.lost == [("ddp_books", 2, epoch)] and wired.refetches() == 1
    assert wired.refetches("ddp_authors") == 0 and titles(authors) == ["a1"]
    wired.commit("b3")
    wired.step()
    assert titles(books) == ["b1", "b3"]
    wired.source.drop_connection()
    wired.reconnect()  # the bad row is behind the stream now: no failing backfill
    assert wired.listener.connected


def test_an_unreadable_row_met_by_a_backfill_resyncs_at_the_counter(wired: Wired) -> None:
    books = wired.subscribe(BOOKS)
    wired.commit("b1")
    wired.step()
    epoch = wired.streams.position("ddp_books")[1]  # type: ignore[index]
    wired.source.insert_row("ddp_books", 2, epoch, 2, [{"o": "?", "id": "b1"}])  # never notified
    wired.source.set_counter("ddp_books", 2, epoch)
    wired.commit("b3")  # a gap before it: backfill from 1
    wired.step()
    assert wired.lost == [("ddp_books", 3, epoch)] and wired.refetches() == 1
    wired.commit("b4")
    wired.step()
    # b3 committed past the bad row: the query's read has it.
    assert titles(books) == ["b1", "b3", "b4"] and wired.converged("ddp_books", books)


def test_an_unknown_epoch_is_adopted_from_the_counter(wired: Wired) -> None:
    wired.source.set_counter("ddp_books", 0, "E")
    db = Db(position=(0, ""))  # read before anything was published
    query, _ = live_query(wired.streams, BOOKS, db.fetch)
    wired.step()
    assert wired.streams.position("ddp_books") == (0, "E")
    wired.source.notify("ddp_books", encode_notification(1, "F", 1, []))
    wired.step()
    assert wired.lost == [("ddp_books", 1, "F")]  # now a change of epoch is noticed
    db.position = (1, "F")
    settle(query)
    assert db.calls == 2


def test_the_listener_greenlet_rides_out_a_dropped_connection() -> None:
    source = MemorySource()
    listener: Listener | None = None
    streams = Streams(
        TwoChannels(),  # type: ignore[arg-type]
        lambda channel: listener.listen(channel) if listener else None,
        lambda channel: listener.unlisten(channel) if listener else None,
    )
    listener = Listener("", streams, source=source)
    listener.start()
    try:
        _, session = live_query(streams, BOOKS, Db(position=(0, "")).fetch)
        wait_until(lambda: source.listening == {"ddp_books"})
        source.commit("ddp_books", [{"o": "i", "id": "t1", "f": {"title": "t1"}}])
        wait_until(lambda: titles(session) == ["t1"])
        source.drop_connection()
        source.commit("ddp_books", [{"o": "i", "id": "t2", "f": {"title": "t2"}}])
        wait_until(lambda: listener is not None and listener.connected and listener.reconnects)
        source.commit("ddp_books", [{"o": "i", "id": "t3", "f": {"title": "t3"}}])
        wait_until(lambda: titles(session) == ["t1", "t2", "t3"])
        assert listener.reconnects == 1 and source.connects == 2
    finally:
        listener.stop()
    assert not source.connected


def wait_until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.01)


# -- I1/I3 through the real listener --------------------------------------------------------

OPS = st.one_of(
    st.tuples(st.just("commit"), st.sampled_from(["ddp_books", "ddp_authors"]), st.booleans()),
    st.tuples(st.just("lost"), st.sampled_from(["ddp_books", "ddp_authors"]), st.just(False)),
    st.tuples(st.just("dup"), st.sampled_from(["ddp_books", "ddp_authors"]), st.booleans()),
    st.tuples(st.just("step"), st.just(""), st.just(False)),
    st.tuples(st.just("drop"), st.just(""), st.just(False)),
)
FAILING_OPS = st.one_of(
    OPS,
    st.tuples(st.just("reset"), st.sampled_from(["ddp_books", "ddp_authors"]), st.just(False)),
    st.tuples(st.just("prune"), st.sampled_from(["ddp_books", "ddp_authors"]), st.just(False)),
)
CHANNELS = ("ddp_books", "ddp_authors")


def play(
    ops: list[tuple[str, str, bool]],
) -> tuple[Wired, dict[str, FakeSession], set[str], set[str]]:
    """Run ``ops`` against a wired listener, then reconnect (a last backfill of every
    channel) and let the queries read themselves again if they must; returns the sessions
    by channel, the channels whose history was cut and those of them whose counter was
    reset (a restored database: its rows are not the model's any more).

    A query's fetch waits until the end (a work pool busy all along), so however many
    times a channel loses history during the ops, its query reads itself once."""
    wired = wire()
    sessions = {"ddp_books": wired.subscribe(BOOKS), "ddp_authors": wired.subscribe(AUTHORS)}
    gates = [db.hold() for db in wired.dbs.values()]
    cut: set[str] = set()
    restored: set[str] = set()
    for op, channel, flag in ops:
        if op == "commit":
            n = wired.source.read_counter(channel)[0] + 1
            wired.commit(f"{channel}-{n}", channel, spill=flag)
        elif op == "lost":
            wired.commit("lost", channel, notify=False)
        elif op == "dup":
            seq = wired.source.read_counter(channel)[0]
            if wired.source.read_since(channel, seq - 1, 1):
                wired.source.renotify(channel, seq, spill=flag)
        elif op == "step":
            wired.step()
        elif op == "drop":
            wired.source.drop_connection()
            wired.reconnect()
        elif op == "reset":
            wired.source.reset(channel)
            cut.add(channel)
            restored.add(channel)
        elif op == "prune":
            wired.source.prune(channel, wired.source.read_counter(channel)[0] - 1)
            cut.add(channel)
    wired.step()
    wired.source.drop_connection()
    wired.reconnect()
    for gate in gates:
        gate.set()
    return wired, sessions, cut, restored


@settings(max_examples=150, deadline=None)
@given(st.lists(OPS, max_size=40))
def test_whatever_is_lost_duplicated_spilled_or_dropped_each_seq_arrives_once_in_order(
    ops: list[tuple[str, str, bool]],
) -> None:
    wired, sessions, _, _ = play(ops)
    assert wired.lost == []
    for channel in CHANNELS:
        seq, epoch = wired.source.read_counter(channel)
        assert wired.seqs(channel) == list(range(1, seq + 1))
        assert wired.streams.position(channel) == (seq, epoch)
        assert wired.refetches(channel) == 0
        assert wired.converged(channel, sessions[channel])


@settings(max_examples=150, deadline=None)
@given(st.lists(FAILING_OPS, max_size=40))
def test_a_new_epoch_or_pruned_history_resyncs_and_the_stream_ends_at_the_counter(
    ops: list[tuple[str, str, bool]],
) -> None:
    wired, sessions, cut, restored = play(ops)
    for channel in CHANNELS:
        seq, epoch = wired.source.read_counter(channel)
        assert wired.streams.position(channel) == (seq, epoch)
        refetches = wired.refetches(channel)
        if channel not in cut:
            assert refetches == 0 and wired.seqs(channel) == list(range(1, seq + 1))
        # Since the last resync (or the start), every seq was delivered once, in order.
        start, since = 0, list[int]()
        for c, what in wired.events:
            if c != channel:
                continue
            if isinstance(what, int):
                start, since = what, []
            else:
                since += what
        assert since == list(range(start + 1, seq + 1))
        assert refetches == any(c == channel for c, _, _ in wired.lost)
        # Whatever was lost, the session ends holding what the database holds (I4).
        # (Unless a counter that started over was adopted unnoticed: a stream that
        # began before anything was published has no epoch to tell it by.)
        if channel not in restored or refetches:
            assert wired.converged(channel, sessions[channel])


# -- metrics ------------------------------------------------------------------------------------


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _counts(name: str, label: str, values: Sequence[str]) -> dict[str, float]:
    return {v: _value(name, **{label: v}) for v in values}


def test_backfills_and_resyncs_are_counted_by_reason(wired: Wired) -> None:
    wired.listener.metrics = wired.streams.metrics = get_metrics()
    backfills = _counts("ddp_relay_backfills_total", "reason", BACKFILL_REASONS)
    resyncs = _counts("ddp_relay_resyncs_total", "reason", RESYNC_REASONS)

    def delta(name: str, label: str, before: dict[str, float]) -> dict[str, float]:
        now = _counts(name, label, list(before))
        return {k: now[k] - v for k, v in before.items() if now[k] != v}

    wired.subscribe(BOOKS)
    wired.subscribe(AUTHORS)
    assert delta("ddp_relay_backfills_total", "reason", backfills) == {"listen": 2}
    wired.commit("t1")
    wired.commit("t2", notify=False)
    wired.commit("t3")
    wired.step()  # a gap
    wired.commit("t4", spill=True)
    wired.source.prune("ddp_books", 4)
    wired.step()  # a spilled row gone: backfilled, the history is gone too (one resync)
    wired.source.drop_connection()
    wired.reconnect()  # both channels
    assert delta("ddp_relay_backfills_total", "reason", backfills) == {
        "listen": 2,
        "gap": 1,
        "spill_gone": 1,
        "reconnect": 2,
    }
    wired.source.reset("ddp_books")
    wired.commit("t5")
    wired.step()  # another epoch (a restored database): the query reads itself again
    assert delta("ddp_relay_resyncs_total", "reason", resyncs) == {"pruned": 1, "epoch": 1}


def test_how_far_behind_the_listener_runs_is_taken_per_class(wired: Wired) -> None:
    wired.subscribe(BOOKS)
    wired.listener.lag.take()
    assert wired.listener.lag.take() == [("model", 0.0, 0), ("event", 0.0, 0), ("presence", 0.0, 0)]
    old = time.time() - 3.0
    wired.source.commit("ddp_books", [{"o": "u", "id": "x", "f": {}}], committed=old)
    wired.commit("t2", notify=False)
    wired.commit("t3", notify=False)
    wired.commit("t4")  # heard 4 transactions ahead of what was routed
    wired.step()
    (model, *others) = wired.listener.lag.take()
    assert model[0] == "model" and 3.0 <= model[1] < 10 and model[2] == 4
    assert others == [("event", 0.0, 0), ("presence", 0.0, 0)]
    assert wired.listener.backlog == 0
    wired.commit("t5")
    wired.step()
    (model, *_) = wired.listener.lag.take()
    assert model[1] < 1.0 and model[2] == 1  # caught up: the next one, just committed


def test_listener_connected_follows_the_connection() -> None:
    source = MemorySource()
    listener: Listener | None = None
    streams = Streams(
        TwoChannels(),  # type: ignore[arg-type]
        lambda channel: listener.listen(channel) if listener else None,
        lambda channel: listener.unlisten(channel) if listener else None,
    )
    listener = Listener("", streams, metrics=get_metrics(), source=source)
    refuse = [False]
    real_connect = source.connect

    def connect() -> None:
        if refuse[0]:
            raise SourceError("connection refused")
        real_connect()

    source.connect = connect  # type: ignore[method-assign]
    listener.start()
    try:
        wait_until(lambda: _value("ddp_relay_listener_connected") == 1)
        refuse[0] = True
        source.drop_connection()
        wait_until(lambda: _value("ddp_relay_listener_connected") == 0)
        assert not listener.connected
        refuse[0] = False
        wait_until(lambda: _value("ddp_relay_listener_connected") == 1)
    finally:
        listener.stop()
