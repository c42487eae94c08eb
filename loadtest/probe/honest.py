"""The honest client: what an attack does to someone else, measured while it runs.

``HonestMonitor`` runs in the probe's own process (the attacker is another process, so
the two never share an interpreter lock) and from its own client address (default
``127.0.0.2``; the attackers use ``127.0.0.1``):

* subscribers: ``DDPClient``s subscribed to ``books.all``, at least one on every relay
  worker (which worker holds a socket is read from /proc, ``procfs.worker_of``), each
  pinged every ``ping_interval`` (ping RTT);
* a writer: a rename of one book (``loadtest.bench.writer.Writer``: one SQL transaction,
  the same triggers as an ORM save) every ``write_interval``; its commit time is
  PostgreSQL's commit timestamp; each subscriber timestamps the ``changed`` it receives:
  live-update latency = arrival - commit;
* a prober: every ``probe_interval`` a fresh client opens a socket, sends ``connect``
  (time to ``connected``, socket and upgrade included), subscribes (time to ``ready``),
  waits for the next committed rename (its first live update), and closes.

Every sample carries its wall-clock time and worker, so the report can split them into
phases (baseline, attack, after) and by worker. A subscriber the relay closes is counted
and replaced. Must not: attack, or decide whether a target holds (``report`` does).
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websocket

from loadtest.bench.writer import Writer
from loadtest.probe import procfs
from loadtest.probe.wire import open_websocket
from relay.client.connection import DDPClient

#: The collection and publication the honest clients watch.
COLLECTION = "bookstore.book"
PUBLICATION = "books.all"
#: Seconds an unanswered ping must be old at the end to count as lost.
PING_GRACE = 2.0


class HonestClient(DDPClient):
    """A ``DDPClient`` whose socket comes from local address ``source``; ``local`` is the
    socket's own address, ``socket_seconds`` the time the TCP connection and the upgrade
    took."""

    def __init__(self, url: str, *, source: str, **options: Any) -> None:
        self.source = source
        self.local: tuple[str, int] | None = None
        self.socket_seconds = math.nan
        super().__init__(url, **options)

    def _open_socket(self) -> websocket.WebSocket:
        started = time.monotonic()
        ws = open_websocket(self.url, self.source, self.timeout)
        sock = ws.sock
        assert sock is not None
        name = sock.getsockname()
        self.local = (str(name[0]), int(name[1]))
        ws.settimeout(None)
        self.socket_seconds = time.monotonic() - started
        return ws


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement: when (epoch seconds), how long (ms; inf: never), on which worker."""

    at: float
    ms: float
    worker: int | None


@dataclass
class Subscriber:
    client: HonestClient
    worker: int | None
    ready_at: float
    #: write index -> arrival (epoch seconds)
    arrivals: dict[int, float] = field(default_factory=dict)
    #: ping id -> sent (epoch seconds); answered ones move to ``pings``
    pending_pings: dict[str, float] = field(default_factory=dict)
    pings: list[Sample] = field(default_factory=list)
    closed_at: float | None = None


@dataclass
class HonestReport:
    """What the monitor measured (ms); see ``HonestMonitor``."""

    connected: list[Sample] = field(default_factory=list)
    socket: list[Sample] = field(default_factory=list)
    ready: list[Sample] = field(default_factory=list)
    first_live: list[Sample] = field(default_factory=list)
    live: list[Sample] = field(default_factory=list)
    ping: list[Sample] = field(default_factory=list)
    #: Fresh clients that failed (no socket, no connected, no ready): (when, error).
    probe_failures: list[tuple[float, str]] = field(default_factory=list)
    #: Subscribers the relay closed: (when, worker).
    subscriber_closes: list[tuple[float, int | None]] = field(default_factory=list)
    writes: int = 0
    commit_clock: str = ""


