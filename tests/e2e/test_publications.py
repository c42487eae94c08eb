"""Issue #10's publications end to end: real clients on three relays, compared with SQL.

The setting: a migrated, seeded database, three gunicorn relays (2, 1 and 1 workers),
and in every test Python clients (``WireClient``: raw WebSocket and SockJS) and node
clients (``node/watch.js`` with ``WATCH_STREAM=1``: npm ``ddp``, ``simpleddp``,
``ddp.js`` and the real Meteor client under jsdom) spread over the relays. Writes come
from the test process (plain SQL through psycopg2, one commit at a time), from DDP
methods (the write fence applies: a caller's data must arrive before its ``updated``) and
from a writer process (``tests/e2e/writer.py``, the Django ORM).

1. ``books.latest`` [5] and [3]: a seeded storm of ~200 commits (creates with random
   ``published`` dates, none and ties included; renames; removes; ``published`` changes
   that move books into, out of and within the windows). After EVERY commit each client's
   ``bookstore.book`` must equal the database's top n (Meteor's sort), within a bound;
   the first divergence fails the test with the commit, the client and both sides. Then
   100 commits back to back (checked at the end), and ``books.create`` (with
   ``published``), ``books.rename`` and ``books.remove`` calls whose caller must hold the
   exact window when ``updated`` arrives, also when removals exhaust the window's buffer.
2. ``books.countByAuthor``: through ``books.create``, ``books.remove`` and
   ``books.setAuthor`` calls, ``counts/<author>.count`` equals ``COUNT(*)``; the caller
   holds the new count when its ``updated`` arrives.
3. ``books.byTag``: ``books.setTags``, creates with tags, removes, tag renames and
   through-table rows written in SQL move books in and out; the caller sees its change
   before ``updated``.
4. ``books.stats`` (the low-level API) stays live through commits of other processes;
   the universal publication of site notices reaches every session, without a ``sub``,
   including sessions connected before the notice existed.
5. Single flight: 50 sessions subscribing ``books.all`` at once on a one-worker relay
   load each of its queries once (``/metrics``), and all get identical data.

Seeds are printed (``PUBLICATIONS_SEED=<n>`` replays them). Must not: fix what it finds
(a failure names the relay or backend bug), or share clients between tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest

from devstack.launch import example_env
from relay.client import DDPClientError
from tests.e2e.convergence import (
    AUTHORS,
    BOOKS,
    COUNTS,
    NOTICES,
    REVISION,
    STATS,
    View,
    WireClient,
    active_notices,
    book_counts,
    cache_problems,
    database_state,
    latest_order,
    latest_window,
    order_problems,
    replay,
    stats_document,
    updated_index,
    wire,
)
from tests.e2e.node_runs import start_watch
from tests.fixtures.relays import RelayProcess, RelayStack, RelayStacks

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(240)]

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.py"

#: Workers per relay; the last relay has one worker, so its /metrics are one worker's.
RELAY_WORKERS = (2, 1, 1)
SINGLE_WORKER_RELAY = 2
#: The storm of test 1 (``PUBLICATIONS_STORM_COMMITS`` for a longer soak).
STORM_COMMITS = int(os.environ.get("PUBLICATIONS_STORM_COMMITS", "200"))
#: Commits of test 1 made back to back after the storm, checked once at the end.
BURST_COMMITS = int(os.environ.get("PUBLICATIONS_BURST_COMMITS", "100"))
#: How long a client may take to show a commit (the bound of every convergence wait).
CONVERGE_SECONDS = 10.0
#: How long node clients may take to boot and subscribe.
NODE_READY_SECONDS = 60.0
#: Meteor's id alphabet: mixed case, so code-point ties differ from a collation's.
ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
#: The seeded authors (seed_demo).
AUTHOR_IDS = ("leguin", "pratchett", "jemisin")
#: ``published`` values of the storm: few, so ties are frequent (None: undated).
STORM_DATES: tuple[dt.date | None, ...] = (
    dt.date(1960, 1, 1),
    dt.date(1990, 5, 5),
    dt.date(2012, 12, 12),
    dt.date(2020, 2, 2),
    dt.date(2024, 4, 4),
    dt.date(2027, 7, 7),
    dt.date(2030, 3, 3),
    None,
)
#: The two tags of test 3 (seeded), and the others its books get.
TAG_A = "fantasy"
TAG_B = "science fiction"
OTHER_TAGS = ("dragons", "space", "Fantasy")


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(node_toolchain: Path, module_relay_stack: RelayStacks) -> RelayStack:
    """A dedicated database (migrated, seeded) and three relays of 2, 1 and 1 workers."""
    return module_relay_stack(workers=RELAY_WORKERS)


@pytest.fixture(scope="module")
def seed() -> int:
    value = int(os.environ.get("PUBLICATIONS_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"\npublications: seed {value} (PUBLICATIONS_SEED={value} to replay)")
    return value


@pytest.fixture
def sql(stack: RelayStack) -> Iterator[psycopg2.extensions.connection]:
    """An autocommit connection of the test process: each statement is one commit."""
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


# -- clients -------------------------------------------------------------------------------

Params = tuple[Any, ...]
Subscription = tuple[str, Params]


class Watch:
    """One client of a test and how to read what it holds now."""

    name: str
    relay: int

    def view(self, collection: str) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def problems(self) -> list[str]:
        """Rule breaks, errors and lost connections seen so far (empty: none)."""
        raise NotImplementedError


class PyWatch(Watch):
    """A ``WireClient`` (raw WebSocket or SockJS) with its subscriptions."""

    def __init__(self, name: str, relay: int, subs: Sequence[Subscription], *, sockjs: bool):
        self.name = f"{name} (python/{'sockjs' if sockjs else 'raw'}, relay {relay})"
        self.relay = relay
        self.subs = list(subs)
        self.sockjs = sockjs
        self.client: WireClient | None = None

    def start(self, relays: Sequence[RelayProcess]) -> None:
        relay = relays[self.relay]
        self.client = WireClient(relay.url if self.sockjs else relay.ws_url, sockjs=self.sockjs)
        self.client.timeout = 30
        self.client.connect()
        for name, params in self.subs:
            self.client.subscribe(name, *params)

    @property
    def c(self) -> WireClient:
        assert self.client is not None, f"{self.name} was not started"
        return self.client

    def view(self, collection: str) -> dict[str, dict[str, Any]]:
        return {doc_id: wire(fields) for doc_id, fields in self.c.docs(collection).items()}

    def problems(self) -> list[str]:
        received, _ = self.c.snapshot()
        out = [f"violation: {v}" for v in self.c.violations]
        out += [f"order: {p}" for p in order_problems(received)]
        if self.c.errors:
            out.append(f"DDP errors: {self.c.errors[:3]}")
        if self.c.closed.is_set():
            out.append("the connection closed")
        failed = {k: v for k, v in self.c.nosubs.items() if v is not None}
        if failed:
            out.append(f"nosub with an error: {failed}")
        return out

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class NodeWatch(Watch):
    """``node watch.js <library> ...`` with ``WATCH_STREAM=1``: its cache after each burst
    of data messages arrives on stdout, so it can be compared after every commit."""

    def __init__(
        self, library: str, transport: str, relay: int, publication: str, params: Params = ()
    ) -> None:
        self.name = f"{library}/{transport} {publication}{list(params)} (node, relay {relay})"
        self.library = library
        self.transport = transport
        self.relay = relay
        self.publication = publication
        self.params = params
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.cache: View = {}
        self.streamed_violations = 0
        self.stderr: list[str] = []
        self.report: dict[str, Any] | None = None
        self.last_line = ""
        self.readers: list[threading.Thread] = []

    def start(self, relays: Sequence[RelayProcess]) -> None:
        env = {
            "WATCH_STREAM": "1",
            "WATCH_QUIET_MS": "500",
            "WATCH_DRAIN_MS": "5000",
            "WATCH_TIMEOUT_MS": "200000",
        }
        url = relays[self.relay].url
        self.proc = start_watch(
            self.library, url, self.transport, self.publication, self.params, env
        )
        self.readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self.readers:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                self.last_line = line
                continue
            if "stream" in data:
                with self.lock:
                    self.cache = data["cache"]
                    self.streamed_violations = int(data.get("violations") or 0)
            else:
                self.report = data

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if line.startswith("watch: ready"):
                self.ready.set()
        self.ready.set()  # exited: is_up() tells

    def is_up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.ready.is_set()

    def view(self, collection: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self.cache.get(collection, {}))

    def problems(self) -> list[str]:
        out = []
        if self.streamed_violations:
            out.append(f"{self.streamed_violations} violations (see its final report)")
        if self.proc is not None and self.proc.poll() is not None and self.report is None:
            out.append(f"exited {self.proc.returncode}: {self.stderr[-5:]} {self.last_line!r}")
        return out

    def finish(self, timeout: float = 15.0) -> list[str]:
        """Stop it (stdin closed), wait for its report; the problems the report shows."""
        assert self.proc is not None
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for thread in self.readers:
            thread.join(timeout=5)
        rep = self.report
        if rep is None:
            return [f"no report (exit {self.proc.returncode}): {self.stderr[-5:]}"]
        if not rep.get("ok"):
            return [f"failed at {rep.get('stage')!r}: {rep.get('error')}"]
        out = [f"violation: {json.dumps(v)[:400]}" for v in rep.get("violations", [])]
        if rep.get("errors"):
            out.append(f"DDP errors: {rep['errors'][:3]}")
        for key in ("closed", "reconnects", "clientWarnings", "pageErrors"):
            if rep.get(key):
                out.append(f"{key}: {str(rep[key])[:400]}")
        return out

    def library_books(self) -> dict[str, dict[str, Any]]:
        """The library's own store of books (title, authorId), from the final report."""
        assert self.report is not None
        return dict((self.report.get("libraryCache") or {}).get(BOOKS, {}))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


