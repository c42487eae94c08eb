"""``python -m loadtest.bench notify``: what PostgreSQL's NOTIFY costs as listeners grow.

The input of the scaling model (issue #15, ``docs/scaling.md``): every relay worker holds
one LISTEN connection, and every notifying commit takes a database-wide lock while it
queues its notification (``reference/peers.md``). Here, for each count of listening
connections (``--listeners``, default 1, 10, 50, 100, 200), all LISTENing on one channel
and drained by one thread (as relays drain theirs), ``--writers`` connections commit
``SELECT pg_notify(channel, payload)`` one transaction at a time for ``--seconds``:

- commits per second, all writers together (the notify lock serialises them);
- commit latency p50/p99 (what a writing transaction waits);
- delivery latency p50/p99, commit to the last listener's receipt (payloads carry the
  commit's start time; one clock, one host).

The payload is ``--payload`` bytes, like a change-stream notification. One run per
listener count: the spread between them is the figure's noise.

Must not: import Django or the relay runtime (psycopg2 only).
"""

from __future__ import annotations

import argparse
import multiprocessing
import select
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions

from loadtest.bench.stack import Cleanup, Database

CHANNEL = "ddp_bench_notify"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


class _Listeners:
    """``count`` LISTEN connections, drained by one process of their own (the writers'
    interpreter must not share a GIL with them); ``stop`` gives, for every payload all
    ``count`` received, commit-to-last-receipt seconds."""

    def __init__(self, dsn: str, count: int) -> None:
        self._ready = multiprocessing.Event()
        self._stop = multiprocessing.Event()
        self._out: Any = multiprocessing.Queue()
        self._proc = multiprocessing.Process(
            target=_drain, args=(dsn, count, self._ready, self._stop, self._out), daemon=True
        )
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("the listeners did not start")

    def stop(self) -> list[float]:
        self._stop.set()
        delivered: list[float] = self._out.get(timeout=60)
        self._proc.join(timeout=10)
        return delivered


def _drain(dsn: str, count: int, ready: Any, stop: Any, out: Any) -> None:
    conns = []
    for _ in range(count):
        conn = psycopg2.connect(dsn, application_name="bench listener")
        conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {CHANNEL}")
        conns.append(conn)
    ready.set()
    seen: dict[str, int] = {}
    delivered: list[float] = []
    while not stop.is_set():
        readable, _, _ = select.select(conns, [], [], 0.2)
        now = time.time()
        for conn in readable:
            conn.poll()
            while conn.notifies:
                key = conn.notifies.pop(0).payload[:32]
                n = seen.get(key, 0) + 1
                if n == count:
                    seen.pop(key, None)
                    delivered.append(now - float(key.split(":", 1)[0]))
                else:
                    seen[key] = n
    out.put(delivered)
    for conn in conns:
        conn.close()


def _write(dsn: str, seconds: float, payload: int, out: list[float], count: list[int]) -> None:
    conn = psycopg2.connect(dsn, application_name="bench writer")
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    pad = "x" * payload
    deadline = time.perf_counter() + seconds
    with conn.cursor() as cur:
        while (started := time.perf_counter()) < deadline:
            # Wall clock in the payload: the listeners run in another process.
            key = f"{time.time():.6f}:{threading.get_ident() % 100_000:05d}"[:32].ljust(32)
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, key + pad))
            out.append(time.perf_counter() - started)
            count[0] += 1
    conn.close()


def measure(dsn: str, listeners: int, writers: int, seconds: float, payload: int) -> dict[str, Any]:
    group = _Listeners(dsn, listeners)
    try:
        commits: list[float] = []
        count = [0]
        threads = [
            threading.Thread(target=_write, args=(dsn, seconds, payload, commits, count))
            for _ in range(writers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.0)  # the last deliveries
    finally:
        delivered = group.stop()
    return {
        "listeners": listeners,
        "writers": writers,
        "commits_per_s": round(count[0] / seconds),
        "commit_p50_ms": round(statistics.median(commits) * 1000, 3),
        "commit_p99_ms": round(_percentile(commits, 0.99) * 1000, 3),
        "delivery_p50_ms": round(statistics.median(delivered) * 1000, 2) if delivered else None,
        "delivery_p99_ms": round(_percentile(delivered, 0.99) * 1000, 2) if delivered else None,
        "delivered_share": round(len(delivered) / max(1, count[0]), 4),
    }


def command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``notify`` for each listener count; True when every notification arrived."""
    rows = [measure(db.url, n, args.writers, args.seconds, args.payload) for n in args.listeners]
    results["notify"] = {"rows": rows, "payload": args.payload, "seconds": args.seconds}
    print(
        f"\nnotify: {args.writers} writer(s) committing pg_notify ({args.payload}-byte payload)"
        f" for {args.seconds:g} s per row; listeners all on one channel"
    )
    head = f"{'listeners':>10}{'commits/s':>11}{'commit p50/p99 ms':>20}{'delivery p50/p99 ms':>22}"
    print(head)
    for r in rows:
        print(
            f"{r['listeners']:>10}{r['commits_per_s']:>11}"
            f"{r['commit_p50_ms']:>11.3f}/{r['commit_p99_ms']:<8.3f}"
            f"{r['delivery_p50_ms']!s:>13}/{r['delivery_p99_ms']!s:<8}"
        )
    return all(r["delivered_share"] >= 0.999 for r in rows)
