"""What a benchmark runs against: its own PostgreSQL, the example app, the relay workers.

``Database`` starts a throwaway PostgreSQL (``devstack.embedded_postgres``) in a temporary
directory, creates a database, migrates and seeds the example bookstore through
``manage.py`` subprocesses (the driver never imports Django). ``Relay`` serves it with
gunicorn and ``RELAY_WORKERS=1`` (``--workers N``: N gevent workers sharing the listening
socket) on a free loopback port, as ``make run`` and the Docker image do
(``PROMETHEUS_MULTIPROC_DIR`` set), with ``worker_connections`` and the file descriptor
limit raised for the session count. The open sessions of each worker are read from its
Prometheus multiprocess files (``/metrics`` only has their sum).

Process hygiene: every child runs in its own session (Ctrl-C reaches the driver only,
which then stops them in order), is registered with ``Cleanup`` (run from ``finally``,
``atexit`` and on SIGTERM), and every wait has a deadline.

``Relay.kill`` is a crash (SIGKILL to its whole process group), for the presence
benchmark's crash case; several ``Relay``s on one database are a multi-relay stack.

Both take a ``trees.Tree`` (``--before``: the relay code and migrations of an earlier
commit; default: this checkout, started as before), and ``Database.sibling`` puts a
second tree's database on the same server.

Also here: reading a process's proportional set size (PSS, ``/proc/<pid>/smaps_rollup``)
and CPU time (``/proc/<pid>/stat``), the figures the benchmark reports.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT, example_env, gunicorn_argv, manage_argv, relay_env
from devstack.processes import (
    free_port,
    http_status,
    log_end,
    spawn,
    stop_process_group,
    wait_until_ready,
)

if TYPE_CHECKING:
    from loadtest.bench.trees import Tree

#: File descriptors wanted by the relay and the generator (each holds every session).
FD_LIMIT = 65536


class BenchError(RuntimeError):
    """The benchmark could not set up or run; the message says what to do."""


# -- process hygiene ---------------------------------------------------------------------


class Cleanup:
    """Stop functions run once, newest first: from ``finally``, ``atexit`` or SIGTERM."""

    def __init__(self) -> None:
        self._stack: list[tuple[str, Callable[[], None]]] = []
        atexit.register(self.run)

    def push(self, name: str, stop: Callable[[], None]) -> None:
        self._stack.append((name, stop))

    def run(self) -> None:
        while self._stack:
            name, stop = self._stack.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"bench: stopping {name} failed: {exc}", file=sys.stderr)

    def install_signal_handlers(self) -> None:
        """SIGINT/SIGTERM/SIGHUP end the run (KeyboardInterrupt, then ``finally``), even
        when started from a shell that ignores SIGINT for background jobs."""

        def handler(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, handler)


def raise_fd_limit(wanted: int = FD_LIMIT) -> None:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to ``wanted``; children inherit it.

    Also used as ``preexec_fn`` so every child starts with it even if the parent could
    not raise its own.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    new_hard = hard
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return
        except (ValueError, OSError):
            new_hard = hard  # not root: the hard limit caps us
    target = wanted if new_hard == resource.RLIM_INFINITY else min(wanted, new_hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, new_hard))


def fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- /proc figures --------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid`` (shared pages divided among their users)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no Pss in /proc/{pid}/smaps_rollup")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def end_by_stdin(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Close a JSON-lines child's stdin (it exits when it ends) and reap it; killed when
    it is not gone within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError, ValueError):
        assert proc.stdin is not None
        proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (its own threads, not its children);
    NaN once the process is gone (a relay worker killed mid-run)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """(process time, steal time) of all cores since boot, in CPU seconds (``/proc/stat``).

    Process time is user + nice + system: what processes ran, comparable with the sum of
    their ``/proc/<pid>/stat`` times. Steal is time the hypervisor gave to someone else.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    steal = values[7] if len(values) > 7 else 0
    return (values[0] + values[1] + values[2]) / _CLOCK_TICKS, steal / _CLOCK_TICKS


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# -- the database ---------------------------------------------------------------------------