@contextlib.contextmanager
def running(stack: RelayStack, py: Sequence[PyWatch], node: Sequence[NodeWatch]) -> Iterator[None]:
    """Start every client (node processes first: they boot slowly), wait until all are
    subscribed, and close them all afterwards."""
    try:
        for n in node:
            n.start(stack.relays)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: w.start(stack.relays), py))
        deadline = time.monotonic() + NODE_READY_SECONDS
        for n in node:
            n.ready.wait(max(0.0, deadline - time.monotonic()))
        down = [n for n in node if not n.is_up()]
        assert not down, "node clients not subscribed:\n" + "\n".join(
            f"{n.name}: {n.stderr[-5:]} {n.last_line!r}" for n in down
        )
        yield
    finally:
        for n in node:
            n.kill()
        for w in py:
            with contextlib.suppress(Exception):
                w.close()


Expectation = tuple[Watch, str, dict[str, dict[str, Any]]]


def converge(expectations: Sequence[Expectation], timeout: float = CONVERGE_SECONDS) -> list[str]:
    """Wait until each client's collection equals its expected documents; what still
    differs at the deadline (empty: all converged)."""
    pending = list(expectations)
    deadline = time.monotonic() + timeout
    while True:
        pending = [(w, coll, want) for w, coll, want in pending if w.view(coll) != want]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.003)
    return [describe(w, coll, want, w.view(coll)) for w, coll, want in pending]


