"""relay.transport.websocket: framing, limits, the on-demand writer, closing and background reading.

Two kinds of test. In-process ones drive a ``WebSocket`` over a gevent socketpair
(``_ws_helpers.py``): gevent's own sockets cooperate without monkey-patching, so this
process is never patched. Live ones run the real thing, ``gunicorn -k gevent`` in a
subprocess serving ``tests/relay/transport/_ws_echo_server.py``, and talk to it with
websocket-client, raw sockets and a wsproto client (for permessage-deflate, which
websocket-client lacks). The handshake (``accept``, the Origin check, negotiation,
refusals) is tested in ``test_handshake.py``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
import websocket as wsclient
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from relay.limits.budget import ByteBudget
from relay.metrics import TALLY
from relay.transport.frames import DEFAULT_THRESHOLD, Compression, encode_text_frame
from relay.transport.handshake import _negotiate_deflate
from relay.transport.websocket import Oversized, WebSocket
from tests.relay.transport._ws_echo_server import Server, serve
from tests.relay.transport._ws_helpers import close_sockets, masked_frame, socketpair

pytestmark = pytest.mark.timeout(60)

# -- in-process helpers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    close_sockets()


class Peer:
    """The client end of a socketpair: a wsproto CLIENT connection, reading on demand."""

    def __init__(self, sock: Any, extension: PerMessageDeflate | None = None) -> None:
        self.sock = sock
        self.conn = Connection(ConnectionType.CLIENT, [extension] if extension else None)
        self.pending: collections.deque[Event] = collections.deque()
        self.raw = bytearray()
        self.eof = False

    def send(self, *events: Event) -> None:
        for event in events:
            self.sock.sendall(self.conn.send(event))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_event(self, timeout: float = 3.0) -> Event | None:
        """The next event from the server; None at EOF."""
        with gevent.Timeout(timeout):
            while not self.pending:
                if self.eof:
                    return None
                data = self.sock.recv(65536)
                if not data:
                    self.eof = True
                    return None
                self.raw += data
                self.conn.receive_data(data)
                self.pending.extend(self.conn.events())
        return self.pending.popleft()

    def text(self) -> str:
        event = self.next_event()
        assert isinstance(event, TextMessage), event
        assert event.message_finished
        return str(event.data)

    def close_event(self) -> CloseConnection:
        while True:
            event = self.next_event()
            assert event is not None, "EOF before a close frame"
            if isinstance(event, CloseConnection):
                return event

    def read_to_eof(self, timeout: float = 5.0) -> None:
        with gevent.Timeout(timeout):
            while self.sock.recv(65536):
                pass


def make(
    *,
    limit: int = 1024,
    buffer: int = 1 << 20,
    deflate: bool = False,
    budget: ByteBudget | None = None,
    throttle: Any = None,
) -> tuple[WebSocket, Peer]:
    server_sock, client_sock = socketpair()
    extension = client_extension = None
    if deflate:
        negotiated = _negotiate_deflate("permessage-deflate; client_max_window_bits", limit)
        assert negotiated is not None
        extension, header = negotiated
        client_extension = PerMessageDeflate()
        client_extension.finalize(header)
    ws = WebSocket(
        server_sock,
        max_message_bytes=limit,
        send_buffer_bytes=buffer,
        extension=extension,
        send_budget=budget,
        read_throttle=throttle,
    )
    return ws, Peer(client_sock, client_extension)


# -- receiving ---------------------------------------------------------------------------


def test_text_round_trip() -> None:
    ws, peer = make()
    peer.send(TextMessage(data="hello"))
    assert ws.receive() == "hello"
    ws.send("wörld")
    assert peer.text() == "wörld"


def test_fragmented_message_is_reassembled() -> None:
    ws, peer = make()
    peer.send(TextMessage(data="ab", message_finished=False), TextMessage(data="cd"))
    assert ws.receive() == "abcd"
    # A UTF-8 character split across two frames.
    peer.send_raw(masked_frame(0x1, b"x\xc3", fin=False) + masked_frame(0x0, b"\xa9y"))
    assert ws.receive() == "xéy"
    # Empty fragments are legal and carry nothing.
    peer.send_raw(masked_frame(0x1, b"", fin=False) + masked_frame(0x0, b"", fin=False))
    peer.send_raw(masked_frame(0x0, b"z"))
    assert ws.receive() == "z"


def test_empty_text_message() -> None:
    ws, peer = make()
    peer.send(TextMessage(data=""))
    assert ws.receive() == ""


def test_binary_messages_are_ignored() -> None:
    ws, peer = make()
    peer.send(BytesMessage(data=b"\x00\x01"), TextMessage(data="after"))
    assert ws.receive() == "after"


def test_ping_gets_pong() -> None:
    ws, peer = make()
    peer.send(Ping(payload=b"are you there"), TextMessage(data="x"))
    assert ws.receive() == "x"
    event = peer.next_event()
    assert isinstance(event, Pong)
    assert event.payload == b"are you there"


def test_peer_close_is_echoed() -> None:
    ws, peer = make()
    peer.send(CloseConnection(code=1001, reason="leaving"))
    assert ws.receive() is None
    assert ws.closed
    assert (ws.close_code, ws.close_reason) == (1001, "leaving")
    event = peer.close_event()
    assert event.code == 1001
    assert peer.next_event() is None  # then FIN
    assert ws.receive() is None  # stays closed
    ws.wait_closed()


def test_eof_without_close_is_1006() -> None:
    ws, peer = make()
    peer.sock.close()
    assert ws.receive() is None
    assert ws.closed
    assert ws.close_code == 1006


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (masked_frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
        (masked_frame(0x1, b"ok\xc3", fin=True), 1007),  # truncated UTF-8
        (bytes((0x81, 0x02)) + b"hi", 1002),  # unmasked client frame
        (masked_frame(0x3, b"x"), 1002),  # reserved opcode
        (masked_frame(0x1, b"x", rsv1=True), 1002),  # RSV1 without an extension
        (masked_frame(0x0, b"x"), 1002),  # continuation with nothing to continue
        (masked_frame(0x9, b"x", fin=False), 1002),  # fragmented control frame
        (masked_frame(0x8, b"\x03"), 1002),  # one-byte close payload
        (masked_frame(0x8, struct.pack("!H", 999)), 1002),  # invalid close code
    ],
    # Stable ids: the frames carry random masks (pytest-xdist's workers must agree).
    ids=[
        "invalid-utf8",
        "truncated-utf8",
        "unmasked",
        "reserved-opcode",
        "rsv1",
        "lone-continuation",
        "fragmented-control",
        "one-byte-close",
        "invalid-close-code",
    ],
)
def test_protocol_errors_close_without_raising(frame: bytes, code: int) -> None:
    ws, peer = make()
    peer.send_raw(frame)
    assert ws.receive() is None
    assert ws.close_code == code
    assert peer.close_event().code == code


def test_message_at_limit_passes_and_over_limit_is_dropped_and_reported() -> None:
    ws, peer = make(limit=1024)
    peer.send(TextMessage(data="a" * 1024))
    assert ws.receive() == "a" * 1024
    peer.send(TextMessage(data="é" * 512))  # 1024 bytes of UTF-8
    assert ws.receive() == "é" * 512
    peer.send(TextMessage(data="é" * 513))
    dropped = ws.receive()
    assert isinstance(dropped, Oversized)
    assert (dropped.size, dropped.limit) == (1026, 1024)
    assert dropped.prefix == "é" * 256
    # the connection survives: the next message comes through
    peer.send(TextMessage(data="after"))
    assert ws.receive() == "after"
    assert ws.close_code is None


def test_fragmented_message_over_limit_is_dropped_as_it_arrives() -> None:
    ws, peer = make(limit=1024)
    for _ in range(10):
        peer.send(TextMessage(data="x" * 200, message_finished=False))
    peer.send(TextMessage(data="end", message_finished=True))
    peer.send(TextMessage(data="next"))
    dropped = ws.receive()
    assert isinstance(dropped, Oversized) and dropped.size == 2003
    assert ws.receive() == "next"


def test_binary_message_over_limit_closes_1009() -> None:
    ws, peer = make(limit=1024)
    peer.send(BytesMessage(data=b"x" * 1025))
    assert ws.receive() is None
    assert ws.close_code == 1009


def test_receive_does_not_swallow_greenlet_exit() -> None:
    ws, _peer = make()

    def reader() -> tuple[str, str | None]:
        return ("returned", ws.receive())

    greenlet = gevent.spawn(reader)
    gevent.sleep(0.01)
    greenlet.kill(block=True, timeout=2)
    assert isinstance(greenlet.value, gevent.GreenletExit)


def test_initial_data_is_read_before_the_socket() -> None:
    server_sock, _client_sock = socketpair()
    ws = WebSocket(
        server_sock,
        max_message_bytes=1024,
        send_buffer_bytes=1 << 20,
        initial_data=masked_frame(0x1, b"early") + masked_frame(0x1, b"bird"),
    )
    assert ws.receive() == "early"
    assert ws.receive() == "bird"


# -- permessage-deflate ----------------------------------------------------------------


def test_deflate_round_trip_compresses_both_ways() -> None:
    ws, peer = make(deflate=True, limit=1 << 20)
    assert ws.deflate
    text = json.dumps({"msg": "added", "fields": {"text": "abc" * 1000}})
    for _ in range(3):  # no context takeover: every message stands alone
        peer.send(TextMessage(data=text))
        assert ws.receive() == text
        ws.send(text)
        start = len(peer.raw)
        assert peer.text() == text
        assert peer.raw[start] == 0xC1  # FIN + RSV1 (compressed) + TEXT
        assert len(peer.raw) - start < len(text) // 10


def test_deflate_with_control_frames_between_and_before_fragments() -> None:
    ws, peer = make(deflate=True, limit=1 << 20)
    # wsproto alone corrupts this message (1007): the ping resets its compression state.
    peer.send(
        TextMessage(data="hello ", message_finished=False),
        Ping(payload=b"mid"),
        TextMessage(data="world"),
    )
    assert ws.receive() == "hello world"
    peer.send(Ping(payload=b"first"), TextMessage(data="compressed " * 20))
    assert ws.receive() == "compressed " * 20
    peer.send_raw(masked_frame(0x1, b"plain"))  # uncompressed messages stay legal
    assert ws.receive() == "plain"
    pongs = [peer.next_event(), peer.next_event()]
    assert [event.payload for event in pongs if isinstance(event, Pong)] == [b"mid", b"first"]
    peer.send_raw(masked_frame(0x9, b"x", rsv1=True))  # RSV1 on a control frame
    assert ws.receive() is None
    assert ws.close_code == 1002


def test_deflate_bomb_is_stopped_at_the_limit() -> None:
    limit = 64 * 1024
    ws, peer = make(deflate=True, limit=limit)
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"0" * (20 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(payload) < 64 * 1024
    peer.send_raw(masked_frame(0x1, payload, rsv1=True))
    tracemalloc.start()
    try:
        assert ws.receive() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ws.close_code == 1009
    assert peak < 4 * limit + len(payload) * 4  # never near the 20 MiB it inflates to


def test_deflate_socket_sends_small_messages_plain_and_large_ones_compressed() -> None:
    ws, peer = make(deflate=True, limit=1 << 20)
    assert ws.compression == Compression(15, DEFAULT_THRESHOLD)
    small = '{"msg":"changed","collection":"books","id":"1","fields":{"title":"t"}}'
    large = json.dumps({"msg": "added", "fields": {"text": "abc" * 1000}})
    for text, first in ((small, 0x81), (large, 0xC1), (small, 0x81)):
        ws.send(text)
        start = len(peer.raw)
        assert peer.text() == text  # a deflate client reads both kinds
        assert peer.raw[start] == first


def test_shared_compressed_frame_reaches_every_deflate_socket() -> None:
    pairs = [make(deflate=True, limit=1 << 20) for _ in range(3)]
    text = json.dumps({"msg": "added", "fields": {"text": "xyz" * 1000}})
    compression = pairs[0][0].compression
    assert compression is not None
    assert all(ws.compression == compression for ws, _ in pairs)
    frame = encode_text_frame(text, compression)
    for ws, _ in pairs:
        ws.send_frame(frame)
    for _, peer in pairs:
        start = len(peer.raw)
        assert peer.text() == text
        assert peer.raw[start] == 0xC1


# -- sending ---------------------------------------------------------------------------


class RecordingSocket:
    """Stands in for a socket whose kernel buffer always has room."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def shutdown(self, how: int) -> None:
        pass