class Database:
    """A throwaway PostgreSQL with the example app migrated and seeded.

    ``tree``: migrate and seed with that tree's ``manage.py`` (``--before``: the earlier
    commit's migrations; default this checkout's). ``sibling`` makes another database
    on the same server, so two trees share one PostgreSQL.
    """

    def __init__(
        self,
        workdir: Path,
        cleanup: Cleanup,
        *,
        fsync: bool = False,
        tree: Tree | None = None,
        name: str = "bench",
        server: EmbeddedPostgres | None = None,
    ) -> None:
        self.workdir = workdir
        self.tree = tree
        self.name = name
        if server is None:
            self.pg = EmbeddedPostgres(workdir / "postgres", fsync=fsync)
            self.pg.start()
            cleanup.push("postgres", self.pg.destroy)
            self.pg.create_database(name)
            self.url = self.pg.dsn(name)
            self._track_commit_timestamps()
        else:
            self.pg = server
            self.pg.create_database(name)
            self.url = self.pg.dsn(name)
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("seed_demo")

    def sibling(self, name: str, tree: Tree | None) -> Database:
        """Another database on this server, migrated and seeded by ``tree``."""
        # The server is this database's: its cleanup stops it, nothing to add.
        return Database(self.workdir, Cleanup(), tree=tree, name=name, server=self.pg)

    def _track_commit_timestamps(self) -> None:
        """Turn on ``track_commit_timestamp`` (needs a restart): the writes' commit times."""
        import psycopg2

        conn = psycopg2.connect(self.url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("ALTER SYSTEM SET track_commit_timestamp = on")
        finally:
            conn.close()
        self.pg.restart()
        self.url = self.pg.dsn(self.name)

    def manage(self, *args: str) -> str:
        tree = self.tree
        proc = subprocess.run(
            manage_argv(*args) if tree is None else tree.manage_argv(*args),
            env=example_env(self.url) if tree is None else tree.env(self.url),
            cwd=None if tree is None else tree.root,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if proc.returncode != 0:
            where = "" if tree is None else f" ({tree.label} tree)"
            raise BenchError(
                f"manage.py {' '.join(args)} failed{where}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def version(self) -> str:
        out = subprocess.run(
            [str(self.pg.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout.strip()

    def postgres_pids(self) -> list[int]:
        """The postmaster and its backends (for CPU accounting)."""
        master = self.pg.running_pid()
        return [] if master is None else [master, *children(master)]


# -- the relay ------------------------------------------------------------------------------


class Relay:
    """gunicorn with ``workers`` relay workers (default one) serving the example app on a
    free loopback port. ``worker_pids`` are the workers (children of the master),
    ``worker_pid`` the first of them."""

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        cleanup: Cleanup,
        *,
        max_sessions: int,
        workers: int = 1,
        env: dict[str, str] | None = None,
        tree: Tree | None = None,
    ) -> None:
        if workers < 1:
            raise BenchError(f"a relay needs at least one worker, not {workers}")
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/websocket"
        self.log_path = workdir / f"relay-{self.port}.log"
        metrics_dir = self.metrics_dir = workdir / f"metrics-{self.port}"
        metrics_dir.mkdir(parents=True, exist_ok=True)
        extra = {
            **relay_env(
                self.port,
                workers=workers,
                graceful_timeout=5,
                log_level="warning",
                metrics_dir=metrics_dir,
            ),
            "RELAY_WORKER_CONNECTIONS": str(max_sessions + 1000),
            # Every generator socket comes from 127.0.0.1: one address, which the
            # relay otherwise holds to RELAY_MAX_CONNECTIONS_PER_ADDRESS (1000).
            "RELAY_MAX_CONNECTIONS_PER_ADDRESS": str(max_sessions + 1000),
            **(env or {}),
        }
        self.tree = tree
        self.proc = spawn(
            gunicorn_argv() if tree is None else tree.gunicorn_argv(),
            self.log_path,
            env=example_env(database_url, extra) if tree is None else tree.env(database_url, extra),
            cwd=ROOT if tree is None else tree.root,
            preexec_fn=raise_fd_limit,
        )
        cleanup.push(f"relay :{self.port}", self.stop)
        self._wait_ready(timeout=60)
        self.worker_pids = self._workers(timeout=10 + 5 * workers)
        self.worker_pid = self.worker_pids[0]

    def _wait_ready(self, timeout: float) -> None:
        wait_until_ready(
            self.proc,
            lambda: http_status(self.url + "/readyz", timeout=2) == 200,
            timeout,
            name="the relay",
            log_path=self.log_path,
            error=BenchError,
        )

    def _workers(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            pids = children(self.proc.pid)
            if len(pids) == self.workers:
                return sorted(pids)
            time.sleep(0.1)
        raise BenchError(
            f"expected {self.workers} relay worker(s) under {self.proc.pid}, found {len(pids)}"
        )

    def alive(self) -> bool:
        """The master and every worker started with it still run (a worker gunicorn
        replaced after a crash or a WORKER TIMEOUT has a new pid: not alive)."""
        return self.proc.poll() is None and all(
            os.path.exists(f"/proc/{pid}") for pid in self.worker_pids
        )

    def _metric_by_worker(self, prefix: str, name: str) -> dict[int, float]:
        """``name``'s value in each worker's multiprocess files ``<prefix>_<pid>.db``
        (workers that have not written it yet: 0); empty when the files cannot be read."""
        try:
            from prometheus_client.mmap_dict import MmapedDict
        except ImportError:
            return {}
        # Untyped in prometheus_client: give it the type it has.
        read: Callable[[str], Iterable[tuple[Any, ...]]] = MmapedDict.read_all_values_from_file
        out = dict.fromkeys(self.worker_pids, 0.0)
        for path in self.metrics_dir.glob(f"{prefix}_*.db"):
            try:
                pid = int(path.stem.rsplit("_", 1)[1])
                if pid not in out:
                    continue
                for key, value, *_ in read(str(path)):
                    if json.loads(key)[1] == name:
                        out[pid] += value
            except (OSError, ValueError, IndexError, TypeError):
                return {}
        return out

    def sessions_by_worker(self) -> dict[int, int]:
        """Open DDP sessions of each worker (its ``ddp_relay_sessions`` gauge)."""
        values = self._metric_by_worker("gauge_*", "ddp_relay_sessions")
        return {pid: round(v) for pid, v in values.items()}

    def opened_by_worker(self) -> dict[int, int]:
        """DDP sessions each worker has connected so far (``ddp_relay_sessions_opened``)."""
        values = self._metric_by_worker("counter", "ddp_relay_sessions_opened_total")
        return {pid: round(v) for pid, v in values.items()}

    def log(self) -> str:
        return log_end(self.log_path)

    def error_count(self) -> int:
        """Tracebacks and ERROR lines in the end of the relay's log."""
        log = self.log()
        return log.count("Traceback") + log.count(" ERROR ") + log.count("[ERROR]")

    def timeout_count(self) -> int:
        """How often gunicorn killed a worker for not notifying it within its timeout."""
        return self.log().count("WORKER TIMEOUT")

    def stop(self) -> None:
        # Started in a session of its own: stop the group, workers included, even if the
        # master was killed.
        stop_process_group(self.proc, timeout=15)

    def kill(self) -> None:
        """A crash: SIGKILL the master and every worker at once (nothing released, no
        goodbye to clients or the database); returns once the master is reaped."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class Server(Protocol):
    """What a run reads of the server its sessions are on: a ``Relay``, or a reference
    peer of ``versus`` (``socketio.SocketIO``)."""

    workers: int
    port: int
    ws_url: str
    worker_pids: list[int]
    log_path: Path

    def alive(self) -> bool: ...
    def error_count(self) -> int: ...
    def timeout_count(self) -> int: ...
    def sessions_by_worker(self) -> dict[int, int]: ...
    def stop(self) -> None: ...


def make_workdir(out: Path | None) -> Path:
    """The directory for logs, PostgreSQL and results (``out``, or a new temp dir that is
    kept: its logs and ``results.json`` are the record of the run)."""
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        return out.resolve()
    return Path(tempfile.mkdtemp(prefix="ddp-bench-"))
