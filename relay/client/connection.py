"""The DDP client's connection: the socket, its reader thread, calls and subscriptions.

Layer: a client library on top of ``relay.protocol`` (EJSON, SockJS framing); used by the
test suite and the load tests, and usable by applications. It speaks to any DDP server,
over a raw WebSocket or SockJS. Threads: one reader thread per connection (a greenlet
under gevent's monkey-patching, as in locust), so calls block only their caller. The
reader thread also runs the reconnect loop, so a client never has more than one
background thread.

:class:`DDPClient` owns the socket, the lock, the outstanding calls (``call`` blocks until
both ``result`` and ``updated``), the subscriptions (``ready_subs``, ``nosubs``) and the
counters. It wires the pure parts: the document cache and quiescence buffer
(``relay.client.cache``) and Meteor's reconnect rules (``relay.client.reconnect``, whose
docstring says what is re-sent and when). Every received message is kept in ``received``
for inspection (unless ``keep_received=False``, for long runs). ``received_count`` counts
the messages of the current session, ping/pong excluded; after a new session it restarts
at 1 (the ``connected``), as in Meteor 3.5.

Reconnect is opt-in (``auto_reconnect=True``). ``close()`` sends ``{"msg": "disconnect"}``
first (Meteor 3.5's deliberate disconnect: the server drops the session at once) and stops
reconnecting.

Must not: import the relay runtime (sessions, gevent, Django); hold merge, retry or resume
rules of its own (they live in ``cache`` and ``reconnect``, testable without a socket).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import websocket
except ModuleNotFoundError as exc:  # pragma: no cover - only without the ``client`` extra
    if exc.name != "websocket":
        raise
    raise ModuleNotFoundError(
        "relay.client.DDPClient needs websocket-client, the 'client' extra: "
        "pip install 'ddp-relay[client]'",
        name=exc.name,
    ) from exc

from relay.client.cache import Collections, DocumentCache, QuiescenceBuffer
from relay.client.errors import DDPClientError
from relay.client.reconnect import (
    RETRY_BASE,
    RETRY_MAX,
    RETRY_MIN,
    calls_done_at_quiescence,
    connect_message,
    connected_outcome,
    login_token_after,
    plan_resume,
    retry_delays,
    should_reconnect,
)
from relay.protocol import ejson, sockjs


@dataclass
class _Call:
    msg: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: dict[str, Any] | None = None
    has_result: bool = False
    updated: bool = False


class DDPClient:
    """A connection to a DDP server at ``url`` (``ws://host:port/websocket`` or ``http://host:port``
    with ``sockjs=True``).

    Reconnect options (all off by default; the rules are ``relay.client.reconnect``'s):
    ``auto_reconnect``, ``resume`` (send ``receivedCount``), ``reconnect_base``/
    ``reconnect_max``/``reconnect_min`` (the ``Retry`` numbers, in seconds),
    ``max_reconnect_attempts`` (give up and set ``closed`` after that many failed attempts
    in a row; ``None``: never) and ``rng`` (the jitter's source). ``keep_received=False``
    keeps no message history.
    """

    def __init__(
        self,
        url: str,
        *,
        sockjs: bool = False,
        headers: Sequence[str] = (),
        timeout: float = 10.0,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        auto_reconnect: bool = False,
        resume: bool = True,
        reconnect_base: float = RETRY_BASE,
        reconnect_max: float = RETRY_MAX,
        reconnect_min: float = RETRY_MIN,
        max_reconnect_attempts: int | None = None,
        keep_received: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.use_sockjs = sockjs
        self.headers = list(headers)
        self.timeout = timeout
        self.on_message = on_message
        self.auto_reconnect = auto_reconnect
        self.resume = resume
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.reconnect_min = reconnect_min
        self.max_reconnect_attempts = max_reconnect_attempts
        self.keep_received = keep_received
        self.rng = rng or random.Random()
        self.session: str | None = None
        self._cache = DocumentCache()
        self.received: list[dict[str, Any]] = []
        self.ready_subs: set[str] = set()
        self.nosubs: dict[str, dict[str, Any] | None] = {}
        self.errors: list[dict[str, Any]] = []
        self.closed = threading.Event()
        #: Messages received on the current session, ping/pong excluded, ``connected`` = 1.
        self.received_count = 0
        #: Reconnects that reached ``connected``; of those, same session id / new session id.
        self.reconnects = 0
        self.resumes = 0
        self.resyncs = 0
        #: Per reconnect, seconds from the socket loss to ``connected``.
        self.reconnect_latencies: list[float] = []
        self._ws: websocket.WebSocket | None = None
        # Reentrant: wait_for() predicates may call docs() while the condition holds it.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # Serialises writes and the socket swap on reconnect (never taken by the reader while
        # it holds ``_lock``, except to answer a ping).
        self._send_lock = threading.RLock()
        self._calls: dict[str, _Call] = {}
        self._subs: dict[str, dict[str, Any]] = {}  # active sub id -> its ``sub`` message
        self._ids = itertools.count(1)
        self._connected = threading.Event()
        self._reader: threading.Thread | None = None
        self._version = "1"
        self._up = False  # the current socket is believed open
        self._closing = False  # close() was called: no more reconnects
        self._stop = threading.Event()
        self._lost_at: float | None = None
        self._resent_subs: frozenset[str] = frozenset()
        self._resent_methods: frozenset[str] = frozenset()
        self._quiescence = QuiescenceBuffer()
        self._pending_unsubs: list[str] = []
        #: The resume token of the logged-in user (from a ``login``-like result), sent
        #: with ``login`` right behind ``connect`` on every reconnect, as Meteor does.
        self.login_token: str | None = None

    # -- the cache, seen as attributes ----------------------------------------------------------

    @property
    def collections(self) -> Collections:
        """collection -> id -> fields: the live cache (read it under ``wait_for`` or
        ``docs()``; the reader thread changes it)."""
        return self._cache.collections

    @collections.setter
    def collections(self, value: Collections) -> None:
        self._cache.collections = value

    @property
    def violations(self) -> list[str]:
        """Merge-rule breaks (and ``updated`` for unknown methods) seen; tests assert none."""
        return self._cache.violations

    @violations.setter
    def violations(self, value: list[str]) -> None:
        self._cache.violations = value

    @property
    def _subs_reviving(self) -> set[str] | None:
        # Subclasses (tests/e2e) read this to tell whether quiescence is still awaited.
        return self._quiescence.subs_reviving

    # -- connection -------------------------------------------------------------------------

    def _ws_url(self) -> str:
        if not self.use_sockjs:
            return self.url
        base = self.url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        server = f"{random.randrange(1000):03d}"
        session = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        return f"{base}/sockjs/{server}/{session}/websocket"

    def _open_socket(self) -> websocket.WebSocket:
        ws = websocket.create_connection(self._ws_url(), timeout=self.timeout, header=self.headers)
        try:
            if self.use_sockjs:
                opening = ws.recv()
                if opening != sockjs.OPEN:
                    raise ConnectionError(f"expected SockJS open frame, got {opening!r}")
            ws.settimeout(None)
        except BaseException:
            with contextlib.suppress(Exception):
                ws.shutdown()  # type: ignore[no-untyped-call]
            raise
        return ws

    def connect(self, *, version: str = "1", session: str | None = None) -> str:
        """Open the socket, send ``connect`` and wait for ``connected``; return the session id."""
        self._version = version
        ws = self._open_socket()
        with self._send_lock:
            self._ws = ws
            self._up = True
        self._reader = threading.Thread(target=self._run, args=(ws,), daemon=True)
        self._reader.start()
        self.send(connect_message(version, session, None))
        if not self._connected.wait(self.timeout):
            raise TimeoutError("no connected message")
        assert self.session is not None
        return self.session

    def send(self, msg: dict[str, Any]) -> None:
        """Send one DDP message (``params`` are EJSON-encoded)."""
        out = dict(msg)
        if "params" in out:
            out["params"] = ejson.to_json_value(out["params"])
        self.send_raw(json.dumps(out, separators=(",", ":")))

    def send_raw(self, text: str) -> None:
        """Send one DDP frame as is (wrapped in SockJS framing when on SockJS)."""
        with self._send_lock:
            assert self._ws is not None
            # Client-to-server SockJS frames are a bare JSON array of strings (no ``a`` prefix).
            self._ws.send(json.dumps([text]) if self.use_sockjs else text)

    def _send_tracked(self, msg: dict[str, Any]) -> None:
        """Send a method or sub that a reconnect re-sends anyway: while the socket is down
        (with ``auto_reconnect``), sending is skipped or its failure ignored."""
        with self._send_lock:
            if self.auto_reconnect and not self._closing:
                if not self._up:
                    return
                with contextlib.suppress(OSError, websocket.WebSocketException):
                    self.send(msg)
                return
            self.send(msg)

    def close(self) -> None:
        """Send ``disconnect``, close the socket and stop reconnecting."""
        with self._lock:
            self._closing = True
        self._stop.set()
        with self._send_lock:
            ws, up = self._ws, self._up
            if ws is not None and up:
                with contextlib.suppress(Exception):
                    self.send({"msg": "disconnect"})
        if self._reader is None:
            self.closed.set()
        if ws is not None:
            # Send the close frame without reading here (the reader thread reads the
            # answer); then cut the socket if the peer did not close it meanwhile.
            with contextlib.suppress(Exception):  # already closed by the peer
                ws.send_close()
            self.closed.wait(min(self.timeout, 3.0))
            with contextlib.suppress(Exception):
                ws.shutdown()  # type: ignore[no-untyped-call]
        self.closed.wait(self.timeout)

    # -- calls and subscriptions ----------------------------------------------------------------

    def call(self, method: str, *params: Any, random_seed: str | None = None) -> Any:
        """Call ``method`` and wait for both ``result`` and ``updated``; raise DDPClientError."""
        call_id = str(next(self._ids))
        msg: dict[str, Any] = {"msg": "method", "method": method, "params": list(params)}
        msg["id"] = call_id
        if random_seed is not None:
            msg["randomSeed"] = random_seed
        state = _Call(msg=msg)
        with self._send_lock:
            with self._lock:
                self._calls[call_id] = state
            self._send_tracked(msg)
        if not state.done.wait(self.timeout):
            raise TimeoutError(f"method {method} did not complete")
        if state.error is not None:
            raise DDPClientError(state.error)
        return state.result

    def subscribe(self, name: str, *params: Any, wait: bool = True) -> str:
        """Subscribe; wait for ``ready`` (raise DDPClientError on ``nosub`` with an error)."""
        sub_id = "".join(random.choices(string.ascii_letters + string.digits, k=17))
        msg: dict[str, Any] = {"msg": "sub", "id": sub_id, "name": name, "params": list(params)}
        with self._send_lock:
            with self._lock:
                self._subs[sub_id] = msg
            self._send_tracked(msg)
        if wait:
            self.wait_for(lambda: sub_id in self.ready_subs or sub_id in self.nosubs)
            if sub_id in self.nosubs and self.nosubs[sub_id] is not None:
                raise DDPClientError(self.nosubs[sub_id] or {})
        return sub_id

    def unsubscribe(self, sub_id: str, *, wait: bool = True) -> None:
        """Send ``unsub`` (queued until after the re-sent subs while reconnecting)."""
        msg = {"msg": "unsub", "id": sub_id}
        with self._send_lock:
            with self._lock:
                self._subs.pop(sub_id, None)
            if self.auto_reconnect and not self._closing and not self._up:
                self._pending_unsubs.append(sub_id)
            else:
                self._send_tracked(msg)
        if wait:
            self.wait_for(lambda: sub_id in self.nosubs)

    def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Block until ``predicate()`` holds (evaluated under the client's lock)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not reached")
                self._cond.wait(remaining)

    def docs(self, collection: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._cache.docs(collection)

    # -- reading and reconnecting ------------------------------------------------------------------

    def _run(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                self._read(ws)
                with self._send_lock:
                    self._up = False
                    if self._ws is ws:
                        with contextlib.suppress(Exception):
                            ws.shutdown()  # type: ignore[no-untyped-call]
                with self._cond:
                    self._cond.notify_all()
                    retry = should_reconnect(
                        auto_reconnect=self.auto_reconnect,
                        closing=self._closing,
                        session=self.session,
                    )
                    if retry and self._lost_at is None:  # latency counts from the first loss
                        self._lost_at = time.monotonic()
                if not retry:
                    return
                new = self._reconnect()
                if new is None:
                    return
                ws = new
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

    def _read(self, ws: websocket.WebSocket) -> None:
        try:
            while True:
                frame = ws.recv()
                if not frame:
                    break
                texts = self._unframe(frame)
                if texts is None:
                    break
                for text in texts:
                    self._handle(json.loads(text))
        except Exception:  # the socket closed or broke: this connection is over
            pass

    def _reconnect(self) -> websocket.WebSocket | None:
        """Retry until a socket opens; send connect + re-sends on it. None: give up."""
        delays = retry_delays(
            base=self.reconnect_base,
            maximum=self.reconnect_max,
            minimum=self.reconnect_min,
            max_attempts=self.max_reconnect_attempts,
            rng=self.rng,
        )
        for delay in delays:
            if self._stop.wait(delay):
                return None
            try:
                ws = self._open_socket()
            except Exception:
                continue
            with self._send_lock:
                if self._closing:
                    with contextlib.suppress(Exception):
                        ws.shutdown()  # type: ignore[no-untyped-call]
                    return None
                self._ws = ws
                self._up = True
                # Lost again at once: the reader notices and retries.
                with contextlib.suppress(Exception):
                    self._send_resume(ws)
            return ws
        return None  # max_reconnect_attempts failed in a row

    def _send_resume(self, ws: websocket.WebSocket) -> None:
        """``connect``, then outstanding methods, active subs and queued unsubs (Meteor's
        ``onReset``). Called with ``_send_lock`` held."""
        with self._lock:
            login_id = str(next(self._ids))
            plan = plan_resume(
                version=self._version,
                session=self.session,
                received_count=self.received_count,
                resume=self.resume,
                calls=self._calls,
                subs=self._subs.values(),
                unsubs=self._pending_unsubs,
                login_token=self.login_token,
                login_id=login_id,
            )
            if plan.login is not None:
                # Tracked like any call (its answer updates login_token); nobody waits.
                self._calls[login_id] = _Call(msg=plan.login)
            self._pending_unsubs = []
            self._resent_methods = plan.method_ids
            self._resent_subs = plan.sub_ids
        # One by one through send(): subclasses (tests/e2e) watch what goes out there.
        for msg in plan.messages:
            self.send(msg)

    def _unframe(self, frame: str | bytes) -> list[str] | None:
        text = frame.decode() if isinstance(frame, bytes) else frame
        if not self.use_sockjs:
            return [text]
        if text == sockjs.HEARTBEAT or text == sockjs.OPEN:
            return []
        if text.startswith("a"):
            return [str(t) for t in json.loads(text[1:])]
        if text.startswith("c"):
            return None
        return []

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("msg")
        if kind == "ping":
            reply: dict[str, Any] = {"msg": "pong"}
            if "id" in msg:
                reply["id"] = msg["id"]
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.send(reply)
            return
        with self._cond:
            if kind != "pong":
                self.received_count += 1
                if self.keep_received:
                    self.received.append(msg)
            if kind == "connected":
                self._on_connected(msg)
            else:
                held, batch = self._quiescence.receive(msg)
                if batch is not None:
                    self._quiesce(batch)
                if not held:
                    self._dispatch(msg)
            self._cond.notify_all()
        if self.on_message is not None:
            self.on_message(msg)

    def _on_connected(self, msg: dict[str, Any]) -> None:
        session = msg.get("session")
        previous = self.session
        reconnecting = self._lost_at is not None
        if reconnecting:
            assert self._lost_at is not None
            self.reconnects += 1
            self.reconnect_latencies.append(time.monotonic() - self._lost_at)
            self._lost_at = None
        if isinstance(session, str):
            self.session = session
        outcome = connected_outcome(reconnecting=reconnecting, previous=previous, session=session)
        if outcome == "resumed":
            self.resumes += 1  # the count goes on, the cache is kept
        elif outcome == "new":
            self.resyncs += 1
            self.received_count = 1
            # Wait for what was re-sent and is still wanted (unsubscribed or finished since:
            # nothing will come for it).
            batch = self._quiescence.begin(
                subs=self._resent_subs & self._subs.keys(),
                methods=self._resent_methods & self._calls.keys(),
            )
            if batch is not None:
                self._quiesce(batch)
        self._connected.set()

    def _quiesce(self, batch: list[dict[str, Any]]) -> None:
        """Quiescence reached: a fresh cache from the held batch, then the calls whose
        ``updated`` the old session owed."""
        self._cache.reset()  # Meteor resets every store, then applies the batch
        for msg in batch:
            self._dispatch(msg)
        for call_id in calls_done_at_quiescence(self._calls, self._resent_methods):
            call = self._calls[call_id]
            call.updated = True
            self._finish(call_id, call)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("msg")
        if kind in ("added", "changed", "removed"):
            self._cache.apply(msg)
        elif kind == "ready":
            self.ready_subs.update(msg["subs"])
        elif kind == "nosub":
            sub_id = msg.get("id", "")
            self.nosubs[sub_id] = msg.get("error")
            self.ready_subs.discard(sub_id)
            self._subs.pop(sub_id, None)
        elif kind == "result":
            call = self._calls.get(msg["id"])
            if call is not None and not call.has_result:
                call.has_result = True
                call.error = msg.get("error")
                call.result = ejson.from_json_value(msg.get("result"))
                self.login_token = login_token_after(
                    self.login_token,
                    str(call.msg.get("method", "")),
                    call.msg.get("params"),
                    call.result,
                    call.error,
                )
                self._finish(msg["id"], call)
        elif kind == "updated":
            for method_id in msg["methods"]:
                call = self._calls.get(method_id)
                if call is None:
                    self.violations.append(f"updated for unknown method {method_id}")
                    continue
                call.updated = True
                self._finish(method_id, call)
        elif kind == "error":
            self.errors.append(msg)

    def _finish(self, call_id: str, call: _Call) -> None:
        if call.has_result and call.updated:
            self._calls.pop(call_id, None)  # bounded memory: finished calls are forgotten
            call.done.set()
