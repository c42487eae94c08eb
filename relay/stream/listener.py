"""The worker's one LISTEN connection: committed changes in, in sequence order, nothing lost.

Layer: runtime (gevent). Delivery guarantee, written down as centrifuge does: PostgreSQL's
NOTIFY is at-most-once (a notification sent while this connection is down is gone), so
NOTIFY is only the doorbell. Every change carries its channel's sequence number and
epoch; the changelog table is the history (``relay.protocol.changestream``). For each
channel the listener hands ``deliver_many`` the next sequence numbers and only those:

- a notification whose seq is the next one is delivered (its changes inline, or read from
  the changelog when the writer spilled them);
- a notification past a gap, a freshly LISTENed channel and every channel after a
  reconnect are backfilled from the changelog first, in order;
- an epoch change, or a gap the changelog no longer covers (pruned), makes the stream
  tells the channel's stream targets (``Streams.lost_history``: live queries read
  themselves again) instead of skipping silently;
- a seq at or below the current position is a duplicate and is dropped.

Those decisions, and the coalescing of consecutive transactions into one delivery, are
``relay.stream.cursor``'s (pure); the database is reached through a ``ChangeSource``
(``relay.stream.source``: PostgreSQL, or its in-memory twin in tests); the streams
through the few methods of ``StreamSink``. What is left here is the I/O and its order.

Control channels (``controls``: channel -> handler) are LISTENed for as long as the
listener runs and carry no sequence: their payload goes to the handler as it is, and
after every (re)connect the handler gets ``None`` (notifications may have been missed:
whatever they ring for must be looked up). ``relay.httpsession`` rings its inbox so.
A handler must not block.

One greenlet owns the source: it runs LISTEN/UNLISTEN requests (``wake`` interrupts its
wait) and drains notifications. Processing never waits on a client: fan-out only queues
bytes (DESIGN.md 4: a listener that stops draining eventually blocks every notifying
writer in PostgreSQL). ``status()`` is a read-only snapshot of the connection and of a
backfill in progress, for the worker's readiness (``relay.server.health``).

Metrics (``relay.metrics``): ``listener_connected`` follows ``connected`` as it changes;
backfills and resyncs are counted by reason; how far behind the commits the listener runs
goes into ``lag`` (``relay.stream.lag``: per notification, a subtraction and a compare)
and ``backlog`` counts the notifications received and not yet routed; the worker's
sampler reads those two about once a second.

Must not: block on sessions, decide routing (``relay.stream.fanout`` does), or reach into
the streams' state (only ``StreamSink``'s methods).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gevent

from relay.protocol import changestream
from relay.protocol.changestream import PayloadError
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
    judge,
    judge_end,
    judge_row,
)
from relay.stream.fanout import Transaction
from relay.stream.lag import LagWindow
from relay.stream.source import ChangeSource, PostgresSource, RawNotification, SourceError

log = logging.getLogger(__name__)

#: Changelog rows read per backfill query.
BACKFILL_BATCH = 500
#: Reconnect backoff: first delay, cap (seconds).
RETRY_FIRST, RETRY_MAX = 0.1, 5.0
#: Longest wait for a notification (seconds); an idle wait ends by checking the
#: connection is still alive.
IDLE_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    """A snapshot of the listener for readiness (monotonic times)."""

    #: The LISTEN connection is up and every channel was caught up after (re)connecting.
    connected: bool
    #: It was connected at least once since the worker started.
    connected_once: bool
    #: When ``connected`` last changed (the listener's start, before the first connection).
    since: float
    #: When the backfill running now began; None when none runs.
    backfill_started: float | None


class StreamSink(Protocol):
    """What the listener uses of the worker's channel streams (``fanout.Streams``)."""

    def has(self, channel: str) -> bool:
        """A local subscription needs ``channel``."""

    def channels(self) -> list[str]:
        """The channels local subscriptions need (a snapshot)."""

    def position(self, channel: str) -> Position | None:
        """Where ``channel``'s stream stands; None when nobody here needs it."""

    def deliver_many(self, channel: str, transactions: Sequence[Transaction]) -> None:
        """Route the next transactions of ``channel`` (consecutive, the first the next)."""

    def lost_history(self, channel: str, seq: int, epoch: str, reason: str = "epoch") -> None:
        """The history up to ``(seq, epoch)`` cannot be replayed: the channel's targets
        read their data again (``reason``: one of ``relay.metrics.RESYNC_REASONS``)."""

    def adopt_epoch(self, channel: str, epoch: str) -> None:
        """The stream started without an epoch; ``epoch`` is its counter's."""