def display_order(docs: dict[str, dict[str, Any]]) -> list[str]:
    """Ids in ``books.latest``'s order when the documents have dates, else sorted."""
    try:
        return latest_order(docs)
    except (KeyError, TypeError):
        return sorted(docs)


def describe(
    w: Watch,
    collection: str,
    want: dict[str, dict[str, Any]],
    got: dict[str, dict[str, Any]],
    order: Callable[[dict[str, dict[str, Any]]], list[str]] = display_order,
) -> str:
    """One client's divergence: both sides' ids and the field differences."""
    diff = cache_problems({collection: got}, {collection: want})
    return (
        f"{w.name}: {collection} expected {order(want)}, got {order(got)}; "
        + "; ".join(diff)
        + (f"; client problems: {w.problems()}" if w.problems() else "")
    )


def final_problems(watches: Sequence[Watch]) -> list[str]:
    """Every client's rule breaks, order problems and errors (node clients are stopped)."""
    out = []
    for w in watches:
        found = w.finish() if isinstance(w, NodeWatch) else w.problems()
        out += [f"{w.name}: {p}" for p in found]
    return out


@dataclass
class Fenced:
    """A method call and what its caller held before it and when its ``updated`` came."""

    method_id: str
    result: Any
    before: View
    at_updated: View | None  # None: no updated arrived

    def changed(self, collection: str) -> bool:
        """Whether the call changed what the caller held of ``collection`` by ``updated``."""
        after = (self.at_updated or {}).get(collection, {})
        return bool(self.before.get(collection, {}) != after)


def fenced_call(w: PyWatch, method: str, *params: Any) -> Fenced:
    """Call ``method`` (waits for result and updated) and replay the caller's messages:
    its cache before the call and at the call's ``updated`` (the write fence, I5)."""
    start = w.c.position()
    before = len(w.c.sent_methods)  # only this thread calls through w
    result = w.c.call(method, *params)
    ids = w.c.sent_methods[before:]
    assert len(ids) == 1, ids
    received, _ = w.c.snapshot()
    index = updated_index(received, ids[0])
    return Fenced(
        ids[0],
        result,
        replay(received, start),
        None if index is None else replay(received, index),
    )


def new_id(rng: random.Random) -> str:
    return "".join(rng.choice(ID_ALPHABET) for _ in range(17))


_LOG_PROBLEM = re.compile(r"WARNING|ERROR|CRITICAL|Traceback")


class LogMark:
    """Where the relays' logs end now, to find the warnings and errors written after."""

    def __init__(self, stack: RelayStack) -> None:
        self.relays = stack.relays
        self.offsets = [self._size(r.log_path) for r in self.relays]

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def new_problems(self) -> list[str]:
        """Warning, error and traceback lines the relays logged since the mark."""
        out = []
        for index, (relay, offset) in enumerate(zip(self.relays, self.offsets, strict=True)):
            with contextlib.suppress(OSError), relay.log_path.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
                lines = [line for line in text.splitlines() if _LOG_PROBLEM.search(line)]
                out += [f"relay {index} logged: {line[:300]}" for line in lines[:10]]
        return out


def evidence(stack: RelayStack) -> str:
    return (
        f"\n\nrelay evidence:\n{stack.evidence()}\n\nmetrics:\n"
        + stack.metrics(r"(query_fetches|query_joins|fence_timeouts|resyncs)_total|live_queries ")
        + f"\n\nlogs: {stack.log_dir}"
    )


# -- 1. books.latest: exact windows through a storm ----------------------------------------


