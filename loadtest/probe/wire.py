"""Raw WebSocket sockets for the probe's clients, hostile and honest, from a chosen address.

Its job: open a WebSocket to the relay from a given local address (the loopback network is
a whole /8, so ``127.0.0.2`` is a second client address on one machine: the relay's limits
and its work pool's fairness count clients by address), read what the relay sends in a
thread of its own (``Inbox``: parsed messages, the close code), and build client frames by
hand (``client_frame``) so that a flooding client can send a megabyte without masking it
in Python (a zero masking key is legal; RFC 6455 only requires a key, not a random one).

Must not: know DDP beyond the ``connect`` message and the message kinds the probes count,
or decide what a probe measures (``honest``, ``attacks`` and ``fuzz`` do).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import websocket

#: The ``connect`` every probe client sends (Meteor 3.x's versions, most preferred first).
CONNECT = json.dumps({"msg": "connect", "version": "1", "support": ["1", "pre2", "pre1"]})

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
#: A zero masking key: the payload goes out as it is (RFC 6455 5.3 asks for a key only).
ZERO_MASK = b"\0\0\0\0"


def client_frame(payload: bytes, opcode: int = OPCODE_TEXT, mask: bytes = ZERO_MASK) -> bytes:
    """One final client-to-server frame carrying ``payload`` (masked with ``mask``)."""
    if len(mask) != 4:
        raise ValueError("a masking key is 4 bytes")
    if not 0 <= opcode <= 0xF:
        raise ValueError(f"not an opcode: {opcode}")
    n = len(payload)
    header = bytearray([0x80 | opcode])
    if n < 126:
        header.append(0x80 | n)
    elif n < 1 << 16:
        header.append(0x80 | 126)
        header += n.to_bytes(2, "big")
    else:
        header.append(0x80 | 127)
        header += n.to_bytes(8, "big")
    header += mask
    if mask == ZERO_MASK:
        return bytes(header) + payload
    # Only tests use other keys: XOR through one big integer (no per-byte Python loop).
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return bytes(header) + masked


def close_code(data: bytes) -> int | None:
    """The status code of a close frame's payload (None: the frame carried none)."""
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def endpoint(url: str) -> tuple[str, int]:
    """Host and port of a ``ws://`` URL."""
    parts = urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not a ws://host:port URL: {url!r}")
    return parts.hostname, parts.port


def tcp_connect(url: str, source: str, timeout: float) -> socket.socket:
    """A TCP connection to ``url``'s host and port from local address ``source``."""
    return socket.create_connection(endpoint(url), timeout=timeout, source_address=(source, 0))


def open_websocket(url: str, source: str, timeout: float) -> websocket.WebSocket:
    """A WebSocket to ``url`` from ``source`` (upgrade done, timeout left at ``timeout``)."""
    sock = tcp_connect(url, source, timeout)
    try:
        # No UTF-8 validation of what arrives: websocket-client does it in pure Python,
        # which costs a flooding client more CPU than the relay spends answering it.
        return websocket.create_connection(
            url, timeout=timeout, socket=sock, skip_utf8_validation=True
        )
    except BaseException:
        sock.close()
        raise


def is_answer(msg: dict[str, Any]) -> int:
    """How many client messages ``msg`` answers: a ``ready`` answers each sub it lists;
    ``result``, ``nosub``, ``error``, ``pong``, ``failed`` and ``connected`` one; data
    messages, ``updated`` and the server's own ``ping`` none."""
    kind = msg.get("msg")
    if kind == "ready":
        subs = msg.get("subs")
        return len(subs) if isinstance(subs, list) else 1
    return 1 if kind in ("result", "nosub", "error", "pong", "failed", "connected") else 0


