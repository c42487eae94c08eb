"""An RFC 6455 WebSocket connection on the raw socket gunicorn's gevent worker hands the app.

Layer: runtime (gevent + wsproto). A ``WebSocket`` wraps a socket whose opening
handshake is complete (``relay.transport.handshake.accept`` writes the ``101`` and builds it) and
drives a wsproto ``Connection``: it reads messages, writes frames and closes. It must not
monkey-patch, spawn anything at import, keep a greenlet or timer per idle connection, or
block a caller of ``send``: fan-out writes to thousands of sockets from one greenlet. It
knows nothing of HTTP, Origins or negotiation, and must not import ``relay.transport.handshake``
(which imports this module).

Reading: ``start`` waits for input with a libev watcher and handles it in a greenlet that
lives only while there is input to handle, so an idle socket holds no greenlet (the relay's
mode); ``receive`` blocks the caller's greenlet instead. With ``owns_socket`` (a descriptor
``accept`` duplicated) the WebSocket outlives the request handler. Inbound
permessage-deflate goes through ``_BoundedDeflate``, which lives here because it is part of
reading: it enforces ``max_message_bytes`` while inflating (1009) and keeps control frames
from disturbing a compressed message; the handshake only decides whether to use one.
Writing goes through an outbound buffer flushed by a writer greenlet that exists only
while there is something to flush, so an idle socket costs its objects and nothing else.
A socket whose buffer grows past ``send_buffer_bytes`` is closed with 1008 "too slow"
instead of slowing anyone down. Bytes the kernel took are added to ``relay.metrics.TALLY``
(an integer: no metric call per write).

Closing is a lingering close: the close frame goes out after the pending data, then the
write side is shut (FIN), and the read side is drained until the peer answers. Closing the
descriptor with unread input would make the kernel send a reset that can destroy frames
the peer has not read yet. A one-shot timer (only while closing) aborts after 1 s.

Requires gunicorn's own async worker (``-k gevent``): the pywsgi worker has no
``gunicorn.socket`` and would write its own response on the socket.

Size: past the 600-line mark because reading, writing and closing share one object's
state (the wsproto ``Connection``, the outbound buffer, the close state); the handshake
already lives apart, in ``relay/transport/handshake.py``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import gevent
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import LocalProtocolError as WsprotoLocalError

from relay.limits.budget import ByteBudget
from relay.metrics import TALLY
from relay.transport.frames import (
    DEFAULT_THRESHOLD,
    Compression,
    encode_text_frame,
    shared_compression,
)

__all__ = [
    "Oversized",
    "WebSocket",
]

_RECV_BYTES: Final = 65536
#: Messages one reader greenlet handles before it lets the others run.
_PUMP_YIELD_EVERY: Final = 64
#: ...or after this much input text, whichever comes first (parsing a flood of large
#: messages must not hold the loop: other sessions' pings and updates wait behind it).
_PUMP_YIELD_BYTES: Final = 256 * 1024
#: ``_next``/``_fill`` without blocking: nothing to read now.
_WOULD_BLOCK: Final = object()

log = logging.getLogger(__name__)


def _ended(item: str | Oversized) -> None:
    """The message handler after the end: nothing more is delivered."""


#: Longest a close may take (flush + the peer's answer) before the socket is aborted.
CLOSE_GRACE_SECONDS: Final = 1.0
#: Reasons for the close codes raised by the frame parser (wsproto's are too chatty).
_PARSE_REASONS: Final[dict[int, str]] = {
    CloseReason.PROTOCOL_ERROR: "protocol error",
    CloseReason.INVALID_FRAME_PAYLOAD_DATA: "invalid frame payload",
    CloseReason.MESSAGE_TOO_BIG: "message too big",
}


#: How much of a too-large message is kept to echo in the DDP error.
_OVERSIZED_PREFIX = 256


@dataclass(frozen=True, slots=True)
class Oversized:
    """A text message larger than the limit was received and dropped."""

    #: Bytes received for the message.
    size: int
    #: The configured limit.
    limit: int
    #: Its first characters, for the error's ``offendingMessage``.
    prefix: str


class _EventQueue(list[Event]):
    """wsproto's queue of parsed events, as a list: it holds an event or two at a time,
    and the deque wsproto uses costs 760 bytes per idle socket (its first block)."""

    def popleft(self) -> Event:
        return self.pop(0)


class _Connection(Connection):
    """wsproto's ``Connection`` with the lighter event queue: the one private attribute of
    wsproto this module replaces (it only appends, pops from the front and tests it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events = _EventQueue()  # type: ignore[assignment]


class _BoundedDeflate(PerMessageDeflate):
    """permessage-deflate that never inflates more than ``limit`` bytes of one message.

    wsproto inflates each received chunk without a bound, so 64 KiB of compressed zeros
    would become 64 MiB before any size check could run. Here the decompressor gets a
    ``max_length`` and the message fails with 1009 as soon as it passes the limit.

    Both directions run without context takeover: a kept deflate context costs about
    300 KiB per socket for as long as it lives, which idle sessions cannot afford. RFC 7692
    7.1.1 lets a server ask for this even when the client did not offer it.

    It lives here, not in ``relay.transport.handshake``: what it overrides runs on the inbound frame
    path ``WebSocket`` drives, and ``receive``'s 1009 promise rests on it. The handshake
    only creates one per accepted offer (``relay.transport.handshake._negotiate_deflate``).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self._limit = limit
        self._inflated = 0

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if not opcode.iscontrol():
            return super().frame_inbound_header(proto, opcode, rsv, payload_length)
        # A ping may sit between the fragments of a compressed message. wsproto would take
        # its RSV1 (0) as the message's and reset it after the ping, so the rest of the
        # message went uninflated (1007). Control frames leave the message state alone.
        if rsv.rsv1:
            return CloseReason.PROTOCOL_ERROR
        self._inbound_is_compressible = False
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        # Private attributes of wsproto's PerMessageDeflate (stable since 0.x); a test
        # with a deflate bomb guards against them changing.
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        try:
            out = self._decompressor.decompress(bytes(data), self._limit - self._inflated + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self._limit:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not self._inbound_is_compressible:
            return None  # a control frame (see frame_inbound_header)
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


def _is_tls(sock: Any) -> bool:
    # Here because WebSocket's direct writes depend on it; relay.transport.handshake imports it too.
    # gevent's SSLSocket is not a subclass of the stdlib's; both have getpeercert. Under a
    # TLS socket, ``_sock`` carries ciphertext: never read or write it directly.
    return isinstance(sock, ssl.SSLSocket) or hasattr(sock, "getpeercert")


def _sendable_close_code(code: int) -> int:
    # 1004-1006 and 1015 must never be sent, and 1016-2999 are reserved (sockjs's 2010
    # is not a WebSocket code): anything outside the sendable ranges becomes 1000.
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1000


class WebSocket:
    """One accepted WebSocket. ``receive`` from one greenlet; ``send`` from any.

    ``close_code``/``close_reason`` hold the first close decided on either side (1006
    when the connection just vanished). ``overflowed`` is set when it was closed for
    letting more than ``send_buffer_bytes`` pile up.
    """

    __slots__ = (
        "_budget",
        "_budget_full",
        "_close_queued",
        "_closing",
        "_compression",
        "_conn",
        "_discarding",
        "_events",
        "_inflight",
        "_max_buffer",
        "_max_message",
        "_message",
        "_message_bytes",
        "_on_end",
        "_on_message",
        "_out",
        "_out_bytes",
        "_owned",
        "_raw",
        "_read_done",
        "_read_timer",
        "_reading",
        "_shut",
        "_sock",
        "_throttle",
        "_throttle_wait",
        "_timer",
        "_watcher",
        "_writer",
        "close_code",
        "close_reason",
        "overflowed",
    )

    def __init__(
        self,
        sock: Any,
        *,
        max_message_bytes: int,
        send_buffer_bytes: int,
        extension: PerMessageDeflate | None = None,
        compress_threshold: int = DEFAULT_THRESHOLD,
        initial_data: bytes = b"",
        owns_socket: bool = False,
        send_budget: ByteBudget | None = None,
        read_throttle: Callable[[int], float] | None = None,
    ) -> None:
        """Wrap ``sock`` (a gevent socket) whose opening handshake is already complete.

        With ``extension`` (permessage-deflate, negotiated without context takeover),
        outbound messages of ``compress_threshold`` bytes or more are compressed. With
        ``owns_socket`` the socket is closed once the WebSocket is done (``wait_closed``).
        ``send_budget`` is the worker's: the bytes queued on all its sockets together; a
        socket whose queue would pass it is closed as too slow, like one past its own
        ``send_buffer_bytes``. ``read_throttle(n)`` is told of every ``n`` bytes read and
        answers how many seconds to stop reading (the client's address over its byte rate:
        TCP back-pressure slows it down, and its input costs no CPU meanwhile)."""
        self._sock = sock
        self._owned = owns_socket
        self._on_message: Callable[[str | Oversized], None] | None = None
        self._on_end: Callable[[], None] | None = None
        self._watcher: Any = None
        #: The non-blocking socket under gevent's, for direct writes (None: not gevent's).
        self._raw: Any = None if _is_tls(sock) else getattr(sock, "_sock", None)
        self._compression = (
            None
            if extension is None
            else shared_compression(int(extension.server_max_window_bits), compress_threshold)
        )
        self._conn = _Connection(
            ConnectionType.SERVER, extensions=[extension] if extension is not None else None
        )
        self._max_message = max_message_bytes
        self._max_buffer = send_buffer_bytes
        self._events: Iterator[Event] | None = None
        self._message: list[str] | None = None
        self._message_bytes = 0
        #: Prefix of a too-large text message whose rest is being dropped, or None.
        self._discarding: str | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        #: This socket's share of the worker's budget (no limit of its own: that is
        #: ``send_buffer_bytes``); it holds the part of ``_out_bytes`` taken from it.
        self._budget = (
            None
            if send_budget is None
            else ByteBudget(0, send_budget, name="socket", on_evict=self._evict)
        )
        self._budget_full = False
        self._throttle = read_throttle
        #: Seconds the reader owes the throttle (checked between messages).
        self._throttle_wait = 0.0
        self._read_timer: Any = None
        self._inflight = 0
        self._writer: Any = None
        self._timer: Any = None
        self._closing = False
        self._close_queued = False
        self._read_done = False
        self._reading = False
        self._shut = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.overflowed = False
        if initial_data:
            self._conn.receive_data(initial_data)
            self._events = self._conn.events()

    # -- state -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close began on either side: nothing sent from now on is delivered."""
        return self._closing

    @property
    def buffered_bytes(self) -> int:
        """Outbound bytes not yet accepted by the kernel (queued plus the batch in flight)."""
        return self._out_bytes

    @property
    def deflate(self) -> bool:
        """Whether permessage-deflate was negotiated."""
        return self._compression is not None

    @property
    def owns_socket(self) -> bool:
        """Whether the descriptor is this object's (gunicorn's handler may then return)."""
        return self._owned

    @property
    def compression(self) -> Compression | None:
        """What frames for this socket look like: ``encode_text_frame(text, compression)``
        gives bytes ``send_frames`` can write, shareable with every socket of equal value."""
        return self._compression

    # -- receiving ---------------------------------------------------------------------

    def receive(self) -> str | Oversized | None:
        """Block (cooperatively) until a whole TEXT message arrives; None once closed.

        Never raises for anything the peer does: protocol errors close with 1002 and
        invalid UTF-8 with 1007. A text message over ``max_message_bytes`` is dropped as it
        arrives and reported as ``Oversized`` (the session answers it with a DDP error and
        goes on); a compressed one that inflates past the limit closes with 1009, since
        inflating it is the attack. Binary messages are dropped. Pings are answered, a
        Close is echoed. ``start`` is the alternative that holds no greenlet while idle.
        """
        self._reading = True
        try:
            item = self._next(block=True)
            assert item is not _WOULD_BLOCK
            return item  # type: ignore[return-value]
        finally:
            self._reading = False

    def start(
        self, on_message: Callable[[str | Oversized], None], on_end: Callable[[], None]
    ) -> None:
        """Read in the background instead of calling ``receive``.

        ``on_message`` gets each message ``receive`` would return, in order, from a
        greenlet that exists only while input is being handled: an idle socket waits with
        a libev watcher and no greenlet (a parked greenlet costs ~8 KiB). ``on_end`` is
        called once, from such a greenlet, when the read side is over (the peer's close,
        EOF, an error, or ``abort``); the socket is then finished (``wait_closed``) and,
        when this object owns its descriptor, released. Exceptions from the callbacks are
        logged, never raised into the loop.
        """
        if self._on_message is not None:
            raise RuntimeError("WebSocket.start called twice")
        self._on_message = on_message
        self._on_end = on_end
        if self._raw is None:
            # No non-blocking socket underneath (TLS): one greenlet reads, as ``receive``.
            gevent.spawn(self._pump_blocking)
            return
        self._watcher = gevent.get_hub().loop.io(self._raw.fileno(), 1)
        # Input may already be buffered (bytes that came with the handshake).
        gevent.spawn(self._pump)

    def _readable(self) -> None:
        # In the hub: hand the work to a greenlet, which may block (locks, a full queue).
        assert self._watcher is not None
        self._watcher.stop()
        gevent.spawn(self._pump)

    def _pump(self) -> None:
        """Handle what can be read without waiting, then wait with the watcher again."""
        assert self._on_message is not None and self._watcher is not None
        handled = 0
        handled_bytes = 0
        while True:
            self._reading = True
            try:
                item = self._next(block=False)
            finally:
                self._reading = False
            if item is _WOULD_BLOCK:
                self._watcher.start(self._readable)
                return
            if item is None:
                break
            self._dispatch(item)  # type: ignore[arg-type]  # neither sentinel nor None
            if self._throttle_wait > 0:
                wait, self._throttle_wait = self._throttle_wait, 0.0
                self._pause_reading(wait)
                return
            handled += 1
            handled_bytes += item.size if isinstance(item, Oversized) else len(item)  # type: ignore[arg-type]
            if handled % _PUMP_YIELD_EVERY == 0 or handled_bytes > _PUMP_YIELD_BYTES:
                handled_bytes = 0
                gevent.sleep(0)  # a client that never pauses must not starve the others
        self._end()

    def _pause_reading(self, seconds: float) -> None:
        """Read nothing for ``seconds`` (a libev timer, no greenlet), then go on."""
        timer = gevent.get_hub().loop.timer(seconds)
        self._read_timer = timer
        timer.start(self._resume_reading)

    def _resume_reading(self) -> None:
        timer, self._read_timer = self._read_timer, None
        if timer is not None:
            timer.close()
        gevent.spawn(self._pump)

    def _pump_blocking(self) -> None:
        while (item := self.receive()) is not None:
            self._dispatch(item)
            if self._throttle_wait > 0:
                wait, self._throttle_wait = self._throttle_wait, 0.0
                gevent.sleep(wait)
        self._end()

    def _dispatch(self, item: str | Oversized) -> None:
        assert self._on_message is not None
        try:
            self._on_message(item)
        except Exception:
            log.exception("a WebSocket message handler failed")

    def _end(self) -> None:
        on_end, self._on_end = self._on_end, None
        self._on_message = _ended
        try:
            if on_end is not None:
                on_end()
        except Exception:
            log.exception("a WebSocket end handler failed")
        finally:
            self.wait_closed()

    def _next(self, block: bool) -> str | Oversized | object | None:
        """The next message; None once the read side is done; ``_WOULD_BLOCK`` when
        ``block`` is false and nothing more can be read now."""
        while not self._read_done:
            if self._events is None:
                filled = self._fill(block)
                if filled is _WOULD_BLOCK:
                    return _WOULD_BLOCK
                if not filled:
                    return None
            assert self._events is not None
            try:
                for event in self._events:
                    text = self._on_event(event)
                    if text is not None:
                        # The generator stays suspended here; the next call resumes it.
                        return text
                    if self._read_done:
                        return None
            except (AssertionError, ValueError, WsprotoLocalError):
                # wsproto reports most peer errors as a CloseConnection event, but a
                # few malformed inputs trip its assertions instead.
                self._fail(CloseReason.PROTOCOL_ERROR)
                return None
            self._events = None
        return None

    def _fill(self, block: bool) -> bool | object:
        if self._shut:
            self._read_done = True
            return False
        try:
            data = self._sock.recv(_RECV_BYTES) if block else self._raw.recv(_RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return _WOULD_BLOCK
        except OSError:
            data = b""
        if not data:
            # EOF without a close handshake (1006), or our own shutdown waking us up.
            self._read_done = True
            self.abort()
            return False
        if self._throttle is not None:
            self._throttle_wait = max(self._throttle_wait, self._throttle(len(data)))
        self._conn.receive_data(data)
        self._events = self._conn.events()
        return True

    def _on_event(self, event: Event) -> str | Oversized | None:
        if isinstance(event, TextMessage):
            return self._on_text(event)
        if isinstance(event, BytesMessage):
            # Ignored, but counted: an endless binary message is still bounded.
            if self._count(len(event.data)) and event.message_finished:
                self._message_bytes = 0
        elif isinstance(event, Ping):
            if self._conn.state is ConnectionState.OPEN and not self._closing:
                self._enqueue(self._conn.send(event.response()))
        elif isinstance(event, CloseConnection):
            self._on_close(event)
        return None

    def _on_text(self, event: TextMessage) -> str | Oversized | None:
        chunk: str = event.data
        if self._closing:
            return None  # after our close frame, data from the peer is dropped
        size = len(chunk) if chunk.isascii() else len(chunk.encode("utf-8"))
        if self._discarding is None and self._message_bytes + size > self._max_message:
            prefix = "".join(self._message or ()) + chunk
            self._discarding = prefix[:_OVERSIZED_PREFIX]
            self._message = None
        if self._discarding is not None:
            self._message_bytes += size
            if not event.message_finished:
                return None
            oversized = Oversized(self._message_bytes, self._max_message, self._discarding)
            self._discarding = None
            self._message_bytes = 0
            return oversized
        self._message_bytes += size
        if not event.message_finished:
            if chunk:  # empty fragments would grow the list for free
                if self._message is None:
                    self._message = []
                self._message.append(chunk)
            return None
        self._message_bytes = 0
        if self._message is None:
            return chunk
        self._message.append(chunk)
        text = "".join(self._message)
        self._message = None
        return text

    def _count(self, size: int) -> bool:
        self._message_bytes += size
        if self._message_bytes > self._max_message:
            self._fail(CloseReason.MESSAGE_TOO_BIG)
            return False
        return True

    def _on_close(self, event: CloseConnection) -> None:
        state = self._conn.state
        self._read_done = True
        self._message = None
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer started the close: answer with its code after the pending data.
            if self.close_code is None:
                self.close_code, self.close_reason = int(event.code), event.reason or ""
            self._closing = True
            self._queue_close(self._conn.send(event.response()))
        elif state is ConnectionState.CLOSED:
            pass  # the peer answered our close: the handshake is complete
        else:
            # wsproto turned a parse failure into a CloseConnection without changing state.
            self._fail(event.code)

    def _fail(self, code: int) -> None:
        self._message = None
        self._read_done = True
        self.close(code, _PARSE_REASONS.get(code, "protocol error"))

    # -- sending -----------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Queue one TEXT message; never blocks. Dropped silently once closed."""
        if self._closing:
            return
        self._enqueue(self._frame(text))

    def _frame(self, text: str) -> bytes:
        # Not wsproto's send: without context takeover its compressor holds nothing
        # between messages, and ``relay.transport.frames`` honours the size threshold.
        return encode_text_frame(text, self._compression)

    def send_many(self, texts: Sequence[str]) -> None:
        """Queue several TEXT messages, flushed together in one write; never blocks."""
        if self._closing:
            return
        for text in texts:
            self._enqueue(self._frame(text), flush=False)
        self._flush()

    def send_frame(self, frame: bytes) -> None:
        """Queue a frame built for ``self.compression`` (shared by many sockets); never
        blocks."""
        self.send_frames((frame,))

    def send_frames(self, frames: Sequence[bytes]) -> None:
        """Queue frames built for ``self.compression``, written together; never blocks."""
        if self._closing:
            return
        if not self._out and self._writer is None and self._raw is not None and not self._shut:
            # Fan-out's common case, kept short: nothing pending, so write at once.
            self._write_now(frames[0] if len(frames) == 1 else b"".join(frames))
            return
        for frame in frames:
            self._enqueue(frame, flush=False)
        self._flush()

    def _enqueue(self, frame: bytes, flush: bool = True) -> None:
        self._out.append(frame)
        self._add_out(len(frame))
        if flush:
            self._flush()

    def _flush(self) -> None:
        if self._overflowing():
            return
        if self._writer is None and self._out and not self._shut and not self._close_queued:
            self._try_direct_write()
        self._ensure_writer()

    def _add_out(self, delta: int) -> None:
        """Count ``delta`` bytes more (or fewer) queued, here and in the worker's budget.
        When the worker's is full, the socket holding the most gives way (closed as too
        slow), or this one when it holds the most."""
        self._out_bytes += delta
        budget = self._budget
        if budget is None:
            return
        if delta > 0:
            full = budget.reserve(delta)
            if full is not None and full.evict_largest(spare=budget):
                full = budget.reserve(delta)
            if full is not None:
                self._budget_full = True
        elif delta < 0:
            budget.release(-delta)  # clamped to what it holds: unreserved bytes are free

    def _evict(self) -> None:
        """The worker's budget is full and this socket holds the most: close it."""
        self._budget_full = True
        self._overflowing()

    def _overflowing(self) -> bool:
        if self._out_bytes <= self._max_buffer and not self._budget_full:
            return False
        # A peer that reads slower than we write: drop what is queued (the batch in
        # flight cannot be recalled) and close, rather than hold memory or block.
        self.overflowed = True
        self._out.clear()
        self._add_out(self._inflight - self._out_bytes)
        self.close(1008, "too slow")
        return True

    def _try_direct_write(self) -> None:
        """Write at once when nothing is pending: most fan-out writes fit the kernel buffer,
        and a greenlet per socket per message would cost more than the write. The raw
        socket under gevent's is non-blocking; whatever does not fit goes to the writer."""
        if self._raw is None:
            return
        batch = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._add_out(-len(batch))
        self._write_now(batch)

    def _write_now(self, batch: bytes) -> None:
        """Write ``batch`` (nothing else is pending) without blocking; what the kernel does
        not take is queued for the writer greenlet."""
        try:
            sent = self._raw.send(batch)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.abort()
            return
        TALLY.bytes_sent += sent
        if sent < len(batch):
            rest = batch[sent:]
            self._out.append(rest)
            self._add_out(len(rest))
            if not self._overflowing():
                self._ensure_writer()

    def _queue_close(self, frame: bytes) -> None:
        self._out.append(bytes(frame))
        self._add_out(len(frame))
        self._close_queued = True
        self._start_grace_timer()
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._writer is None and self._out and not self._shut:
            self._writer = gevent.spawn(self._write_pending)

    def _write_pending(self) -> None:
        try:
            while self._out and not self._shut:
                batch = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                self._out = []
                self._inflight = len(batch)
                try:
                    self._sock.sendall(batch)
                except OSError:
                    self.abort()
                    return
                finally:
                    self._add_out(-self._inflight)
                    self._inflight = 0
                TALLY.bytes_sent += len(batch)
            if self._close_queued and not self._shut:
                # Our close frame is out: send FIN too, so the peer's reader sees the end.
                try:
                    self._sock.shutdown(socket.SHUT_WR)
                except OSError:
                    self.abort()
        finally:
            self._writer = None

    # -- closing -----------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; never blocks and is idempotent.

        The close frame follows the data already queued; within ``CLOSE_GRACE_SECONDS``
        the socket is shut down whether or not the peer answered.
        """
        if self._closing:
            return
        self._closing = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self._shut:
            return
        if self._conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            frame = self._conn.send(
                CloseConnection(code=_sendable_close_code(code), reason=reason or None)
            )
            self._queue_close(frame)
        else:
            self._start_grace_timer()

    def wait_closed(self) -> None:
        """Close if needed and wait (at most ``CLOSE_GRACE_SECONDS``) until it is done.

        Call it from the greenlet that reads (or when nobody is in ``receive``), at the
        end of the WSGI handler, before ``raise StopIteration``.
        """
        self.close()
        writer = self._writer
        if writer is not None:
            writer.join()  # bounded: the grace timer aborts a writer stuck on a full socket
        if not self._reading:
            while self.receive() is not None:  # drain to the peer's close or EOF
                pass
        self.abort()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()
        if self._owned:
            self._owned = False
            with contextlib.suppress(OSError):
                self._sock.close()

    def abort(self) -> None:
        """Shut the socket down now, dropping anything queued. Idempotent; never raises.

        The descriptor itself stays open: gunicorn closes it when the request ends.
        """
        if self.close_code is None:
            self.close_code, self.close_reason = int(CloseReason.ABNORMAL_CLOSURE), ""
        self._closing = True
        self._read_done = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        if self._shut:
            return
        self._shut = True
        self._out.clear()
        self._add_out(self._inflight - self._out_bytes)
        if self._read_timer is not None:
            self._resume_reading()  # paused by the throttle: end the read side now
        with contextlib.suppress(OSError):
            # Wakes a greenlet blocked in recv (EOF) or in sendall (EPIPE).
            self._sock.shutdown(socket.SHUT_RDWR)

    def _start_grace_timer(self) -> None:
        if self._timer is None and not self._shut:
            # A libev timer, not a greenlet, and only while closing: idle sockets carry none.
            self._timer = gevent.get_hub().loop.timer(CLOSE_GRACE_SECONDS)
            self._timer.start(self.abort)
