"""``loadtest.probe.wire`` (and ``honest.HonestClient``'s socket) against a real server.

A hand-built frame must decode as the payload it carries, whatever the payload and key
(property-tested with wsproto, the relay's own WebSocket library, as the decoder). The
sockets are tested against a small wsproto server on loopback in a thread: the client
address is the one asked for (``127.0.0.2``), the inbox parses what comes, answers the
server's DDP ``ping``, and reports the close code the server sent.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameDecoder, Opcode

from loadtest.probe.honest import HonestClient
from loadtest.probe.wire import (
    OPCODE_BINARY,
    Inbox,
    client_frame,
    close_code,
    ddp_connect,
    endpoint,
    open_websocket,
)


@settings(max_examples=200)
@given(st.binary(max_size=70_000), st.binary(min_size=4, max_size=4), st.booleans())
def test_a_built_frame_decodes_to_its_payload(payload: bytes, mask: bytes, binary: bool) -> None:
    opcode = OPCODE_BINARY if binary else 0x1
    decoder = FrameDecoder(client=False)  # the server side: frames must be masked
    decoder.receive_bytes(client_frame(payload, opcode, mask))
    frame = decoder.process_buffer()
    assert frame is not None
    assert frame.opcode == (Opcode.BINARY if binary else Opcode.TEXT)
    assert frame.frame_finished and frame.message_finished
    assert isinstance(frame.payload, bytes | bytearray)
    assert bytes(frame.payload) == payload


def test_frame_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        client_frame(b"x", mask=b"abc")
    with pytest.raises(ValueError):
        client_frame(b"x", opcode=16)


def test_close_code_and_endpoint() -> None:
    assert close_code(b"\x0f\xa6Too much") == 4006
    assert close_code(b"") is None
    assert endpoint("ws://127.0.0.1:8123/websocket") == ("127.0.0.1", 8123)
    with pytest.raises(ValueError):
        endpoint("ws://127.0.0.1/websocket")


# -- against a server --------------------------------------------------------------------------


@dataclass
class Server:
    """One-connection-at-a-time WebSocket server: answers ``connect`` with ``connected``,
    then sends ``script`` (texts; an int is a close code), recording what it received."""

    script: list[str | int]
    sock: socket.socket = field(default_factory=socket.socket)
    peers: list[str] = field(default_factory=list)
    received: list[str | bytes | bytearray] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.sock.getsockname()[1]}/websocket"

    def start(self) -> Server:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return  # the client under test may reset the socket: that is its right
                if not data:
                    return
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage | BytesMessage):
                        self.received.append(event.data)
                        if isinstance(event.data, str) and '"connect"' in event.data:
                            conn.sendall(ws.send(TextMessage('{"msg":"connected","session":"S"}')))
                            for item in self.script:
                                if isinstance(item, int):
                                    conn.sendall(ws.send(CloseConnection(code=item, reason="bye")))
                                else:
                                    conn.sendall(ws.send(TextMessage(item)))
                    elif isinstance(event, CloseConnection):
                        return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(['{"msg":"ping","id":"sp"}', '{"msg":"result","id":"1"}', "not json", 4006])
    yield srv.start()
    srv.close()


def test_a_socket_from_a_chosen_address(server: Server) -> None:
    ws = open_websocket(server.url, "127.0.0.2", 5)
    try:
        assert ws.sock is not None and ws.sock.getsockname()[0] == "127.0.0.2"
    finally:
        ws.close()
    assert server.peers == ["127.0.0.2"]


def test_inbox_reads_answers_pings_and_reports_the_close(server: Server) -> None:
    _, inbox, session = ddp_connect(server.url, "127.0.0.2", 5)
    try:
        assert session == "S"
        assert inbox.closed.wait(5)
        assert inbox.code == 4006 and inbox.reason == "bye"
        kinds = [m.get("msg") for m in inbox.messages]
        assert kinds == ["connected", "ping", "result", None]  # None: not JSON, kept
        assert inbox.has("result", "1") and not inbox.has("result", "2")
        # A client answers the server's ping (the server reads it in its own thread).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _pong_in(server.received):
            time.sleep(0.01)
        assert _pong_in(server.received)
    finally:
        inbox.close()


def _pong_in(received: list[str | bytes | bytearray]) -> bool:
    return any(isinstance(r, str) and json.loads(r).get("msg") == "pong" for r in received)


def test_connect_fails_clearly_when_no_connected_comes() -> None:
    quiet = Server([])
    quiet.start()
    try:
        # This server answers only a message containing "connect": send none by hand.
        ws = open_websocket(quiet.url, "127.0.0.1", 5)
        inbox = Inbox(ws)
        assert not inbox.wait_for(lambda: inbox.session is not None, 0.3)
        inbox.close()
    finally:
        quiet.close()
    with pytest.raises(OSError):
        ddp_connect(quiet.url, "127.0.0.1", 1)  # nothing listens any more


def test_binary_frames_reach_the_server(server: Server) -> None:
    ws, inbox, _ = ddp_connect(server.url, "127.0.0.1", 5)
    try:
        assert ws.sock is not None
        ws.sock.sendall(client_frame(b"\xff\x00", OPCODE_BINARY))
    finally:
        inbox.close()


def test_honest_client_uses_its_address_and_times_its_socket(server: Server) -> None:
    client = HonestClient(server.url, source="127.0.0.2", timeout=5)
    try:
        assert client.connect() == "S"
        assert client.local is not None and client.local[0] == "127.0.0.2"
        assert 0 <= client.socket_seconds < 5
    finally:
        client.close()