def test_writer_batches_and_exists_only_while_pending() -> None:
    sock = RecordingSocket()
    ws = WebSocket(sock, max_message_bytes=1024, send_buffer_bytes=1 << 20)
    assert ws._writer is None
    ws.send_many(["a", "b"])
    ws.send("c")
    assert ws._writer is not None
    assert ws.buffered_bytes == 9
    assert sock.writes == []  # nothing written in the caller's greenlet
    gevent.sleep(0)
    assert sock.writes == [encode_text_frame("a") + encode_text_frame("b") + encode_text_frame("c")]
    assert ws._writer is None
    assert ws.buffered_bytes == 0


def test_send_after_close_is_dropped() -> None:
    sock = RecordingSocket()
    ws = WebSocket(sock, max_message_bytes=1024, send_buffer_bytes=1 << 20)
    ws.close(1000, "")
    ws.send("late")
    ws.send_frame(encode_text_frame("late"))
    gevent.sleep(0)
    assert sock.writes == [b"\x88\x02\x03\xe8"]  # only the close frame


def test_unencodable_text_does_not_raise() -> None:
    ws, peer = make()
    ws.send("a\ud800b")
    assert peer.text() == "a?b"
    ws2, peer2 = make(deflate=True)
    ws2.send("a\ud800b")
    assert peer2.text() == "a?b"


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_encode_text_frame_matches_wsproto(size: int) -> None:
    text = "x" * size
    expected = bytes(Connection(ConnectionType.SERVER).send(TextMessage(data=text)))
    assert encode_text_frame(text) == expected


