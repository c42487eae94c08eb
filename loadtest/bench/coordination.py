"""``python -m loadtest.bench coordination``: what a session's life asks of ZooKeeper.

An input of the scaling model (issue #15, ``docs/scaling.md``). The relay writes to the
coordinator once per step of a session's life, never per message (``coordinator.base``):
``relay.resume.resumer.Resumer`` calls ``create_session`` when a session starts,
``park_session`` when its socket goes away, ``get_session`` then ``claim_session(...,
require_parked=True)`` when a reconnect resumes it, ``drop_session`` on a deliberate
``disconnect``; the coordinator's leader calls ``expired_sessions`` then ``reap_session``
for each parked session whose window passed. Here the same calls, in the same order, on
the real ``coordinator.zk.ZooKeeperCoordinator`` (kazoo's threading handler) against a
throwaway ZooKeeper 3.8 from Debian's package, configured as the tests and ``make
cluster`` configure it (``devstack.local_zookeeper``; its JVM without the quick-start flag
that stops the JIT at C1, as a production server runs): ONE standalone server by default
(``--servers 1``: all this machine runs), or a 3-node ensemble on loopback (``--servers
3``: every write waits for a quorum, two servers' log fsyncs; loopback has no network
round trip, a real ensemble adds one to each write's latency). The transaction log is on
the machine's disk with ZooKeeper's default ``forceSync=yes``. Before anything is
measured, 8 s of pipelined writes warm the server's JIT (its CPU per write halves over
the first ~10 s) and 2 s of the lifecycle the clients'.

1. **Requests per step**, counted on the client: the kazoo request methods of the
   coordinator's client are wrapped (``Counter``): reads (``get``, ``exists``,
   ``get_children``, ``get_acls``) and writes (``create``, ``set``, ``delete``,
   ``set_acls``), over ``--sample`` sessions taken one step at a time: created, parked,
   resumed on another relay, parked again with an expired window; then half are dropped
   and the other half swept and reaped as the leader does. Cross-checked with the
   server's own ``mntr`` counters (``zk_cnt_updatelatency``: writes it applied,
   ``zk_cnt_readlatency``: reads it answered).
2. **What it sustains**: for each ``--clients`` count (1, 4, 16), that many processes, each
   with its own coordinator (one ZooKeeper connection), run the lifecycle create, park,
   resume, park (a session that reconnected once, then left) for ``--seconds``: steps,
   writes and reads per second, the latency of each write (request sent to reply in
   hand, p50/p99) and of each step, and the CPU the server(s) and the clients used.
   Processes, not threads: the clients must not share one interpreter's lock. Then the
   ceiling when the client is not the limit: kazoo's ``set_async`` with 256 requests in
   flight on one connection (``pipelined``), and the server's CPU per write.
3. **The leader's chores** over the records part 2 left (all parked, expired): one
   ``expired_sessions`` sweep (seconds per record) and ``reap_session`` one after another,
   as the leader reaps, for ``--seconds`` (reaps per second); and mntr's
   ``zk_approximate_data_size`` per znode.

On a 2-core machine the Python clients and the server share the cores: the rates of part
2 are this machine's, the server's CPU per write is the figure that carries over.

Must not: import Django or the relay runtime (the coordinator package and kazoo only), or
leave a server or a client process running (each is registered with ``Cleanup``). The
database ``run`` starts for every mode is not used.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from coordinator.base import check_id
from coordinator.paths import DEFAULT_ROOT
from devstack import local_zookeeper
from devstack.processes import free_port, log_tail, spawn, stop_process
from loadtest.bench.stack import BenchError, Cleanup, Database, cpu_seconds, machine_cpu_seconds

#: kazoo's request methods the coordinator uses, and whether each is a read or a write.
READS = {
    "get_async": "get",
    "exists_async": "exists",
    "get_children_async": "get_children",
    "get_acls_async": "get_acls",
}
WRITES = {
    "create_async": "create",
    "set_async": "set",
    "delete_async": "delete",
    "set_acls_async": "set_acls",
}
#: The steps of part 1, in order, with the coordinator calls each makes (as the resumer).
STEPS = {
    "create": "create_session",
    "park": "park_session",
    "resume": "get_session, claim_session(require_parked)",
    "drop": "drop_session",
    "sweep": "expired_sessions (per record swept)",
    "reap": "reap_session",
}
#: Meteor's session id alphabet (``Random.id()``: 17 of these).
_ID_CHARS = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
#: Relay ids of the two relays a session moves between.
RELAY_A = "bench-relay-a"
RELAY_B = "bench-relay-b"
#: Seconds a parked session stays resumable here: short, so that part 3 finds the records
#: of part 2 expired.
WINDOW = 1.0
START_TIMEOUT = 60.0
#: ``devstack.local_zookeeper.command``'s JIT flag for a quick start (left out here).
QUICK_START_JIT = "-XX:TieredStopAtLevel=1"
#: Requests in flight in the pipelined ceiling (part 2's last row), and the nodes written.
PIPELINE = 256
PIPELINE_NODES = 1000
#: Seconds of pipelined writes before anything is measured (the server's JIT).
WARM_UP = 8.0
#: What ``srvr`` says of a server that serves.
SERVING = ("standalone", "leader", "follower")
STOP_TIMEOUT = 5.0


def session_id(rng: random.Random) -> str:
    """A Meteor-like session id (17 characters; a valid znode name, ``check_id``)."""
    return check_id("session id", "".join(rng.choices(_ID_CHARS, k=17)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def parse_mntr(text: str) -> dict[str, float]:
    """``mntr``'s ``key<TAB>value`` lines; numeric values only (the version is not)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            continue
    return out


