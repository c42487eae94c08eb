"""One benchmark run: a fresh relay, N subscribed sessions, paced writes, figures.

``run_once`` is the unit every mode is built from:

1. start a relay on the benchmark's database: ONE worker, or ``workers`` gunicorn gevent
   workers sharing the listening socket (the kernel decides which worker accepts a
   connection);
2. live check (and warm-up): a Python DDP client subscribes ``books.all``, a second one
   calls ``books.rename``, the first must get the ``changed`` (else: no live updates, stop);
   with several workers, subscribed clients are then opened until every worker has served
   one (so no worker's first-session set-up lands in the memory per session);
3. PSS of the worker(s) with no session, then the generator opens N sessions (each:
   connect, ``sub books.all``, wait for ``ready``), a short settle, PSS again:
   memory per idle subscribed session = (after - before) / N, PSS summed over the workers;
   the sessions each worker holds (its ``ddp_relay_sessions`` gauge);
4. ``writes`` renames committed on a fixed schedule ``interval`` apart, each titled
   ``<prefix><index>``; the generator timestamps each session's ``changed``;
5. wait (bounded) until every session got every write, then read the report: per write,
   time until all N had it and p50/p99 of the per-delivery latency (receive time minus
   commit time); deliveries per second = N / (time until all N had it).

Fan-out (20 writes 500 ms apart), latency (100 writes/s for 20 s) and memory (no writes)
differ only in those parameters. Relay CPU time is summed over the workers; each worker's
own is kept too (``relay_cpu_s_by_worker``), as are its PSS and sessions.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.processes import stop_process
from loadtest.bench import figures
from loadtest.bench.figures import quantile
from loadtest.bench.generator import Generator, Generators, split
from loadtest.bench.meter import CpuMeter
from loadtest.bench.socketio import SocketIO
from loadtest.bench.stack import (
    BenchError,
    Cleanup,
    Database,
    Relay,
    Server,
    pss_bytes,
    rss_bytes,
)
from loadtest.bench.writer import Writer, paced_writes

#: What ``run_once`` can measure (``peer``): ddp-relay, or Socket.IO (``versus``).
RELAY = "ddp-relay"
SOCKETIO = "socketio"

#: Seconds to let the worker settle (greenlets finish, garbage collected) before reading PSS.
SETTLE_SECONDS = 3.0


@dataclass
class RunResult:
    """The figures of one run (times in ms, memory in bytes)."""

    mode: str
    sessions: int
    deflate: bool
    writes_planned: int
    interval_s: float
    ready: int
    failed: int
    ramp_s: float
    subscribed: bool
    pss_before: int
    pss_after: int
    rss_before: int
    rss_after: int
    writes: int = 0
    write_rate: float = 0.0
    commit_ms_p50: float = 0.0
    #: "server": commit times are PostgreSQL's commit timestamps; "client": time.time()
    #: after COMMIT returned in the writer.
    commit_clock: str = ""
    client_commit_lag_ms_p50: float = float("nan")
    client_commit_lag_ms_max: float = float("nan")
    delivered: int = 0
    missing: int = 0
    duplicates: int = 0
    closed_after_ready: int = 0
    all_done: bool = True
    #: Per write: time from commit until the last session had it.
    all_ms: list[float] = field(default_factory=list)
    #: Per write: time from commit until the first session had it.
    first_ms: list[float] = field(default_factory=list)
    #: Per write: sessions that had it.
    received: list[int] = field(default_factory=list)
    #: Deliveries over the whole series / (last delivery - first commit), in seconds.
    sustained_per_s: float = float("nan")
    delivery_p50_ms: float = float("nan")
    delivery_p99_ms: float = float("nan")
    delivery_max_ms: float = float("nan")
    relay_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0
    wall_s: float = 0.0
    #: CPU (in cores) used during the writes by processes that are not the benchmark's.
    other_cpu_share: float = float("nan")
    #: CPU (in cores) the hypervisor gave to other guests during the writes.
    steal_share: float = float("nan")
    relay_errors: int = 0
    relay_alive: bool = True
    worker_timeouts: int = 0
    generator_errors: dict[str, int] = field(default_factory=dict)
    #: The first profile (``--profile``); ``profiles``: one per worker.
    profile: str | None = None
    profiles: list[str] = field(default_factory=list)
    #: gunicorn workers of the relay, and per worker (same order as ``worker_pids``): PSS
    #: before and after the ramp, open sessions after it (empty: the metrics files could
    #: not be read), CPU seconds during the writes. The totals above are their sums.
    workers: int = 1
    worker_pids: list[int] = field(default_factory=list)
    pss_before_by_worker: list[int] = field(default_factory=list)
    pss_after_by_worker: list[int] = field(default_factory=list)
    sessions_by_worker: list[int] = field(default_factory=list)
    relay_cpu_s_by_worker: list[float] = field(default_factory=list)

    @property
    def memory_per_session(self) -> float:
        return (self.pss_after - self.pss_before) / self.ready if self.ready else float("nan")

    @property
    def deliveries_per_s(self) -> list[float]:
        """Per write: sessions that had it / seconds until the last one had it."""
        return [
            n * 1000 / ms if ms > 0 else math.inf
            for n, ms in zip(self.received, self.all_ms, strict=True)
        ]

    @property
    def lost(self) -> int:
        return self.missing + self.failed

    @property
    def busiest_worker_sessions_share(self) -> float:
        """The largest share of the sessions one worker holds (1/workers: even)."""
        return _largest_share(self.sessions_by_worker)

    @property
    def busiest_worker_cpu_share(self) -> float:
        """The largest share of the relay's CPU time during the writes one worker used."""
        return _largest_share(self.relay_cpu_s_by_worker)

    def summary(self) -> dict[str, Any]:
        rates = self.deliveries_per_s
        return {
            "all_p50_ms": quantile(self.all_ms, 0.5),
            "all_p99_ms": quantile(self.all_ms, 0.99),
            "first_p50_ms": quantile(self.first_ms, 0.5),
            "delivery_p50_ms": self.delivery_p50_ms,
            "delivery_p99_ms": self.delivery_p99_ms,
            "deliveries_per_s_p50": quantile(rates, 0.5),
            "sustained_per_s": self.sustained_per_s,
            "memory_per_session_bytes": self.memory_per_session,
        }


