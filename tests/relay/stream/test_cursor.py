"""The listener's decisions, pure: what a notification, a changelog row or an exhausted
backfill means for a channel's position, and how runs are coalesced.

The property tests drive ``relay.stream.cursor`` the way the listener does, through a
small in-memory changelog (no database, no gevent): whatever the notifications (lost,
duplicated, spilled, a counter restarted in a new epoch, history pruned), each seq is
handed on once, in order (I1), and a hole is backfilled or declared lost, never skipped
silently (I3). The same properties through the real listener and ``MemorySource`` are in
``test_listener.py``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.changestream import Change, Notification
from relay.stream import cursor
from relay.stream.cursor import (
    BACKFILL,
    COALESCE_MAX,
    DELIVER,
    DROP,
    FETCH,
    RESYNC,
    End,
    Position,
    Run,
    Step,
    judge,
    judge_end,
    judge_row,
)

CHANGES = (Change("u", "b1", {"title": "t"}),)


def note(seq: int, epoch: str = "E", *, spilled: bool = False) -> Notification:
    return Notification("ddp_books", seq, epoch, seq, None if spilled else CHANGES)


@dataclass(frozen=True)
class Tx:
    seq: int
    epoch: str


# -- judge ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "incoming", "step"),
    [
        ((4, "E"), note(5), Step.DELIVER),
        ((4, "E"), note(5, spilled=True), Step.FETCH),
        ((4, "E"), note(4), Step.DROP),
        ((4, "E"), note(1, spilled=True), Step.DROP),
        ((4, "E"), note(7), Step.BACKFILL),
        ((4, "E"), note(7, spilled=True), Step.BACKFILL),
        ((4, "E"), note(5, "F"), Step.RESYNC),
        ((4, "E"), note(1, "F"), Step.RESYNC),
        # No epoch known yet (nothing was published when the stream started): the next one
        # is taken whatever its epoch, anything at or below is a duplicate.
        ((0, ""), note(1, "F"), Step.DELIVER),
        ((0, ""), note(3, "F"), Step.BACKFILL),
        ((2, ""), note(2, "F"), Step.DROP),
    ],
)
def test_judge(position: Position, incoming: Notification, step: Step) -> None:
    assert judge(position, incoming) is step


def test_the_members_have_module_names_for_the_hot_path() -> None:
    assert (DELIVER, FETCH, DROP, BACKFILL, RESYNC) == (
        Step.DELIVER,
        Step.FETCH,
        Step.DROP,
        Step.BACKFILL,
        Step.RESYNC,
    )


@pytest.mark.parametrize(
    ("position", "row", "step"),
    [
        ((4, "E"), (5, "E"), Step.DELIVER),
        ((0, ""), (1, "E"), Step.DELIVER),
        ((4, "E"), (6, "E"), Step.RESYNC),  # 5 was pruned
        ((4, "E"), (5, "F"), Step.RESYNC),  # another epoch's row
        ((0, ""), (2, "E"), Step.RESYNC),
    ],
)
def test_judge_row(position: Position, row: tuple[int, str], step: Step) -> None:
    assert judge_row(position, *row) is step


@pytest.mark.parametrize(
    ("position", "counter", "rechecked", "end"),
    [
        ((4, "E"), (4, "E"), False, End.CURRENT),
        ((0, ""), (0, ""), False, End.CURRENT),
        # A commit between reading the rows and the counter: look again, once.
        ((4, "E"), (5, "E"), False, End.RECHECK),
        ((4, "E"), (5, "E"), True, End.RESYNC),  # still no row 5: pruned
        ((4, "E"), (5, "F"), False, End.RECHECK),
        ((4, "E"), (2, "F"), False, End.RESYNC),  # restarted in another epoch
        ((4, "E"), (4, "F"), True, End.RESYNC),
        ((0, ""), (0, "E"), False, End.ADOPT_EPOCH),
        ((3, ""), (2, "E"), True, End.ADOPT_EPOCH),
        ((4, "E"), (4, ""), False, End.CURRENT),
    ],
)
def test_judge_end(position: Position, counter: Position, rechecked: bool, end: End) -> None:
    assert judge_end(position, counter, rechecked) is end


# -- Run ------------------------------------------------------------------------------------


def test_a_run_collects_one_channel_up_to_its_limit() -> None:
    run: Run[Tx] = Run(3)
    assert not run.blocks("a") and run.position((7, "E")) == (7, "E")
    assert run.add("a", Tx(8, "E")) is False
    assert run.add("a", Tx(9, "E")) is False
    assert run.position((7, "E")) == (9, "E")
    assert not run.blocks("a") and run.blocks("b")
    assert run.add("a", Tx(10, "E")) is True  # full: deliver it now
    assert run.channel == "a"
    assert run.take() == [Tx(8, "E"), Tx(9, "E"), Tx(10, "E")]
    assert run.items == [] and not run.blocks("b") and run.position((10, "E")) == (10, "E")
    run.add("b", Tx(1, "F"))
    assert run.channel == "b" and run.blocks("a")


def test_a_run_refuses_another_channel_and_a_limit_below_one() -> None:
    run: Run[Tx] = Run()
    assert run.limit == COALESCE_MAX
    run.add("a", Tx(1, "E"))
    with pytest.raises(ValueError):
        run.add("b", Tx(1, "E"))
    with pytest.raises(ValueError):
        Run(0)


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 9)), max_size=80),
    st.integers(1, 6),
)
def test_runs_keep_order_per_channel_and_never_exceed_the_limit(
    items: list[tuple[str, int]], limit: int
) -> None:
    """Fed the way the listener feeds it, a run hands on every item once, in order, in
    deliveries of one channel of at most ``limit``."""
    run: Run[Tx] = Run(limit)
    delivered: list[tuple[str, list[Tx]]] = []
    for n, (channel, _) in enumerate(items):
        if run.blocks(channel):
            delivered.append((run.channel, run.take()))
        if run.add(channel, Tx(n, channel)):
            delivered.append((run.channel, run.take()))
    if run.items:
        delivered.append((run.channel, run.take()))
    assert all(0 < len(batch) <= limit for _, batch in delivered)
    assert all(tx.epoch == channel for channel, batch in delivered for tx in batch)
    assert [tx.seq for _, batch in delivered for tx in batch] == list(range(len(items)))


# -- the cursor, driven as the listener drives it --------------------------------------------


@dataclass
class World:
    """One channel's database side: the counter, the changelog (only the current epoch's
    rows: a restart in a new epoch is a restore) and the notifications not yet drained."""

    epoch: str = "E0"
    seq: int = 0
    rows: dict[int, str] = field(default_factory=dict)  # seq -> epoch
    inbox: list[Notification] = field(default_factory=list)
    epochs: int = 0
    resets: int = 0
    pruned: bool = False

    def commit(self, notify: bool, spilled: bool) -> None:
        self.seq += 1
        self.rows[self.seq] = self.epoch
        if notify:
            self.inbox.append(note(self.seq, self.epoch, spilled=spilled))

    def duplicate(self, back: int, spilled: bool) -> None:
        if self.seq:
            seq = max(1, self.seq - back)
            self.inbox.append(note(seq, self.epoch, spilled=spilled))

    def reset(self) -> None:
        self.epochs += 1
        self.resets += 1
        self.epoch, self.seq, self.rows = f"E{self.epochs}", 0, {}

    def prune(self, through: int) -> None:
        if any(s <= through for s in self.rows):
            self.pruned = True
        self.rows = {s: e for s, e in self.rows.items() if s > through}


class Driver:
    """The listener's algorithm over ``World``, recording what it hands on."""

    def __init__(self, world: World, limit: int, batch: int) -> None:
        self.world = world
        self.position: Position = (0, "")
        self.limit = limit
        self.batch = batch
        #: Each delivery: the seqs handed on at once.
        self.deliveries: list[list[int]] = []
        #: Positions resynced at.
        self.resyncs: list[Position] = []
        #: Every seq handed on in the current epoch, in order.
        self.delivered: list[int] = []

    def deliver(self, run: Run[Tx]) -> None:
        if run.items:
            txs = run.take()
            # The contract of ``deliver_many``: the next seqs, consecutive, one epoch.
            seq, epoch = self.position
            assert [tx.seq for tx in txs] == list(range(seq + 1, seq + 1 + len(txs)))
            assert not epoch or all(tx.epoch == epoch for tx in txs)
            assert len(txs) <= self.limit
            self.position = (txs[-1].seq, txs[-1].epoch)
            self.deliveries.append([tx.seq for tx in txs])
            self.delivered += [tx.seq for tx in txs]

    def resync(self, position: Position) -> None:
        self.position = position
        self.resyncs.append(position)
        self.delivered = []

    def drain(self) -> None:
        notes, self.world.inbox = self.world.inbox, []
        run: Run[Tx] = Run(self.limit)
        for n in notes:
            at = run.position(self.position)
            step = judge(at, n)
            if step is DELIVER:
                tx = Tx(n.seq, n.epoch)
            elif step is DROP:
                continue
            elif step is FETCH:
                if self.world.rows.get(n.seq) != n.epoch:
                    self.deliver(run)
                    self.backfill()
                    continue
                tx = Tx(n.seq, n.epoch)
            elif step is BACKFILL:
                self.deliver(run)
                self.backfill()
                continue
            else:
                self.deliver(run)
                self.resync((n.seq, n.epoch))
                continue
            if run.add("c", tx):
                self.deliver(run)
        self.deliver(run)

    def backfill(self) -> None:
        world = self.world
        rechecked = False
        while True:
            after = sorted(s for s in world.rows if s > self.position[0])[: self.batch]
            if not after:
                counter = (world.seq, world.epoch)
                end = judge_end(self.position, counter, rechecked)
                if end is End.RECHECK:
                    rechecked = True
                    continue
                if end is End.RESYNC:
                    self.resync(counter)
                elif end is End.ADOPT_EPOCH:
                    self.position = (self.position[0], counter[1])
                return
            run: Run[Tx] = Run(self.limit)
            position = self.position
            for s in after:
                if judge_row(position, s, world.rows[s]) is RESYNC:
                    self.deliver(run)
                    self.resync((world.seq, world.epoch))
                    return
                position = (s, world.rows[s])
                if run.add("c", Tx(s, world.rows[s])):
                    self.deliver(run)
            self.deliver(run)
            if len(after) < self.batch:
                return


