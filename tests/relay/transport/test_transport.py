"""relay.transport: raw and SockJS transports, heartbeats, and the in-memory twin.

In-process tests run the transports on a ``WebSocket`` over a gevent socketpair (gevent
sockets need no monkey-patching); the live ones use the echo relay under
``gunicorn -k gevent`` (``tests/relay/transport/_ws_echo_server.py``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
import websocket as wsclient
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Event, TextMessage

from relay.transport import (
    HeartbeatRegistry,
    MemoryTransport,
    RawTransport,
    SockJSTransport,
    Transport,
)
from relay.transport.websocket import WebSocket
from tests.relay.transport._ws_echo_server import Server, serve

pytestmark = pytest.mark.timeout(60)


class Peer:
    """The client half of a socketpair, speaking wsproto's CLIENT role."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.conn = Connection(ConnectionType.CLIENT)
        self.pending: list[Event] = []

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.conn.send(TextMessage(data=text)))

    def next_event(self) -> Event | None:
        with gevent.Timeout(3):
            while not self.pending:
                data = self.sock.recv(65536)
                if not data:
                    return None
                self.conn.receive_data(data)
                self.pending.extend(self.conn.events())
        return self.pending.pop(0)

    def text(self) -> str:
        event = self.next_event()
        assert isinstance(event, TextMessage), event
        return str(event.data)

    def close_code(self) -> int:
        event = self.next_event()
        assert isinstance(event, CloseConnection), event
        return int(event.code)


@pytest.fixture
def pair() -> Iterator[tuple[WebSocket, Peer]]:
    server_sock, client_sock = gevent.socket.socketpair()
    ws = WebSocket(server_sock, max_message_bytes=4096, send_buffer_bytes=1 << 20)
    yield ws, Peer(client_sock)
    ws.abort()
    server_sock.close()
    client_sock.close()


def test_transports_satisfy_the_protocol(pair: tuple[WebSocket, Peer]) -> None:
    ws, _ = pair
    transports: list[Transport] = [RawTransport(ws), SockJSTransport(ws, 25.0), MemoryTransport()]
    assert [t.kind for t in transports] == ["websocket", "sockjs", "websocket"]


# -- raw -------------------------------------------------------------------------------


