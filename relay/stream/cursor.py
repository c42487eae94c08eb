"""Where a channel stands, and what to do with the next thing heard about it (pure).

Layer: pure (no I/O, no gevent, no clock). The listener (``relay.stream.listener``)
owns the I/O; this module owns the decisions it takes, so they can be tested exhaustively
without a database or a hub. A channel's position is ``(seq, epoch)``: the last
transaction applied and the counter's epoch (``""`` while none is known: nothing was
published when the stream started). Given a position:

- ``judge`` decides what a NOTIFY means: the next transaction (``DELIVER``; ``FETCH`` when
  the writer spilled its changes to the changelog), a duplicate (``DROP``), a gap
  (``BACKFILL``: read the changelog after ``seq``) or another epoch (``RESYNC`` at the
  notification's position: the history we hold is not the database's any more);
- ``judge_row`` decides what a changelog row read by a backfill means: the next one
  (``DELIVER``) or a hole the changelog no longer covers (``RESYNC``);
- ``judge_end`` decides what an exhausted backfill means, given the channel's counter.

``Run`` coalesces consecutive transactions of one channel (at most ``COALESCE_MAX``) into
one delivery: each session then gets one write for all of them (DESIGN.md 8).

The invariants these decisions keep: each seq is handed on once, in order (I1), and a gap
is filled or declared lost, never skipped silently (I3); ``tests/relay/stream/
test_cursor.py`` checks both over arbitrary interleavings.

Must not: do I/O, read a clock, import gevent or psycopg2, or import anything of the
project but ``relay.protocol`` (a test holds it to that); allocate per notification (the
verdicts are constants) or grow the listener's per-notification work.
"""

from __future__ import annotations

import enum
from typing import Final, Generic, Protocol, TypeVar

from relay.protocol.changestream import Notification

#: Transactions of one channel delivered together at most (one write per session for all
#: of them); bounds how long one delivery holds the worker.
COALESCE_MAX = 32

#: ``(seq, epoch)``: the last transaction applied to a channel, and its counter's epoch.
Position = tuple[int, str]


class Step(enum.Enum):
    """What to do with a notification or a changelog row."""

    #: The next transaction, its changes in hand: add it to the run.
    DELIVER = "deliver"
    #: The next transaction, its changes spilled: read that one changelog row (when it is
    #: gone, BACKFILL: the changelog has whatever is left).
    FETCH = "fetch"
    #: At or before the position: already delivered (by a backfill). Drop it.
    DROP = "drop"
    #: Past the next one: read the changelog after the position's seq, in order.
    BACKFILL = "backfill"
    #: The history we follow is not the database's (another epoch, or a hole the changelog
    #: no longer covers): the channel's subscriptions must be re-run.
    RESYNC = "resync"


# The members as module names: looking a member up on its Enum class costs ~90 ns on Python
# 3.11, and ``judge`` runs for every notification.
DELIVER: Final = Step.DELIVER
FETCH: Final = Step.FETCH
DROP: Final = Step.DROP
BACKFILL: Final = Step.BACKFILL
RESYNC: Final = Step.RESYNC


class End(enum.Enum):
    """What an exhausted backfill (no row after the position) means, given the counter."""

    #: The position is the counter's: nothing was missed.
    CURRENT = "current"
    #: The counter is ahead: a commit landed between the two reads; read the rows again.
    RECHECK = "recheck"
    #: The counter is ahead still (pruned before we read it) or in another epoch: resync at
    #: the counter's position.
    RESYNC = "resync"
    #: The position had no epoch yet and the counter has one: adopt it, so a later change of
    #: epoch is noticed.
    ADOPT_EPOCH = "adopt_epoch"


def judge(position: Position, note: Notification) -> Step:
    """What ``note`` means for a channel at ``position`` (its run's tail when one is being
    collected). ``RESYNC`` resyncs at ``(note.seq, note.epoch)``."""
    seq, epoch = position
    if note.seq <= seq and (not epoch or note.epoch == epoch):
        return DROP
    if epoch and note.epoch != epoch:
        return RESYNC
    if note.seq != seq + 1:
        return BACKFILL
    return DELIVER if note.changes is not None else FETCH


def judge_row(position: Position, row_seq: int, row_epoch: str) -> Step:
    """What a changelog row read after ``position`` means: ``DELIVER`` when it is the next
    one, else ``RESYNC`` (at the counter's position: the rows in between are gone)."""
    seq, epoch = position
    if row_seq != seq + 1 or (epoch and row_epoch != epoch):
        return RESYNC
    return DELIVER


def judge_end(position: Position, counter: Position, rechecked: bool) -> End:
    """No changelog row after ``position``: what the channel's ``counter`` says about it.
    ``rechecked``: the rows were already read again once (a counter ahead twice in a row is
    history pruned before we read it, not a commit in flight)."""
    seq, epoch = position
    counter_seq, counter_epoch = counter
    if counter_seq > seq and not rechecked:
        return End.RECHECK
    if (counter_epoch and epoch and counter_epoch != epoch) or counter_seq > seq:
        return End.RESYNC
    if not epoch and counter_epoch:
        return End.ADOPT_EPOCH
    return End.CURRENT


class Sequenced(Protocol):
    """A transaction as a ``Run`` sees it (``relay.stream.fanout.Transaction``)."""

    @property
    def seq(self) -> int: ...

    @property
    def epoch(self) -> str: ...


T = TypeVar("T", bound=Sequenced)


class Run(Generic[T]):
    """Consecutive transactions of one channel, to be delivered together.

    The caller adds only what ``judge`` called the next one (``position`` gives the run's
    tail to judge against), delivers the run (``take``) when ``blocks`` says a transaction
    of another channel comes, when ``add`` says it is full, before anything that is not a
    delivery (a backfill, a resync), and at the end. So every channel's order is kept and a
    run never holds more than ``limit``.
    """

    __slots__ = ("channel", "items", "limit")

    def __init__(self, limit: int = COALESCE_MAX) -> None:
        if limit < 1:
            raise ValueError("a run holds at least one transaction")
        self.limit = limit
        #: The channel of ``items`` (meaningless while it is empty).
        self.channel = ""
        self.items: list[T] = []

    def blocks(self, channel: str) -> bool:
        """True when the run must be delivered before ``channel`` is handled: it holds
        transactions of another channel."""
        return bool(self.items) and channel != self.channel

    def position(self, stream: Position) -> Position:
        """Where the run's channel stands once the run is delivered: its tail, or
        ``stream`` (the stream's own position) while it is empty."""
        items = self.items
        if not items:
            return stream
        last = items[-1]
        return (last.seq, last.epoch)

    def add(self, channel: str, item: T) -> bool:
        """Append the next transaction of ``channel``; True when the run is now full."""
        items = self.items
        if items and channel != self.channel:
            raise ValueError(f"a run of {self.channel} cannot take a transaction of {channel}")
        self.channel = channel
        items.append(item)
        return len(items) >= self.limit

    def take(self) -> list[T]:
        """The collected transactions (handed over: the run starts afresh)."""
        items = self.items
        self.items = []
        return items