class HonestMonitor:
    """See the module docstring. ``start()``, let the attack run, ``stop()``."""

    def __init__(
        self,
        url: str,
        database_url: str,
        *,
        port: int,
        workers: Callable[[], list[int]],
        source: str = "127.0.0.2",
        write_interval: float = 0.25,
        probe_interval: float = 0.5,
        ping_interval: float = 0.25,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.database_url = database_url
        self.port = port
        self.workers = workers
        self.source = source
        self.write_interval = write_interval
        self.probe_interval = probe_interval
        self.ping_interval = ping_interval
        self.timeout = timeout
        self.prefix = f"honest {secrets.token_hex(3)} "
        self.report = HonestReport()
        self.subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._writer: Writer | None = None
        self.book_id = ""
        #: Per write: epoch seconds it was started; commit times come at the end.
        self._started: list[float] = []
        #: Fresh clients: (write index awaited, its arrival or None, worker).
        self._probe_lives: list[tuple[int, float | None, int | None]] = []

    # -- set-up -------------------------------------------------------------------------

    def start(self, *, cover_workers: bool = True) -> HonestMonitor:
        writer = self._writer = Writer(self.database_url)
        self.book_id = writer.ids[0]
        self.subscribe(cover=cover_workers)
        for target in (self._write_loop, self._ping_loop, self._probe_loop):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _match(self, msg: dict[str, Any]) -> int | None:
        """The write index a ``changed`` of the watched book carries, if any."""
        if msg.get("msg") not in ("changed", "added") or msg.get("collection") != COLLECTION:
            return None
        if msg.get("id") != self.book_id:
            return None
        title = (msg.get("fields") or {}).get("title")
        if isinstance(title, str) and title.startswith(self.prefix):
            with contextlib.suppress(ValueError):
                return int(title[len(self.prefix) :])
        return None

    def _open_subscriber(self) -> Subscriber:
        holder: list[Subscriber] = []

        def on_message(msg: dict[str, Any]) -> None:
            now = time.time()
            if not holder:
                return
            sub = holder[0]
            index = self._match(msg)
            if index is not None:
                sub.arrivals.setdefault(index, now)
            elif msg.get("msg") == "pong":
                sent = sub.pending_pings.pop(str(msg.get("id")), None)
                if sent is not None:
                    sub.pings.append(Sample(sent, (now - sent) * 1000, sub.worker))

        client = HonestClient(
            self.url,
            source=self.source,
            timeout=self.timeout,
            on_message=on_message,
            keep_received=False,
        )
        client.connect()
        assert client.local is not None
        worker = procfs.worker_of(client.local, self.port, self.workers())
        client.subscribe(PUBLICATION)
        sub = Subscriber(client, worker, time.time())
        holder.append(sub)
        return sub

    def subscribe(self, *, cover: bool = True, tries: int = 20) -> None:
        """Open subscribers until every worker has one (or ``tries`` were opened)."""
        opened = 0
        while opened < tries:
            covered = {s.worker for s in self.subscribers if s.closed_at is None}
            if self.subscribers and (not cover or set(self.workers()) <= covered):
                return
            sub = self._open_subscriber()
            opened += 1
            if sub.worker in covered and cover:
                sub.client.close()  # another one on a worker already watched
                continue
            with self._lock:
                self.subscribers.append(sub)

    # -- the loops ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        assert self._writer is not None
        started = time.monotonic()
        index = 0
        while not self._stop.is_set():
            due = started + index * self.write_interval
            if self._stop.wait(max(0.0, due - time.monotonic())):
                break
            with self._lock:
                self._started.append(time.time())
            try:
                self._writer.write(f"{self.prefix}{index}", 0)
            except Exception as exc:  # the database is the stack's: report, keep going
                with self._lock:
                    self._started.pop()
                    self.report.probe_failures.append((time.time(), f"writer: {exc!r}"))
                continue
            index += 1

    def _ping_loop(self) -> None:
        count = 0
        while not self._stop.wait(self.ping_interval):
            with self._lock:
                subs = [s for s in self.subscribers if s.closed_at is None]
            for sub in subs:
                if sub.client.closed.is_set():
                    sub.closed_at = time.time()
                    with self._lock:
                        self.report.subscriber_closes.append((sub.closed_at, sub.worker))
                    self._replace()
                    continue
                count += 1
                ping_id = f"hp{count}"
                sub.pending_pings[ping_id] = time.time()
                with contextlib.suppress(Exception):
                    sub.client.send({"msg": "ping", "id": ping_id})

    def _replace(self) -> None:
        try:
            sub = self._open_subscriber()
        except Exception as exc:
            with self._lock:
                self.report.probe_failures.append((time.time(), f"subscriber: {exc!r}"))
            return
        with self._lock:
            self.subscribers.append(sub)

    def _probe_loop(self) -> None:
        while not self._stop.wait(self.probe_interval):
            self._probe()

    def _probe(self) -> None:
        arrivals: dict[int, float] = {}
        cond = threading.Condition()

        def on_message(msg: dict[str, Any]) -> None:
            index = self._match(msg)
            if index is not None:
                with cond:
                    arrivals.setdefault(index, time.time())
                    cond.notify_all()

        began = time.time()
        client = HonestClient(
            self.url,
            source=self.source,
            timeout=self.timeout,
            on_message=on_message,
            keep_received=False,
        )
        worker: int | None = None
        stage = "connect"
        report = self.report
        try:
            client.connect()
            connected = time.time()
            assert client.local is not None
            worker = procfs.worker_of(client.local, self.port, self.workers())
            with self._lock:
                report.connected.append(Sample(began, (connected - began) * 1000, worker))
                report.socket.append(Sample(began, client.socket_seconds * 1000, worker))
            stage = "subscribe"
            client.subscribe(PUBLICATION)
            ready = time.time()
            with self._lock:
                report.ready.append(Sample(connected, (ready - connected) * 1000, worker))
                awaited = len(self._started)  # the next write to start
            stage = "live update"
            with cond:
                cond.wait_for(
                    lambda: any(i >= awaited for i in arrivals) or self._stop.is_set(),
                    timeout=self.timeout,
                )
                got = arrivals.get(awaited)
            if not self._stop.is_set() or got is not None:
                with self._lock:
                    self._probe_lives.append((awaited, got, worker))
        except Exception as exc:
            with self._lock:
                report.probe_failures.append((began, f"{stage}: {exc!r}"))
                # A fresh client that never got that far never got its live update
                # either: both count as infinitely late, not as missing samples.
                if stage == "connect":
                    report.connected.append(Sample(began, math.inf, worker))
                if stage in ("connect", "subscribe"):
                    report.ready.append(Sample(began, math.inf, worker))
                report.first_live.append(Sample(began, math.inf, worker))
        finally:
            threading.Thread(target=_quiet_close, args=(client,), daemon=True).start()

    # -- the end --------------------------------------------------------------------------

    def stop(self, drain: float = 5.0) -> HonestReport:
        """Stop writing, give the last writes ``drain`` seconds to arrive, close all; the
        report, with commit times from PostgreSQL where it kept them."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        writer = self._writer
        assert writer is not None
        writes = len(writer.commits)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            live = [s for s in self.subscribers if s.closed_at is None]
            if all(writes - 1 in s.arrivals or s.client.closed.is_set() for s in live):
                break
            time.sleep(0.05)
        ended = time.time()
        commits = writer.server_commit_times()
        report = self.report
        report.commit_clock = "server" if commits is not None else "client"
        if commits is None:
            commits = list(writer.commits)
        report.writes = len(commits)
        for sub in self.subscribers:
            end = sub.closed_at if sub.closed_at is not None else math.inf
            if sub.closed_at is None and sub.client.closed.is_set():
                end = time.time()  # closed while draining
            report.live += live_samples(commits, sub.arrivals, sub.ready_at, end, sub.worker)
            report.ping.extend(sub.pings)
            if sub.closed_at is None:
                # Unanswered for PING_GRACE seconds or more by the end: lost. (A closed
                # subscriber's are not: its close is counted instead.)
                report.ping.extend(
                    Sample(sent, math.inf, sub.worker)
                    for sent in sub.pending_pings.values()
                    if sent < ended - PING_GRACE
                )
        for index, arrival, worker in self._probe_lives:
            if index >= len(commits):
                continue  # stopped before that write committed
            committed = commits[index]
            ms = (arrival - committed) * 1000 if arrival is not None else math.inf
            report.first_live.append(Sample(committed, ms, worker))
        for sub in self.subscribers:
            _quiet_close(sub.client)
        writer.close()
        return report


def live_samples(
    commits: list[float],
    arrivals: dict[int, float],
    ready_at: float,
    end: float,
    worker: int | None,
) -> list[Sample]:
    """One sample per write committed while a subscriber was subscribed (after
    ``ready_at``, before ``end``): arrival - commit in ms, infinite when it never came."""
    out = []
    for index, committed in enumerate(commits):
        if committed <= ready_at or committed >= end:
            continue
        arrival = arrivals.get(index)
        ms = (arrival - committed) * 1000 if arrival is not None else math.inf
        out.append(Sample(committed, ms, worker))
    return out


def _quiet_close(client: DDPClient) -> None:
    with contextlib.suppress(Exception):
        client.close()
