"""Shared by the resume tests: parked states to store, and a database that can go away.

``TcpProxy`` sits between a park store and the test PostgreSQL server so that a test can
take the database away and bring it back (``down``/``up``) without touching the server
the rest of the session shares. ``closed_port`` gives a loopback port nothing listens on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

from relay.protocol.mergebox import MergeBox
from relay.resume.parked import ParkedSession, ParkedSubscription


def make_state(
    session_id: str,
    *,
    user_id: str | None = "u1",
    sent: int = 10,
    log: int = 4,
    title: str = "T",
) -> ParkedSession:
    """A parked session whose log holds messages ``sent - log + 1 .. sent`` as ``m<n>``."""
    box = MergeBox()
    box.add("s1", "books", "b1", {"title": title, "price": Decimal("9.50")})
    box.add("s2", "books", "b1", {"at": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)})
    return ParkedSession(
        session_id=session_id,
        user_id=user_id,
        version="1",
        sent_count=sent,
        log_start=sent - log + 1,
        log=[f"m{n}" for n in range(sent - log + 1, sent + 1)],
        subs=[
            ParkedSubscription("s1", "books.all", (), True),
            ParkedSubscription("s2", "books.by", ("le-guin", 3), False),
        ],
        mergebox=box.to_state(),
        results={"7": '{"msg":"result","id":"7","result":1}'},
    )


def closed_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_port(dsn: str, port: int) -> str:
    """``dsn`` (a ``postgresql://`` URL) pointing at ``127.0.0.1:port`` instead."""
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


class TcpProxy:
    """A loopback TCP forwarder to ``upstream`` that a test can switch off and on.

    While down, open connections are cut and new ones are accepted and closed at once: to
    a client this is a database that went away. Threads, not greenlets: this test process
    is not monkey-patched and psycopg2 blocks.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._down = False
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def down(self) -> None:
        with self._lock:
            self._down = True
            open_sockets, self._open = self._open, set()
        for sock in open_sockets:
            _cut(sock)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def stop(self) -> None:
        self._stopped = True
        self.down()
        _cut(self._listener)
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                _cut(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _cut(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        _cut(src)
        _cut(dst)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