class Listener:
    """LISTEN for the channels ``streams`` needs and feed it their changes in order.

    ``source`` defaults to ``PostgresSource(dsn)``; tests pass a ``MemorySource``.
    """

    def __init__(
        self,
        dsn: str,
        streams: StreamSink,
        metrics: Any = None,
        source: ChangeSource | None = None,
        controls: Mapping[str, Callable[[str | None], None]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.controls = dict(controls or {})
        self.streams = streams
        self.metrics = metrics
        self.source: ChangeSource = PostgresSource(dsn) if source is None else source
        self._commands: deque[tuple[str, str]] = deque()
        self._listening: set[str] = set()
        self._greenlet: gevent.Greenlet | None = None
        self.connected = False
        self.reconnects = 0
        # Read by ``status()`` only: they never steer the loop.
        self._connected_once = False
        self._since = time.monotonic()
        self._backfill_started: float | None = None
        #: How far behind the commits routing runs, since the sampler last took it.
        self.lag = LagWindow()
        #: Notifications received and not yet routed (the sampler reads it).
        self.backlog = 0

    def status(self) -> ListenerStatus:
        """Where the connection stands (cheap: no I/O)."""
        return ListenerStatus(
            self.connected, self._connected_once, self._since, self._backfill_started
        )

    # -- requests from sessions (any greenlet) ------------------------------------------------

    def listen(self, channel: str) -> None:
        self._request("listen", channel)

    def unlisten(self, channel: str) -> None:
        self._request("unlisten", channel)

    def _request(self, op: str, channel: str) -> None:
        self._commands.append((op, channel))
        self.source.wake()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        self.source.close()

    def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                self._connect()
                delay = RETRY_FIRST
                while True:
                    self._step(IDLE_WAIT)
            except gevent.GreenletExit:
                raise
            except SourceError as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
            except Exception:
                log.exception("listener failed; reconnecting in %.1fs", delay)
            if self.connected:
                self._since = time.monotonic()
            self._set_connected(False)
            self.backlog = 0
            self.source.close()
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self.reconnects += 1

    def _connect(self) -> None:
        self.source.connect()
        # After a reconnect, everything sent meanwhile is only in the changelog.
        self._listening = set()
        self._commands.clear()
        reason = "reconnect" if self._connected_once else "listen"
        for channel, handler in self.controls.items():
            self.source.listen(channel)
            handler(None)  # anything rung while this connection was down
        for channel in self.streams.channels():
            self._do_listen(channel, reason)
        self._set_connected(True)
        self._connected_once = True
        self._since = time.monotonic()

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        if self.metrics is not None:
            self.metrics.listener_connected.set(1 if connected else 0)

    # -- the loop -----------------------------------------------------------------------------

    def _step(self, timeout: float) -> None:
        """One turn: run the queued LISTEN/UNLISTEN requests, then handle what arrives
        within ``timeout`` (everything that queued up while the worker was busy, in one
        go: runs of consecutive transactions on a channel are delivered together)."""
        while self._commands:
            op, channel = self._commands.popleft()
            if op == "listen":
                self._do_listen(channel)
            elif not self.streams.has(channel) and channel in self._listening:
                self.source.unlisten(channel)
                self._listening.discard(channel)
        notes = self.source.wait(timeout)
        if notes:
            self._on_notifies(notes)

    def _do_listen(self, channel: str, reason: str = "listen") -> None:
        if not self.streams.has(channel):
            return
        if channel not in self._listening:
            self.source.listen(channel)
            self._listening.add(channel)
        # Changes committed between the subscription's snapshot and this LISTEN. Also when
        # the channel is still LISTENed: its stream may have been dropped and created again
        # (the last subscriber left, a new one came) at an older snapshot's position, and
        # must not wait for the next commit to catch up.
        self._backfill(channel, reason)

    def _on_notifies(self, notes: Sequence[RawNotification]) -> None:
        """Handle notifications in arrival order (``relay.stream.cursor`` decides what each
        one means). Consecutive next-in-sequence transactions of one channel are collected
        into a run and delivered together; anything else (a gap, an epoch change, another
        channel) first delivers the run, so every channel's order is kept."""
        streams = self.streams
        metrics = self.metrics
        lag = self.lag
        run: Run[Transaction] = Run(COALESCE_MAX)
        self.backlog = len(notes)
        controls = self.controls
        for raw in notes:
            self.backlog -= 1
            channel = raw.channel
            if controls and channel in controls:
                controls[channel](raw.payload)
                continue
            if run.blocks(channel):
                self._deliver_run(run)
            if metrics is not None:
                metrics.notifications.labels(channel=channel).inc()
            position = streams.position(channel)
            if position is None:
                continue  # nobody here needs it any more
            try:
                note = changestream.parse_notification(channel, raw.payload)
            except PayloadError as exc:
                log.error("ignoring a malformed notification on %s: %s", channel, exc)
                continue
            if note.epoch == position[1] or not position[1]:  # another epoch: not comparable
                lag.behind(channel, note.seq - position[0])
            at = run.position(position)
            step = judge(at, note)
            if step is DELIVER:
                # Inline changes (never None on this step).
                tx = Transaction(
                    note.seq, note.epoch, note.txid, note.changes or (), note.committed
                )
            elif step is DROP:
                continue  # already delivered (by a backfill)
            elif step is FETCH:
                try:
                    changes = self.source.read_one(channel, note.seq, note.epoch)
                except PayloadError as exc:
                    self._deliver_run(run)
                    self._unreadable(channel, exc)
                    continue
                if changes is None:
                    # Pruned before we read it (or the counter restarted in another epoch
                    # meanwhile): the changelog has whatever is left.
                    self._deliver_run(run)
                    self._backfill(channel, "spill_gone")
                    continue
                tx = Transaction(note.seq, note.epoch, note.txid, changes, note.committed)
            elif step is BACKFILL:
                self._deliver_run(run)
                self._backfill(channel, "gap")
                continue
            else:  # RESYNC: another epoch
                self._deliver_run(run)
                log.warning(
                    "channel %s changed epoch (%s -> %s): resync", channel, at[1], note.epoch
                )
                streams.lost_history(channel, note.seq, note.epoch, reason="epoch")
                continue
            if run.add(channel, tx):
                self._deliver_run(run)
        self._deliver_run(run)

    def _deliver_run(self, run: Run[Transaction]) -> None:
        if run.items:
            channel = run.channel
            committed = run.items[0].committed  # the oldest of the run
            if committed is not None:
                self.lag.late(channel, time.time() - committed)
            self.streams.deliver_many(channel, run.take())
            # Let the rest of the worker run between deliveries (gunicorn's heartbeat
            # among them: a worker that never yields is killed as hung).
            gevent.sleep(0)

    def _unreadable(self, channel: str, exc: PayloadError) -> None:
        """A changelog row that breaks the contract cannot be applied, and reading it again
        fails again: the channel's targets read their data again, from the counter on (so
        the row is behind the stream), instead of failing every reconnect of the worker's
        listener."""
        log.error("channel %s: unreadable changelog row (%s): resync", channel, exc)
        self.streams.lost_history(channel, *self.source.read_counter(channel), reason="unreadable")

    def _backfill(self, channel: str, reason: str = "listen") -> None:
        """Deliver every changelog row after the stream's position, in order (``reason``:
        one of ``relay.metrics.BACKFILL_REASONS``, for the count)."""
        if self.metrics is not None:
            self.metrics.backfills.labels(reason=reason).inc()
        started = time.monotonic()
        self._backfill_started = started
        try:
            self._backfill_rows(channel, started)
        finally:
            self._backfill_started = None

    def _backfill_rows(self, channel: str, started: float) -> None:
        streams = self.streams
        source = self.source
        rechecked = False
        while True:
            position = streams.position(channel)
            if position is None:
                return
            try:
                rows = source.read_since(channel, position[0], BACKFILL_BATCH)
            except PayloadError as exc:
                self._unreadable(channel, exc)
                return
            if not rows:
                counter = source.read_counter(channel)
                end = judge_end(position, counter, rechecked)
                if end is End.RECHECK:
                    rechecked = True  # committed between our two reads: look again
                    continue
                if end is End.RESYNC:
                    # Another epoch, or committed but pruned before we read it.
                    why = "epoch" if position[1] and counter[1] != position[1] else "pruned"
                    streams.lost_history(channel, *counter, reason=why)
                elif end is End.ADOPT_EPOCH:
                    streams.adopt_epoch(channel, counter[1])
                break
            self.lag.behind(channel, rows[-1].seq - position[0])
            run: Run[Transaction] = Run(COALESCE_MAX)
            for tx in rows:
                if judge_row(position, tx.seq, tx.epoch) is RESYNC:
                    self._deliver_run(run)
                    log.warning(
                        "channel %s: history from seq %d is gone (next %d, epoch %s): resync",
                        channel,
                        position[0] + 1,
                        tx.seq,
                        tx.epoch,
                    )
                    why = "epoch" if position[1] and tx.epoch != position[1] else "pruned"
                    streams.lost_history(channel, *source.read_counter(channel), reason=why)
                    return
                position = (tx.seq, tx.epoch)
                if run.add(channel, tx):
                    self._deliver_run(run)
            self._deliver_run(run)
            if len(rows) < BACKFILL_BATCH:
                break
        if self.metrics is not None:
            self.metrics.backfill_seconds.observe(time.monotonic() - started)
