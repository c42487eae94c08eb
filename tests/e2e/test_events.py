"""Issue #11's events and presence end to end: real clients on three relays.

The setting: a migrated, seeded database, three gunicorn relays of one worker each, sharing
a ZooKeeper (a session resumes on any relay), presence leases of 4 s.

1. Events (the example's ``chat.byBook`` / ``chat.post``): Python clients (raw WebSocket
   and SockJS) on every relay and node clients (npm ``ddp``, and the Meteor client under
   jsdom) subscribe one book's chat. Messages come from ``chat.post`` (the caller holds
   its own message when its ``updated`` arrives) and from another Django process
   (``manage.py shell``: ``publish_event`` in a committed and in a rolled-back
   transaction). Meanwhile every relay's listener connection is killed
   (``pg_terminate_backend``), one client's socket drops and it resumes on another
   relay, and one relay is SIGKILLed (its clients start new sessions elsewhere and get
   the stream's history). At the end every client holds exactly the chat's last 100
   messages (the stream's history), the rolled-back one never arrived anywhere, and
   within each session every message was added at most once, in commit order, with no
   message missing after the session's first.
2. Presence (``presence.book``): members on three relays (a user with two sessions is
   one document); an unsubscribe, a dropped socket (the session parked, not closed)
   and a SIGKILLed relay each take the member out of every other client's view within
   seconds; a resumed session is present again.

Must not: fix what it finds, or share clients between tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from relay.protocol.changestream import loads_payload, parse_changes
from tests.e2e.convergence import WireClient
from tests.e2e.node_runs import start_watch
from tests.e2e.reconnects import ChaosClient
from tests.fixtures.postgres import kill_listeners
from tests.fixtures.relays import RelayStack, RelayStacks, manage

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(300)]

#: The example's chat keeps this many messages per subscriber (``Stream(history=100)``).
HISTORY = 100
#: Seconds of the relays' presence lease (``DDP_PRESENCE_LEASE``).
LEASE = 5
#: What "within seconds" means for presence: the issue's 10 s after an unsubscribe or a
#: closed socket; a lease plus a keepalive round and slack after a crash.
LEAVE_SECONDS = 10.0
CRASH_SECONDS = LEASE + 3 * 1.3 + 5.0
READER = {"user": {"username": "reader"}, "password": "bookworm-2026"}


@pytest.fixture
def stack(node_toolchain: Path, relay_stack: RelayStacks) -> RelayStack:
    return relay_stack(workers=(1, 1, 1), zookeeper=True, env={"DDP_PRESENCE_LEASE": str(LEASE)})


def first_book(database_url: str) -> str:
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM bookstore_book ORDER BY id LIMIT 1")
        row = cur.fetchone()
    conn.close()
    assert row is not None
    return str(row[0])


def committed_events(database_url: str, book_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every chat message of ``book_id`` in commit order, as the changelog holds it."""
    # The channel as the write side names it (django_app.streams.Stream.channel).
    digest = hashlib.sha256(book_id.encode()).hexdigest()[:16]
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT changes::text FROM ddp_changelog WHERE channel = %s ORDER BY seq",
            [f"ddp_ev_chat_{digest}"],
        )
        rows = cur.fetchall()
    conn.close()
    return [(str(c.pk), c.values) for (text,) in rows for c in parse_changes(loads_payload(text))]


def client(url: str, *, sockjs: bool = False) -> ChaosClient:
    """A connected client that records its reconnects and can drop its socket."""
    c = ChaosClient(url, sockjs=sockjs, auto_reconnect=True)
    c.timeout = 30
    c.connect()
    return c


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate`` held; fails the test with ``what`` after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