@pytest.mark.parametrize("bits", [9, 12, 15])
@pytest.mark.parametrize("size", [0, 1, 200, 5000, 70000])
def test_compressed_frame_matches_wsproto_without_context_takeover(bits: int, size: int) -> None:
    text = ("ddp " * (size // 4 + 1))[:size]
    extension = PerMessageDeflate(
        client_no_context_takeover=True,
        server_no_context_takeover=True,
        server_max_window_bits=bits,
    )
    extension._enabled = True
    conn = Connection(ConnectionType.SERVER, extensions=[extension])
    for _ in range(2):  # the same bytes every time: nothing carries over between messages
        expected = bytes(conn.send(TextMessage(data=text)))
        assert encode_text_frame(text, Compression(bits, threshold=0)) == expected


def test_frames_under_the_threshold_stay_plain() -> None:
    compression = Compression(15, threshold=100)
    assert encode_text_frame("x" * 99, compression) == encode_text_frame("x" * 99)
    assert encode_text_frame("x" * 100, compression)[0] == 0xC1
    with pytest.raises(ValueError):
        Compression(8)


def test_shared_frame_reaches_every_socket() -> None:
    frame = encode_text_frame('{"msg":"changed"}')
    pairs = [make() for _ in range(3)]
    for ws, _ in pairs:
        assert ws.compression is None
        ws.send_frame(frame)
    for _, peer in pairs:
        assert peer.text() == '{"msg":"changed"}'


def test_slow_reader_overflows_with_1008_without_blocking_the_sender() -> None:
    ws, peer = make(buffer=256 * 1024)
    for sock in (ws._sock, peer.sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slowest = 0.0
    sent = 0
    while not ws.closed:
        start = time.perf_counter()
        ws.send("y" * 8192)
        slowest = max(slowest, time.perf_counter() - start)
        sent += 1
        gevent.sleep(0)  # let the writer run and fill the kernel buffers
        assert sent < 10_000
    assert slowest < 0.05
    assert ws.overflowed
    assert (ws.close_code, ws.close_reason) == (1008, "too slow")
    # The peer never reads: within the close grace the socket is aborted anyway.
    start = time.monotonic()
    ws.wait_closed()
    assert time.monotonic() - start < 2.0
    assert ws._writer is None
    assert ws.buffered_bytes == 0
    peer.read_to_eof()


def test_the_workers_send_budget_closes_the_socket_that_would_pass_it() -> None:
    # Each socket alone is under its own cap; together they pass the worker's budget.
    budget = ByteBudget(300 * 1024, name="worker_send")
    pairs = [make(buffer=1 << 20, budget=budget) for _ in range(3)]
    for ws, peer in pairs:
        for sock in (ws._sock, peer.sock):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for _ in range(200):
        for ws, _ in pairs:
            ws.send("z" * 8192)
        gevent.sleep(0)
        if any(ws.closed for ws, _ in pairs):
            break
    assert any(ws.overflowed for ws, _ in pairs)
    assert budget.used <= 300 * 1024
    for ws, _ in pairs:
        ws.abort()
        ws.wait_closed()
    # Every byte a socket held is given back once it is gone.
    assert budget.used == 0


# -- closing ---------------------------------------------------------------------------


def test_server_close_handshake() -> None:
    ws, peer = make()
    ws.send("last words")
    ws.close(4000, "bye")
    ws.close(1000, "ignored: close is idempotent")
    assert ws.closed
    assert peer.text() == "last words"
    event = peer.close_event()
    assert (event.code, event.reason) == (4000, "bye")
    assert peer.next_event() is None  # FIN right after the close frame
    peer.send(event.response())
    start = time.monotonic()
    assert ws.receive() is None
    ws.wait_closed()
    assert time.monotonic() - start < 0.5
    assert (ws.close_code, ws.close_reason) == (4000, "bye")


def test_wait_closed_is_bounded_when_the_peer_never_answers() -> None:
    ws, peer = make()
    start = time.monotonic()
    ws.wait_closed()
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 2.0
    assert peer.close_event().code == 1000
    peer.read_to_eof()


def test_data_after_our_close_is_dropped() -> None:
    ws, peer = make()
    ws.close(1000, "")
    peer.send(TextMessage(data="too late"))
    peer.send(CloseConnection(code=1000))
    assert ws.receive() is None


@pytest.mark.parametrize(
    ("code", "sent"), [(1000, 1000), (1008, 1008), (3000, 3000), (2010, 1000), (1006, 1000)]
)
def test_close_codes_on_the_wire_are_valid(code: int, sent: int) -> None:
    sock = RecordingSocket()
    ws = WebSocket(sock, max_message_bytes=1024, send_buffer_bytes=1 << 20)
    ws.close(code, "")
    gevent.sleep(0)
    assert sock.writes[0][2:4] == struct.pack("!H", sent)
    assert ws.close_code == code
    ws.abort()


def test_idle_socket_memory_is_small() -> None:
    class Idle:
        pass

    for deflate in (False, True):
        keep: list[WebSocket] = []
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(200):
                extension = None
                if deflate:
                    negotiated = _negotiate_deflate("permessage-deflate", 1 << 20)
                    assert negotiated is not None
                    extension = negotiated[0]
                keep.append(
                    WebSocket(
                        Idle(),
                        max_message_bytes=1 << 20,
                        send_buffer_bytes=1 << 23,
                        extension=extension,
                    )
                )
            per_socket = (tracemalloc.get_traced_memory()[0] - before) / len(keep)
        finally:
            tracemalloc.stop()
        assert per_socket < 16 * 1024, (deflate, per_socket)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("ws")) as running:
        yield running
    assert "Traceback" not in running.log_text()


@contextlib.contextmanager
def connect(server: Server, path: str = "/websocket", **options: Any) -> Iterator[Any]:
    """A websocket-client connection, closed and its socket released afterwards."""
    ws: Any = wsclient.create_connection(server.url + path, timeout=5, **options)
    try:
        yield ws
    finally:
        ws.close(timeout=1)
        ws.shutdown()  # after a server-sent close, close() leaves the socket open


def close_code_of(ws: wsclient.WebSocket) -> int:
    """Read until the server's close frame; its code."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == wsclient.ABNF.OPCODE_CLOSE:
            code: int = struct.unpack("!H", data[:2])[0]
            return code


@pytest.mark.parametrize("path", ["/websocket", "/websocket/", "/sockjs/websocket"])
def test_live_echo(server: Server, path: str) -> None:
    with connect(server, path) as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send("é☃" * 1000)
        assert ws.recv() == "é☃" * 1000
        ws.ping(b"p")
        ws.send("after ping")
        assert ws.recv() == "after ping"


def test_live_shared_frame(server: Server) -> None:
    with connect(server) as ws:
        ws.send("shared hi there")
        assert ws.recv() == "hi there"


def test_live_server_close(server: Server) -> None:
    with connect(server) as ws:
        ws.send("close 4001 done here")
        assert close_code_of(ws) == 4001


def test_live_message_over_limit_is_reported_and_the_socket_survives(server: Server) -> None:
    with connect(server) as ws:
        ws.send("z" * 65536)
        assert ws.recv() == "z" * 65536
        ws.send("z" * 65537)
        assert ws.recv() == "oversized 65537"
        ws.send("still open")
        assert ws.recv() == "still open"


def test_live_permessage_deflate(server: Server) -> None:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    client = WSConnection(ConnectionType.CLIENT)
    sock.sendall(
        client.send(
            Request(host=server.host, target="/websocket", extensions=[PerMessageDeflate()])
        )
    )
    raw = bytearray()

    def events() -> Iterator[Event]:
        while True:
            data = sock.recv(65536)
            assert data, "EOF"
            raw.extend(data)
            client.receive_data(data)
            yield from client.events()

    stream = events()
    accepted = next(stream)
    assert isinstance(accepted, AcceptConnection)
    assert [ext.name for ext in accepted.extensions] == ["permessage-deflate"]
    text = json.dumps({"msg": "added", "fields": {"n": "deflate me " * 500}})
    sock.sendall(client.send(TextMessage(data=text)))
    start = len(raw)
    echoed = next(stream)
    assert isinstance(echoed, TextMessage)
    assert echoed.data == text
    assert raw[start] == 0xC1  # compressed
    sock.sendall(client.send(TextMessage(data="stats")))
    stats = next(stream)
    assert isinstance(stats, TextMessage)
    assert json.loads(stats.data)["deflate"] is True
    sock.sendall(client.send(CloseConnection(code=1000)))
    closing = next(stream)
    assert isinstance(closing, CloseConnection)
    sock.close()


def test_live_slow_reader_overflows_and_server_survives(server: Server) -> None:
    rcvbuf = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
    with connect(server, sockopt=rcvbuf) as slow, connect(server) as other:
        slow.send("flood 2000 65536")  # 128 MiB against a 1 MiB send buffer; never read
        deadline = time.monotonic() + 15
        while True:
            other.send("stats")
            closed = json.loads(other.recv())["closed"]
            if any(entry["overflowed"] for entry in closed):
                break
            assert time.monotonic() < deadline, closed
            time.sleep(0.2)
        entry = next(entry for entry in closed if entry["overflowed"])
        assert (entry["code"], entry["reason"]) == (1008, "too slow")
        other.send("still here")
        assert other.recv() == "still here"
    with connect(server) as fresh:
        fresh.send("fresh")
        assert fresh.recv() == "fresh"


def test_live_no_traceback_logged(server: Server) -> None:
    # The hijacked sockets end with StopIteration: gunicorn must log no error for them.
    time.sleep(0.3)
    log = server.log_text()
    assert "Traceback" not in log
    assert "Error handling request" not in log
    assert "Closing connection." in log  # gunicorn took the StopIteration path
    assert server.process.poll() is None


# -- reading in the background (start) -----------------------------------------------------


class Reader:
    """What ``WebSocket.start`` delivered, and from which greenlets."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.ended = gevent.event.Event()
        self.ends = 0

    def on_message(self, item: Any) -> None:
        self.items.append(item)

    def on_end(self) -> None:
        self.ends += 1
        self.ended.set()


def idle_greenlets() -> int:
    """Spawned greenlets that are alive (the hub and the test's own are not counted)."""
    import gc

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)


def test_start_delivers_messages_in_order_without_a_greenlet_while_idle() -> None:
    before = idle_greenlets()
    ws, peer = make()
    reader = Reader()
    ws.start(reader.on_message, reader.on_end)
    peer.send(TextMessage(data="one"), TextMessage(data="two", message_finished=False))
    peer.send(TextMessage(data="!"), Ping(payload=b"p"))
    with gevent.Timeout(3):
        while len(reader.items) < 2:
            gevent.sleep(0.01)
    assert reader.items == ["one", "two!"]
    assert isinstance(peer.next_event(), Pong)  # answered while reading in the background
    gevent.sleep(0.05)
    assert idle_greenlets() <= before  # waiting for input holds no greenlet
    ws.send("reply")
    assert peer.text() == "reply"
    assert reader.ends == 0


def test_start_ends_once_on_the_peers_close_and_releases_an_owned_socket() -> None:
    server_sock, client_sock = socketpair()
    own = gevent.socket.socket(fileno=os.dup(server_sock.fileno()))
    ws = WebSocket(own, max_message_bytes=1024, send_buffer_bytes=1 << 20, owns_socket=True)
    peer = Peer(client_sock)
    reader = Reader()
    ws.start(reader.on_message, reader.on_end)
    peer.send(TextMessage(data="last"), CloseConnection(code=1000, reason="bye"))
    assert reader.ended.wait(3)
    assert reader.items == ["last"] and reader.ends == 1
    assert (ws.close_code, ws.close_reason) == (1000, "bye")
    assert peer.close_event().code == 1000  # echoed
    with gevent.Timeout(3):
        while own.fileno() != -1:
            gevent.sleep(0.01)
    assert not ws.owns_socket
    gevent.sleep(0.05)
    assert reader.ends == 1


def test_start_ends_on_eof_and_when_we_close_and_the_peer_never_answers() -> None:
    ws, peer = make()
    reader = Reader()
    ws.start(reader.on_message, reader.on_end)
    peer.sock.close()
    assert reader.ended.wait(3)
    assert ws.close_code == 1006
    ws2, peer2 = make()
    reader2 = Reader()
    ws2.start(reader2.on_message, reader2.on_end)
    ws2.close(4000, "go")
    start = time.monotonic()
    assert reader2.ended.wait(3)  # the grace timer aborts; the read side then ends
    assert 0.5 < time.monotonic() - start < 2.5
    assert peer2.close_event().code == 4000


def test_start_reports_oversized_messages_and_survives_a_failing_handler() -> None:
    ws, peer = make(limit=10)
    seen: list[Any] = []

    def on_message(item: Any) -> None:
        seen.append(item)
        if item == "boom":
            raise RuntimeError("handler bug")

    ended = gevent.event.Event()
    ws.start(on_message, ended.set)
    peer.send(TextMessage(data="boom"), TextMessage(data="x" * 50), TextMessage(data="ok"))
    with gevent.Timeout(3):
        while len(seen) < 3:
            gevent.sleep(0.01)
    assert seen[0] == "boom" and isinstance(seen[1], Oversized) and seen[2] == "ok"
    assert not ended.is_set()
    with pytest.raises(RuntimeError):
        ws.start(on_message, ended.set)


def test_start_handles_bytes_that_came_with_the_handshake() -> None:
    server_sock, _client_sock = socketpair()
    ws = WebSocket(
        server_sock,
        max_message_bytes=1024,
        send_buffer_bytes=1 << 20,
        initial_data=masked_frame(0x1, b"early"),
    )
    reader = Reader()
    ws.start(reader.on_message, reader.on_end)
    with gevent.Timeout(3):
        while not reader.items:
            gevent.sleep(0.01)
    assert reader.items == ["early"]


def test_a_client_that_never_pauses_does_not_starve_other_greenlets() -> None:
    ws, peer = make()
    ticks = [0]

    def other() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0)

    seen: list[int] = []
    ticker = gevent.spawn(other)
    try:
        ws.start(lambda item: seen.append(ticks[0]), lambda: None)
        peer.sock.sendall(b"".join(peer.conn.send(TextMessage(data=str(i))) for i in range(300)))
        with gevent.Timeout(3):
            while len(seen) < 300:
                gevent.sleep(0.01)
    finally:
        ticker.kill()
    assert len(set(seen)) > 2  # the other greenlet ran while the 300 messages were handled