EVENTS = st.one_of(
    st.tuples(st.just("commit"), st.booleans(), st.booleans()),
    st.tuples(st.just("commit"), st.just(True), st.just(False)),
    st.tuples(st.just("dup"), st.integers(0, 6), st.booleans()),
    st.tuples(st.just("drain"), st.just(False), st.just(False)),
    st.tuples(st.just("reconnect"), st.just(False), st.just(False)),
)
FAILURES = st.one_of(
    EVENTS,
    st.tuples(st.just("reset"), st.just(False), st.just(False)),
    st.tuples(st.just("prune"), st.integers(0, 8), st.just(False)),
)


def run_world(events: list[tuple[str, object, object]], limit: int, batch: int) -> Driver:
    world = World()
    driver = Driver(world, limit, batch)
    for kind, a, b in events:
        if kind == "commit":
            world.commit(notify=bool(a), spilled=bool(b))
        elif kind == "dup":
            world.duplicate(int(a), spilled=bool(b))  # type: ignore[call-overload]
        elif kind == "drain":
            driver.drain()
        elif kind == "reconnect":
            # What was notified meanwhile is gone; the changelog has it.
            world.inbox = []
            driver.backfill()
        elif kind == "reset":
            world.reset()
        elif kind == "prune":
            world.prune(world.seq - int(a))  # type: ignore[call-overload]
    driver.drain()
    world.inbox = []
    driver.backfill()  # the last reconnect, or the next notification's backfill
    return driver


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=60), st.integers(1, 5), st.integers(1, 4))
def test_lost_duplicated_and_spilled_notifications_yield_each_seq_once_in_order(
    events: list[tuple[str, object, object]], limit: int, batch: int
) -> None:
    driver = run_world(events, limit, batch)
    world = driver.world
    assert driver.resyncs == []  # the changelog covers everything: no resync is needed
    assert driver.delivered == list(range(1, world.seq + 1))
    assert driver.position == (world.seq, world.epoch)  # the counter's (epoch adopted)