def mntr_delta(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    """(reads, writes) the server answered between two ``mntr`` readings."""
    reads = after.get("zk_cnt_readlatency", 0.0) - before.get("zk_cnt_readlatency", 0.0)
    writes = after.get("zk_cnt_updatelatency", 0.0) - before.get("zk_cnt_updatelatency", 0.0)
    return reads, writes


# -- counting kazoo's requests -----------------------------------------------------------------


@dataclass
class Counter:
    """Counts the ZooKeeper requests of one coordinator, by kind, and times its writes.

    ``attach`` wraps the kazoo client's request methods (``READS``, ``WRITES``) and the
    coordinator's wait for a reply: a write's latency is from the request being queued to
    its reply in hand, what the caller waits. ``take`` returns the counts so far and
    starts again."""

    counts: Tally[str] = field(default_factory=Tally)
    write_latencies: list[float] = field(default_factory=list)
    _sent: dict[int, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, coordinator: Any) -> None:
        # The coordinator's own client (``ZooKeeperCoordinator._client``): a benchmark may
        # look inside; the relay never does.
        client = coordinator._client
        for method, kind in {**READS, **WRITES}.items():
            setattr(client, method, self._counted(getattr(client, method), kind))
        coordinator._wait = self._timed(coordinator._wait)

    def _counted(self, request: Callable[..., Any], kind: str) -> Callable[..., Any]:
        write = kind in WRITES.values()

        def counted(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = request(*args, **kwargs)
            with self._lock:
                self.counts[kind] += 1
                if write:
                    self._sent[id(result)] = started
            return result

        return counted

    def _timed(self, wait: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def timed(result: Any) -> Any:
            try:
                return wait(result)
            finally:
                with self._lock:
                    started = self._sent.pop(id(result), None)
                    if started is not None:
                        self.write_latencies.append(time.perf_counter() - started)

        return timed

    def take(self) -> Tally[str]:
        with self._lock:
            counts, self.counts = self.counts, Tally()
            return counts


def split(counts: Tally[str]) -> tuple[int, int]:
    """(reads, writes) of a tally of request kinds."""
    reads = sum(n for kind, n in counts.items() if kind in READS.values())
    writes = sum(n for kind, n in counts.items() if kind in WRITES.values())
    return reads, writes


def per_step(counts: Tally[str], steps: int) -> dict[str, Any]:
    """Reads, writes and each kind per step (``steps`` of them made ``counts``)."""
    reads, writes = split(counts)
    n = max(1, steps)
    return {
        "steps": steps,
        "reads": round(reads / n, 3),
        "writes": round(writes / n, 3),
        "by_kind": {kind: round(c / n, 3) for kind, c in sorted(counts.items())},
    }


# -- the servers -------------------------------------------------------------------------------


class ZooKeeper:
    """``servers`` ZooKeeper 3.8 servers on loopback under ``base`` (1: standalone; more: an
    ensemble); stopped by ``cleanup``."""

    def __init__(self, base: Path, servers: int, cleanup: Cleanup) -> None:
        try:
            self.java, self.jar = local_zookeeper.find_zookeeper()
        except local_zookeeper.ZooKeeperNotFound as exc:
            raise BenchError(f"{exc} (`make deps-zookeeper`)") from None
        self.ports = [free_port() for _ in range(servers)]
        peers = {i + 1: (free_port(), free_port()) for i in range(servers)} if servers > 1 else {}
        self.dirs = [base / f"zk{i + 1}" for i in range(servers)]
        self.procs: list[Any] = []
        cleanup.push("zookeeper", self.stop)
        for i, (port, where) in enumerate(zip(self.ports, self.dirs, strict=True)):
            (where / "data").mkdir(parents=True, exist_ok=True)
            if peers:
                (where / "data" / "myid").write_text(f"{i + 1}\n")
            (where / "zoo.cfg").write_text(
                local_zookeeper.config(
                    data_dir=where / "data", client_port=port, init_limit=20, servers=peers
                )
            )
            # The JVM as a production server runs it: devstack's quick-start flag that stops
            # the JIT at its first tier (C1) is left out.
            argv = [
                a
                for a in local_zookeeper.command(self.java, self.jar, where / "zoo.cfg")
                if a != QUICK_START_JIT
            ]
            self.procs.append(spawn(argv, where / "zookeeper.log", cwd=where))
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self._serving(i) for i in range(servers)):
            for proc, where in zip(self.procs, self.dirs, strict=True):
                if proc.poll() is not None:
                    raise BenchError(
                        f"ZooKeeper exited with {proc.returncode}:\n"
                        f"{log_tail(where / 'zookeeper.log')}"
                    )
            if time.monotonic() > deadline:
                raise BenchError(f"ZooKeeper not serving in {START_TIMEOUT:g} s")
            time.sleep(0.1)

    def _serving(self, i: int) -> bool:
        port = self.ports[i]
        return local_zookeeper.serving(port) and local_zookeeper.mode(port) in SERVING

    @property
    def hosts(self) -> str:
        return ",".join(f"{local_zookeeper.HOST}:{port}" for port in self.ports)

    def version(self) -> str:
        text = local_zookeeper.four_letter(self.ports[0], b"srvr").decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("Zookeeper version:"):
                return line.split(":", 1)[1].split("-", 1)[0].strip()
        return "?"

    def modes(self) -> list[str]:
        return [local_zookeeper.mode(port) or "?" for port in self.ports]

    def mntr(self) -> dict[str, float]:
        """The leader's (or the standalone server's) ``mntr``: writes are all applied
        there; reads only where the client is connected (see ``mntr_all``)."""
        for port in self.ports:
            if len(self.ports) == 1 or local_zookeeper.mode(port) == "leader":
                return parse_mntr(local_zookeeper.four_letter(port, b"mntr").decode())
        return {}

    def mntr_all(self) -> list[dict[str, float]]:
        return [parse_mntr(local_zookeeper.four_letter(p, b"mntr").decode()) for p in self.ports]

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_server())

    def cpu_by_server(self) -> list[float]:
        return [cpu_seconds(proc.pid) for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc, STOP_TIMEOUT)
        self.procs = []


def _coordinator(hosts: str, root: str = DEFAULT_ROOT) -> Any:
    from coordinator.zk import ZooKeeperCoordinator

    coordinator = ZooKeeperCoordinator(hosts, root, handler="threading", op_timeout=10.0)
    if not coordinator.start(timeout=20.0):
        coordinator.stop()
        raise BenchError(f"the coordinator did not connect to ZooKeeper at {hosts}")
    return coordinator


# -- part 1: operations per step ---------------------------------------------------------------


class Served(Protocol):
    """What part 1 needs of the server(s): where they are and their ``mntr`` counters."""

    @property
    def hosts(self) -> str: ...

    def mntr_all(self) -> list[dict[str, float]]: ...


def count_steps(zk: Served, sample: int, root: str = DEFAULT_ROOT) -> dict[str, Any]:
    """Part 1: reads and writes per step over ``sample`` sessions, client and server side
    (the coordinator's znodes under ``root``)."""
    coordinator = _coordinator(zk.hosts, root)
    counter = Counter()
    counter.attach(coordinator)
    rng = random.Random(15)
    ids = [session_id(rng) for _ in range(sample)]
    half = sample // 2
    out: dict[str, Any] = {}
    try:
        # The parents of the session records exist once any relay has created a session:
        # the first create (which also makes them) is not counted.
        coordinator.create_session(session_id(rng), RELAY_A)
        # The first sweep of a tree reads every record once, then marks it indexed: done
        # here, so that the sweep counted below is the leader's usual one (the index).
        coordinator.expired_sessions(0.0)
        counter.take()

        def step(name: str, calls: Callable[[str], object], which: list[str]) -> None:
            before = zk.mntr_all()
            for sid in which:
                calls(sid)
            reads, writes = mntr_delta_all(before, zk.mntr_all())
            row = per_step(counter.take(), len(which))
            row["server_reads"] = round(reads / max(1, len(which)), 3)
            row["server_writes"] = round(writes / max(1, len(which)), 3)
            row["calls"] = STEPS[name]
            out[name] = row

        def resume(sid: str) -> object:
            record = coordinator.get_session(sid)
            if record is None or not record.parked:
                raise BenchError(f"session {sid} is not parked")
            return coordinator.claim_session(sid, RELAY_B, record.epoch, require_parked=True)

        step("create", lambda sid: coordinator.create_session(sid, RELAY_A), ids)
        step(
            "park",
            lambda sid: coordinator.park_session(sid, RELAY_A, 1, 10, b"", time.time() + 60),
            ids,
        )
        step("resume", resume, ids)
        # Parked again by its new owner, its window already over: the leader's to reap.
        for sid in ids:
            coordinator.park_session(sid, RELAY_B, 2, 20, b"", time.time() - 1)
        counter.take()
        step("drop", lambda sid: coordinator.drop_session(sid, RELAY_B, 2), ids[:half])
        swept: list[str] = []
        step("sweep", lambda sid: swept.extend(coordinator.expired_sessions(time.time())), ["all"])
        # One sweep read every record left: per record swept, not per sweep.
        sweep = out["sweep"]
        records = max(1, len(swept))
        sweep["records"] = len(swept)
        for key in ("reads", "writes", "server_reads", "server_writes"):
            sweep[key] = round(sweep[key] / records, 3)
        sweep["by_kind"] = {k: round(v / records, 3) for k, v in sweep["by_kind"].items()}
        step("reap", lambda sid: coordinator.reap_session(sid, time.time()), ids[half:])
    finally:
        coordinator.stop()
    return out


def mntr_delta_all(
    before: list[dict[str, float]], after: list[dict[str, float]]
) -> tuple[float, float]:
    """Reads answered by all servers, writes applied (by the leader, or the one server)."""
    deltas = [mntr_delta(b, a) for b, a in zip(before, after, strict=True)]
    return sum(r for r, _ in deltas), max((w for _, w in deltas), default=0.0)


# -- part 2: what it sustains ------------------------------------------------------------------


def _client(
    hosts: str, seconds: float, ready: Any, go: Any, out: Any
) -> None:  # pragma: no cover - runs in a child process
    """One client process: the lifecycle create, park, resume, park until the deadline."""
    result: dict[str, Any] = {"error": None}
    try:
        coordinator = _coordinator(hosts)
    except Exception as exc:
        result["error"] = f"connect: {exc!r}"
        ready.set()
        out.put(result)
        return
    counter = Counter()
    counter.attach(coordinator)
    rng = random.Random()  # seeded from the OS: no two clients share an id
    step_ms: dict[str, list[float]] = {"create": [], "park": [], "resume": []}
    steps = errors = 0
    ids: list[str] = []
    ready.set()
    go.wait(START_TIMEOUT)
    cpu = time.process_time()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sid = session_id(rng)
            try:
                t0 = time.perf_counter()
                epoch = coordinator.create_session(sid, RELAY_A).epoch
                t1 = time.perf_counter()
                coordinator.park_session(sid, RELAY_A, epoch, 10, b"", time.time() + WINDOW)
                t2 = time.perf_counter()
                record = coordinator.get_session(sid)
                if record is None or not record.parked:
                    raise RuntimeError("not parked")
                claimed = coordinator.claim_session(sid, RELAY_B, record.epoch, require_parked=True)
                t3 = time.perf_counter()
                coordinator.park_session(sid, RELAY_B, claimed.epoch, 20, b"", time.time() + WINDOW)
                t4 = time.perf_counter()
            except Exception as exc:
                errors += 1
                result.setdefault("first_error", repr(exc))
                continue
            steps += 4
            ids.append(sid)
            step_ms["create"].append(t1 - t0)
            step_ms["park"] += [t2 - t1, t4 - t3]
            step_ms["resume"].append(t3 - t2)
        result.update(
            steps=steps,
            errors=errors,
            counts=dict(counter.take()),
            write_latencies=counter.write_latencies,
            step_latencies=step_ms,
            cpu_s=time.process_time() - cpu,
            sessions=len(ids),
        )
    finally:
        coordinator.stop()
        out.put(result)


def sustain(zk: ZooKeeper, clients: int, seconds: float, cleanup: Cleanup) -> dict[str, Any]:
    """Part 2 for one client count: ``clients`` processes for ``seconds``."""
    ready = [multiprocessing.Event() for _ in range(clients)]
    go = multiprocessing.Event()
    out: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(
            target=_client,
            args=(zk.hosts, seconds, ready[i], go, out),
            daemon=True,
        )
        for i in range(clients)
    ]

    def stop_clients() -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=STOP_TIMEOUT)

    cleanup.push(f"coordination clients ({clients})", stop_clients)
    for proc in procs:
        proc.start()
    for event in ready:
        if not event.wait(START_TIMEOUT):
            raise BenchError("a coordination client did not connect")
    before = zk.mntr_all()
    by_server = zk.cpu_by_server()
    machine, steal = machine_cpu_seconds()
    started = time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + START_TIMEOUT) for _ in procs]
    wall = time.monotonic() - started
    machine_after, steal_after = machine_cpu_seconds()
    by_server = [b - a for a, b in zip(by_server, zk.cpu_by_server(), strict=True)]
    zk_cpu = sum(by_server)
    server_reads, server_writes = mntr_delta_all(before, zk.mntr_all())
    stop_clients()
    failed = [r["error"] for r in results if r["error"]]
    if failed:
        raise BenchError(f"coordination clients failed: {failed[0]}")
    row = aggregate(
        clients,
        seconds,
        results,
        zk_cpu_s=zk_cpu,
        machine_cpu_s=machine_after - machine,
        steal_s=steal_after - steal,
        wall_s=wall,
        server_reads=server_reads,
        server_writes=server_writes,
    )
    row["zk_cpu_cores_by_server"] = [round(c / wall, 3) for c in by_server]
    row["first_error"] = next((r["first_error"] for r in results if "first_error" in r), None)
    return row


