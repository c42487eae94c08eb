"""The hostile clients: five attacks on a relay, each run in a process of its own.

Each ``run_*`` takes its config and ``emit(event, data)`` (``engaged`` once the attack is
under way, ``progress`` now and then) and returns a JSON-able summary. ``child`` is the
entry point of the attacker process (``cli`` starts it with ``multiprocessing``'s spawn
context), so the hostile clients never share an interpreter lock with the honest one.

* ``queue`` (issue 9: "one connection can queue 1,000 messages of up to 1 MiB"): each of
  ``clients`` sockets sends ``books.slowRename`` (a 15 s method), then ~1 MiB messages
  behind it as fast as the socket takes them, never waiting; when the relay closes the
  socket, it connects again and goes on, until ``messages`` per client were sent.
  ``payload``: ``param`` (``books.rename`` with a 1 MiB title), ``name`` (an unknown
  method with a 1 MiB name, which a 404 might echo), ``sub`` (the same for a
  publication). ``read=False``: the client never reads what the relay sends.
* ``orm``: ``sessions`` sockets each call ``books.slowRename`` (15 s) again and again.
* ``park``: ``cycles`` times: connect, subscribe ``books.all``, make the relay send
  ``fill`` replies of about ``fill_bytes`` each (404s for methods with long names: the
  resume log keeps what was sent), then drop the socket without a close (a lost
  connection, which the relay parks for a resume that never comes).
* ``login`` (beyond the issue's list: what the fuzzer's login frames hinted at): each of
  ``clients`` sockets pipelines ``burst`` password guesses for ``username`` (Meteor's
  digest form), then connects again (the per-connection rule allows 5 per 10 s), until
  ``seconds`` passed: every attempt costs the worker one password hash.
* ``fuzz``: ``connections`` sockets send ``frames`` frames from ``fuzz.FrameGenerator``
  in batches, each followed by a barrier (a call to an unknown method: the session
  answers it after every frame of the batch), and count the answers (``fuzz.Tally``); a
  share of the frames go first on a fresh socket (before ``connect``).

Must not: measure the honest client or the relay's memory (``honest``, ``procfs``), or
retry what the relay refused in a way that hides it (closes are counted by code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from loadtest.probe.fuzz import Frame, FrameGenerator, Tally, answers_in
from loadtest.probe.wire import (
    OPCODE_BINARY,
    Inbox,
    client_frame,
    ddp_connect,
    open_websocket,
)

Emit = Callable[[str, dict[str, Any]], None]

#: Seconds a probe client waits for ``connected``.
CONNECT_TIMEOUT = 30.0
#: Bytes of fill messages the park attack has in flight at once (below the relay's
#: 4 MiB per-session budget of queued input, so the session is not closed for it).
FILL_WINDOW_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class QueueConfig:
    url: str
    source: str = "127.0.0.1"
    clients: int = 1
    messages: int = 600
    message_bytes: int = 1_000_000
    slow_ms: int = 15_000
    book_id: str = "lathe"
    seconds: float = 60.0
    payload: str = "param"
    read: bool = True


@dataclass(frozen=True)
class OrmConfig:
    url: str
    source: str = "127.0.0.1"
    sessions: int = 24
    slow_ms: int = 15_000
    book_id: str = "lathe"
    seconds: float = 20.0


@dataclass(frozen=True)
class ParkConfig:
    url: str
    source: str = "127.0.0.1"
    cycles: int = 50
    fill: int = 500
    fill_bytes: int = 4096
    seconds: float = 600.0


@dataclass(frozen=True)
class LoginConfig:
    url: str
    source: str = "127.0.0.1"
    clients: int = 1
    burst: int = 5
    username: str = "reader"
    seconds: float = 20.0


@dataclass(frozen=True)
class FuzzConfig:
    url: str
    source: str = "127.0.0.1"
    frames: int = 100_000
    connections: int = 8
    seed: int = 1
    seconds: float = 900.0
    batch_frames: int = 64
    batch_bytes: int = 256 * 1024
    handshake_share: float = 0.02
    sync_timeout: float = 60.0
    book_ids: tuple[str, ...] = ("lathe",)
    author_ids: tuple[str, ...] = ("leguin",)
    evidence: int = 40


def method_text(method_id: str, name: str, params: list[Any]) -> str:
    return json.dumps({"msg": "method", "id": method_id, "method": name, "params": params})


# -- queue -------------------------------------------------------------------------------


def flood_payload(kind: str, message_id: str, size: int, book_id: str) -> bytes:
    """One flood message of ``size`` bytes (at least its envelope), with a unique id."""
    if kind == "param":
        head = (
            f'{{"msg":"method","id":"{message_id}","method":"books.rename","params":["{book_id}","'
        )
        tail = '"]}'
    elif kind == "name":
        head = f'{{"msg":"method","id":"{message_id}","method":"probe.'
        tail = '","params":[]}'
    elif kind == "sub":
        head = f'{{"msg":"sub","id":"{message_id}","name":"probe.'
        tail = '"}'
    else:
        raise ValueError(f"unknown payload {kind!r}: param, name or sub")
    body = max(1, size - len(head) - len(tail))
    return head.encode() + b"x" * body + tail.encode()


@dataclass
class _FloodStats:
    sessions: int = 0
    sent: int = 0
    sent_bytes: int = 0
    connect_failures: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _connect_quietly(url: str, source: str, read: bool) -> tuple[Any, Inbox | None]:
    """A connected socket; with ``read=False`` no inbox reads it after ``connected``."""
    if read:
        ws, inbox, _ = ddp_connect(url, source, CONNECT_TIMEOUT, keep=False)
        return ws, inbox
    ws = open_websocket(url, source, CONNECT_TIMEOUT)
    from loadtest.probe.wire import CONNECT

    ws.send(CONNECT)
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        if json.loads(ws.recv()).get("msg") == "connected":
            return ws, None
    raise ConnectionError("no connected")


def _flood_client(cfg: QueueConfig, index: int, stats: _FloodStats, stop_at: float) -> None:
    slow = 0
    while stats.sent < cfg.messages and time.monotonic() < stop_at:
        try:
            ws, inbox = _connect_quietly(cfg.url, cfg.source, cfg.read)
        except Exception as exc:
            stats.connect_failures += 1
            stats.errors[type(exc).__name__] += 1
            time.sleep(0.2)
            continue
        stats.sessions += 1
        slow += 1
        try:
            title = f"probe queue {index}.{slow}"
            ws.send(
                method_text(
                    f"slow{index}.{slow}", "books.slowRename", [cfg.book_id, title, cfg.slow_ms]
                )
            )
            while stats.sent < cfg.messages and time.monotonic() < stop_at:
                if inbox is not None and inbox.closed.is_set():
                    break
                data = flood_payload(
                    cfg.payload, f"q{index}.{stats.sent}", cfg.message_bytes, cfg.book_id
                )
                with ws.lock:
                    ws.sock.sendall(client_frame(data))
                stats.sent += 1
                stats.sent_bytes += len(data)
        except OSError as exc:
            stats.errors[type(exc).__name__] += 1
        if inbox is not None:
            inbox.closed.wait(2.0)
            stats.closes[
                f"{inbox.code} {inbox.reason}".strip() if inbox.closed.is_set() else "open"
            ] += 1
            inbox.close()
        else:
            stats.closes["unread"] += 1
            with contextlib.suppress(OSError):
                ws.sock.close()


def run_queue(cfg: QueueConfig, emit: Emit) -> dict[str, Any]:
    stop_at = time.monotonic() + cfg.seconds
    stats = [_FloodStats() for _ in range(cfg.clients)]
    threads = [
        threading.Thread(target=_flood_client, args=(cfg, i, stats[i], stop_at), daemon=True)
        for i in range(cfg.clients)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    emit("engaged", {"at": started})
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=5)
        emit("progress", {"sent": sum(s.sent for s in stats)})
    closes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for s in stats:
        closes.update(s.closes)
        errors.update(s.errors)
    return {
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "sessions": sum(s.sessions for s in stats),
        "sent": sum(s.sent for s in stats),
        "sent_bytes": sum(s.sent_bytes for s in stats),
        "sent_per_client": [s.sent for s in stats],
        "connect_failures": sum(s.connect_failures for s in stats),
        "closes": dict(closes),
        "errors": dict(errors),
    }


# -- orm ---------------------------------------------------------------------------------


@dataclass
class _OrmStats:
    calls: int = 0
    done: int = 0
    seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _orm_session(
    cfg: OrmConfig, index: int, stats: _OrmStats, stop_at: float, sent: threading.Event
) -> None:
    try:
        ws, inbox, _ = ddp_connect(cfg.url, cfg.source, CONNECT_TIMEOUT, keep=False)
    except Exception as exc:
        with stats.lock:
            stats.errors[f"connect: {type(exc).__name__}"] += 1
        sent.set()
        return
    n = 0
    try:
        while time.monotonic() < stop_at and not inbox.closed.is_set():
            call_id = f"orm{index}.{n}"
            began = time.monotonic()
            ws.send(
                method_text(
                    call_id,
                    "books.slowRename",
                    [cfg.book_id, f"probe orm {index}.{n}", cfg.slow_ms],
                )
            )
            with stats.lock:
                stats.calls += 1
            sent.set()
            n += 1
            remaining = max(0.0, stop_at - time.monotonic())
            if inbox.wait_for(partial(inbox.has, "result", call_id), remaining):
                with stats.lock:
                    stats.done += 1
                    stats.seconds.append(time.monotonic() - began)
    except Exception as exc:
        with stats.lock:
            stats.errors[type(exc).__name__] += 1
    finally:
        sent.set()
        inbox.close()


def run_orm(cfg: OrmConfig, emit: Emit) -> dict[str, Any]:
    stop_at = time.monotonic() + cfg.seconds
    stats = _OrmStats()
    events = [threading.Event() for _ in range(cfg.sessions)]
    threads = [
        threading.Thread(target=_orm_session, args=(cfg, i, stats, stop_at, events[i]), daemon=True)
        for i in range(cfg.sessions)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    for event in events:
        event.wait(CONNECT_TIMEOUT)
    # Every session has sent its first call: the honest client's turn.
    emit("engaged", {"at": time.time(), "calls": stats.calls})
    for thread in threads:
        thread.join(timeout=cfg.seconds + CONNECT_TIMEOUT)
    seconds = sorted(stats.seconds)
    return {
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "calls": stats.calls,
        "completed": stats.done,
        "call_seconds_min": seconds[0] if seconds else None,
        "call_seconds_max": seconds[-1] if seconds else None,
        "errors": dict(stats.errors),
    }


# -- park --------------------------------------------------------------------------------


def run_park(cfg: ParkConfig, emit: Emit) -> dict[str, Any]:
    stop_at = time.monotonic() + cfg.seconds
    started = time.time()
    emit("engaged", {"at": started})
    done = 0
    errors: Counter[str] = Counter()
    received = 0
    name = "probe." + "x" * max(1, cfg.fill_bytes)
    for cycle in range(cfg.cycles):
        if time.monotonic() > stop_at:
            break
        try:
            ws, inbox, _ = ddp_connect(cfg.url, cfg.source, CONNECT_TIMEOUT, keep=False)
        except Exception as exc:
            errors[f"connect: {type(exc).__name__}"] += 1
            continue
        try:
            ws.send(json.dumps({"msg": "sub", "id": f"park{cycle}", "name": "books.all"}))
            inbox.wait_for(partial(inbox.has, "ready", f"park{cycle}"), CONNECT_TIMEOUT)
            # In windows (at most 32 messages, 2 MiB): each waits for its last answer, so
            # the session never queues more than a window (that is the queue attack).
            window = max(1, min(32, FILL_WINDOW_BYTES // max(1, cfg.fill_bytes)))
            for first in range(0, cfg.fill, window):
                last = min(cfg.fill, first + window)
                for j in range(first, last):
                    ws.send(method_text(f"p{cycle}.{j}", name, []))
                want = f"p{cycle}.{last - 1}"
                inbox.wait_for(partial(inbox.has, "result", want), CONNECT_TIMEOUT)
            received += inbox.received_bytes
            # A lost connection: no close frame, no DDP disconnect.
            sock = ws.sock
            assert sock is not None
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            done += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1
        finally:
            inbox.close()
        emit("progress", {"cycle": cycle + 1, "at": time.time()})
    return {
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "cycles": done,
        "received_bytes": received,
        "errors": dict(errors),
    }


# -- login ------------------------------------------------------------------------------


def _guess(index: int, n: int) -> dict[str, Any]:
    """A wrong password for ``login``, as a Meteor client sends it (a SHA-256 digest)."""
    digest = hashlib.sha256(f"guess {index} {n}".encode()).hexdigest()
    return {"digest": digest, "algorithm": "sha-256"}


def _login_client(
    cfg: LoginConfig, index: int, outcomes: Counter[str], lock: threading.Lock, stop_at: float
) -> None:
    n = 0
    while time.monotonic() < stop_at:
        try:
            ws, inbox, _ = ddp_connect(cfg.url, cfg.source, CONNECT_TIMEOUT, keep=True)
        except Exception as exc:
            with lock:
                outcomes[f"connect: {type(exc).__name__}"] += 1
            time.sleep(0.5)
            continue
        ids = []
        try:
            # Pipelined, as a client that does not wait: the per-connection rule allows
            # 5 per 10 s, so a fresh connection after each burst.
            for _ in range(cfg.burst):
                call_id = f"login{index}.{n}"
                n += 1
                ids.append(call_id)
                params = [{"user": {"username": cfg.username}, "password": _guess(index, n)}]
                ws.send(method_text(call_id, "login", params))
            inbox.wait_for(partial(inbox.has, "result", ids[-1]), CONNECT_TIMEOUT)
            with inbox.cond:
                results = [m for m in inbox.messages if m.get("msg") == "result"]
            with lock:
                for result in results:
                    err = result.get("error") or {}
                    outcomes[str(err.get("error", "ok"))] += 1
        except Exception as exc:
            with lock:
                outcomes[type(exc).__name__] += 1
        finally:
            inbox.close()


def run_login(cfg: LoginConfig, emit: Emit) -> dict[str, Any]:
    stop_at = time.monotonic() + cfg.seconds
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_login_client, args=(cfg, i, outcomes, lock, stop_at), daemon=True)
        for i in range(cfg.clients)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    emit("engaged", {"at": started})
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=5)
        with lock:
            emit("progress", {"outcomes": dict(outcomes)})
    return {
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "attempts": sum(v for k, v in outcomes.items() if not k.startswith("connect")),
        "outcomes": dict(outcomes),
    }


# -- fuzz --------------------------------------------------------------------------------


@dataclass
class _FuzzState:
    tally: Tally = field(default_factory=Tally)
    handshake: Tally = field(default_factory=Tally)
    sessions: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    connect_failures: int = 0
    evidence: list[dict[str, Any]] = field(default_factory=list)
    binary: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _frame_record(frame: Frame) -> dict[str, Any]:
    return {
        "kind": frame.kind,
        "mutations": list(frame.mutations),
        "well_formed": frame.well_formed,
        "text": frame.text[:400],
        "length": len(frame.text),
    }


def _send_frame(ws: Any, frame: Frame) -> None:
    if frame.binary:
        with ws.lock:
            ws.sock.sendall(client_frame(frame.text.encode("utf-8"), OPCODE_BINARY))
    else:
        ws.send(frame.text)


def _handshake_probe(cfg: FuzzConfig, gen: FrameGenerator, state: _FuzzState) -> None:
    frame = gen.frame(handshake=True)
    try:
        ws = open_websocket(cfg.url, cfg.source, CONNECT_TIMEOUT)
    except Exception as exc:
        with state.lock:
            state.connect_failures += 1
            state.closes[f"handshake connect: {type(exc).__name__}"] += 1
        return
    inbox = Inbox(ws)
    try:
        with contextlib.suppress(Exception):  # refused at once: whatever came back counts
            _send_frame(ws, frame)
        wait = 1.0 if frame.binary else 10.0
        answered = inbox.wait_for(lambda: answers_in(inbox.messages) >= 1, wait)
        replies = inbox.since(0)
        with state.lock:
            if frame.binary:
                what = "closed" if inbox.closed.is_set() else ("answered" if replies else "ignored")
                state.binary[f"{what} {inbox.code or ''}".strip()] += 1
            lost = state.handshake.add([frame], replies, complete=answered)
            if lost and len(state.evidence) < cfg.evidence:
                state.evidence.append(
                    {
                        "where": "before connect",
                        "frames": [_frame_record(frame)],
                        "replies": replies[:5],
                        "closed": inbox.closed.is_set(),
                        "code": inbox.code,
                    }
                )
    finally:
        inbox.close()


def _fuzz_connection(
    cfg: FuzzConfig, index: int, quota: int, state: _FuzzState, stop_at: float
) -> None:
    gen = FrameGenerator(cfg.seed * 1009 + index, f"c{index}.", cfg.book_ids, cfg.author_ids)
    pick = random.Random(cfg.seed * 7919 + index)
    sent = 0
    barrier = 0
    ws: Any = None
    inbox: Inbox | None = None
    while sent < quota and time.monotonic() < stop_at:
        if pick.random() < cfg.handshake_share:
            _handshake_probe(cfg, gen, state)
            sent += 1
            continue
        if ws is None or inbox is None:
            try:
                ws, inbox, _ = ddp_connect(cfg.url, cfg.source, CONNECT_TIMEOUT)
            except Exception as exc:
                with state.lock:
                    state.connect_failures += 1
                    state.closes[f"connect: {type(exc).__name__}"] += 1
                time.sleep(0.5)
                continue
            with state.lock:
                state.sessions += 1
        batch = gen.batch(min(cfg.batch_frames, quota - sent), cfg.batch_bytes)
        barrier += 1
        sync_id = f"sync.{index}.{barrier}"
        with inbox.cond:
            inbox.messages.clear()
        try:
            for frame in batch:
                _send_frame(ws, frame)
            ws.send(method_text(sync_id, "probe.sync", []))
        except Exception:
            pass  # the socket closed: what was answered before counts, the rest is lost

        complete = inbox.wait_for(partial(inbox.has, "result", sync_id), cfg.sync_timeout)
        with inbox.cond:
            replies = [
                m
                for m in inbox.messages
                if not (m.get("msg") == "result" and m.get("id") == sync_id)
            ]
            inbox.messages.clear()
        sent += len(batch)
        with state.lock:
            lost = state.tally.add(batch, replies, complete=complete)
            # Room for evidence of both causes: batches answered to the end come first.
            room = cfg.evidence if complete else cfg.evidence // 2
            if lost and len(state.evidence) < room:
                state.evidence.append(
                    {
                        "where": f"connection {index} batch {barrier}",
                        "complete": complete,
                        "closed": inbox.closed.is_set(),
                        "code": inbox.code,
                        "reason": inbox.reason,
                        "unanswered": [_frame_record(f) for f in lost[:10]],
                        "batch_kinds": [f.kind for f in batch],
                        "replies": [json.dumps(r)[:300] for r in replies[:20]],
                    }
                )
        if not complete:
            last = batch[-1].kind if batch else ""
            with state.lock:
                cause = "after a connect" if last == "ddp:connect" else "unexpected"
                if inbox.closed.is_set():
                    state.closes[f"{inbox.code} {inbox.reason} ({cause})"] += 1
                else:
                    state.closes[f"barrier timeout ({cause})"] += 1
            inbox.close()
            ws = inbox = None
    if inbox is not None:
        with state.lock:
            state.closes["end of run"] += 1
        with contextlib.suppress(Exception):
            ws.send(json.dumps({"msg": "disconnect"}))
        inbox.close()


def run_fuzz(cfg: FuzzConfig, emit: Emit) -> dict[str, Any]:
    stop_at = time.monotonic() + cfg.seconds
    state = _FuzzState()
    base, extra = divmod(cfg.frames, cfg.connections)
    threads = [
        threading.Thread(
            target=_fuzz_connection,
            args=(cfg, i, base + (1 if i < extra else 0), state, stop_at),
            daemon=True,
        )
        for i in range(cfg.connections)
    ]
    started = time.time()
    for thread in threads:
        thread.start()
    emit("engaged", {"at": started})
    while any(t.is_alive() for t in threads):
        for thread in threads:
            thread.join(timeout=5)
        with state.lock:
            emit("progress", {"frames": state.tally.frames + state.handshake.frames})
    return {
        "config": asdict(cfg),
        "seconds": time.time() - started,
        "frames": state.tally.frames + state.handshake.frames,
        "connected": asdict(state.tally),
        "handshake": asdict(state.handshake),
        "binary_frames": dict(state.binary),
        "sessions": state.sessions,
        "connect_failures": state.connect_failures,
        "closes": dict(state.closes),
        "evidence": state.evidence,
    }


# -- the attacker process ----------------------------------------------------------------

RUNNERS: dict[str, Callable[[Any, Emit], dict[str, Any]]] = {
    "queue": run_queue,
    "orm": run_orm,
    "park": run_park,
    "fuzz": run_fuzz,
    "login": run_login,
}


def child(attack: str, config: Any, events: Any) -> None:
    """The attacker process: run ``attack`` with ``config``, report on ``events`` (a
    ``multiprocessing`` queue): ``(event, data)`` tuples, ending with ``done`` or
    ``error``."""

    def emit(event: str, data: dict[str, Any]) -> None:
        events.put((event, data))

    try:
        summary = RUNNERS[attack](config, emit)
    except BaseException:
        events.put(("error", {"traceback": traceback.format_exc()}))
        return
    events.put(("done", summary))
