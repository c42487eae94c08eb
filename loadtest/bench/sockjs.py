"""``python -m loadtest.bench sockjs``: what SockJS over HTTP costs across relays.

Two relays (``--workers`` each) on one database and one coordinator file (the SQLite
coordinator, shared by relays on one host), and one DDP session over SockJS's HTTP
transports (``relay.client.xhr``), timing a method's round trip (``books.rename``: send
``method``, read until its ``result``) three ways:

- ``local``: every request to the relay holding the session (xhr-polling): the floor;
- ``relayed``: an ``xhr_streaming`` response held on relay A, each send to relay B: the
  send goes through the inbox (one INSERT + NOTIFY, then the holder's DELETE);
- ``moved``: xhr-polling with every request on the other relay than the last: each
  receiving request takes the session over (hand-over, park, claim, resume).

Medians and p90/max over ``--rounds`` calls per way, ``--runs`` times. One client at a
time: this is the latency a user of the fallback sees, not a throughput.

Must not: import Django or the relay runtime (the client is ``relay.client.xhr``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from loadtest.bench.stack import Cleanup, Database, Relay
from relay.client.xhr import XhrClient

WAYS = ("local", "relayed", "moved")


def _rename(i: int) -> dict[str, Any]:
    return {
        "msg": "method",
        "id": f"m{i}",
        "method": "books.rename",
        "params": ["dispossessed", f"The Dispossessed ({i})"],
    }


def _result_of(i: int) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("msg") == "result" and m.get("id") == f"m{i}"


def _local(a: str, rounds: int) -> list[float]:
    client = XhrClient([a])
    client.open()
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        client.send(_rename(i))
        client.wait_for(_result_of(i))
        times.append(time.perf_counter() - started)
    return times


def _relayed(a: str, b: str, rounds: int) -> list[float]:
    client = XhrClient([a])
    client.open()
    stream: Iterator[list[dict[str, Any]]] = client.stream(a)
    sender = XhrClient([b])
    sender.sid = client.sid
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        sender.send(_rename(i))
        check = _result_of(i)
        while not any(check(m) for m in next(stream)):
            pass
        times.append(time.perf_counter() - started)
    return times


def _moved(a: str, b: str, rounds: int) -> list[float]:
    client = XhrClient([a])
    client.open()
    holder, other = a, b
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        client.send(_rename(i))  # to the holder
        client.bases = [other]  # the poll lands elsewhere: it takes the session over
        client.wait_for(_result_of(i))
        times.append(time.perf_counter() - started)
        holder, other = other, holder
        client.bases = [holder]
    return times


def _summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "p50_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(len(ms) * 0.9) - 1], 1),
        "max_ms": round(ms[-1], 1),
    }


def command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``sockjs`` ``--runs`` times; True (every call was answered, or it raised)."""
    rows: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for run in range(args.runs):
        env = {"RELAY_COORDINATOR_PATH": str(workdir / f"coordinator-{run}.sqlite")}
        relays = [
            Relay(db.url, workdir, cleanup, max_sessions=10, workers=args.workers, env=env)
            for _ in range(2)
        ]
        a, b = (relay.url for relay in relays)
        rows["local"].append(_summary(_local(a, args.rounds)))
        rows["relayed"].append(_summary(_relayed(a, b, args.rounds)))
        rows["moved"].append(_summary(_moved(a, b, args.rounds)))
        for relay in relays:
            relay.stop()
    aggregate = {
        way: {key: statistics.median(r[key] for r in rows[way]) for key in rows[way][0]}
        for way in WAYS
    }
    results["sockjs"] = {"aggregate": aggregate, "runs": rows, "rounds": args.rounds}
    print(
        f"\nsockjs: one session over SockJS's HTTP transports across 2 relays "
        f"({args.workers} worker(s) each); books.rename round trips, {args.rounds} per way; "
        f"medians of {args.runs} runs"
    )
    print(f"{'way':<10}{'p50 ms':>10}{'p90 ms':>10}{'max ms':>10}")
    for way in WAYS:
        row = aggregate[way]
        print(f"{way:<10}{row['p50_ms']:>10.1f}{row['p90_ms']:>10.1f}{row['max_ms']:>10.1f}")
    return True