def aggregate(
    clients: int,
    seconds: float,
    results: Iterable[dict[str, Any]],
    *,
    zk_cpu_s: float,
    machine_cpu_s: float,
    steal_s: float,
    wall_s: float,
    server_reads: float,
    server_writes: float,
) -> dict[str, Any]:
    """One row of part 2 from the client processes' results (pure)."""
    results = list(results)
    counts: Tally[str] = Tally()
    writes_lat: list[float] = []
    steps_lat: list[float] = []
    by_step: dict[str, list[float]] = {}
    for r in results:
        counts.update(r["counts"])
        writes_lat += r["write_latencies"]
        for name, values in r["step_latencies"].items():
            by_step.setdefault(name, []).extend(values)
            steps_lat += values
    steps = sum(r["steps"] for r in results)
    reads, writes = split(counts)
    client_cpu = sum(r["cpu_s"] for r in results)
    return {
        "clients": clients,
        "seconds": seconds,
        "steps": steps,
        "steps_per_s": round(steps / seconds),
        "writes_per_s": round(writes / seconds),
        "reads_per_s": round(reads / seconds),
        "server_writes_per_s": round(server_writes / seconds),
        "server_reads_per_s": round(server_reads / seconds),
        "write_p50_ms": round(statistics.median(writes_lat) * 1000, 3) if writes_lat else None,
        "write_p99_ms": round(percentile(writes_lat, 0.99) * 1000, 3) if writes_lat else None,
        "step_p50_ms": {k: round(statistics.median(v) * 1000, 3) for k, v in by_step.items() if v},
        "step_p99_ms": {k: round(percentile(v, 0.99) * 1000, 3) for k, v in by_step.items() if v},
        "errors": sum(r["errors"] for r in results),
        "sessions": sum(r["sessions"] for r in results),
        "zk_cpu_cores": round(zk_cpu_s / wall_s, 3) if wall_s else None,
        "zk_cpu_us_per_write": round(zk_cpu_s / writes * 1e6, 1) if writes else None,
        "client_cpu_cores": round(client_cpu / seconds, 3),
        "machine_cpu_cores": round(machine_cpu_s / wall_s, 3) if wall_s else None,
        "steal_cores": round(steal_s / wall_s, 3) if wall_s else None,
    }


