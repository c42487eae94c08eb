"""SockJS's HTTP transports: one session's frames, carried by a succession of requests.

Layer: runtime (gevent). A ``HttpTransport`` is the ``Transport`` of a session reached over
``xhr-streaming``, ``xhr-polling``, ``eventsource``, ``htmlfile`` or ``jsonp``: outbound
DDP texts wait in its outbox until a receiving request takes them (``receive_frames``,
which the WSGI handler iterates: one request at a time), and inbound texts arrive through
``deliver`` (a local ``xhr_send``, or the cluster's inbox when the send landed elsewhere).

What it keeps, and its bounds:

- the outbox holds at most ``send_buffer`` characters; past that the client is not
  receiving fast enough and the transport closes as overflowed (the session's "slow");
- a streaming response ends after ``response_limit`` characters (SockJS's 128 KiB: the
  browser keeps a response's text until it ends), a polling response after one frame
  (as sockjs-node: a jsonp client runs one callback per response); every frame is a write
  of its own (one HTTP chunk);
- a session with no receiving request for ``disconnect_delay`` seconds has lost its
  client: the transport ends (the session parks, resumable, as for a WebSocket);
- a receiving request that cannot be written to (the client went away mid-response)
  ends the transport too: the client saw an error and opens a new SockJS session, whose
  DDP ``connect`` resumes exactly by ``receivedCount``.

Heartbeats and those timeouts need no timer per session: the worker's
``HeartbeatRegistry`` ticks every transport (``heartbeat(now)``).

``hand_over`` ends the transport without a close frame, for a session moving to another
relay (``relay.httpsession``); ``unwritten`` says what the client has not been given.

Must not: parse DDP, know the cluster, or block a sender.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.queue
import gevent.socket

from relay.protocol.sockjs import (
    HEARTBEAT,
    INTERRUPTED,
    OPEN,
    HttpKind,
    encode_close,
    encode_for,
    encode_messages,
    prelude,
)
from relay.transport.base import Inbound, OnInbound, SharedFrames

__all__ = ["HttpTransport"]

#: How long an idle receiving request waits between checks (the ticker wakes it sooner).
_IDLE_WAIT = 5.0


class HttpTransport:
    """One SockJS session over HTTP requests. ``opened``: False for a new session (its
    first receiving request gets ``o``), True for one taken over from another relay."""

    kind: str = "sockjs-http"

    def __init__(
        self,
        *,
        heartbeat_interval: float,
        disconnect_delay: float,
        response_limit: int,
        send_buffer: int,
        opened: bool = False,
    ) -> None:
        self._interval = heartbeat_interval
        self._delay = disconnect_delay
        self._limit = response_limit
        self._send_buffer = send_buffer
        #: DDP texts not yet given to a receiving request, in order.
        self._texts: list[str] = []
        self._chars = 0
        self._open_pending = not opened
        self._heartbeat_pending = False
        self._close_frame: str | None = None
        self._closed = False
        #: When it closed: its close frame is served for ``disconnect_delay`` after.
        self._closed_at = 0.0
        self._overflowed = False
        self._handed_over = False
        #: The receiving request now attached (a token), and since when none was.
        self._receiver: object | None = None
        self._idle_since = time.monotonic()
        self._last_sent = time.monotonic()
        self._wake = gevent.event.Event()
        self._on_inbound: OnInbound | None = None
        self._on_end: Callable[[], None] | None = None
        self._inbound: Any = gevent.queue.Queue()
        self._ended = False

    # -- Transport --------------------------------------------------------------------------

    def start(self, on_inbound: OnInbound, on_end: Callable[[], None]) -> None:
        self._on_inbound, self._on_end = on_inbound, on_end
        while not self._inbound.empty():
            batch = self._inbound.get_nowait()
            if batch is not None:
                on_inbound(batch)
        if self._ended:
            gevent.spawn(on_end)  # closed before the session started reading

    def receive(self) -> list[Inbound] | None:
        if self._ended:
            return None
        batch: list[Inbound] | None = self._inbound.get()
        return batch

    def send(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        if not texts or self._closed:
            return
        self._texts.extend(texts)
        self._chars += sum(map(len, texts))
        if self._chars > self._send_buffer:
            # Nobody is taking what we queue: the client is gone or too slow.
            self._overflowed = True
            self.close(3000, "Client too slow to receive")
            return
        self._wake.set()

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._closed_at = time.monotonic()
        self._close_frame = encode_close(code, reason)
        self._wake.set()
        self._end()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def overflowed(self) -> bool:
        return self._overflowed

    # -- the HTTP side ----------------------------------------------------------------------

    def deliver(self, texts: list[Inbound]) -> None:
        """Inbound messages (an ``xhr_send``'s, in order); dropped once closed."""
        if self._closed or not texts:
            return
        if self._on_inbound is not None:
            self._on_inbound(texts)
        else:
            self._inbound.put(texts)

    @property
    def receiving_now(self) -> bool:
        """A receiving request is attached."""
        return self._receiver is not None

    def receive_frames(
        self, kind: HttpKind, callback: str = "", peer: socket.socket | None = None
    ) -> Iterator[bytes]:
        """The body of one receiving request: the prelude, then frames as ``kind`` carries
        them, one per item, until the response is full (streaming), has one frame
        (polling), has the close frame, or the session is handed over. Iterate it from
        the request's greenlet; a second receiving request while one is attached is the
        caller's to refuse."""
        token = object()
        self._receiver = token
        self._wake.set()
        written = 0
        watcher = gevent.spawn(self._watch, peer, token) if peer is not None else None
        try:
            head = prelude(kind, callback)
            if head:
                yield head.encode()
            while True:
                frame = self._take()
                if frame is None:
                    if self._handed_over or (self._closed and self._close_frame is None):
                        return
                    self._wake.clear()
                    if not self._pending():
                        self._wake.wait(_IDLE_WAIT)
                    continue
                data = encode_for(kind, frame, callback).encode("utf-8", "replace")
                written += len(data)
                last = frame == self._close_frame or not kind.streaming or written >= self._limit
                if last and self._receiver is token:
                    # Let go before the last write, not after it: the client's next
                    # request may come (to another relay, asking for the session) before
                    # this greenlet runs again, and must not find it still attached.
                    self._receiver = None
                    self._idle_since = time.monotonic()
                yield data
                # Resumed: the frame went to the socket (a failed write closes us instead).
                self._last_sent = time.monotonic()
                if last:
                    return
        except GeneratorExit:
            # The client went away mid-response: what it got is unknown. Its SockJS client
            # saw an error and starts a new session, whose connect resumes exactly.
            self._interrupt()
            raise
        finally:
            if watcher is not None:
                watcher.kill(block=False)
            if self._receiver is token:
                self._receiver = None
                self._idle_since = time.monotonic()

    def _watch(self, peer: socket.socket, token: object) -> None:
        """While a receiving request waits, notice its client going away (a closed
        connection is readable and reads empty), as sockjs-node does: the session ends
        as interrupted instead of holding the session until a write fails."""
        try:
            gevent.socket.wait_read(peer.fileno())
            gone = peer.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            gone = True
        except Exception:
            return  # a socket this cannot peek at (TLS: ValueError): the next write tells
        if gone and self._receiver is token:
            self._receiver = None
            self._idle_since = time.monotonic()
            self._interrupt()

    def _interrupt(self) -> None:
        """A receiving request's client went away mid-response: the session ends, and
        what asks for it next gets ``c[1002,"Connection interrupted"]``."""
        if not self._closed:
            self._closed = True
            self._closed_at = time.monotonic()
            self._close_frame = encode_close(*INTERRUPTED)
            self._wake.set()
            self._end()

    def _pending(self) -> bool:
        return bool(
            self._open_pending or self._texts or self._heartbeat_pending or self._close_frame
        )

    def _take(self) -> str | None:
        """The next frame to send (None: nothing): ``o``, then the queued messages, then
        the close frame, else a due heartbeat."""
        frame: str | None = None
        if self._open_pending:
            frame = OPEN
            self._open_pending = False
        elif self._texts:
            frame = encode_messages(self._texts)
            self._texts = []
            self._chars = 0
        elif self._close_frame is not None and not self._handed_over:
            # Served to this request and to every later one until the session is gone,
            # as sockjs-node does.
            frame = self._close_frame
        elif self._heartbeat_pending:
            frame = HEARTBEAT
        self._heartbeat_pending = False
        return frame

    def close_frame(self) -> str | None:
        """The ``c[...]`` frame a closed session answers every receiving request with."""
        return self._close_frame

    def unwritten(self) -> list[str]:
        """The DDP texts the client has not been given (for a hand-over's count)."""
        return list(self._texts)

    def hand_over(self) -> None:
        """End without a close frame: the session continues on another relay."""
        self._handed_over = True
        if not self._closed:
            self._closed = True
            self._closed_at = time.monotonic()
            self._close_frame = None
            self._wake.set()
            self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._inbound.put(None)
        on_end = self._on_end
        if on_end is not None:
            # Not from the closer's frame: the session's teardown may wait for methods.
            gevent.spawn(on_end)

    # -- the ticker -------------------------------------------------------------------------

    def heartbeat(self, now: float) -> None:
        """Called by the worker's ticker: an ``h`` for an idle receiving request, and the
        end of a session no request has come for in ``disconnect_delay`` seconds."""
        if self._closed:
            return
        if self._receiver is None:
            if now - self._idle_since >= self._delay:
                self._closed = True
                self._closed_at = now
                self._end()
            return
        if now - self._last_sent >= self._interval and not self._pending():
            self._heartbeat_pending = True
            self._last_sent = now
            self._wake.set()

    def expired(self, now: float) -> bool:
        """Closed ``disconnect_delay`` seconds ago (however often it was asked since):
        whoever keeps the session's table may forget it (its close frame is no longer
        served)."""
        return self._closed and self._receiver is None and now - self._closed_at >= self._delay

    def idle_for(self, now: float) -> float:
        """Seconds without a receiving request attached (0 while one is)."""
        return 0.0 if self._receiver is not None else now - self._idle_since
