"""An echo relay for tests: ``relay.transport`` under real ``gunicorn -k gevent``.

Two halves. ``app`` is the WSGI app gunicorn serves in a subprocess (the only
monkey-patched process: gunicorn's worker patches, this module does not). ``serve`` is
the context manager tests use to start and stop that subprocess; it imports nothing that
patches.

The app echoes every batch back, except for a few commands sent as a whole message:

- ``flood <count> <size>``: send ``count`` messages of ``size`` bytes, yielding between
  them, so a client that does not read overflows the send buffer;
- ``close <code> <reason>``: close the transport with that code and reason;
- ``shared <text>``: write ``text`` as a pre-encoded shared frame (built for the socket's
  compression, as fan-out does);
- ``stats``: a JSON object about this socket and the sockets closed so far.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]

#: Settings the test server runs with (small limits so tests hit them quickly).
SERVER_ENV = {
    "RELAY_MAX_MESSAGE_BYTES": "65536",
    "RELAY_SEND_BUFFER_BYTES": "1048576",
    "RELAY_ALLOWED_ORIGINS": "https://allowed.example",
    "RELAY_SOCKJS_HEARTBEAT": "1.0",
}

# -- the WSGI app (runs inside gunicorn) ---------------------------------------------------

_CLOSED: list[dict[str, Any]] = []
_state: dict[str, Any] = {}


def _settings() -> Any:
    from relay.config import Settings

    if "settings" not in _state:
        _state["settings"] = Settings.from_env()
    return _state["settings"]


def _heartbeats() -> Any:
    import gevent

    from relay.transport import HeartbeatRegistry

    if "heartbeats" not in _state:
        registry = HeartbeatRegistry()
        _state["heartbeats"] = registry
        # One ticker per worker, started on first use (never at import).
        gevent.spawn(registry.run, 0.2)
    return _state["heartbeats"]


def _echo(transport: Any, ws: Any) -> None:
    import gevent

    from relay.transport.websocket import Oversized, encode_text_frame

    while (batch := transport.receive()) is not None:
        if isinstance(batch[0], Oversized):
            transport.send([f"oversized {batch[0].size}"])
            continue
        head, _, rest = batch[0].partition(" ") if len(batch) == 1 else ("", "", "")
        if head == "flood":
            count, size = rest.split()
            payload = "x" * int(size)
            for _ in range(int(count)):
                transport.send([payload])
                gevent.sleep(0)
                if transport.closed:
                    break
        elif head == "close":
            code, _, reason = rest.partition(" ")
            transport.close(int(code), reason)
        elif head == "shared":
            ws.send_frame(encode_text_frame(rest, ws.compression))
        elif head == "stats":
            stats = {"deflate": ws.deflate, "closed": _CLOSED}
            transport.send([json.dumps(stats)])
        else:
            transport.send(batch)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    from relay.transport import RawTransport, SockJSTransport, endpoints, handshake

    kind = endpoints.route(environ)
    if kind is endpoints.Route.OTHER:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here\n"]
    if kind not in (endpoints.Route.DDP_WEBSOCKET, endpoints.Route.SOCKJS_WEBSOCKET):
        status, headers, body = endpoints.respond(environ, kind)
        start_response(status, headers)
        return [body]
    accepted = handshake.accept(environ, _settings())
    if isinstance(accepted, handshake.HandshakeRefusal):
        start_response(accepted.status, accepted.headers)
        return [accepted.body]
    transport: Any
    if kind is endpoints.Route.SOCKJS_WEBSOCKET:
        transport = SockJSTransport(accepted, _settings().sockjs_heartbeat, _heartbeats())
    else:
        transport = RawTransport(accepted)
    try:
        _echo(transport, accepted)
    finally:
        transport.close(1000, "bye")
        accepted.wait_closed()
        _CLOSED.append(
            {
                "code": accepted.close_code,
                "reason": accepted.close_reason,
                "overflowed": accepted.overflowed,
            }
        )
    # The socket is ours now: gunicorn's async worker must not write a response on it.
    raise StopIteration()


# -- the test side ---------------------------------------------------------------------


@dataclass
class Server:
    """A running echo server: where it listens and where it logs."""

    host: str
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(log_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    """Run the echo app under ``gunicorn -k gevent`` (one worker) until the block ends."""
    port = _free_port()
    log = log_dir / f"gunicorn-{port}.log"
    env = {**os.environ, **SERVER_ENV, **(extra_env or {}), "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        "1",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        "--log-level",
        "debug",
        # Each server its own: the default control socket path is shared machine-wide.
        "--no-control-socket",
        "tests.relay.transport._ws_echo_server:app",
    ]
    with log.open("wb") as out:
        # cwd: a directory without a gunicorn.conf.py, which gunicorn would load.
        process = subprocess.Popen(command, cwd=log_dir, env=env, stdout=out, stderr=out)
    server = Server("127.0.0.1", port, log, process)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{server.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not listen:\n{server.log_text()}") from None
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
