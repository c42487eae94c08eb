"""The worker's one LISTEN connection: committed changes in, in sequence order, nothing lost.

Layer: L3 (gevent + psycopg2). Delivery guarantee, written down as centrifuge does:
PostgreSQL's NOTIFY is at-most-once (a notification sent while this connection is down is
gone), so NOTIFY is only the doorbell. Every change carries its channel's sequence number
and epoch; the changelog table is the history (``relay.protocol.changestream``). For each
channel the listener hands ``Streams.deliver`` the next sequence number and only that:

- a notification whose seq is the next one is delivered (its changes inline, or read from
  the changelog when the writer spilled them);
- a notification past a gap, a freshly LISTENed channel and every channel after a
  reconnect are backfilled from the changelog first, in order;
- an epoch change, or a gap the changelog no longer covers (pruned), makes the stream
  resync its subscriptions (``Streams.lost_history``) instead of skipping silently;
- a seq at or below the current position is a duplicate and is dropped.

One greenlet owns the LISTEN connection: it runs LISTEN/UNLISTEN requests (woken through
a self-pipe) and drains notifications; a second connection serves the backfill queries.
Processing never waits on a client: fan-out only queues bytes (DESIGN.md 4: a listener
that stops draining eventually blocks every notifying writer in PostgreSQL).

Must not: block on sessions, or decide routing (``relay.stream.fanout`` does).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from typing import Any

import gevent
import gevent.select
import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from relay.protocol import changestream
from relay.protocol.changestream import Notification, PayloadError
from relay.stream.fanout import Streams, Transaction

log = logging.getLogger(__name__)

#: Changelog rows read per backfill query.
BACKFILL_BATCH = 500
#: Transactions of one channel delivered together at most (one write per session for all
#: of them); bounds how long one delivery holds the worker.
COALESCE_MAX = 32
#: Reconnect backoff: first delay, cap (seconds).
RETRY_FIRST, RETRY_MAX = 0.1, 5.0


class Listener:
    """LISTEN for the channels ``streams`` needs and feed it their changes in order."""

    def __init__(self, dsn: str, streams: Streams, metrics: Any = None) -> None:
        self.dsn = dsn
        self.streams = streams
        self.metrics = metrics
        self._commands: deque[tuple[str, str]] = deque()
        self._listening: set[str] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._conn: Any = None
        self._query: Any = None
        self._greenlet: gevent.Greenlet | None = None
        self.connected = False
        self.reconnects = 0

    # -- requests from sessions (any greenlet) ------------------------------------------------

    def listen(self, channel: str) -> None:
        self._request("listen", channel)

    def unlisten(self, channel: str) -> None:
        self._request("unlisten", channel)

    def _request(self, op: str, channel: str) -> None:
        self._commands.append((op, channel))
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake anyway
            os.write(self._wake_w, b"x")

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        self._close()

    def _run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                self._connect()
                delay = RETRY_FIRST
                self._loop()
            except gevent.GreenletExit:
                raise
            except (psycopg2.Error, OSError) as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
            except Exception:
                log.exception("listener failed; reconnecting in %.1fs", delay)
            self.connected = False
            self._close()
            gevent.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)
            self.reconnects += 1

    def _connect(self) -> None:
        self._conn = psycopg2.connect(self.dsn, application_name="ddp-relay listener")
        self._conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        self._query = psycopg2.connect(self.dsn, application_name="ddp-relay backfill")
        self._query.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        # After a reconnect, everything sent meanwhile is only in the changelog.
        self._listening = set()
        self._commands.clear()
        for channel in self.streams.channels():
            self._do_listen(channel)
        self.connected = True

    def _close(self) -> None:
        for conn in (self._conn, self._query):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._conn = self._query = None

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        conn = self._conn
        while True:
            while self._commands:
                op, channel = self._commands.popleft()
                if op == "listen":
                    self._do_listen(channel)
                elif channel not in self.streams.streams and channel in self._listening:
                    self._execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
                    self._listening.discard(channel)
            readable, _, _ = gevent.select.select([conn, self._wake_r], [], [], 30.0)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            if conn in readable or not readable:
                conn.poll()  # raises on a dead connection, which reconnects
            while conn.notifies:
                # Everything that queued up while the worker was busy, in one go: runs of
                # consecutive transactions on a channel are delivered together.
                notes = conn.notifies[:]
                del conn.notifies[:]
                self._on_notifies(notes)

    def _execute(self, statement: Any, params: Any = None) -> None:
        with self._conn.cursor() as cur:
            cur.execute(statement, params)

    def _do_listen(self, channel: str) -> None:
        if channel not in self.streams.streams or channel in self._listening:
            return
        self._execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._listening.add(channel)
        # Changes committed between the subscription's snapshot and this LISTEN.
        self._backfill(channel)

    def _on_notifies(self, notes: list[Any]) -> None:
        """Handle notifications in arrival order. Consecutive next-in-sequence transactions
        of one channel are collected into a run and delivered together (up to
        ``COALESCE_MAX``); anything else (a gap, an epoch change, another channel) first
        delivers the run, so every channel's order is kept."""
        run: list[Transaction] = []
        run_channel = ""
        for raw in notes:
            channel = raw.channel
            if run and (channel != run_channel or len(run) >= COALESCE_MAX):
                self._deliver_run(run_channel, run)
                run = []
            if self.metrics is not None:
                self.metrics.notifications.labels(channel=channel).inc()
            position = self.streams.position(channel)
            if position is None:
                continue  # nobody here needs it any more
            try:
                note = changestream.parse_notification(channel, raw.payload)
            except PayloadError as exc:
                log.error("ignoring a malformed notification on %s: %s", channel, exc)
                continue
            seq, epoch = (run[-1].seq, run[-1].epoch) if run else position
            if note.seq <= seq and (not epoch or note.epoch == epoch):
                continue  # already delivered (by a backfill)
            if epoch and note.epoch != epoch:
                self._deliver_run(run_channel, run)
                run = []
                log.warning(
                    "channel %s changed epoch (%s -> %s): resync", channel, epoch, note.epoch
                )
                self.streams.lost_history(channel, note.seq, note.epoch)
                continue
            tx = self._transaction(note) if note.seq == seq + 1 else None
            if tx is None:
                # A gap (or a spilled payload already pruned): the changelog has the rest.
                self._deliver_run(run_channel, run)
                run = []
                self._backfill(channel)
                continue
            run.append(tx)
            run_channel = channel
        self._deliver_run(run_channel, run)

    def _deliver_run(self, channel: str, run: list[Transaction]) -> None:
        if run:
            self.streams.deliver_many(channel, run)
            # Let the rest of the worker run between deliveries (gunicorn's heartbeat
            # among them: a worker that never yields is killed as hung).
            gevent.sleep(0)

    def _transaction(self, note: Notification) -> Transaction | None:
        """The notified transaction with its changes (read from the changelog when the
        writer spilled them); None when that row is gone."""
        changes = note.changes
        if changes is None:
            with self._query.cursor() as cur:
                cur.execute(changestream.SELECT_ONE, (note.channel, note.seq))
                row = cur.fetchone()
            if row is None:
                return None
            changes = changestream.parse_changes(_json(row[0]))
        return Transaction(note.seq, note.epoch, note.txid, changes)

    def _backfill(self, channel: str) -> None:
        """Deliver every changelog row after the stream's position, in order."""
        started = time.monotonic()
        rechecked = False
        while True:
            position = self.streams.position(channel)
            if position is None:
                return
            seq, epoch = position
            with self._query.cursor() as cur:
                cur.execute(changestream.SELECT_SINCE, (channel, seq, BACKFILL_BATCH))
                rows = cur.fetchall()
            if not rows:
                counter_seq, counter_epoch = self._counter(channel)
                if counter_seq > seq and not rechecked:
                    rechecked = True  # committed between our two reads: look again
                    continue
                self._check_counter(channel, seq, epoch, counter_seq, counter_epoch)
                break
            run: list[Transaction] = []
            for row_seq, row_epoch, txid, raw in rows:
                if (epoch and row_epoch != epoch) or row_seq != seq + 1:
                    self._deliver_run(channel, run)
                    log.warning(
                        "channel %s: history from seq %d is gone (next %d, epoch %s): resync",
                        channel,
                        seq + 1,
                        row_seq,
                        row_epoch,
                    )
                    self.streams.lost_history(channel, *self._counter(channel))
                    return
                run.append(
                    Transaction(row_seq, row_epoch, txid, changestream.parse_changes(_json(raw)))
                )
                seq, epoch = row_seq, row_epoch
                if len(run) >= COALESCE_MAX:
                    self._deliver_run(channel, run)
                    run = []
            self._deliver_run(channel, run)
            if len(rows) < BACKFILL_BATCH:
                break
        if self.metrics is not None:
            self.metrics.backfill_seconds.observe(time.monotonic() - started)

    def _counter(self, channel: str) -> tuple[int, str]:
        with self._query.cursor() as cur:
            cur.execute(changestream.SELECT_POSITION, (channel,))
            row = cur.fetchone()
        return (0, "") if row is None else (int(row[0]), str(row[1]))

    def _check_counter(
        self, channel: str, seq: int, epoch: str, counter_seq: int, counter_epoch: str
    ) -> None:
        """Nothing after ``seq`` in the changelog: make sure the counter agrees."""
        if counter_epoch and epoch and counter_epoch != epoch:
            self.streams.lost_history(channel, counter_seq, counter_epoch)
        elif counter_seq > seq:
            # Committed but pruned before we read it: the history is gone.
            self.streams.lost_history(channel, counter_seq, counter_epoch)
        elif not epoch and counter_epoch:
            stream = self.streams.streams.get(channel)
            if stream is not None:
                stream.epoch = counter_epoch


def _json(raw: Any) -> Any:
    """psycopg2 returns jsonb already parsed; re-read it with Decimal for non-integers."""
    if isinstance(raw, str):
        return changestream.loads_payload(raw)
    return raw