def _largest_share(values: list[int] | list[float]) -> float:
    total = sum(values)
    return max(values) / total if values and total > 0 else float("nan")


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


def live_check(relay: Relay, timeout: float = 15.0) -> float:
    """A committed ``books.rename`` must reach a subscribed client as ``changed`` (seconds)."""
    from relay.client import DDPClient

    watcher = DDPClient(relay.ws_url, timeout=timeout)
    caller = DDPClient(relay.ws_url, timeout=timeout)
    try:
        watcher.connect()
        watcher.subscribe("books.all")
        books = watcher.docs("bookstore.book")
        if not books:
            raise BenchError("books.all published no books: is the database seeded?")
        book_id, doc = sorted(books.items())[0]
        original = str(doc.get("title"))
        title = f"bench live check {secrets.token_hex(4)}"
        caller.connect()
        started = time.monotonic()
        caller.call("books.rename", book_id, title)
        try:
            watcher.wait_for(
                lambda: watcher.collections["bookstore.book"][book_id].get("title") == title,
                timeout,
            )
        except TimeoutError:
            raise BenchError(
                "live updates do not reach clients: a committed books.rename produced no "
                f"`changed` within {timeout:.0f} s (is the write side, django_app's "
                "changelog triggers, in place?)"
            ) from None
        elapsed = time.monotonic() - started
        caller.call("books.rename", book_id, original)
        watcher.wait_for(
            lambda: watcher.collections["bookstore.book"][book_id].get("title") == original,
            timeout,
        )
        return elapsed
    finally:
        caller.close()
        watcher.close()


