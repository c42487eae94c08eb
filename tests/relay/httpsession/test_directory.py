"""The cluster's SockJS HTTP sessions (``relay.httpsession.directory``), between two
relays in one process: two directories sharing an in-memory coordinator and inbox (its
rings reach both, as NOTIFY reaches every listener), with a ``Host`` whose sessions echo
what they get, so that order, loss and duplication show in what comes back."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import pytest

from coordinator import Member
from coordinator.memory import MemoryCoordinator, MemoryStore
from relay.backend import Handshake
from relay.httpsession.directory import Directory, record_id, session_key
from relay.httpsession.inbox import InboxError, MemoryInbox
from relay.protocol.sockjs import HttpKind
from relay.transport.base import Inbound
from relay.transport.http import HttpTransport

pytestmark = pytest.mark.timeout(30)

HANDSHAKE = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/")
_ids = itertools.count(1)


@dataclass(eq=False)
class EchoSession:
    """Answers every inbound text with ``echo:<text>``; counts what it sent."""

    transport: HttpTransport
    id: str
    received: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.transport.start(self.on_inbound, lambda: None)

    def on_inbound(self, texts: list[Inbound]) -> None:
        for text in texts:
            assert isinstance(text, str)
            self.received.append(text)
            self.sent.append("echo:" + text)
            self.transport.send(["echo:" + text])


class EchoHost:
    """The relays' shared park store is ``parked`` (session id -> its session)."""

    def __init__(self, parked: dict[str, EchoSession]) -> None:
        self.parked = parked
        self.opened: list[EchoSession] = []
        #: What ``refusal`` says (None: new sessions are welcome).
        self.refuse: str | None = None

    def refusal(self, handshake: Handshake) -> str | None:
        return self.refuse

    def open(self, transport: HttpTransport, handshake: Handshake) -> EchoSession:
        session = EchoSession(transport, f"s{next(_ids)}")
        session.start()
        self.opened.append(session)
        return session

    def hand_over(self, held: Any, transport: HttpTransport) -> tuple[str, int] | None:
        delivered = len(held.sent) - len(transport.unwritten())
        transport.hand_over()
        self.parked[held.id] = held
        return held.id, delivered

    def take_over(
        self, transport: HttpTransport, handshake: Handshake, session_id: str, delivered: int
    ) -> EchoSession | None:
        old = self.parked.pop(session_id, None)
        if old is None:
            return None
        session = EchoSession(transport, old.id, list(old.received), list(old.sent))
        transport.send(old.sent[delivered:])  # what the client was not given
        session.start()
        return session

    def close(self, held: Any) -> None:
        held.transport.close(3000, "Go away!")


@dataclass
class Relay:
    directory: Directory
    host: EchoHost
    coordinator: MemoryCoordinator

    def poll(self, sid: str, kind: HttpKind = HttpKind.XHR) -> str:
        """One receiving request, read to its end (at most 5 s)."""
        found = self.directory.receive(sid, HANDSHAKE)
        if isinstance(found, str):
            return found
        body: bytes = gevent.with_timeout(5, lambda: b"".join(found.receive_frames(kind)))
        return body.decode()

    def send(self, sid: str, *texts: str) -> bool:
        return self.directory.send(sid, list(texts))


@pytest.fixture
def relays() -> Iterator[tuple[Relay, Relay]]:
    store = MemoryStore()
    parked: dict[str, EchoSession] = {}
    made: list[Relay] = []

    def ring_all(payload: str) -> None:
        for relay in made:
            relay.directory.on_ring(payload)

    inbox = MemoryInbox(ring_all)
    for name in ("relay-a", "relay-b"):
        coordinator = MemoryCoordinator(store)
        coordinator.start()
        coordinator.register_member(Member(name, name, time.time()))
        host = EchoHost(parked)
        directory = Directory(
            host=host,
            inbox=inbox,
            coordinator=coordinator,
            relay_id=name,
            new_transport=lambda opened: HttpTransport(
                heartbeat_interval=25,
                disconnect_delay=5,
                response_limit=4096,
                send_buffer=1 << 20,
                opened=opened,
            ),
        )
        directory.move_wait = 1.0
        made.append(Relay(directory, host, coordinator))
    yield made[0], made[1]
    for relay in made:
        relay.coordinator.stop()


def settle() -> None:
    gevent.sleep(0.05)  # the spawned drains and hand-overs run


def test_a_session_on_one_relay(relays: tuple[Relay, Relay]) -> None:
    a, _ = relays
    assert a.poll("abc") == "o\n"
    assert a.send("abc", "x", "y")
    assert a.poll("abc") == 'a["echo:x","echo:y"]\n'
    assert a.directory.coordinator is not None
    record = a.directory.coordinator.get_session(record_id(session_key("abc")))
    assert record is not None and record.owner == "relay-a"
    assert "abc" not in record.session_id  # the cluster knows a hash, not the id


