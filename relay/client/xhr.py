"""A minimal DDP client over SockJS's xhr-polling transport (the end-to-end tests and the
benchmark of ``relay.httpsession``): each request on a new connection, to the next of
several base URLs in turn (a round-robin balancer with no stickiness, made explicit), so
that consecutive requests of one session land on different relays.

It speaks what sockjs-client does (``xhr`` to receive, ``xhr_send`` to send, one request
at a time; ``stream`` holds an ``xhr_streaming`` response instead) and DDP as Meteor 3.5
does on reconnect (``connect`` with ``session`` and ``receivedCount``, counting every
message but ping and pong). Standard library only; blocking, one thread.

Must not: import the relay runtime; only the standard library.
"""

from __future__ import annotations

import http.client
import itertools
import json
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any


class XhrError(Exception):
    """The server answered what SockJS does not (a status or a frame out of place)."""


class SessionLost(XhrError):
    """The SockJS session ended (a close frame, or a second ``o``): reconnect."""


def request(
    url: str,
    method: str = "POST",
    body: bytes = b"",
    timeout: float = 40,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, str]:
    """One HTTP request on a connection of its own: status and body text."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body, dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class XhrClient:
    """One DDP connection over xhr-polling, spread over ``bases`` (``http://host:port``)."""

    def __init__(self, bases: Sequence[str]) -> None:
        self.bases = bases
        self.sid = ""
        self.session: str | None = None
        self.received = 0
        #: Every DDP message received, in order (ping and pong included).
        self.messages: list[dict[str, Any]] = []

    @property
    def bases(self) -> Sequence[str]:
        """Where the next requests go, in turn."""
        return self._base_list

    @bases.setter
    def bases(self, bases: Sequence[str]) -> None:
        self._base_list = list(bases)
        self._bases = itertools.cycle(self._base_list)

    def _url(self, transport: str) -> str:
        return f"{next(self._bases)}/sockjs/{secrets.randbelow(1000):03d}/{self.sid}/{transport}"

    def open(self, resume: bool = False) -> dict[str, Any]:
        """A new SockJS session and DDP ``connect`` (resuming the last session if asked)."""
        self.sid = secrets.token_hex(8)
        status, body = request(self._url("xhr"))
        if (status, body) != (200, "o\n"):
            raise XhrError(f"opening a session: {status} {body[:200]!r}")
        connect: dict[str, Any] = {"msg": "connect", "version": "1", "support": ["1"]}
        if resume and self.session is not None:
            connect.update(session=self.session, receivedCount=self.received)
        self.send(connect)
        reply = self.wait_for(lambda m: m.get("msg") == "connected")
        self.session = reply["session"]
        return reply

    def send(self, *msgs: dict[str, Any]) -> None:
        body = json.dumps([json.dumps(m) for m in msgs]).encode()
        status, text = request(self._url("xhr_send"), body=body)
        if status == 404:
            raise SessionLost("xhr_send: no such session")
        if status != 204:
            raise XhrError(f"xhr_send: {status} {text[:200]!r}")

    def poll(self) -> list[dict[str, Any]]:
        """One receiving request: the messages it carried."""
        status, body = request(self._url("xhr"))
        if status != 200:
            raise XhrError(f"xhr: {status} {body[:200]!r}")
        return self.frame(body.rstrip("\n"))

    def frame(self, frame: str) -> list[dict[str, Any]]:
        """The messages of one frame received (kept, counted, pings answered)."""
        if frame == "h":
            return []
        if frame == "o" or frame.startswith("c"):
            raise SessionLost(frame)
        if not frame.startswith("a"):
            raise XhrError(f"not a SockJS frame: {frame[:200]!r}")
        got = [json.loads(text) for text in json.loads(frame[1:])]
        for msg in got:
            if msg.get("msg") == "ping":
                self.send({"msg": "pong"})
            if msg.get("msg") not in ("ping", "pong"):
                self.received += 1
        self.messages.extend(got)
        return got

    def wait_for(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        """Poll until a message passes ``check``; that message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.poll():
                if check(msg):
                    return msg
        raise TimeoutError("no such message in time")

    def stream(self, base: str, timeout: float = 40) -> Iterator[list[dict[str, Any]]]:
        """Hold one ``xhr_streaming`` response on ``base``: the messages of each frame as
        it arrives, until the response ends (the server's response limit)."""
        parts = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
        try:
            path = f"/sockjs/{secrets.randbelow(1000):03d}/{self.sid}/xhr_streaming"
            conn.request("POST", path, b"")
            resp = conn.getresponse()
            if resp.status != 200:
                raise XhrError(f"xhr_streaming: {resp.status}")
            resp.readline()  # the prelude
            while line := resp.readline():
                yield self.frame(line.decode().rstrip("\n"))
        finally:
            conn.close()