def warm_up_workers(relay: Relay, timeout: float = 20.0) -> dict[int, int]:
    """Open subscribed clients (``books.all``) until every worker has connected a session,
    then close them; returns the sessions each worker connected (empty: unknown).

    With several workers the live check reaches one or two of them; this makes every worker
    serve a subscription before the PSS is read, as the live check does with one worker.
    Gives up quietly after ``timeout`` or 20 clients per worker.
    """
    from relay.client import DDPClient

    clients: list[DDPClient] = []
    deadline = time.monotonic() + timeout
    opened = relay.opened_by_worker()
    try:
        while opened and not all(opened.values()) and len(clients) < 20 * relay.workers:
            if time.monotonic() > deadline:
                break
            client = DDPClient(relay.ws_url, timeout=max(1.0, deadline - time.monotonic()))
            clients.append(client)
            try:
                client.connect()
                client.subscribe("books.all")
            except Exception as exc:  # the ramp will tell whether the relay serves sessions
                print(f"bench: warm-up client failed: {exc!r}", flush=True)
                break
            opened = relay.opened_by_worker()
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
    return opened


def check_and_warm_up(relay: Relay, live: bool, say: Callable[[str], None]) -> None:
    """The live check (unless not ``live``) and, with several workers, the warm-up."""
    live_ms = f"live update in {live_check(relay) * 1000:.0f} ms" if live else "live check skipped"
    if relay.workers == 1:
        say(f"relay worker {relay.worker_pid} on :{relay.port}; {live_ms}")
        return
    warmed = warm_up_workers(relay)
    cold = [str(pid) for pid, n in warmed.items() if not n]
    if not warmed:
        warm = "sessions per worker unknown (metrics files unreadable)"
    elif cold:
        warm = f"no session reached worker(s) {', '.join(cold)}"
    else:
        warm = "every worker served a subscription"
    pids = ", ".join(map(str, relay.worker_pids))
    say(f"relay workers {pids} on :{relay.port}; {live_ms}; {warm}")


def _py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    if candidate.is_file():
        return str(candidate)
    return shutil.which("py-spy")


class Profiler:
    """``py-spy record`` of the relay worker while the writes run (raw collapsed stacks)."""

    def __init__(
        self, pid: int, out: Path, seconds: float, cleanup: Cleanup, *, wait: bool = True
    ) -> None:
        exe = _py_spy()
        if exe is None:
            raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "100",
                "--duration",
                str(max(1, int(seconds + 0.999))),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        cleanup.push(f"py-spy {pid}", lambda: stop_process(self.proc, 5))
        if wait:
            time.sleep(0.5)  # let it attach before the writes start

    def finish(self, timeout: float) -> str | None:
        try:
            output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            output, _ = self.proc.communicate(timeout=10)
        if self.proc.returncode != 0 or not self.out.is_file():
            print(f"bench: py-spy failed ({self.proc.returncode}): {output[-2000:]}", flush=True)
            return None
        return str(self.out)


def start_profilers(
    profile_dir: Path | None, name: str, relay: Relay, seconds: float, cleanup: Cleanup
) -> list[Profiler]:
    """One ``py-spy record`` per relay worker for at most ``seconds`` (none without
    ``profile_dir``): ``<name>-<port>[-worker<i>].txt``."""
    if profile_dir is None:
        return []
    profile_dir.mkdir(parents=True, exist_ok=True)
    profilers = []
    for i, pid in enumerate(relay.worker_pids):
        suffix = f"-worker{i + 1}.txt" if relay.workers > 1 else ".txt"
        out = profile_dir / f"{name}-{relay.port}{suffix}"
        profilers.append(Profiler(pid, out, seconds, cleanup, wait=False))
    time.sleep(0.5)  # let them attach before the measured work starts
    return profilers


def finish_profilers(profilers: list[Profiler], timeout: float = 60.0) -> list[str]:
    """The profiles written (a py-spy still recording after ``timeout`` is interrupted,
    which makes it write what it has)."""
    paths = [profiler.finish(timeout=timeout) for profiler in profilers]
    return [path for path in paths if path is not None]


def common_options(args: Any, workdir: Path) -> dict[str, Any]:
    """``run_once``'s keywords that every mode takes from the common command-line options
    (``cli``): how the clients connect, the ramp, profiling, output, the live check."""
    return {
        "deflate": args.deflate,
        "concurrency": args.concurrency,
        "ramp_timeout": args.ramp_timeout,
        "profile_dir": workdir / "profiles" if args.profile else None,
        "quiet": args.quiet,
        "live": args.live_check,
        "settle": args.settle,
    }


