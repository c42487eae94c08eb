"""The Node.js load generators seen from the driver: start, talk, stop.

One Node process holds every benchmark session: ``ws`` is cheap enough to keep 10,000
WebSocket DDP sessions on this 2-core machine, where a Python client thread per session
would not be. It uses the ``ws`` package the end-to-end tests install
(``tests/e2e/node/node_modules``, ``make deps``); ``BENCH_NODE_MODULES`` points elsewhere.

``windowgen.js`` (the window benchmark) and ``stormgen.js`` (the subscription storm) are
started the same way (``NodeProcess``) and speak the same protocol. The generator and
this driver speak JSON lines (events on its stdout, commands on its
stdin); a reader thread turns the events into a queue. Every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from devstack.launch import ROOT
from loadtest.bench.figures import quantile
from loadtest.bench.stack import BenchError, end_by_stdin, raise_fd_limit

SCRIPT = Path(__file__).with_name("loadgen.js")
DEFAULT_NODE_MODULES = ROOT / "tests" / "e2e" / "node" / "node_modules"


def node_modules() -> Path:
    path = Path(os.environ.get("BENCH_NODE_MODULES", str(DEFAULT_NODE_MODULES)))
    if not (path / "ws" / "package.json").is_file():
        raise BenchError(
            f"the `ws` npm package is not in {path}: run `make deps` (it installs the "
            "end-to-end npm clients), or set BENCH_NODE_MODULES to a node_modules holding ws"
        )
    return path


class NodeProcess:
    """A Node.js script of the harness (``script``, given ``options`` as JSON) and its
    events. ``loadgen.js`` (``Generator``), ``windowgen.js`` and ``stormgen.js`` speak
    the same JSON lines: events out, commands in, exit when stdin closes."""

    def __init__(
        self,
        script: Path,
        options: dict[str, Any],
        *,
        ramp_timeout: float,
        log: TextIO | None = None,
    ) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchError("node is not on PATH: run `make deps` (Node.js from apt)")
        self.sessions = int(options.get("sessions", 0))
        self.ramp_timeout = ramp_timeout
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._log = log
        env = dict(os.environ, NODE_PATH=str(node_modules()))
        self.proc = subprocess.Popen(
            [node, str(script), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if log is None else log,
            text=True,
            env=env,
            preexec_fn=raise_fd_limit,
            start_new_session=True,  # Ctrl-C reaches the driver only; it stops us in order
        )
        self._reader = threading.Thread(target=self._read, name="loadgen-reader", daemon=True)
        self._reader.start()
        self.all_done: set[int] = set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                if line and self._log is not None:
                    self._log.write(f"loadgen: {line}\n")
                continue
            try:
                self._events.put(json.loads(line))
            except ValueError:
                continue
        self._events.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            event = self._events.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError from None
        if event is None:
            raise BenchError(f"the load generator exited (code {self.proc.poll()})")
        if event.get("event") == "all":
            self.all_done.add(int(event["w"]))
        return event

    def wait_for(
        self, kind: str, timeout: float, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """The next event of ``kind``; other events go to ``on_event``. TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._next(deadline)
            if event is None:
                continue
            if event.get("event") == kind:
                return event
            if on_event is not None:
                on_event(event)

    def ramp(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until every session is subscribed (or failed); the ``ramped`` event."""
        return self.wait_for("ramped", self.ramp_timeout + 30, on_progress)

    def wait_all(self, writes: int, stall: float, limit: float) -> bool:
        """Wait until every live session got each of writes 0..writes-1.

        Gives up (False) when no delivery arrived for ``stall`` seconds, or after ``limit``
        seconds in all: a relay far behind still counts as delivering while it makes
        progress, and what never arrives is then reported as lost.
        """
        started = time.monotonic()
        last_total, last_change = -1, started
        try:
            while not all(w in self.all_done for w in range(writes)):
                deadline = min(started + limit, last_change + stall)
                event = self._next(deadline)
                if event is not None and event.get("event") == "delivered":
                    total = int(event["total"])
                    if total != last_total:
                        last_total, last_change = total, time.monotonic()
        except TimeoutError:
            return False
        return True

    def command(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def report(self, commits_ms: list[float], timeout: float = 60.0) -> dict[str, Any]:
        self.command({"cmd": "report", "commits": commits_ms})
        return self.wait_for("report", timeout)

    def cpu_seconds(self) -> float:
        from loadtest.bench.stack import cpu_seconds

        return cpu_seconds(self.proc.pid)

    def close(self) -> None:
        """Close every session and stop the process (bounded: kill after 10 s)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.command({"cmd": "close"})
        end_by_stdin(self.proc)
        self._reader.join(timeout=5)


class Generator(NodeProcess):
    """``loadgen.js`` holding ``sessions`` DDP sessions subscribed to ``books.all`` (with
    ``wire="socketio"``: Socket.IO sockets in the room ``books``, for ``versus``)."""

    def __init__(
        self,
        url: str,
        sessions: int,
        *,
        prefix: str,
        max_writes: int,
        deflate: bool,
        subscribe: bool = True,
        concurrency: int = 200,
        ramp_timeout: float = 300.0,
        log: TextIO | None = None,
        wire: str = "ddp",
    ) -> None:
        options = {
            "wire": wire,
            "url": url,
            "sessions": sessions,
            "concurrency": concurrency,
            "deflate": deflate,
            "subscribe": subscribe,
            "prefix": prefix,
            "maxWrites": max_writes,
            "rampTimeoutMs": int(ramp_timeout * 1000),
        }
        super().__init__(SCRIPT, options, ramp_timeout=ramp_timeout, log=log)


def split(sessions: int, generators: int) -> list[int]:
    """``sessions`` over ``generators`` processes, as evenly as possible, none empty."""
    count = max(1, min(generators, sessions))
    base, extra = divmod(sessions, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


class Generators:
    """Several ``Generator`` processes sharing N sessions (a process holds at most its
    descriptor limit, 20,000 here), seen as one: ramps, waits and reports merged.

    ``make(share, i)`` starts the generator of the i-th share."""

    def __init__(self, shares: list[int], make: Callable[[int, int], Generator]) -> None:
        self.parts: list[Generator] = []
        try:
            for i, share in enumerate(shares):
                self.parts.append(make(share, i))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [part.pid for part in self.parts]

    def ramp(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Every part's ``ramped``, summed (``ms``: the slowest)."""
        events = [part.ramp(on_progress) for part in self.parts]
        errors: dict[str, int] = {}
        for event in events:
            for kind, count in (event.get("errors") or {}).items():
                errors[kind] = errors.get(kind, 0) + int(count)
        return {
            "event": "ramped",
            "sessions": sum(int(e["sessions"]) for e in events),
            "ready": sum(int(e["ready"]) for e in events),
            "failed": sum(int(e["failed"]) for e in events),
            "timedOut": any(bool(e["timedOut"]) for e in events),
            "ms": max(int(e["ms"]) for e in events),
            "errors": errors,
        }

    def wait_all(self, writes: int, stall: float, limit: float) -> bool:
        deadline = time.monotonic() + limit
        done = True
        for part in self.parts:
            left = max(0.0, deadline - time.monotonic())
            done = part.wait_all(writes, stall=stall, limit=left) and done
        return done

    def report(self, commits_ms: list[float], timeout: float = 60.0) -> dict[str, Any]:
        """One ``report`` as if one generator held every session (quantiles exact: each
        part sends its latencies)."""
        if len(self.parts) == 1:
            return self.parts[0].report(commits_ms, timeout)
        for part in self.parts:
            part.command({"cmd": "report", "commits": commits_ms, "raw": True})
        return merge_reports([part.wait_for("report", timeout) for part in self.parts])

    def close(self) -> None:
        for part in self.parts:
            part.close()


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``report`` of several loadgen.js processes (each sent with ``raw``) as one."""

    def total(key: str) -> int:
        return sum(int(r[key]) for r in reports)

    errors: dict[str, int] = {}
    for report in reports:
        for kind, count in (report.get("errors") or {}).items():
            errors[kind] = errors.get(kind, 0) + int(count)
    per_write = []
    every: list[float] = []
    for writes in zip(*(r["perWrite"] for r in reports), strict=True):
        lat = sorted(x for w in writes for x in w.get("lat", []))
        every.extend(lat)
        per_write.append(
            {
                "w": writes[0]["w"],
                "received": sum(int(w["received"]) for w in writes),
                "first": lat[0] if lat else None,
                "p50": quantile(lat, 0.5) if lat else None,
                "p99": quantile(lat, 0.99) if lat else None,
                "last": lat[-1] if lat else None,
            }
        )
    every.sort()
    return {
        "event": "report",
        "sessions": total("sessions"),
        "ready": total("ready"),
        "closedAfterReady": total("closedAfterReady"),
        "writes": int(reports[0]["writes"]),
        "deliveries": total("deliveries"),
        "missing": total("missing"),
        "duplicates": total("duplicates"),
        "foreign": sum(int(r.get("foreign", 0)) for r in reports),
        "p50": quantile(every, 0.5) if every else None,
        "p99": quantile(every, 0.99) if every else None,
        "max": every[-1] if every else None,
        "perWrite": per_write,
        "errors": errors,
    }