class Storm:
    """Random single-statement commits on books, through psycopg2: creates (random
    ``published``, ties and none included), renames (growing title revisions), removes,
    and ``published`` changes aimed into, out of and within the window of 5."""

    def __init__(self, conn: psycopg2.extensions.connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.created = 0
        self.revisions: dict[str, int] = {}

    def commit(self, books: dict[str, dict[str, Any]]) -> str:
        """One commit chosen from the current ``books`` (``database_state``'s); says what."""
        rng = self.rng
        order = latest_order(books)
        window, rest = order[:5], order[5:]
        if len(books) < 12:
            kind = "create"
        elif len(books) > 35:
            kind = "remove"
        else:
            kind = rng.choices(
                ["create", "rename", "remove", "into", "out", "within", "redate"],
                [22, 16, 14, 14, 12, 10, 12],
            )[0]
        if kind == "create":
            return self._create()
        target = rng.choice(window if (kind != "into" and rng.random() < 0.6) else order)
        if kind == "rename":
            return self._rename(target, books)
        if kind == "remove":
            # One commit: its tag links and favorites go with it (Django's CASCADE is
            # emulated by the ORM, not declared in the database).
            self._run(
                "WITH t AS (DELETE FROM bookstore_book_tags WHERE book_id = %s),"
                " f AS (DELETE FROM bookstore_favorite WHERE book_id = %s)"
                " DELETE FROM bookstore_book WHERE id = %s",
                target,
                target,
                target,
            )
            return f"remove {target}"
        if kind == "into" and rest:
            target = rng.choice(rest)
            # As new as the newest, or tied with a book of the window.
            dates = [self._date(books, b) for b in window] + [STORM_DATES[-2]]
            return self._redate(target, rng.choice(dates), "into")
        if kind == "out":
            return self._redate(target, rng.choice([None, STORM_DATES[0]]), "out of")
        if kind == "within":
            other = rng.choice([b for b in window if b != target] or window)
            return self._redate(target, self._date(books, other), f"tied with {other} in")
        return self._redate(target, rng.choice(STORM_DATES), "anywhere in")

    def _run(self, statement: str, *args: Any) -> None:
        with self.conn.cursor() as cur:
            cur.execute(statement, args)
            assert cur.rowcount == 1, (statement, args, cur.rowcount)

    @staticmethod
    def _date(books: dict[str, dict[str, Any]], book_id: str) -> dt.date | None:
        published = books[book_id]["published"]
        if published is None:
            return None
        return dt.datetime.fromtimestamp(published["$date"] / 1000, dt.UTC).date()

    def _create(self) -> str:
        book_id = new_id(self.rng)
        self.created += 1
        published = self.rng.choice(STORM_DATES)
        title = f"storm {self.created} r0"
        self.revisions[book_id] = 0
        self._run(
            "INSERT INTO bookstore_book (id, title, author_id, published, price, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, clock_timestamp())",
            book_id,
            title,
            self.rng.choice(AUTHOR_IDS),
            published,
            Decimal(self.rng.randrange(100, 5000)) / 100,
        )
        return f"create {book_id} published {published}"

    def _rename(self, book_id: str, books: dict[str, dict[str, Any]]) -> str:
        title = REVISION.sub("", books[book_id]["title"])
        rev = self.revisions[book_id] = self.revisions.get(book_id, 0) + 1
        self._run(
            "UPDATE bookstore_book SET title = %s, updated_at = clock_timestamp() WHERE id = %s",
            f"{title} r{rev}",
            book_id,
        )
        return f"rename {book_id} to {title} r{rev}"

    def _redate(self, book_id: str, published: dt.date | None, how: str) -> str:
        self._run(
            "UPDATE bookstore_book SET published = %s, updated_at = clock_timestamp()"
            " WHERE id = %s",
            published,
            book_id,
        )
        return f"published of {book_id} = {published} ({how} the window)"


def window_fence_problems(
    stack: RelayStack, callers: Sequence[PyWatch], windows: dict[Watch, int], rng: random.Random
) -> list[str]:
    """``books.create`` (with ``published``: newest, old or none), ``books.rename`` and
    ``books.remove`` of the newest book through each caller in turn: at its ``updated``
    the caller's window must equal the database's top n; then every client converges."""
    problems: list[str] = []
    newest = dt.datetime(2040, 1, 1, tzinfo=dt.UTC)
    for k in range(24):
        caller = callers[k % len(callers)]
        books, _ = database_state(stack.database_url)
        head = latest_order(books)[0]
        # The last 12 remove the head in a row: more than either window's buffer holds.
        step = k % 4 if k < 12 else 3
        if step == 0:  # a new newest book: enters at the top, pushes the last one out
            doc: dict[str, Any] = {"title": f"fence {k} r0", "authorId": "leguin", "price": "2"}
            doc["published"] = newest + dt.timedelta(days=k)
            call, what = fenced_call(caller, "books.create", doc), "create newest"
        elif step == 1:  # undated: lands at the end, outside the windows
            doc = {"title": f"fence {k} r0", "authorId": "pratchett", "price": "2.00"}
            doc["published"] = rng.choice([None, newest - dt.timedelta(days=30000)])
            call, what = fenced_call(caller, "books.create", doc), "create old/undated"
        elif step == 2:
            title = f"{REVISION.sub('', books[head]['title'])} r{1000 + k}"
            call, what = fenced_call(caller, "books.rename", head, title), f"rename {head}"
        else:  # the head leaves: the next one moves up, one comes in from the buffer
            call, what = fenced_call(caller, "books.remove", head), f"remove {head}"
        books, _ = database_state(stack.database_url)
        want = latest_window(books, windows[caller])
        if call.at_updated is None:
            problems.append(f"fence call {k} ({what}) by {caller.name}: no updated")
        elif call.at_updated.get(BOOKS, {}) != want:
            got = call.at_updated.get(BOOKS, {})
            problems.append(
                f"fence call {k} ({what}): at updated " + describe(caller, BOOKS, want, got)
            )
        problems += [
            f"after fence call {k} ({what}): {p}"
            for p in converge([(w, BOOKS, latest_window(books, n)) for w, n in windows.items()])
        ]
        if problems:
            break
    return problems


def test_latest_windows_exact_through_a_storm(
    stack: RelayStack, sql: psycopg2.extensions.connection, seed: int
) -> None:
    logs = LogMark(stack)
    latest5, latest3 = ("books.latest", (5,)), ("books.latest", (3,))
    py = [
        PyWatch("w5-a", 0, [latest5], sockjs=False),
        PyWatch("w5-b", 1, [latest5], sockjs=True),
        PyWatch("w5-c", 2, [latest5], sockjs=False),
        PyWatch("w3-a", 1, [latest3], sockjs=False),
        PyWatch("w3-b", 2, [latest3], sockjs=True),
        PyWatch("w3-c", 0, [latest3], sockjs=True),
        # Both windows on one session: the mergebox holds their union (the top 5).
        PyWatch("w5+3-a", 0, [latest5, latest3], sockjs=False),
        PyWatch("w3+5-b", 2, [latest3, latest5], sockjs=True),
    ]
    node = [
        NodeWatch("ddp", "raw", 1, *latest5),
        NodeWatch("meteor", "sockjs", 2, *latest5),
        NodeWatch("simpleddp", "raw", 0, *latest3),
        NodeWatch("ddpjs", "sockjs-raw", 2, *latest3),
    ]
    # A session of both windows holds their union: the larger window.
    windows: dict[Watch, int] = {w: max(int(p[0]) for _, p in w.subs) for w in py}
    windows.update({n: int(n.params[0]) for n in node})

    def expectations(books: dict[str, dict[str, Any]]) -> list[Expectation]:
        return [(w, BOOKS, latest_window(books, n)) for w, n in windows.items()]

    storm = Storm(sql, random.Random(seed))
    latencies: list[float] = []
    history: list[str] = []
    moved = {3: 0, 5: 0}  # commits that changed each window (the storm must move them)
    t0 = time.monotonic()
    with running(stack, py, node):
        books, _ = database_state(stack.database_url)
        problems = converge(expectations(books))
        assert not problems, "initial windows differ:\n" + "\n".join(problems) + evidence(stack)
        for index in range(STORM_COMMITS):
            what = storm.commit(books)
            history.append(what)
            started = time.monotonic()
            previous = {size: latest_window(books, size) for size in moved}
            books, _ = database_state(stack.database_url)
            for size in moved:
                moved[size] += latest_window(books, size) != previous[size]
            problems = converge(expectations(books))
            latencies.append(time.monotonic() - started)
            if problems:
                order = latest_order(books)
                pytest.fail(
                    f"commit {index} ({what}) not shown within {CONVERGE_SECONDS}s (seed "
                    f"{seed}):\n"
                    + "\n".join(problems)
                    + "\n\ndatabase order (id, published): "
                    + ", ".join(f"{b} {books[b]['published']}" for b in order[:8])
                    + "\nlast commits:\n  "
                    + "\n  ".join(history[-8:])
                    + evidence(stack)
                )
        # Then commits back to back, without waiting: refetches (a window out of buffer)
        # race with the commits that follow them; the windows must still end exact.
        for _ in range(BURST_COMMITS):
            history.append(storm.commit(books))
            books, _ = database_state(stack.database_url)
        problems = converge(expectations(books))
        assert not problems, (
            f"after {BURST_COMMITS} back-to-back commits (seed {seed}):\n"
            + "\n".join(problems)
            + "\nlast commits:\n  "
            + "\n  ".join(history[-8:])
            + evidence(stack)
        )
        # Methods over DDP: the caller's window is exact when its `updated` arrives (I5),
        # also when a removal empties the buffer and the window must be read again.
        fence = window_fence_problems(stack, [py[0], py[3]], windows, random.Random(seed + 1))
        assert not fence, (
            f"window write fence (seed {seed}):\n" + "\n".join(fence) + evidence(stack)
        )
        ends = final_problems(list(windows)) + logs.new_problems()
        books, _ = database_state(stack.database_url)
        for n in node:  # the libraries' own stores hold the window too
            want = {
                b: {"title": d["title"], "authorId": d["authorId"]}
                for b, d in latest_window(books, windows[n]).items()
            }
            ends += [
                f"{n.name}: library store: {p}"
                for p in cache_problems({BOOKS: n.library_books()}, {BOOKS: want})
            ]
    latencies.sort()
    print(
        f"\nbooks.latest storm: {STORM_COMMITS} commits, {len(windows)} clients, "
        f"per-commit convergence p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms; windows changed by {moved[5]} ([5]) and "
        f"{moved[3]} ([3]) commits; {time.monotonic() - t0:.1f}s\n"
        + stack.metrics(r"query_fetches_total")
    )
    assert min(moved.values()) >= STORM_COMMITS // 4, f"a storm too calm to prove much: {moved}"
    assert not ends, f"client problems (seed {seed}):\n" + "\n".join(ends[:30]) + evidence(stack)


# -- 2. books.countByAuthor: live counts equal COUNT(*) -----------------------------------


def test_count_by_author_equals_count_star(
    stack: RelayStack, sql: psycopg2.extensions.connection, seed: int
) -> None:
    logs = LogMark(stack)
    every = [("books.countByAuthor", (a,)) for a in AUTHOR_IDS]
    callers = [
        PyWatch("counts-a", 0, every, sockjs=False),
        PyWatch("counts-b", 1, every, sockjs=True),
        PyWatch("counts-c", 2, every, sockjs=False),
    ]
    py = [*callers, PyWatch("counts-leguin", 2, every[:1], sockjs=True)]
    node = [
        NodeWatch("ddpjs", "raw", 1, "books.countByAuthor", ("pratchett",)),
        NodeWatch("ddp", "sockjs-raw", 0, "books.countByAuthor", ("jemisin",)),
    ]
    authors_of: dict[Watch, tuple[str, ...]] = {w: AUTHOR_IDS for w in callers}
    authors_of[py[3]] = ("leguin",)
    authors_of.update({n: (str(n.params[0]),) for n in node})

    def expectations(counts: dict[str, int]) -> list[Expectation]:
        return [
            (w, COUNTS, {a: {"count": counts[a]} for a in authors})
            for w, authors in authors_of.items()
        ]

    rng = random.Random(seed + 2)
    problems: list[str] = []
    fence_changes = 0  # calls whose count change the caller held by its updated

    def one_call(caller: PyWatch, k: int) -> tuple[str, str, Any]:
        """A random create, remove or setAuthor through ``caller``."""
        with sql.cursor() as cur:
            cur.execute("SELECT id, author_id FROM bookstore_book")
            rows = cur.fetchall()
        kind = rng.choice(["create", "create", "remove", "setAuthor", "setAuthor"])
        if kind == "create" or len(rows) < 5:
            doc = {"title": f"count {k} r0", "authorId": rng.choice(AUTHOR_IDS), "price": "3.00"}
            return "books.create", f"create {doc['authorId']}", doc
        book_id, author_id = rng.choice(rows)
        if kind == "remove":
            return "books.remove", f"remove {book_id} of {author_id}", book_id
        other = rng.choice([a for a in AUTHOR_IDS if a != author_id])
        return "books.setAuthor", f"setAuthor {book_id} {author_id} -> {other}", (book_id, other)

    with running(stack, py, node):
        problems += converge(expectations(book_counts(stack.database_url)))
        assert not problems, "initial counts differ:\n" + "\n".join(problems) + evidence(stack)
        for k in range(36):
            caller = callers[k % len(callers)]
            method, what, args = one_call(caller, k)
            params = args if isinstance(args, tuple) else (args,)
            call = fenced_call(caller, method, *params)
            counts = book_counts(stack.database_url)
            want = {a: {"count": counts[a]} for a in AUTHOR_IDS}
            if call.at_updated is None:
                problems.append(f"call {k} ({what}) by {caller.name}: no updated")
            elif call.at_updated.get(COUNTS, {}) != want:
                problems.append(
                    f"call {k} ({what}) by {caller.name}: at updated the counts were "
                    f"{call.at_updated.get(COUNTS)}, COUNT(*) is {want} (the write fence "
                    "let updated overtake the count)"
                )
            fence_changes += call.changed(COUNTS)
            late = converge(expectations(counts))
            problems += [f"call {k} ({what}): {p}" for p in late]
            if problems:
                break

        if not problems:
            # A concurrent burst: three callers at once, then everyone converges.
            def burst(i: int) -> None:
                local = random.Random(seed + 10 + i)
                for j in range(8):
                    with sql.cursor() as cur:  # psycopg2 connections are thread-safe
                        cur.execute("SELECT id FROM bookstore_book ORDER BY random() LIMIT 1")
                        row = cur.fetchone()
                    assert row is not None
                    author = local.choice(AUTHOR_IDS)
                    if j % 3 == 0:
                        doc = {"title": f"burst {i}.{j} r0", "authorId": author, "price": "1.00"}
                        callers[i].c.call("books.create", doc)
                    with contextlib.suppress(DDPClientError):  # another caller removed it
                        if j % 3 == 1:
                            callers[i].c.call("books.setAuthor", row[0], author)
                        elif j % 3 == 2:
                            callers[i].c.call("books.remove", row[0])

            with ThreadPoolExecutor(len(callers)) as pool:
                list(pool.map(burst, range(len(callers))))
            problems += [
                f"after the burst: {p}"
                for p in converge(expectations(book_counts(stack.database_url)))
            ]
        problems += final_problems(list(authors_of)) + logs.new_problems()
    print(f"\ncountByAuthor: {fence_changes} calls changed a count seen before updated")
    assert not problems, (
        f"count problems (seed {seed}):\n" + "\n".join(problems[:30]) + evidence(stack)
    )


# -- 3. books.byTag: many-to-many changes move books in and out ----------------------------


def tagged(books: dict[str, dict[str, Any]], *names: str) -> dict[str, dict[str, Any]]:
    """What ``books.byTag`` of each of ``names`` publishes, merged: the books tagged so."""
    return {b: doc for b, doc in books.items() if set(names) & set(doc["tags"])}


def test_by_tag_follows_many_to_many_changes(
    stack: RelayStack, sql: psycopg2.extensions.connection, seed: int
) -> None:
    logs = LogMark(stack)
    by_a, by_b = ("books.byTag", (TAG_A,)), ("books.byTag", (TAG_B,))
    callers = [
        PyWatch("tag-a", 0, [by_a], sockjs=False),
        PyWatch("tag-b", 1, [by_b], sockjs=False),
        PyWatch("tag-ab", 2, [by_a, by_b], sockjs=True),
    ]
    py = [
        *callers,
        PyWatch("tag-a-2", 1, [by_a], sockjs=True),
        PyWatch("tag-b-2", 2, [by_b], sockjs=False),
    ]
    node = [
        NodeWatch("simpleddp", "raw", 2, *by_a),
        NodeWatch("ddp", "raw", 0, *by_b),
    ]
    tags_of: dict[Watch, tuple[str, ...]] = {
        py[0]: (TAG_A,),
        py[1]: (TAG_B,),
        py[2]: (TAG_A, TAG_B),
        py[3]: (TAG_A,),
        py[4]: (TAG_B,),
    }
    tags_of.update({n: (str(n.params[0]),) for n in node})

    def expectations(books: dict[str, dict[str, Any]]) -> list[Expectation]:
        return [(w, BOOKS, tagged(books, *names)) for w, names in tags_of.items()]

    rng = random.Random(seed + 3)
    pool_of_tags = [TAG_A, TAG_B, *OTHER_TAGS]
    mine: list[str] = []  # the books this test created
    problems: list[str] = []

    fence_changes = 0  # calls that changed what their caller held by its updated

    def check(step: str, caller: PyWatch | None = None, call: Fenced | None = None) -> None:
        nonlocal fence_changes
        books, _ = database_state(stack.database_url)
        if caller is not None and call is not None:
            want = tagged(books, *tags_of[caller])
            if call.at_updated is None:
                problems.append(f"{step}: {caller.name} got no updated")
            elif call.at_updated.get(BOOKS, {}) != want:
                problems.append(
                    f"{step}: at updated {caller.name} held a different set (the write fence "
                    "let updated overtake the data): "
                    + describe(caller, BOOKS, want, call.at_updated.get(BOOKS, {}))
                )
            fence_changes += call.changed(BOOKS)
        problems.extend(f"{step}: {p}" for p in converge(expectations(books)))

    def rename_tag(old: str, new: str) -> None:
        with sql.cursor() as cur:
            cur.execute("UPDATE bookstore_tag SET name = %s WHERE name = %s", (new, old))
        check(f"SQL: tag {old!r} renamed {new!r}")

    with running(stack, py, node):
        check("initial")
        for k in range(8):  # books of the test's own, with random tags
            caller = callers[k % 3]
            names = rng.sample(pool_of_tags, rng.randrange(0, 4))
            doc = {"title": f"tagged {k} r0", "authorId": "leguin", "price": "4.00", "tags": names}
            call = fenced_call(caller, "books.create", doc)
            mine.append(call.result)
            check(f"create {call.result} tags {names} by {caller.name}", caller, call)
        for k in range(24):
            if problems:
                break
            caller = callers[k % 3]
            book_id = rng.choice(mine)
            names = rng.sample(pool_of_tags, rng.randrange(0, 4))
            call = fenced_call(caller, "books.setTags", book_id, names)
            check(f"setTags {book_id} {names} by {caller.name}", caller, call)
        if not problems:
            # The tag's name is what is published and filtered: renames move whole sets.
            with sql.cursor() as cur:
                cur.execute(
                    "INSERT INTO bookstore_tag (id, name) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO NOTHING",
                    (new_id(rng), "dragons"),
                )
                cur.execute(
                    "INSERT INTO bookstore_book_tags (book_id, tag_id)"
                    " SELECT %s, id FROM bookstore_tag WHERE name = 'dragons'"
                    " ON CONFLICT DO NOTHING",
                    (mine[0],),
                )
            check("SQL: through row for dragons")
            rename_tag(TAG_A, "fantasy (old)")
            rename_tag("dragons", TAG_A)
            rename_tag(TAG_A, "dragons")
            rename_tag("fantasy (old)", TAG_A)
            with sql.cursor() as cur:  # a through row deleted in SQL
                cur.execute(
                    "DELETE FROM bookstore_book_tags WHERE id = (SELECT bt.id FROM"
                    " bookstore_book_tags bt JOIN bookstore_tag t ON t.id = bt.tag_id"
                    " WHERE t.name = %s LIMIT 1)",
                    (TAG_B,),
                )
            check("SQL: a science-fiction through row deleted")
            for book_id in mine[:3]:
                caller = callers[2]  # both tags: it holds the book if either is on it
                call = fenced_call(caller, "books.remove", book_id)
                check(f"remove {book_id} by {caller.name}", caller, call)
        problems += final_problems(list(tags_of)) + logs.new_problems()
    print(f"\nbyTag: {fence_changes} calls changed what their caller held before updated")
    assert fence_changes >= 5, f"only {fence_changes} calls changed a caller's books"
    assert not problems, (
        f"byTag problems (seed {seed}):\n" + "\n".join(problems[:30]) + evidence(stack)
    )


# -- 4. the low-level API and the universal publication -----------------------------------


def test_custom_and_universal_publications_stay_live(
    stack: RelayStack, sql: psycopg2.extensions.connection, seed: int
) -> None:
    logs = LogMark(stack)
    stats = ("books.stats", ())
    stats_clients = [
        PyWatch("stats-a", 0, [stats], sockjs=False),
        PyWatch("stats-b", 1, [stats], sockjs=True),
        PyWatch("stats-c", 2, [stats], sockjs=False),
    ]
    # No subscription at all: the universal publication is all they get.
    bare = [
        PyWatch("bare-a", 0, [], sockjs=True),
        PyWatch("bare-b", 1, [], sockjs=False),
        PyWatch("bare-c", 2, [], sockjs=True),
    ]
    node = [NodeWatch("meteor", "sockjs", 1, *stats), NodeWatch("ddp", "raw", 2, *stats)]
    with_stats: list[Watch] = [*stats_clients, *node]
    everyone: list[Watch] = [*with_stats, *bare]
    rng = random.Random(seed + 4)
    problems: list[str] = []

    def check(step: str) -> None:
        stats_doc = {"books": stats_document(stack.database_url)}
        notices = active_notices(stack.database_url)
        want: list[Expectation] = [(w, STATS, stats_doc) for w in with_stats]
        want += [(w, NOTICES, notices) for w in everyone]
        problems.extend(f"{step}: {p}" for p in converge(want))

    def commit(statement: str, *args: Any) -> None:
        with sql.cursor() as cur:
            cur.execute(statement, args)

    late = PyWatch("bare-late", 0, [], sockjs=False)
    with contextlib.ExitStack() as closing, running(stack, [*stats_clients, *bare], node):
        closing.callback(late.close)
        check("initial")
        notice = new_id(rng)
        commit(
            "INSERT INTO bookstore_notice (id, text, active, created_at)"
            " VALUES (%s, 'Maintenance tonight', true, clock_timestamp())",
            notice,
        )
        check("a notice inserted in SQL")
        hidden = new_id(rng)
        commit(
            "INSERT INTO bookstore_notice (id, text, active, created_at)"
            " VALUES (%s, 'Draft', false, clock_timestamp())",
            hidden,
        )
        check("an inactive notice inserted")
        commit("UPDATE bookstore_notice SET active = true WHERE id = %s", hidden)
        check("the draft activated")
        commit("UPDATE bookstore_notice SET text = 'Maintenance at 22:00' WHERE id = %s", notice)
        check("a notice's text changed")

        book = new_id(rng)
        commit(
            "INSERT INTO bookstore_book (id, title, author_id, published, price, updated_at)"
            " VALUES (%s, 'Stats r0', 'jemisin', '2040-01-02', 999.99, clock_timestamp())",
            book,
        )
        check("a dearest, newest book inserted")
        commit("UPDATE bookstore_book SET price = 0.01 WHERE id = %s", book)
        check("its price made the cheapest")
        commit("UPDATE bookstore_book SET published = NULL WHERE id = %s", book)
        check("its date cleared")
        commit("DELETE FROM bookstore_book WHERE id = %s", book)
        check("it removed")

        # Another process: the writer's ORM commits (creates, edits of price, removes).
        writer = subprocess.run(
            [sys.executable, str(WRITER), "--ops", "150", "--seed", str(seed), "--label", "st"],
            env=example_env(stack.database_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert writer.returncode == 0, writer.stderr[-3000:]
        check("after a writer process's 150 operations")

        commit("UPDATE bookstore_notice SET active = false WHERE id = %s", notice)
        check("a notice deactivated")
        # A session connected now gets the active notices at once, unasked.
        late.start(stack.relays)
        everyone.append(late)
        check("a session connected after the notices")
        commit("DELETE FROM bookstore_notice WHERE id = %s", hidden)
        check("a notice deleted")
        problems += final_problems(everyone) + logs.new_problems()
    assert not problems, (
        f"stats/notice problems (seed {seed}):\n" + "\n".join(problems[:30]) + evidence(stack)
    )


# -- 5. single flight ------------------------------------------------------------------------

STORM_SESSIONS = 50
_SAMPLE = re.compile(r'^(ddp_relay_query_(?:fetches|joins)_total)\{(\w+)="(\w+)"\} (\S+)$')


def query_metrics(relay: RelayProcess) -> dict[str, float]:
    """``fetches/load``, ``joins/shared``... from the relay's /metrics (summed over workers)."""
    with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            kind = "fetches" if "fetches" in match.group(1) else "joins"
            key = f"{kind}/{match.group(3)}"
            out[key] = out.get(key, 0.0) + float(match.group(4))
    return out


def settled_metrics(relay: RelayProcess, timeout: float = 10.0) -> dict[str, float]:
    """The query metrics once they stopped moving (universal publications of sessions
    that just connected join their queries asynchronously)."""
    deadline = time.monotonic() + timeout
    last = query_metrics(relay)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = query_metrics(relay)
        if now == last:
            return now
        last = now
    return last


def is_ready(client: WireClient, sub_id: str) -> bool:
    return sub_id in client.ready_subs or sub_id in client.nosubs


def test_single_flight_books_all(stack: RelayStack) -> None:
    logs = LogMark(stack)
    relay = stack.relays[SINGLE_WORKER_RELAY]
    assert relay.workers == 1
    clients = [
        WireClient(relay.url if i % 2 else relay.ws_url, sockjs=bool(i % 2), timeout=30)
        for i in range(STORM_SESSIONS)
    ]
    node = [NodeWatch("ddp", "raw", SINGLE_WORKER_RELAY, "books.all")]
    node.append(NodeWatch("simpleddp", "raw", SINGLE_WORKER_RELAY, "books.all"))
    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda c: c.connect(), clients))
        before = settled_metrics(relay)
        barrier = threading.Barrier(STORM_SESSIONS)

        def subscribe(c: WireClient) -> str:
            barrier.wait(10)
            return c.subscribe("books.all", wait=False)

        # Every `sub` is sent within a few milliseconds, before any is answered: they
        # arrive while the first one's read is still running.
        t0 = time.monotonic()
        with ThreadPoolExecutor(STORM_SESSIONS) as pool:
            sub_ids = list(pool.map(subscribe, clients))
        for c, sub_id in zip(clients, sub_ids, strict=True):
            c.wait_for(functools.partial(is_ready, c, sub_id), 30)
            assert sub_id not in c.nosubs, c.nosubs
        elapsed = time.monotonic() - t0
        after = settled_metrics(relay)
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}
        joins = delta.get("joins/fetched", 0.0) + delta.get("joins/shared", 0.0)
        queries = joins / STORM_SESSIONS  # the distinct queries of books.all
        print(
            f"\nsingle flight: {STORM_SESSIONS} sessions subscribed books.all in "
            f"{elapsed * 1000:.0f} ms; metrics delta {delta}"
        )
        assert queries >= 1 and queries == int(queries), (
            f"joins {joins} for {STORM_SESSIONS} subscriptions: {delta}" + evidence(stack)
        )
        assert delta.get("fetches/load", 0.0) == queries, (
            f"{STORM_SESSIONS} identical subscriptions loaded {delta.get('fetches/load')} "
            f"queries; books.all has {queries:.0f} (each must be read once): {delta}"
            + evidence(stack)
        )
        assert delta.get("joins/fetched", 0.0) == queries, delta
        assert delta.get("joins/shared", 0.0) == queries * (STORM_SESSIONS - 1), delta
        assert delta.get("fetches/refetch", 0.0) == 0, delta

        # Identical data: every session's books and authors equal the database's.
        books, authors = database_state(stack.database_url)
        want: View = {BOOKS: books, AUTHORS: authors}
        problems = []
        first = clients[0].snapshot()[1]
        for index, c in enumerate(clients):
            received, cache = c.snapshot()
            have = {BOOKS: cache.get(BOOKS, {}), AUTHORS: cache.get(AUTHORS, {})}
            if have != {BOOKS: first.get(BOOKS, {}), AUTHORS: first.get(AUTHORS, {})}:
                problems.append(f"session {index} differs from session 0")
            problems += [f"session {index}: {p}" for p in cache_problems(have, want)]
            problems += [f"session {index}: {v}" for v in c.violations + order_problems(received)]
        # Node clients joining the now shared query get the same documents.
        for n in node:
            n.start(stack.relays)
        for n in node:
            n.ready.wait(NODE_READY_SECONDS)
        expectations: list[Expectation] = [(n, BOOKS, books) for n in node]
        expectations += [(n, AUTHORS, authors) for n in node]
        problems += converge(expectations)
        problems += final_problems(node) + logs.new_problems()
    finally:
        for n in node:
            n.kill()
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
    assert not problems, "\n".join(problems[:30]) + evidence(stack)
