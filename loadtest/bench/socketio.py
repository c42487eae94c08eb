"""Socket.IO 4.8 on the benchmark's database: the reference peer of ``versus``.

``SocketIO`` installs a trigger on ``bookstore_book`` that NOTIFYs each updated row as
JSON on ``bench_socketio`` (what a Socket.IO user would write to feed it from
PostgreSQL), starts ``loadtest/peers/socketio.js`` (``node:cluster`` workers, each
LISTENing on that channel and emitting every row to its sockets in the room ``books``)
on a free loopback port, and, when stopped, stops it and drops the trigger, so that no
ddp-relay run pays for a channel nobody else uses. It has what the runner reads of a
relay (``stack.Server``): the workers' pids, their sessions, whether they live.

The npm packages are in ``loadtest/peers/node_modules`` (``make deps``); NODE_PATH
points there.

Must not: measure anything, or know the generator's wire (``gencommon.js``'s WIRES).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

from devstack.launch import ROOT
from devstack.processes import free_port
from loadtest.bench.stack import BenchError, Cleanup, end_by_stdin, raise_fd_limit

PEERS = ROOT / "loadtest" / "peers"
SCRIPT = PEERS / "socketio.js"
CHANNEL = "bench_socketio"
TRIGGER = "bench_socketio"

INSTALL = f"""
CREATE OR REPLACE FUNCTION {TRIGGER}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', row_to_json(NEW)::text);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS {TRIGGER} ON bookstore_book;
CREATE TRIGGER {TRIGGER} AFTER UPDATE ON bookstore_book
    FOR EACH ROW EXECUTE FUNCTION {TRIGGER}_notify();
"""
UNINSTALL = f"""
DROP TRIGGER IF EXISTS {TRIGGER} ON bookstore_book;
DROP FUNCTION IF EXISTS {TRIGGER}_notify();
"""


def node_modules() -> Path:
    path = PEERS / "node_modules"
    if not (path / "socket.io" / "package.json").is_file():
        raise BenchError(
            f"the `socket.io` npm package is not in {path}: run `make deps` (it installs "
            "the reference peers' npm packages)"
        )
    return path


def _execute(database_url: str, sql: str) -> None:
    conn = psycopg2.connect(database_url, application_name="ddp-bench socketio")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class SocketIO:
    """Socket.IO with ``workers`` ``node:cluster`` workers on a free loopback port."""

    name = "socketio"

    def __init__(
        self, database_url: str, workdir: Path, cleanup: Cleanup, *, workers: int = 2
    ) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchError("node is not on PATH: run `make deps` (Node.js from apt)")
        modules = node_modules()
        self.workers = workers
        self.port = free_port()
        self.ws_url = f"ws://127.0.0.1:{self.port}/socket.io/?EIO=4&transport=websocket"
        self.log_path = workdir / f"socketio-{self.port}.log"
        self._database_url = database_url
        self._sessions: dict[int, int] = {}
        self._exits: list[dict[str, Any]] = []
        self._listening = threading.Event()
        self.worker_pids: list[int] = []
        _execute(database_url, INSTALL)
        cleanup.push("socketio trigger", lambda: _execute(database_url, UNINSTALL))
        options = {
            "port": self.port,
            "workers": workers,
            "databaseUrl": database_url,
            "channel": CHANNEL,
        }
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), json.dumps(options)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=dict(os.environ, NODE_PATH=str(modules)),
            preexec_fn=raise_fd_limit,
            start_new_session=True,
        )
        cleanup.push(f"socketio :{self.port}", self.stop)
        self._reader = threading.Thread(target=self._read, name="socketio-reader", daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout=30):
            self.stop()
            raise BenchError(f"Socket.IO did not listen within 30 s; see {self.log_path}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self._log.write(line)
                continue
            kind = event.get("event")
            if kind == "listening":
                self.worker_pids = sorted(int(pid) for pid in event["workers"])
                self._listening.set()
            elif kind == "sessions":
                self._sessions = {int(pid): int(n) for pid, n in event["by"].items()}
            elif kind == "exit":
                self._exits.append(event)

    def alive(self) -> bool:
        return (
            self.proc.poll() is None
            and not self._exits
            and all(os.path.exists(f"/proc/{pid}") for pid in self.worker_pids)
        )

    def sessions_by_worker(self) -> dict[int, int]:
        """Sockets each worker holds (reported by the workers once a second)."""
        time.sleep(1.2)  # a report taken after the caller's settle
        return {pid: self._sessions.get(pid, 0) for pid in self.worker_pids}

    def error_count(self) -> int:
        self._log.flush()
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return text.count("Error")
        return 0

    def timeout_count(self) -> int:
        return 0

    def stop(self) -> None:
        end_by_stdin(self.proc)
        self._reader.join(timeout=5)
        with contextlib.suppress(ValueError):
            self._log.close()
        with contextlib.suppress(psycopg2.Error):
            _execute(self._database_url, UNINSTALL)