def test_a_send_on_another_relay_reaches_the_holder_in_order(
    relays: tuple[Relay, Relay],
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    for i in range(5):
        relay = (a, b)[i % 2]
        assert relay.send("abc", f"m{i}")
        settle()
    assert a.poll("abc") == 'a["echo:m0","echo:m1","echo:m2","echo:m3","echo:m4"]\n'
    assert len(b.directory) == 0


def test_a_local_send_comes_after_what_an_earlier_send_left_in_the_inbox(
    relays: tuple[Relay, Relay],
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    a.directory.on_ring = lambda payload: None  # type: ignore[method-assign]  # a late ring
    assert b.send("abc", "first")
    assert a.send("abc", "second")
    assert a.poll("abc") == 'a["echo:first","echo:second"]\n'


def test_a_receiving_request_on_another_relay_takes_the_session_over(
    relays: tuple[Relay, Relay],
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    assert a.send("abc", "one")
    assert a.poll("abc") == 'a["echo:one"]\n'
    assert a.send("abc", "two")  # answered on a, not yet given to the client
    settle()
    # The next poll lands on b: it gets what a had not given, no second "o".
    assert b.poll("abc") == 'a["echo:two"]\n'
    assert len(a.directory) == 0 and len(b.directory) == 1
    assert b.send("abc", "three") and a.send("abc", "four")
    settle()
    assert b.poll("abc") == 'a["echo:three","echo:four"]\n'
    # And back to a: the same session, its whole history, each message once.
    assert a.send("abc", "five")
    settle()
    assert a.poll("abc") == 'a["echo:five"]\n'
    held = next(iter(a.directory._local.values())).held
    assert held.received == ["one", "two", "three", "four", "five"]
    assert len(b.directory) == 0


def test_sends_during_a_move_arrive_once_and_in_order(relays: tuple[Relay, Relay]) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    mover = gevent.spawn(b.poll, "abc")
    for i in range(10):
        assert (a, b)[i % 2].send("abc", f"m{i}")
        gevent.sleep(0.005)
    chunks = [mover.get(timeout=5)]
    settle()

    def echoed() -> list[str]:
        return [t for chunk in chunks for t in chunk.strip()[2:-1].split(",") if t]

    while len(echoed()) < 10:
        chunks.append(b.poll("abc") if len(b.directory) else a.poll("abc"))
    assert echoed() == [f'"echo:m{i}"' for i in range(10)], chunks


def test_a_second_receiving_request_gets_another_connection_still_open(
    relays: tuple[Relay, Relay],
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    waiting = gevent.spawn(a.poll, "abc", HttpKind.XHR_STREAMING)
    gevent.sleep(0.05)
    assert a.poll("abc") == 'c[2010,"Another connection still open"]'
    # On another relay: the holder has a request attached, so it closes instead of
    # handing over (what that request's client got is unknown); the client starts over.
    assert b.poll("abc") in ("o\n", 'c[2010,"Another connection still open"]')
    waiting.kill()


def test_a_session_whose_holder_died_starts_anew(relays: tuple[Relay, Relay]) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    a.coordinator.stop()  # relay-a is gone from the members, its record stays
    assert b.poll("abc") == "o\n"


def test_a_holder_that_does_not_answer_leaves_the_session_where_it_is(
    relays: tuple[Relay, Relay],
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    a.directory.on_ring = lambda payload: None  # type: ignore[method-assign]
    started = time.monotonic()
    assert b.poll("abc") == 'c[2010,"Another connection still open"]'
    assert time.monotonic() - started >= b.directory.move_wait
    assert len(a.directory) == 1


def test_sends_to_no_session_are_refused(relays: tuple[Relay, Relay]) -> None:
    a, b = relays
    assert not a.send("nobody", "x")
    assert not b.send("nobody", "x")


def test_a_closed_session_serves_its_close_frame_then_is_forgotten(
    relays: tuple[Relay, Relay],
) -> None:
    a, _ = relays
    assert a.poll("abc") == "o\n"
    entry = next(iter(a.directory._local.values()))
    entry.transport.close(3000, "Go away!")
    assert a.poll("abc") == 'c[3000,"Go away!"]\n'
    assert a.poll("abc") == 'c[3000,"Go away!"]\n'
    assert a.send("abc", "x")  # accepted and dropped, as sockjs-node does
    a.directory.heartbeat(time.monotonic() + 10)
    settle()
    assert len(a.directory) == 0
    assert a.coordinator.get_session(record_id(session_key("abc"))) is None


def test_a_refused_session_leaves_nothing_behind(relays: tuple[Relay, Relay]) -> None:
    a, _ = relays
    a.host.refuse = "Too many connections"
    assert a.poll("abc") == 'c[3000,"Too many connections"]'
    assert len(a.directory) == 0
    assert a.coordinator.get_session(record_id(session_key("abc"))) is None


def test_a_send_the_inbox_cannot_take_closes_the_session_rather_than_lose_it(
    relays: tuple[Relay, Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = relays
    assert a.poll("abc") == "o\n"
    assert b.send("abc", "m1")  # into the inbox; a's ring is answered below

    def broken(key: str) -> list[Inbound]:
        raise InboxError("down")

    monkeypatch.setattr(a.directory.inbox, "take", broken)
    monkeypatch.setattr("relay.httpsession.directory._TAKE_RETRIES", (0.01,))
    a.directory.on_ring("s " + session_key("abc"))
    gevent.sleep(0.2)
    assert a.poll("abc") == 'c[3000,"Go away!"]\n'


def test_a_closed_session_is_forgotten_however_often_it_is_asked(
    relays: tuple[Relay, Relay],
) -> None:
    a, _ = relays
    assert a.poll("abc") == "o\n"
    entry = next(iter(a.directory._local.values()))
    entry.transport.close(3000, "Go away!")
    closed = time.monotonic()
    for _ in range(3):
        assert a.poll("abc") == 'c[3000,"Go away!"]\n'
    a.directory.heartbeat(closed + 5.1)  # the delay counts from the close, not the last ask
    settle()
    assert len(a.directory) == 0
