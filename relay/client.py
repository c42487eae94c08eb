"""A Python DDP client: raw WebSocket or SockJS, a local cache with Meteor's merge rules.

Layer: a client library on top of ``relay.protocol`` (EJSON, SockJS framing, messages);
used by the test suite and the load tests, and usable by applications. It speaks to any
DDP server. Threads: one reader thread per connection (a greenlet under gevent's
monkey-patching, as in locust), so calls block only their caller.

The cache applies ``added``/``changed``/``removed`` strictly, like Meteor's server-side
client: an ``added`` for a document already present, or a ``changed``/``removed`` for a
missing one, is recorded in ``violations`` (tests assert it stays empty) instead of
raising. Every received message is kept in ``received`` for inspection.

Must not: import the relay runtime (sessions, gevent, Django).
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

import websocket

from relay.protocol import ejson, sockjs


class DDPClientError(Exception):
    """A method or subscription answered with a Meteor error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('error')}: {error.get('reason')}")
        self.error = error.get("error")
        self.reason = error.get("reason")
        self.details = error.get("details")


@dataclass
class _Call:
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: dict[str, Any] | None = None
    has_result: bool = False
    updated: bool = False


def _decode_fields(fields: dict[str, Any] | None) -> dict[str, Any]:
    return ejson.from_json_value(fields or {})  # type: ignore[no-any-return]