@settings(max_examples=300, deadline=None)
@given(st.lists(FAILURES, max_size=60), st.integers(1, 5), st.integers(1, 4))
def test_a_new_epoch_or_pruned_history_is_a_resync_never_a_silent_skip(
    events: list[tuple[str, object, object]], limit: int, batch: int
) -> None:
    driver = run_world(events, limit, batch)
    world = driver.world
    # Every delivery was the next seqs (checked in ``Driver.deliver``); where they could
    # not be, the channel was resynced. In the end the position is the counter's...
    assert driver.position[0] == world.seq
    assert driver.position[1] in (world.epoch, "")
    # ... every seq since the last resync (or the start) was handed on once, in order ...
    start = driver.resyncs[-1][0] if driver.resyncs else 0
    assert driver.delivered == list(range(start + 1, world.seq + 1))
    # ... and a resync happened only when history really was lost.
    if driver.resyncs:
        assert world.resets or world.pruned


def test_the_cursor_imports_nothing_but_the_standard_library_and_the_protocol() -> None:
    """It must stay testable without a database or a hub: no gevent, no psycopg2, nothing
    of the project above ``relay.protocol``."""
    tree = ast.parse(Path(cursor.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    allowed = {"__future__", "enum", "typing"}
    assert {m for m in imported if m not in allowed and not m.startswith("relay.protocol")} == set()
