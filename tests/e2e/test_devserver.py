"""``make run`` end to end: ``python -m devstack.devserver`` on a free port, as a user runs it.

It starts its embedded PostgreSQL, migrates, seeds and serves; a real DDP client sees the
seeded books and a rename made through a method; then SIGTERM (what ``kill``, ``timeout``
or a supervisor sends, unlike a terminal's Ctrl-C) must stop gunicorn and the embedded
PostgreSQL with exit status 0 and nothing left running.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from devstack.launch import ROOT
from devstack.processes import (
    free_port,
    http_status,
    log_tail,
    spawn,
    stop_process_group,
    wait_until_ready,
)
from relay.client import DDPClient
from tests.fixtures.postgres import require_pg_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def running_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry))
    return pids


def test_make_run_serves_the_demo_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    require_pg_bin()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RELAY_ZOOKEEPER")}
    env.update(PORT=str(port), RELAY_STATE_DIR=str(tmp_path / "state"))
    log = tmp_path / "devserver.log"
    # As root the embedded server runs as postgres from a directory of its own: find it
    # as the postmaster that was not there before.
    before = set(running_with("postgres -D"))
    proc = spawn([sys.executable, "-m", "devstack.devserver"], log, env=env, cwd=ROOT)
    try:
        ready = f"http://127.0.0.1:{port}/readyz"
        wait_until_ready(
            proc,
            lambda: http_status(ready) == 200,
            120,
            name="make run",
            log_path=log,
            error=AssertionError,
            interval=0.5,
        )
        postmasters = set(running_with("postgres -D")) - before
        assert postmasters, "no embedded PostgreSQL"
        watcher = DDPClient(f"ws://127.0.0.1:{port}", sockjs=True)
        client = DDPClient(f"ws://127.0.0.1:{port}/websocket")
        try:
            for c in (watcher, client):
                c.connect()
                c.subscribe("books.all")
            books = client.collections["bookstore.book"]
            assert len(books) >= 10  # the seeded demo
            book_id = sorted(books)[0]
            client.call("books.rename", book_id, "Renamed through make run")
            deadline = time.monotonic() + 10
            while watcher.collections["bookstore.book"][book_id].get("title") != (
                "Renamed through make run"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            client.close()
            watcher.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_tail(log)
        deadline = time.monotonic() + 10
        while postmasters & set(running_with("postgres -D")) or http_status(
            f"http://127.0.0.1:{port}/readyz"
        ):
            assert time.monotonic() < deadline, "PostgreSQL or gunicorn left running"
            time.sleep(0.2)
    finally:
        # Whatever happened, nothing of the demo outlives the test: its process group
        # (the devserver leads a session of its own; gunicorn is in it), then any
        # PostgreSQL server it started.
        stop_process_group(proc, 0)
        for pid in set(running_with("postgres -D")) - before:
            os.kill(pid, signal.SIGKILL)