def test_raw_one_message_per_text(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    transport = RawTransport(ws)
    peer.send_text('{"msg":"connect"}')
    peer.send_text('{"msg":"ping"}')
    assert transport.receive() == ['{"msg":"connect"}']
    assert transport.receive() == ['{"msg":"ping"}']
    transport.send(['{"msg":"connected"}', '{"msg":"pong"}'])
    assert peer.text() == '{"msg":"connected"}'
    assert peer.text() == '{"msg":"pong"}'


def test_raw_close(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    transport = RawTransport(ws)
    assert not transport.closed
    transport.close(1001, "going away")
    assert transport.closed
    assert peer.close_code() == 1001
    transport.send(["dropped"])
    peer.sock.close()
    assert transport.receive() is None


# -- SockJS ----------------------------------------------------------------------------


def test_sockjs_framing(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    transport = SockJSTransport(ws, 25.0)
    assert peer.text() == "o"
    peer.send_text(json.dumps(['{"msg":"connect"}', '{"msg":"sub"}']))
    peer.send_text("")  # ignored
    peer.send_text("[]")  # carries nothing
    peer.send_text('"bare"')
    assert transport.receive() == ['{"msg":"connect"}', '{"msg":"sub"}']
    assert transport.receive() == ["bare"]
    transport.send(['{"msg":"connected","session":"X"}', '{"msg":"ready"}'])
    assert (
        peer.text()
        == 'a["{\\"msg\\":\\"connected\\",\\"session\\":\\"X\\"}","{\\"msg\\":\\"ready\\"}"]'
    )
    transport.send([])  # no empty frame
    transport.close(3000, "Go away!")
    assert peer.text() == 'c[3000,"Go away!"]'
    assert peer.close_code() == 1000
    assert transport.closed


class Batches:
    """What ``Transport.start`` delivered."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.ended = gevent.event.Event()

    def wait_for(self, count: int) -> list[list[Any]]:
        with gevent.Timeout(3):
            while len(self.batches) < count:
                gevent.sleep(0.01)
        return self.batches


def test_sockjs_start_delivers_decoded_batches(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    transport = SockJSTransport(ws, 25.0)
    got = Batches()
    transport.start(got.batches.append, got.ended.set)
    assert peer.text() == "o"
    peer.send_text(json.dumps(['{"msg":"connect"}', '{"msg":"sub"}']))
    peer.send_text("")
    peer.send_text("[]")
    peer.send_text('"bare"')
    assert got.wait_for(2) == [['{"msg":"connect"}', '{"msg":"sub"}'], ["bare"]]
    peer.send_text("not json")
    assert peer.text() == 'c[3000,"Broken framing."]'
    assert peer.close_code() == 1000
    peer.sock.sendall(peer.conn.send(CloseConnection(code=1000)))
    assert got.ended.wait(3)
    assert transport.closed and len(got.batches) == 2


def test_raw_and_memory_start_deliver_one_batch_per_message(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    raw = RawTransport(ws)
    got = Batches()
    raw.start(got.batches.append, got.ended.set)
    peer.send_text("a")
    peer.send_text("b")
    assert got.wait_for(2) == [["a"], ["b"]]
    peer.sock.close()
    assert got.ended.wait(3)
    memory = MemoryTransport()
    got2 = Batches()
    memory.start(got2.batches.append, got2.ended.set)
    memory.feed("x", "y")
    memory.disconnect()
    assert got2.ended.wait(3) and got2.batches == [["x", "y"]]


def test_sockjs_broken_framing_closes_3000(pair: tuple[WebSocket, Peer]) -> None:
    ws, peer = pair
    transport = SockJSTransport(ws, 25.0)
    peer.send_text("not json")
    assert transport.receive() is None
    assert peer.text() == "o"
    assert peer.text() == 'c[3000,"Broken framing."]'
    assert peer.close_code() == 1000
    assert transport.closed


class FakeSocket:
    """A WebSocket stand-in that records what was sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False

    def send(self, text: str) -> None:
        self.sent.append(text)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True


def test_sockjs_heartbeat_after_silence() -> None:
    ws = FakeSocket()
    transport = SockJSTransport(ws, 1.0)  # type: ignore[arg-type]
    assert ws.sent == ["o"]
    beats: list[float] = []
    for now in (0.0, 0.5, 1.0, 1.5, 2.0):
        before = len(ws.sent)
        transport.heartbeat(now)
        if len(ws.sent) > before:
            beats.append(now)
    assert beats == [1.0, 2.0]
    transport.send(["x"])  # activity restarts the silence count at the next tick
    for now in (2.5, 3.0, 3.5):
        before = len(ws.sent)
        transport.heartbeat(now)
        if len(ws.sent) > before:
            beats.append(now)
    assert beats == [1.0, 2.0, 3.5]
    assert ws.sent.count("h") == 3
    transport.close(3000, "Go away!")
    transport.heartbeat(10.0)
    assert ws.sent[-1] == 'c[3000,"Go away!"]'


def test_heartbeat_registry_beats_and_forgets() -> None:
    registry = HeartbeatRegistry()
    sockets = [FakeSocket(), FakeSocket()]
    transports = [SockJSTransport(ws, 1.0, registry) for ws in sockets]  # type: ignore[arg-type]
    assert len(registry) == 2
    registry.tick(0.0)
    registry.tick(1.0)
    assert [ws.sent.count("h") for ws in sockets] == [1, 1]
    transports[0].close(3000, "Go away!")  # removes itself
    assert len(registry) == 1
    sockets[1].closed = True  # closed underneath (the socket went away)
    transports[1]._closed = True
    registry.tick(2.0)
    assert len(registry) == 0


# -- memory ----------------------------------------------------------------------------


def test_memory_transport() -> None:
    transport = MemoryTransport(kind="sockjs")
    assert transport.kind == "sockjs"
    transport.feed('{"msg":"connect"}')
    transport.feed("a", "b")
    assert transport.receive() == ['{"msg":"connect"}']
    assert transport.receive() == ["a", "b"]
    transport.send(["x", "y"])
    transport.send([])
    transport.send(["z"])
    assert transport.sent == ["x", "y", "z"]
    assert transport.batches == [["x", "y"], ["z"]]
    transport.close(1000, "bye")
    transport.close(3000, "ignored")
    assert transport.closed
    assert (transport.close_code, transport.close_reason) == (1000, "bye")
    assert not transport.disconnected
    transport.send(["late"])
    assert transport.sent[-1] == "z"
    assert transport.receive() is None


def test_memory_transport_disconnect_and_blocked_receive() -> None:
    transport = MemoryTransport()
    transport.feed("last")
    transport.disconnect()
    assert transport.receive() == ["last"]
    assert transport.receive() is None
    assert transport.disconnected and transport.closed

    blocked = MemoryTransport()
    reader = gevent.spawn(blocked.receive)
    gevent.sleep(0)
    blocked.close(1000, "")
    assert reader.get(timeout=1) is None
    assert not blocked.disconnected


# -- live: SockJS under gunicorn -k gevent --------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("sockjs")) as running:
        yield running
    assert "Traceback" not in running.log_text()


@contextlib.contextmanager
def sockjs(server: Server) -> Iterator[Any]:
    ws: Any = wsclient.create_connection(server.url + "/sockjs/928/zql405yy/websocket", timeout=5)
    try:
        yield ws
    finally:
        ws.close(timeout=1)
        ws.shutdown()


def test_live_sockjs_echo(server: Server) -> None:
    with sockjs(server) as ws:
        assert ws.recv() == "o"
        ws.send(json.dumps(['{"msg":"connect"}', "é☃"]))
        assert json.loads(ws.recv()[1:]) == ['{"msg":"connect"}', "é☃"]
        ws.send('"bare"')
        assert ws.recv() == 'a["bare"]'


def test_live_sockjs_broken_framing(server: Server) -> None:
    with sockjs(server) as ws:
        assert ws.recv() == "o"
        ws.send("{oops")
        assert ws.recv() == 'c[3000,"Broken framing."]'
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == wsclient.ABNF.OPCODE_CLOSE
        assert data[:2] == b"\x03\xe8"


def test_live_sockjs_close(server: Server) -> None:
    with sockjs(server) as ws:
        assert ws.recv() == "o"
        ws.send(json.dumps(["close 3000 Go away!"]))
        assert ws.recv() == 'c[3000,"Go away!"]'


def test_live_sockjs_heartbeat(server: Server) -> None:
    with sockjs(server) as ws:
        assert ws.recv() == "o"
        start = time.monotonic()
        assert ws.recv() == "h"  # RELAY_SOCKJS_HEARTBEAT=1.0, ticker every 0.2 s
        assert 0.8 < time.monotonic() - start < 2.5


def test_live_sockjs_raw_endpoint_has_no_framing(server: Server) -> None:
    ws: Any = wsclient.create_connection(server.url + "/sockjs/websocket", timeout=5)
    try:
        ws.send("plain")
        assert ws.recv() == "plain"  # no "o", no a[...]
    finally:
        ws.close(timeout=1)
        ws.shutdown()
