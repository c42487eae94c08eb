"""relay.client.DDPClient against an in-process fake DDP server (wsproto over a socket).

The fake server is scripted by each test: it accepts WebSocket connections, hands each to
the test as a :class:`FakeConn` (read the client's messages in order, send messages, drop
the socket without a close frame). Nothing here needs PostgreSQL or gunicorn.
"""

from __future__ import annotations

import contextlib
import json
import queue
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from relay.client import DDPClient, retry_delay

WAIT = 5.0


class FakeConn:
    """One accepted WebSocket connection, driven by the test."""

    def __init__(self, sock: socket.socket, sockjs: bool = False) -> None:
        self.sock = sock
        self.sockjs = sockjs
        self.ws = WSConnection(ConnectionType.SERVER)
        self.inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.lock = threading.Lock()
        self.open = threading.Event()
        self.gone = threading.Event()
        self._text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _write(self, data: bytes) -> None:
        with self.lock, contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _read(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, Request):
                        self._write(self.ws.send(AcceptConnection()))
                        if self.sockjs:
                            self._write(self.ws.send(TextMessage(data="o")))
                        self.open.set()
                    elif isinstance(event, TextMessage):
                        self._text += event.data
                        if event.message_finished:
                            value = json.loads(self._text)
                            for text in value if self.sockjs else [self._text]:
                                self.inbox.put(json.loads(text))
                            self._text = ""
                    elif isinstance(event, Ping):
                        self._write(self.ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self._write(self.ws.send(event.response()))
                        return
        except OSError:
            pass
        finally:
            self.gone.set()
            self.inbox.put(None)

    def recv(self, timeout: float = WAIT) -> dict[str, Any]:
        msg = self.inbox.get(timeout=timeout)
        assert msg is not None, "the client closed the connection"
        return msg

    def recv_until(self, kind: str) -> dict[str, Any]:
        while True:
            msg = self.recv()
            if msg["msg"] == kind:
                return msg

    def send(self, **msg: Any) -> None:
        text = json.dumps(msg)
        if self.sockjs:
            text = "a" + json.dumps([text])
        self._write(self.ws.send(TextMessage(data=text)))

    def drop(self) -> None:
        """Lose the socket abruptly (no close frame)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeServer:
    def __init__(self, sockjs: bool = False) -> None:
        self.sockjs = sockjs
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: queue.Queue[FakeConn] = queue.Queue()
        self.accepted: list[FakeConn] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        if self.sockjs:
            return f"http://127.0.0.1:{self.port}"
        return f"ws://127.0.0.1:{self.port}/websocket"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                conn = FakeConn(sock, self.sockjs)
                self.accepted.append(conn)
                self.conns.put(conn)

    def next_conn(self, timeout: float = WAIT) -> FakeConn:
        return self.conns.get(timeout=timeout)

    def stop_listening(self) -> None:
        # shutdown() wakes the accept() blocked in the other thread (close() alone does not).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def close(self) -> None:
        self.stop_listening()
        for conn in self.accepted:
            conn.drop()


@pytest.fixture(params=["websocket", "sockjs"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    srv = FakeServer(sockjs=request.param == "sockjs")
    yield srv
    srv.close()


def make_client(server: FakeServer, **kwargs: Any) -> DDPClient:
    kwargs.setdefault("timeout", WAIT)
    kwargs.setdefault("reconnect_base", 0.02)
    kwargs.setdefault("sockjs", server.sockjs)
    return DDPClient(server.url, **kwargs)


def start(client: DDPClient, server: FakeServer, session: str = "s1") -> FakeConn:
    """Connect ``client``; the fake server answers ``connected`` with ``session``."""
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(client.connect()))
    thread.start()
    conn = server.next_conn()
    connect = conn.recv()
    assert connect["msg"] == "connect" and "session" not in connect
    conn.send(msg="connected", session=session)
    thread.join(WAIT)
    assert result == [session]
    return conn


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def subscribe_ready(client: DDPClient, conn: FakeConn, name: str) -> str:
    thread, out = in_thread(client.subscribe, name)
    sub = conn.recv_until("sub")
    conn.send(msg="added", collection="books", id=f"{name}-1", fields={"t": 1})
    conn.send(msg="ready", subs=[sub["id"]])
    thread.join(WAIT)
    assert out == [sub["id"]]
    return str(sub["id"])


# -- counting ---------------------------------------------------------------------------------


def test_received_count_excludes_ping_pong(server: FakeServer) -> None:
    client = make_client(server)
    conn = start(client, server)
    assert client.received_count == 1  # connected counts
    conn.send(msg="ping", id="p1")
    assert conn.recv() == {"msg": "pong", "id": "p1"}
    conn.send(msg="pong")
    conn.send(msg="added", collection="c", id="a", fields={})
    client.wait_for(lambda: "a" in client.collections.get("c", {}))
    assert client.received_count == 2
    assert [m["msg"] for m in client.received] == ["connected", "added"]
    client.close()


def test_keep_received_false_keeps_no_history(server: FakeServer) -> None:
    client = make_client(server, keep_received=False)
    conn = start(client, server)
    conn.send(msg="added", collection="c", id="a", fields={})
    client.wait_for(lambda: client.received_count == 2)
    assert client.received == []
    client.close()


def test_finished_calls_are_forgotten(server: FakeServer) -> None:
    client = make_client(server)
    conn = start(client, server)
    thread, out = in_thread(client.call, "m", 1)
    method = conn.recv()
    conn.send(msg="result", id=method["id"], result=2)
    conn.send(msg="updated", methods=[method["id"]])
    thread.join(WAIT)
    assert out == [2]
    assert client._calls == {}
    client.close()


# -- close ---------------------------------------------------------------------------------------


def test_close_sends_disconnect_and_does_not_reconnect(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True)
    conn = start(client, server)
    client.close()
    assert conn.recv() == {"msg": "disconnect"}
    assert client.closed.is_set()
    time.sleep(0.1)
    assert server.conns.empty()
    assert client.reconnects == 0


def test_without_auto_reconnect_a_drop_closes(server: FakeServer) -> None:
    client = make_client(server)
    conn = start(client, server)
    conn.drop()
    assert client.closed.wait(WAIT)
    time.sleep(0.1)
    assert server.conns.empty()


# -- reconnect ------------------------------------------------------------------------------


def test_resend_order_and_resume_same_session(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True)
    conn = start(client, server)
    sub_id = subscribe_ready(client, conn, "books")
    # A method with result and updated: never re-sent.
    done, done_out = in_thread(client.call, "done")
    m_done = conn.recv()
    conn.send(msg="result", id=m_done["id"], result="ok")
    conn.send(msg="updated", methods=[m_done["id"]])
    done.join(WAIT)
    assert done_out == ["ok"]
    # A method with a result but no updated: not re-sent (Meteor).
    half, half_out = in_thread(client.call, "half")
    m_half = conn.recv()
    conn.send(msg="result", id=m_half["id"], result="h")
    # A method with nothing yet: re-sent with the same id, params and randomSeed.
    pending, pending_out = in_thread(client.call, "pending", {"x": 1}, random_seed="seed1")
    m_pending = conn.recv()
    client.wait_for(lambda: client.received_count == 6)  # connected, added, ready, 2x result, upd
    count = client.received_count

    conn.drop()
    conn2 = server.next_conn()
    connect = conn2.recv()
    assert connect == {
        "msg": "connect",
        "version": "1",
        "support": ["1"],
        "session": "s1",
        "receivedCount": count,
    }
    assert conn2.recv() == m_pending
    assert m_pending["randomSeed"] == "seed1" and m_pending["params"] == [{"x": 1}]
    assert conn2.recv() == {"msg": "sub", "id": sub_id, "name": "books", "params": []}
    # All of that was sent before connected.
    conn2.send(msg="connected", session="s1")
    client.wait_for(lambda: client.resumes == 1)
    assert client.received_count == count + 1
    assert client.docs("books") == {"books-1": {"t": 1}}  # cache kept
    # The resumed session replays what was queued: the half method's updated.
    conn2.send(msg="updated", methods=[m_half["id"]])
    conn2.send(msg="result", id=m_pending["id"], result="p")
    conn2.send(msg="updated", methods=[m_pending["id"]])
    half.join(WAIT)
    pending.join(WAIT)
    assert half_out == ["h"] and pending_out == ["p"]
    assert (client.reconnects, client.resumes, client.resyncs) == (1, 1, 0)
    assert len(client.reconnect_latencies) == 1 and client.reconnect_latencies[0] < WAIT
    assert client.violations == []
    client.close()
    assert conn2.recv() == {"msg": "disconnect"}


def test_resume_false_sends_no_received_count(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True, resume=False)
    conn = start(client, server)
    conn.drop()
    connect = server.next_conn().recv()
    assert connect["session"] == "s1" and "receivedCount" not in connect
    client.close()


def test_new_session_quiescence_no_duplicate_violations(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True)
    conn = start(client, server)
    sub_a = subscribe_ready(client, conn, "a")
    sub_b = subscribe_ready(client, conn, "b")
    conn.send(msg="added", collection="books", id="stale", fields={"t": 0})
    half, half_out = in_thread(client.call, "half")
    m_half = conn.recv_until("method")
    conn.send(msg="result", id=m_half["id"], result="h")
    pending, pending_out = in_thread(client.call, "pending")
    m_pending = conn.recv_until("method")
    client.wait_for(lambda: "stale" in client.collections.get("books", {}))

    conn.drop()
    conn2 = server.next_conn()
    assert conn2.recv()["msg"] == "connect"
    assert conn2.recv()["id"] == m_pending["id"]
    assert {conn2.recv()["id"], conn2.recv()["id"]} == {sub_a, sub_b}
    conn2.send(msg="connected", session="s2")
    client.wait_for(lambda: client.resyncs == 1)
    assert client.received_count == 1
    # Full resync: the same documents again. Buffered until quiescence, no violations.
    conn2.send(msg="added", collection="books", id="a-1", fields={"t": 2})
    conn2.send(msg="ready", subs=[sub_a])
    conn2.send(msg="added", collection="books", id="b-1", fields={"t": 3})
    conn2.send(msg="result", id=m_pending["id"], result="p")
    time.sleep(0.1)
    assert client.docs("books")["a-1"] == {"t": 1}  # still the old cache
    assert "stale" in client.docs("books")
    conn2.send(msg="ready", subs=[sub_b])
    time.sleep(0.1)
    assert client.docs("books")["a-1"] == {"t": 1}  # the method still blocks
    assert pending_out == []
    conn2.send(msg="updated", methods=[m_pending["id"]])
    pending.join(WAIT)
    half.join(WAIT)
    assert pending_out == ["p"]
    assert half_out == ["h"]  # completed at quiescence: its updated never comes
    assert client.docs("books") == {"a-1": {"t": 2}, "b-1": {"t": 3}}
    assert client.ready_subs >= {sub_a, sub_b}
    assert client.violations == []
    assert (client.reconnects, client.resumes, client.resyncs) == (1, 0, 1)
    # After quiescence, data applies at once.
    conn2.send(msg="changed", collection="books", id="a-1", fields={"t": 4})
    client.wait_for(lambda: client.docs("books")["a-1"] == {"t": 4})
    client.close()


def test_nosub_counts_toward_quiescence(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True)
    conn = start(client, server)
    sub_a = subscribe_ready(client, conn, "a")
    conn.drop()
    conn2 = server.next_conn()
    conn2.recv_until("sub")
    conn2.send(msg="connected", session="s2")
    conn2.send(msg="added", collection="other", id="o", fields={})
    conn2.send(msg="nosub", id=sub_a, error={"error": 404, "reason": "gone"})
    client.wait_for(lambda: client.docs("other") == {"o": {}})
    assert client.docs("books") == {}
    assert sub_a not in client.ready_subs
    conn2.drop()  # the gone sub is not re-sent on the next reconnect
    conn3 = server.next_conn()
    assert conn3.recv()["session"] == "s2"
    conn3.send(msg="connected", session="s3")
    client.wait_for(lambda: client.resyncs == 2)
    assert client.docs("other") == {}  # nothing blocked: reset at once
    with pytest.raises(queue.Empty):
        conn3.recv(timeout=0.1)
    client.close()


def test_calls_while_down_are_sent_on_reconnect(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True, reconnect_min=0.3)
    conn = start(client, server)
    conn.drop()
    client.wait_for(lambda: not client._up)
    thread, out = in_thread(client.call, "later")
    conn2 = server.next_conn()
    assert conn2.recv()["msg"] == "connect"
    method = conn2.recv()
    assert method["method"] == "later"
    conn2.send(msg="connected", session="s1")
    conn2.send(msg="result", id=method["id"], result=1)
    conn2.send(msg="updated", methods=[method["id"]])
    thread.join(WAIT)
    assert out == [1]
    with pytest.raises(queue.Empty):
        conn2.recv(timeout=0.1)  # sent once, not twice
    client.close()


def test_backoff_follows_meteor_retry(server: FakeServer) -> None:
    rng = random.Random(7)
    assert retry_delay(0) == retry_delay(1) == 0.01
    for count, low, high in [(2, 3.63, 6.05), (3, 7.98, 13.31), (20, 225.0, 375.0)]:
        for _ in range(50):
            assert low <= retry_delay(count, rng=rng) < high
    assert retry_delay(5, base=0.01, maximum=0.1, rng=rng) < 0.125

    # The server refuses to come back for a while: attempts back off, then it connects.
    client = make_client(server, auto_reconnect=True, reconnect_base=0.05, reconnect_max=0.2)
    conn = start(client, server)
    port = server.port
    server.stop_listening()
    conn.drop()
    time.sleep(0.6)  # attempts 1-2 at 10 ms, then 0.24-0.4 s, then capped 0.15-0.25 s
    server.listener = socket.create_server(("127.0.0.1", port))
    threading.Thread(target=server._accept, daemon=True).start()
    conn2 = server.next_conn()
    assert conn2.recv()["msg"] == "connect"
    conn2.send(msg="connected", session="s1")
    client.wait_for(lambda: client.reconnects == 1)
    assert 0.5 <= client.reconnect_latencies[0] < 0.6 + 1.0
    client.close()


def test_max_reconnect_attempts_gives_up(server: FakeServer) -> None:
    client = make_client(server, auto_reconnect=True, max_reconnect_attempts=3)
    conn = start(client, server)
    server.stop_listening()
    conn.drop()
    assert client.closed.wait(WAIT)
    assert client.reconnects == 0