class NodeWatch:
    """``node watch.js <library> <url> <transport> chat.byBook [book]``: its cache and
    violations, reported when its stdin closes."""

    def __init__(self, library: str, url: str, transport: str, book_id: str) -> None:
        env = {"WATCH_QUIET_MS": "1000", "WATCH_TIMEOUT_MS": "250000"}
        self.label = f"{library}/{transport}"
        self.proc = start_watch(library, url, transport, "chat.byBook", [book_id], env)
        self.ready = threading.Event()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("watch: ready"):
                self.ready.set()

    def report(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()  # watch.js drains, reports and exits
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines, f"{self.label}: no report; stderr: {''.join(self.stderr)[-2000:]}"
        report: dict[str, Any] = json.loads(lines[-1])
        assert report.get("ok"), f"{self.label}: {report}"
        return report

    def kill(self) -> None:
        """Gone, reaped, and its pipes closed (the report read them, or nobody will)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()


@pytest.fixture
def node_watches() -> Iterator[list[NodeWatch]]:
    watches: list[NodeWatch] = []
    yield watches
    for watch in watches:
        watch.kill()


def session_problems(received: Sequence[dict[str, Any]], order: dict[str, int]) -> list[str]:
    """Rule breaks in one client's inbound log: per session (a resumed session goes on),
    each message added at most once and in commit order; in the last session, none
    missing after its first (a capped view removes the oldest, never skips one)."""
    problems: list[str] = []
    sessions: list[list[str]] = []
    current: str | None = None
    for msg in received:
        if msg.get("msg") == "connected":
            if msg.get("session") != current:
                sessions.append([])
            current = msg.get("session")
        elif msg.get("msg") == "added" and msg.get("collection") == "chat" and sessions:
            sessions[-1].append(str(msg["id"]))
    for number, added in enumerate(sessions):
        if len(set(added)) != len(added):
            problems.append(f"session {number}: a message added twice")
        positions = [order.get(doc_id, -1) for doc_id in added]
        if -1 in positions:
            problems.append(f"session {number}: a message the changelog does not have")
        if positions != sorted(positions):
            problems.append(f"session {number}: messages out of commit order: {positions}")
        if number == len(sessions) - 1 and positions:
            expected = list(range(positions[0], len(order)))
            if positions != expected:
                missing = sorted(set(expected) - set(positions))
                problems.append(f"last session: messages missing at {missing[:10]}")
    return problems


# -- 1. events --------------------------------------------------------------------------


def test_events_reach_every_subscriber_once_in_order_through_failures(
    stack: RelayStack, node_watches: list[NodeWatch]
) -> None:
    relays, url = stack.relays, stack.database_url
    book = first_book(url)
    poster = client(relays[0].ws_url)
    poster.call("login", READER)
    poster.subscribe("chat.byBook", book)
    subscribers = {
        "raw@0": client(relays[0].ws_url),
        "sockjs@1": client(relays[1].url, sockjs=True),
        "raw@2": client(relays[2].ws_url),
        "sockjs@2": client(relays[2].url, sockjs=True),
    }
    for sub in subscribers.values():
        sub.subscribe("chat.byBook", book)
    node_watches += [
        NodeWatch("ddp", relays[0].url, "raw", book),
        NodeWatch("meteor", relays[1].url, "sockjs", book),
    ]
    for watch in node_watches:
        assert watch.ready.wait(60), f"{watch.label}: {''.join(watch.stderr)[-2000:]}"
    try:
        posted: list[str] = []

        def post(n: int) -> None:
            for _ in range(n):
                text = f"message {len(posted)}"
                event_id = poster.call("chat.post", book, text)
                # The write fence: the caller holds its own message when updated came.
                assert event_id in poster.docs("chat"), f"{text}: updated before its data"
                posted.append(event_id)
                time.sleep(0.2)  # the rate limit is 5 per second per connection

        post(10)
        # From another Django process: one committed event, one rolled back.
        script = (
            "from django.db import transaction\n"
            "from django_app import publish_event\n"
            "import datetime as dt\n"
            f"publish_event('chat', {{'bookId': {book!r}, 'text': 'from a worker',"
            " 'userId': None, 'createdAt': dt.datetime.now(dt.UTC)}, key=" + repr(book) + ")\n"
            "try:\n"
            "    with transaction.atomic():\n"
            f"        publish_event('chat', {{'text': 'ROLLED BACK'}}, key={book!r})\n"
            "        raise RuntimeError\n"
            "except RuntimeError:\n"
            "    pass\n"
        )
        manage(url, "shell", "-c", script)
        assert kill_listeners(url) == 3  # every relay's listener connection
        post(10)

        # A dropped socket resumes on another relay, exactly where it was.
        mover = subscribers["raw@0"]
        resumes = mover.resumes
        mover.url = relays[1].ws_url
        assert mover.drop("moved to relay 1")
        wait(lambda: mover.reconnects > 0, 30, "the dropped client reconnected")
        assert mover.resumes > resumes, f"not resumed: {mover.events}"
        post(10)

        # A relay crashes: its clients start new sessions elsewhere and get the history.
        for name in ("raw@2", "sockjs@2"):
            subscribers[name].url = relays[0].ws_url if name == "raw@2" else relays[0].url
        relays[2].kill()
        post(85)  # past the history: the oldest leave every view

        events = committed_events(url, book)
        order = {event_id: i for i, (event_id, _fields) in enumerate(events)}
        assert all(fields.get("text") != "ROLLED BACK" for _id, fields in events)
        assert set(posted) <= set(order)
        expected = {event_id: fields for event_id, fields in events[-HISTORY:]}
        everyone = {"poster": poster, **subscribers}
        for name, c in everyone.items():
            wait(lambda c=c: set(c.docs("chat")) == set(expected), 30, f"{name} holds the last 100")
            docs = c.docs("chat")
            assert all(docs[i]["text"] == expected[i]["text"] for i in expected), name
            assert c.violations == [], f"{name}: {c.violations}"
            received, _ = c.snapshot()
            assert session_problems(received, order) == [], name
        assert subscribers["raw@2"].resyncs >= 1  # a new session after the crash
        for watch in node_watches:
            report = watch.report()
            cache = report["cache"].get("chat", {})
            assert set(cache) == set(expected), watch.label
            assert report["violations"] == [], f"{watch.label}: {report['violations']}"
    finally:
        for c in [poster, *subscribers.values()]:
            c.close()


# -- 2. presence ------------------------------------------------------------------------


def present_users(c: WireClient) -> list[Any]:
    return sorted((d.get("userId") for d in c.docs("presence").values()), key=str)


def test_presence_follows_subscriptions_sockets_and_crashes(stack: RelayStack) -> None:
    relays = stack.relays
    book = first_book(stack.database_url)
    user_a = client(relays[0].ws_url)
    user_b = client(relays[1].ws_url)  # the same user, a second tab on another relay
    for c in (user_a, user_b):
        c.call("login", READER)
    anon_1 = client(relays[1].url, sockjs=True)
    anon_2 = client(relays[2].ws_url)
    everyone = [user_a, user_b, anon_1, anon_2]
    try:
        for c in everyone:
            c.subscribe("presence.book", book)
        user_id = str(user_a.call("users.whoami")["userId"])
        full = sorted([user_id, None, None], key=str)
        for c in everyone:
            wait(
                lambda c=c: present_users(c) == full,
                10,
                f"everyone sees three members {full}: {[present_users(x) for x in everyone]}"
                f" {[x.nosubs for x in everyone]} {[x.errors for x in everyone]}",
            )

        # An unsubscribe: gone for the others at once (well within 10 s).
        anon_1_sub = next(iter(anon_1._subs))
        anon_1.unsubscribe(anon_1_sub)
        two = sorted([user_id, None], key=str)
        for c in (user_a, user_b, anon_2):
            wait(lambda c=c: present_users(c) == two, LEAVE_SECONDS, "an unsubscribe leaves")
        # One of the user's two sessions leaves: the user is still there.
        user_a.unsubscribe(next(iter(user_a._subs)))
        time.sleep(1.0)
        assert present_users(anon_2) == two

        # A socket lost (the session parked for a resume): the member leaves, then
        # returns when the session resumes (on another relay, 8 s later).
        anon_2.reconnect_min = 8.0
        anon_2.url = relays[0].ws_url
        resumes = anon_2.resumes
        assert anon_2.drop("lost socket")
        wait(lambda: present_users(user_b) == [user_id], 7.0, "a lost socket leaves")
        wait(lambda: anon_2.resumes > resumes, 30, "the parked session resumed")
        wait(lambda: present_users(user_b) == two, 10, "the resumed session is back")

        # A crash: relay 1 (user_b, the user's last session) is SIGKILLed; its presence
        # goes when its lease expires.
        user_b.auto_reconnect = False
        relays[1].kill()
        elapsed = wait(
            lambda: present_users(anon_2) == [None], CRASH_SECONDS, "a crashed relay's members"
        )
        print(f"\npresence converged {elapsed:.1f} s after the SIGKILL (lease {LEASE} s)")
        assert anon_2.violations == [] and user_a.violations == []
    finally:
        for c in everyone:
            c.close()