class Inbox:
    """Reads one WebSocket in a daemon thread until it closes.

    ``messages`` holds every DDP message received, parsed (``keep=False``: none, only the
    callback sees them); ``closed`` is set when the socket ends, with the close frame's
    ``code`` and ``reason`` if one came. The relay's DDP ``ping`` is answered with
    ``pong``, as a client must, unless ``answer_pings`` is False.
    """

    def __init__(
        self,
        ws: websocket.WebSocket,
        *,
        on_message: Callable[[dict[str, Any], float], None] | None = None,
        keep: bool = True,
        answer_pings: bool = True,
    ) -> None:
        self.ws = ws
        self.on_message = on_message
        self.keep = keep
        self.answer_pings = answer_pings
        self.messages: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self.code: int | None = None
        self.reason = ""
        self.received_bytes = 0
        #: The session id of the ``connected`` received, if any.
        self.session: str | None = None
        #: ("result", id) of every result and ("ready", id) of every ready sub seen.
        self.seen: set[tuple[str, str]] = set()
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data(control_frame=True)
                raw = bytes(data)
                if opcode == OPCODE_CLOSE:
                    self.code = close_code(raw)
                    self.reason = raw[2:].decode("utf-8", "replace")
                    return
                if opcode != OPCODE_TEXT:
                    continue
                self.received_bytes += len(raw)
                self._handle(raw.decode("utf-8", "replace"))
        except Exception:  # the socket closed or broke: this inbox is over
            return
        finally:
            with self.cond:
                self.closed.set()
                self.cond.notify_all()

    def _handle(self, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = {"msg": None, "unparsed": text[:200]}
        if not isinstance(msg, dict):
            msg = {"msg": None, "unparsed": text[:200]}
        now = time.time()
        if msg.get("msg") == "connected":
            self.session = str(msg.get("session"))
        if msg.get("msg") == "ping" and self.answer_pings:
            reply = {"msg": "pong", **({"id": msg["id"]} if "id" in msg else {})}
            with contextlib.suppress(Exception):
                self.ws.send(json.dumps(reply))
        if self.on_message is not None:
            self.on_message(msg, now)
        with self.cond:
            kind = msg.get("msg")
            if kind == "result":
                self.seen.add(("result", str(msg.get("id"))))
            elif kind == "ready":
                self.seen.update(("ready", str(s)) for s in msg.get("subs") or [])
            if self.keep:
                self.messages.append(msg)
            self.cond.notify_all()

    def has(self, kind: str, ident: str) -> bool:
        """Whether a ``result`` (kind ``result``) or ``ready`` (``ready``) for ``ident`` came."""
        with self.cond:
            return (kind, ident) in self.seen

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` (called under the inbox's lock) holds or the socket
        closed; whether it holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.closed.is_set():
                    return predicate()
                self.cond.wait(min(remaining, 0.5))
            return True

    def count(self) -> int:
        with self.cond:
            return len(self.messages)

    def since(self, start: int) -> list[dict[str, Any]]:
        with self.cond:
            return list(self.messages[start:])

    def close(self) -> None:
        """Close the socket (no DDP ``disconnect``: callers send one if they mean it)."""
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)
        with contextlib.suppress(Exception):
            self.ws.shutdown()  # type: ignore[no-untyped-call]
        self._thread.join(timeout=2)


def ddp_connect(
    url: str, source: str, timeout: float, **inbox_options: Any
) -> tuple[websocket.WebSocket, Inbox, str]:
    """Open a socket from ``source``, send ``connect``, wait for ``connected``; the socket,
    its inbox and the session id. Raises ``ConnectionError`` when no ``connected`` came."""
    ws = open_websocket(url, source, timeout)
    inbox = Inbox(ws, **inbox_options)
    try:
        ws.send(CONNECT)
        if not inbox.wait_for(lambda: inbox.session is not None, timeout):
            raise ConnectionError(
                f"no connected within {timeout:g} s (closed: {inbox.closed.is_set()}, "
                f"code {inbox.code})"
            )
    except BaseException:
        inbox.close()
        raise
    assert inbox.session is not None
    return ws, inbox, inbox.session