def run_once(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    *,
    mode: str,
    sessions: int,
    writes: int,
    interval: float,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    profile_dir: Path | None = None,
    label: str = "",
    quiet: bool = False,
    live: bool = True,
    settle: float = SETTLE_SECONDS,
    subscribe: bool = True,
    workers: int = 1,
    generators: int = 1,
    peer: str = RELAY,
) -> RunResult:
    say = figures.sayer(label, quiet)
    relay: Server
    if peer == SOCKETIO:
        relay = SocketIO(db.url, workdir, cleanup, workers=workers)
    else:
        relay = Relay(db.url, workdir, cleanup, max_sessions=sessions, workers=workers)
    pids = relay.worker_pids
    generator: Generators | None = None
    writer: Writer | None = None
    gen_logs = [
        open(workdir / f"loadgen-{relay.port}-{i}.log", "w")  # noqa: SIM115
        for i in range(len(split(sessions, generators)))
    ]
    try:
        if isinstance(relay, Relay):
            check_and_warm_up(relay, live, say)
        else:
            # The peer has no DDP: the writes themselves are its live check (a write
            # that does not arrive is reported lost).
            say(f"{peer} workers {', '.join(map(str, pids))} on :{relay.port}")
        time.sleep(settle)
        pss_before_by_worker = [pss_bytes(pid) for pid in pids]
        pss_before, rss_before = sum(pss_before_by_worker), sum(rss_bytes(pid) for pid in pids)
        prefix = f"bench {secrets.token_hex(3)} "
        started = time.monotonic()
        url = relay.ws_url
        generator = Generators(
            split(sessions, generators),
            lambda share, i: Generator(
                url,
                share,
                prefix=prefix,
                max_writes=max(1, writes),
                deflate=deflate,
                subscribe=subscribe,
                concurrency=max(1, concurrency // generators),
                ramp_timeout=ramp_timeout,
                log=gen_logs[i],
                wire="socketio" if peer == SOCKETIO else "ddp",
            ),
        )
        cleanup.push("load generators", generator.close)

        last_progress = [time.monotonic()]

        def progress(event: dict[str, Any]) -> None:
            if event.get("event") == "progress" and time.monotonic() - last_progress[0] >= 10:
                last_progress[0] = time.monotonic()
                say(f"  ramp: {event['ready']}/{sessions} subscribed, {event['failed']} failed")

        ramped = generator.ramp(progress)
        ramp_s = time.monotonic() - started
        say(
            f"{ramped['ready']}/{sessions} sessions subscribed in {ramp_s:.1f} s"
            + (f" ({ramped['failed']} failed: {ramped['errors']})" if ramped["failed"] else "")
        )
        time.sleep(settle)
        pss_after_by_worker = [pss_bytes(pid) for pid in pids]
        pss_after, rss_after = sum(pss_after_by_worker), sum(rss_bytes(pid) for pid in pids)
        result = RunResult(
            mode=mode,
            sessions=sessions,
            deflate=deflate,
            writes_planned=writes,
            interval_s=interval,
            ready=int(ramped["ready"]),
            failed=sessions - int(ramped["ready"]),
            ramp_s=ramp_s,
            subscribed=subscribe,
            pss_before=pss_before,
            pss_after=pss_after,
            rss_before=rss_before,
            rss_after=rss_after,
            workers=workers,
            worker_pids=list(pids),
            pss_before_by_worker=pss_before_by_worker,
            pss_after_by_worker=pss_after_by_worker,
            sessions_by_worker=figures.sessions_by_worker(relay, pids),
        )
        say(
            f"PSS {pss_before / 2**20:.1f} -> {pss_after / 2**20:.1f} MiB"
            + (" (sum over the workers)" if workers > 1 else "")
            + f": {result.memory_per_session / 1024:.1f} KiB per idle subscribed session"
        )
        if workers > 1 and result.sessions_by_worker:
            say(
                "sessions per worker: "
                + ", ".join(
                    f"{pid}: {n}" for pid, n in zip(pids, result.sessions_by_worker, strict=True)
                )
            )
        if writes > 0 and result.ready > 0:
            writer = Writer(db.url)
            meter = CpuMeter(pids, generator.pids, db)
            profilers = (
                start_profilers(
                    profile_dir, f"{mode}-{sessions}", relay, writes * interval + 2.0, cleanup
                )
                if isinstance(relay, Relay)
                else []
            )
            rate = paced_writes(
                writer, prefix, writes, interval, max_seconds=writes * interval * 3 + 30
            )
            result.all_done = generator.wait_all(len(writer.commits), stall=15.0, limit=600.0)
            usage = meter.stop()
            result.profiles = finish_profilers(profilers, timeout=writes * interval + 30)
            result.profile = result.profiles[0] if result.profiles else None
            server_commits = writer.server_commit_times()
            commits = server_commits if server_commits else writer.commits
            result.commit_clock = "server" if server_commits else "client"
            if server_commits:
                # How late this process saw each COMMIT return, after the server committed.
                result.client_commit_lag_ms_p50 = quantile(
                    [(c - s) * 1000 for c, s in zip(writer.commits, server_commits, strict=True)],
                    0.5,
                )
                result.client_commit_lag_ms_max = max(
                    (c - s) * 1000 for c, s in zip(writer.commits, server_commits, strict=True)
                )
            report = generator.report([t * 1000 for t in commits])
            result.writes = len(writer.commits)
            result.write_rate = rate
            result.commit_ms_p50 = quantile([s * 1000 for s in writer.commit_seconds], 0.5)
            figures.take_deliveries(result, report)
            result.first_ms = [
                float(w["first"]) if w["first"] is not None else math.nan
                for w in report["perWrite"]
            ]
            ends = [
                c * 1000 + w["last"]
                for c, w in zip(commits, report["perWrite"], strict=False)
                if w["last"] is not None
            ]
            if ends and result.delivered:
                span_s = (max(ends) - commits[0] * 1000) / 1000
                result.sustained_per_s = result.delivered / span_s if span_s > 0 else math.nan
            figures.take_usage(result, usage)
            warning = figures.noise_warning(
                result, "during the writes: the machine was not quiet, figures are skewed"
            )
            if warning:
                say(warning)
            s = result.summary()
            by_worker = (
                " (" + " + ".join(f"{t:.2f}" for t in result.relay_cpu_s_by_worker) + " by worker)"
                if workers > 1
                else ""
            )
            say(
                f"{result.writes} writes at {rate:.1f}/s: all {sessions} had a write after "
                f"p50 {s['all_p50_ms']:.0f} / p99 {s['all_p99_ms']:.0f} ms; delivery latency "
                f"p50 {s['delivery_p50_ms']:.1f} / p99 {s['delivery_p99_ms']:.1f} ms; "
                f"{s['deliveries_per_s_p50']:.0f} deliveries/s per write, "
                f"{result.sustained_per_s:.0f}/s over the series; lost {result.missing}, "
                f"duplicates {result.duplicates}; CPU relay {result.relay_cpu_s:.1f} s{by_worker}, "
                f"generator {result.generator_cpu_s:.1f} s, postgres {result.postgres_cpu_s:.1f} s "
                f"in {result.wall_s:.1f} s"
            )
        figures.take_health(result, relay)
        if not result.relay_alive or result.worker_timeouts:
            say(
                f"{'the relay worker' if workers == 1 else 'a relay worker'} died during the "
                f"run ({result.worker_timeouts} gunicorn WORKER TIMEOUT); see {relay.log_path}"
            )
        return result
    finally:
        if generator is not None:
            generator.close()
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.restore()
            writer.close()
        relay.stop()
        for log in gen_logs:
            log.close()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"nproc": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 2**20, 1)
    info["kernel"] = os.uname().release
    info["python"] = sys.version.split()[0]
    node = shutil.which("node")
    if node:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        info["node"] = out.stdout.strip()
    root = Path(__file__).resolve().parents[2]
    git = shutil.which("git")
    if git:
        out = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["commit"] = out.stdout.strip()
        dirty = subprocess.run(
            [git, "-C", str(root), "status", "--porcelain", "--", "relay", "django_app", "example"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["dirty"] = bool(dirty.stdout.strip())
    return info