def test_a_throttled_client_is_not_read_until_its_pause_is_over() -> None:
    # The client's address is over its byte rate: its input waits in the kernel (TCP
    # slows it down) and costs no parsing meanwhile; nothing is lost or refused.
    pauses = [0.3]
    seen: list[int] = []

    def throttle(size: int) -> float:
        seen.append(size)
        return pauses.pop(0) if pauses else 0.0

    ws, peer = make(throttle=throttle)
    reader = Reader()
    ws.start(reader.on_message, reader.on_end)
    peer.send(TextMessage(data="first"))
    with gevent.Timeout(2):
        while not reader.items:
            gevent.sleep(0.005)
    started = time.monotonic()
    peer.send(TextMessage(data="second"))
    with gevent.Timeout(2):
        while len(reader.items) < 2:
            gevent.sleep(0.005)
    assert reader.items == ["first", "second"]
    assert time.monotonic() - started >= 0.2
    assert seen  # told of every read
    ws.abort()


# -- bytes out (relay.metrics.TALLY) ------------------------------------------------------------


def test_bytes_the_kernel_took_are_tallied_direct_or_through_the_writer() -> None:
    ws, peer = make(buffer=64 << 20)
    before = TALLY.bytes_sent
    ws.send("hello")  # a direct write
    assert peer.text() == "hello"
    assert TALLY.bytes_sent - before == len(encode_text_frame("hello", None))
    # More than the socket buffers hold: the rest goes through the writer greenlet.
    big = "x" * (4 << 20)
    size = len(encode_text_frame(big, None))
    before = TALLY.bytes_sent
    ws.send(big)
    received = 0
    with gevent.Timeout(5):
        while received < size:
            received += len(peer.sock.recv(1 << 20))
        while TALLY.bytes_sent - before < size:
            gevent.sleep(0.01)
    assert received == size and TALLY.bytes_sent - before == size