class DDPClient:
    """A connection to a DDP server at ``url`` (``ws://host:port/websocket`` or ``http://host:port``
    with ``sockjs=True``)."""

    def __init__(
        self,
        url: str,
        *,
        sockjs: bool = False,
        headers: Sequence[str] = (),
        timeout: float = 10.0,
        on_message: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.url = url
        self.use_sockjs = sockjs
        self.headers = list(headers)
        self.timeout = timeout
        self.on_message = on_message
        self.session: str | None = None
        self.collections: dict[str, dict[str, dict[str, Any]]] = {}
        self.violations: list[str] = []
        self.received: list[dict[str, Any]] = []
        self.ready_subs: set[str] = set()
        self.nosubs: dict[str, dict[str, Any] | None] = {}
        self.errors: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._ws: websocket.WebSocket | None = None
        # Reentrant: wait_for() predicates may call docs() while the condition holds it.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._calls: dict[str, _Call] = {}
        self._ids = itertools.count(1)
        self._connected = threading.Event()
        self._reader: threading.Thread | None = None

    # -- connection -------------------------------------------------------------------------

    def _ws_url(self) -> str:
        if not self.use_sockjs:
            return self.url
        base = self.url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        server = f"{random.randrange(1000):03d}"
        session = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        return f"{base}/sockjs/{server}/{session}/websocket"

    def connect(self, *, version: str = "1", session: str | None = None) -> str:
        """Open the socket, send ``connect`` and wait for ``connected``; return the session id."""
        self._ws = websocket.create_connection(
            self._ws_url(), timeout=self.timeout, header=self.headers
        )
        if self.use_sockjs:
            opening = self._ws.recv()
            if opening != sockjs.OPEN:
                raise ConnectionError(f"expected SockJS open frame, got {opening!r}")
        self._ws.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        msg: dict[str, Any] = {"msg": "connect", "version": version, "support": [version]}
        if session is not None:
            msg["session"] = session
        self.send(msg)
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
        assert self._ws is not None
        # Client-to-server SockJS frames are a bare JSON array of strings (no ``a`` prefix).
        self._ws.send(json.dumps([text]) if self.use_sockjs else text)

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):  # already closed by the peer
                self._ws.close()
        self.closed.wait(self.timeout)
        if self._ws is not None:
            self._ws.shutdown()  # type: ignore[no-untyped-call]  # close() skips it once closed

    # -- calls and subscriptions ----------------------------------------------------------------

    def call(self, method: str, *params: Any, random_seed: str | None = None) -> Any:
        """Call ``method`` and wait for both ``result`` and ``updated``; raise DDPClientError."""
        call_id = str(next(self._ids))
        state = _Call()
        with self._lock:
            self._calls[call_id] = state
        msg: dict[str, Any] = {"msg": "method", "method": method, "params": list(params)}
        msg["id"] = call_id
        if random_seed is not None:
            msg["randomSeed"] = random_seed
        self.send(msg)
        if not state.done.wait(self.timeout):
            raise TimeoutError(f"method {method} did not complete")
        if state.error is not None:
            raise DDPClientError(state.error)
        return state.result

    def subscribe(self, name: str, *params: Any, wait: bool = True) -> str:
        """Subscribe; wait for ``ready`` (raise DDPClientError on ``nosub`` with an error)."""
        sub_id = "".join(random.choices(string.ascii_letters + string.digits, k=17))
        self.send({"msg": "sub", "id": sub_id, "name": name, "params": list(params)})
        if wait:
            self.wait_for(lambda: sub_id in self.ready_subs or sub_id in self.nosubs)
            if sub_id in self.nosubs and self.nosubs[sub_id] is not None:
                raise DDPClientError(self.nosubs[sub_id] or {})
        return sub_id

    def unsubscribe(self, sub_id: str, *, wait: bool = True) -> None:
        self.send({"msg": "unsub", "id": sub_id})
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
            return {k: dict(v) for k, v in self.collections.get(collection, {}).items()}

    # -- reading -----------------------------------------------------------------------------------

    def _read(self) -> None:
        assert self._ws is not None
        try:
            while True:
                frame = self._ws.recv()
                if not frame:
                    break
                texts = self._unframe(frame)
                if texts is None:
                    break
                for text in texts:
                    self._handle(json.loads(text))
        except Exception:  # the socket closed or broke: the connection is over
            pass
        finally:
            self.closed.set()
            with self._cond:
                self._cond.notify_all()

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
            self.send(reply)
            return
        with self._cond:
            if kind != "pong":
                self.received.append(msg)
            if kind == "connected":
                self.session = msg["session"]
                self._connected.set()
            elif kind in ("added", "changed", "removed"):
                self._apply(msg)
            elif kind == "ready":
                self.ready_subs.update(msg["subs"])
            elif kind == "nosub":
                self.nosubs[msg.get("id", "")] = msg.get("error")
                self.ready_subs.discard(msg.get("id", ""))
            elif kind == "result":
                call = self._calls.get(msg["id"])
                if call is not None:
                    call.has_result = True
                    call.error = msg.get("error")
                    call.result = ejson.from_json_value(msg.get("result"))
                    self._finish(call)
            elif kind == "updated":
                for method_id in msg["methods"]:
                    call = self._calls.get(method_id)
                    if call is None:
                        self.violations.append(f"updated for unknown method {method_id}")
                        continue
                    call.updated = True
                    self._finish(call)
            elif kind == "error":
                self.errors.append(msg)
            self._cond.notify_all()
        if self.on_message is not None:
            self.on_message(msg)

    @staticmethod
    def _finish(call: _Call) -> None:
        if call.has_result and call.updated:
            call.done.set()

    def _apply(self, msg: dict[str, Any]) -> None:
        coll = self.collections.setdefault(msg["collection"], {})
        doc_id = msg["id"]
        if msg["msg"] == "added":
            if doc_id in coll:
                self.violations.append(f"duplicate added {msg['collection']}/{doc_id}")
            coll[doc_id] = _decode_fields(msg.get("fields"))
        elif msg["msg"] == "changed":
            doc = coll.get(doc_id)
            if doc is None:
                self.violations.append(f"changed for missing {msg['collection']}/{doc_id}")
                return
            doc.update(_decode_fields(msg.get("fields")))
            for name in msg.get("cleared", ()):
                doc.pop(name, None)
        else:
            if coll.pop(doc_id, None) is None:
                self.violations.append(f"removed for missing {msg['collection']}/{doc_id}")