def pipelined(zk: ZooKeeper, seconds: float) -> dict[str, Any]:
    """Part 2's ceiling: kazoo's ``set_async`` with ``PIPELINE`` requests in flight on one
    connection for ``seconds`` (not the coordinator: each of its calls waits for its reply),
    on ``PIPELINE_NODES`` 120-byte nodes: what the server(s) sustain when the client is not
    the limit."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=zk.hosts, timeout=10.0)
    client.start(timeout=20.0)
    data = b"x" * 120
    base = "/ddp-bench/pipelined"
    try:
        paths = [f"{base}/n{i}" for i in range(PIPELINE_NODES)]
        for path in paths:
            client.ensure_path(path)
        before = zk.mntr_all()
        by_server = zk.cpu_by_server()
        machine, steal = machine_cpu_seconds()
        cpu = time.process_time()
        started = time.monotonic()
        deadline = started + seconds
        writes = 0
        batch_s: list[float] = []
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            pending = [
                client.set_async(paths[(writes + i) % PIPELINE_NODES], data)
                for i in range(PIPELINE)
            ]
            for result in pending:
                result.get(timeout=10.0)
            batch_s.append(time.perf_counter() - t0)
            writes += PIPELINE
        wall = time.monotonic() - started
        client_cpu = time.process_time() - cpu
        by_server = [b - a for a, b in zip(by_server, zk.cpu_by_server(), strict=True)]
        zk_cpu = sum(by_server)
        machine_after, steal_after = machine_cpu_seconds()
        _, server_writes = mntr_delta_all(before, zk.mntr_all())
    finally:
        client.stop()
        client.close()
    return {
        "in_flight": PIPELINE,
        "writes_per_s": round(writes / wall),
        "server_writes_per_s": round(server_writes / wall),
        "batch_p50_ms": round(statistics.median(batch_s) * 1000, 2) if batch_s else None,
        "zk_cpu_cores": round(zk_cpu / wall, 3),
        "zk_cpu_us_per_write": round(zk_cpu / writes * 1e6, 1) if writes else None,
        "zk_cpu_us_per_write_by_server": [round(c / writes * 1e6, 1) for c in by_server]
        if writes
        else [],
        "client_cpu_cores": round(client_cpu / wall, 3),
        "machine_cpu_cores": round((machine_after - machine) / wall, 3),
        "steal_cores": round((steal_after - steal) / wall, 3),
    }


# -- part 3: the leader's chores ---------------------------------------------------------------


def chores(zk: ZooKeeper, seconds: float) -> dict[str, Any]:
    """Part 3: one sweep over every record, then sequential reaps for ``seconds``."""
    time.sleep(WINDOW)  # every record parked in part 2 is expired now
    coordinator = _coordinator(zk.hosts)
    counter = Counter()
    counter.attach(coordinator)
    try:
        mntr = zk.mntr()
        started = time.perf_counter()
        expired = coordinator.expired_sessions(time.time())
        sweep_s = time.perf_counter() - started
        sweep_reads, _ = split(counter.take())
        reaped = 0
        started = time.perf_counter()
        deadline = started + seconds
        for sid in expired:
            if time.perf_counter() >= deadline:
                break
            reaped += coordinator.reap_session(sid, time.time())
        reap_s = time.perf_counter() - started
    finally:
        coordinator.stop()
    records = len(expired)
    return {
        "records": records,
        "znodes": int(mntr.get("zk_znode_count", 0)),
        "data_bytes_per_znode": round(
            mntr.get("zk_approximate_data_size", 0) / max(1, mntr.get("zk_znode_count", 1)), 1
        ),
        "sweep_s": round(sweep_s, 3),
        "sweep_us_per_record": round(sweep_s / records * 1e6, 1) if records else None,
        "sweep_reads": sweep_reads,
        "reaped": reaped,
        "reaps_per_s": round(reaped / reap_s) if reap_s else None,
    }


# -- the command -------------------------------------------------------------------------------


def command(
    db: Database, workdir: Path, cleanup: Cleanup, args: argparse.Namespace, results: dict[str, Any]
) -> bool:
    """``coordination``: parts 1 to 3; True when every lifecycle step succeeded."""
    zk = ZooKeeper(workdir / "zookeeper", args.servers, cleanup)
    try:
        version, modes = zk.version(), zk.modes()
        steps = count_steps(zk, args.sample)
        # Warm-up, not reported: the server's JIT (its CPU per write halves over the first
        # ~10 s of load), then the clients' code paths.
        pipelined(zk, WARM_UP)
        sustain(zk, 1, 2.0, cleanup)
        rows = [sustain(zk, n, args.seconds, cleanup) for n in args.clients]
        ceiling = pipelined(zk, args.seconds)
        leader = chores(zk, args.seconds)
    finally:
        zk.stop()
    results["coordination"] = {
        "zookeeper": version,
        "servers": args.servers,
        "modes": modes,
        "sample": args.sample,
        "seconds": args.seconds,
        "ops_per_step": steps,
        "rows": rows,
        "pipelined": ceiling,
        "leader": leader,
    }
    for line in report(results["coordination"]):
        print(line)
    return all(r["errors"] == 0 for r in rows)


def report(result: dict[str, Any]) -> list[str]:
    """The Markdown tables of a ``coordination`` result (pure)."""
    servers = result["servers"]
    what = (
        "1 standalone server"
        if servers == 1
        else f"an ensemble of {servers} on loopback ({', '.join(result['modes'])})"
    )
    lines = [
        "",
        f"coordination: ZooKeeper {result['zookeeper']}, {what}; coordinator.zk with kazoo's "
        "threading handler, one connection per client process",
        "",
        f"ZooKeeper requests per session step ({result['sample']} sessions, one step at a time;"
        " client: kazoo requests counted, server: mntr)",
        "| step | coordinator calls | reads | writes | server reads / writes |",
        "|---|---|---:|---:|---:|",
    ]
    for name, row in result["ops_per_step"].items():
        lines.append(
            f"| {name} | {row['calls']} | {row['reads']:g} | {row['writes']:g} "
            f"| {row['server_reads']:g} / {row['server_writes']:g} |"
        )
    lines += [
        "",
        f"lifecycle create, park, resume, park; {result['seconds']:g} s per row; one process "
        "and one connection per client",
        "| clients | steps/s | writes/s | reads/s | write p50 / p99 | resume p50 / p99 "
        "| ZooKeeper CPU per write | cores: ZooKeeper / clients / machine (stolen) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['clients']} | {r['steps_per_s']:,} | {r['writes_per_s']:,} "
            f"| {r['reads_per_s']:,} | {r['write_p50_ms']} / {r['write_p99_ms']} ms "
            f"| {r['step_p50_ms'].get('resume')} / {r['step_p99_ms'].get('resume')} ms "
            f"| {r['zk_cpu_us_per_write']} µs | {r['zk_cpu_cores']} / {r['client_cpu_cores']} "
            f"/ {r['machine_cpu_cores']} ({r['steal_cores']}) |"
        )
    c = result["pipelined"]
    lines += [
        "",
        f"pipelined ceiling: kazoo set_async, {c['in_flight']} in flight on one connection: "
        f"{c['writes_per_s']:,} writes/s ({c['batch_p50_ms']} ms per {c['in_flight']}), "
        f"ZooKeeper CPU {c['zk_cpu_us_per_write']} µs per write"
        + (
            f" ({' / '.join(f'{v:g}' for v in c['zk_cpu_us_per_write_by_server'])} by server)"
            if len(c.get("zk_cpu_us_per_write_by_server", [])) > 1
            else ""
        )
        + "; cores: ZooKeeper "
        f"{c['zk_cpu_cores']} / client {c['client_cpu_cores']} / machine "
        f"{c['machine_cpu_cores']} ({c['steal_cores']} stolen)",
    ]
    leader = result["leader"]
    lines += [
        "",
        f"leader chores over {leader['records']:,} expired parked records: one sweep "
        f"{leader['sweep_s']:g} s ({leader['sweep_us_per_record']} µs per record, "
        f"{leader['sweep_reads']:,} reads); {leader['reaped']:,} reaps one after another at "
        f"{leader['reaps_per_s']} per s; {leader['data_bytes_per_znode']} bytes of data per "
        "znode (mntr)",
    ]
    errors = sum(r["errors"] for r in result["rows"])
    if errors:
        lines.append(f"NOTE: {errors} lifecycle(s) failed (coordinator errors)")
    return lines
