"""``make cluster``: what ``docker-compose.yml`` describes, on loopback, without Docker.

Local tool (not used in production), standard library only, like ``devstack.devserver``.
``python -m devstack.cluster`` starts, in this order:

1. an embedded PostgreSQL (``devstack.embedded_postgres``) under ``.state/cluster/postgres``,
   then ``manage.py migrate``, ``collectstatic`` and ``seed_demo`` of the example project;
2. a 3-node ZooKeeper 3.8 ensemble (Debian's ``zookeeper`` package, ``java ...
   QuorumPeerMain zoo.cfg``; ``tickTime=500``) on free loopback ports, and waits until
   every node says ``Mode: leader`` or ``Mode: follower`` to ``srvr``;
3. three relays (``gunicorn -c python:relay.server.gunicorn_conf 'relay.server.app:create_app()'``,
   2 workers each) on free loopback ports, DDP only (``RELAY_WSGI_APP=""``), each with an
   internal port for ``/metrics`` and the probes, its own ``PROMETHEUS_MULTIPROC_DIR``
   and ``RELAY_ZOOKEEPER`` set to the ensemble's connect string, and waits for their
   ``/readyz``; and the web tier (``python -m relay web``: the example's Django project
   under gunicorn gthread workers), waiting for its admin login page;
4. HAProxy (``haproxy -db -f haproxy.cfg``, in the foreground, so this process supervises
   it): ``/websocket``, ``/sockjs`` (and ``/readyz``) to the relays, round robin, no
   stickiness, health checks on ``/readyz``; everything else to the web tier;
   ``timeout tunnel 1h``, on ``127.0.0.1:${PORT:-8000}``, plus a stats page.

``docker-compose.yml`` describes the same cluster (``tests/deploy/test_compose.py``
compares the two: relay count, routing, the relays' settings).

It prints every URL and port, then watches its children: one that dies is restarted (as
compose's ``restart: unless-stopped`` would) unless it keeps dying. SIGTERM (``kill``, a
supervisor, GNU make forwarding its own), SIGINT (Ctrl-C) or SIGHUP, once or many times,
at any point of the start-up or while serving, stops everything started so far in
reverse order: HAProxy, the relays (SIGTERM, then their graceful timeout, then SIGKILL to
the whole process group), ZooKeeper, PostgreSQL; then it exits with status 0. The cleanup
runs once, to its end: later signals are only noted (``devstack.processes.run_until_stopped``),
and a signal that comes while a child is being started takes effect once its handle is
kept, so it is stopped too. Nothing is left running. State, configs and logs stay in
``.state/cluster`` (``RELAY_STATE_DIR/cluster``).

The ``Cluster`` class is the same thing as an API for tests: ``start()``/``stop()``,
``relays`` (pids, ports, URLs), ``kill_relay(i, sig)``/``restart_relay(i)``,
``kill_zk(i, sig)``/``restart_zk(i)``, ``zk_mode(i)``, ``url``/``ws_url``.

Must not: import Django or gevent (it drives Django through ``manage.py`` subprocesses),
listen on anything but 127.0.0.1, install anything (``make cluster`` does that), or drop
the handle of a child before that child is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack import local_zookeeper
from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import (
    ROOT,
    example_env,
    fresh_metrics_dir,
    gunicorn_argv,
    manage_argv,
    relay_env,
)
from devstack.processes import (
    check_alive,
    descendants,
    free_port,
    http_status,
    interrupt_on_stop_signals,
    log_tail,
    run_until_stopped,
    signal_group,
    spawn,
    stop_deferred,
    stop_process_group,
    stop_requested,
    wait_group_gone,
    wait_until_ready,
)

__all__ = [
    "Cluster",
    "ClusterError",
    "RelayNode",
    "WebNode",
    "ZooKeeperNode",
    "find_haproxy",
    "find_zookeeper",
    "main",
]

HOST = "127.0.0.1"

_ZK_START_TIMEOUT_S = 60.0
_RELAY_START_TIMEOUT_S = 60.0
_HAPROXY_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
# A child that died this many times in a row (each within a minute of its start) is not
# restarted again: main() stops the cluster instead.
_MAX_RESTARTS = 5


class ClusterError(RuntimeError):
    """A piece of the local cluster could not be started (or is missing)."""


def _say(message: str) -> None:
    # A closed terminal (SIGHUP) makes writing fail; that must not cut a cleanup short.
    with contextlib.suppress(OSError, ValueError):
        print(f"cluster: {message}", file=sys.stderr, flush=True)


def find_zookeeper() -> tuple[str, Path]:
    """``java`` and the ZooKeeper jar, or ``ClusterError`` saying how to get them."""
    try:
        return local_zookeeper.find_zookeeper()
    except local_zookeeper.ZooKeeperNotFound as exc:
        raise ClusterError(f"{exc}; `make cluster` installs it") from None


def find_haproxy() -> str:
    """The ``haproxy`` binary (also in /usr/sbin when that is not on PATH)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ClusterError("no `haproxy` (apt: `haproxy`; `make cluster` installs it)")
    return found


@dataclass(kw_only=True)
class _Child:
    """A supervised child: its process (the gunicorn master, the JVM) and restart count."""

    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class ZooKeeperNode(_Child):
    """One ensemble member: ``myid`` ``index + 1``, its ports, dir and process."""

    index: int
    client_port: int
    peer_port: int
    election_port: int
    base_dir: Path

    @property
    def myid(self) -> int:
        return self.index + 1

    @property
    def config_path(self) -> Path:
        return self.base_dir / "zoo.cfg"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "zookeeper.log"

    def mode(self) -> str | None:
        """``leader``, ``follower``, ``standalone``... per ``srvr``; None if it won't say."""
        return local_zookeeper.mode(self.client_port)


@dataclass
class RelayNode(_Child):
    """One gunicorn relay: its ports, metrics dir, log and master process (``pid``)."""

    index: int
    port: int
    base_dir: Path
    #: ``/metrics``, ``/livez``, ``/readyz`` (JSON), ``/startupz``: RELAY_INTERNAL_PORT.
    internal_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def internal_url(self) -> str:
        return f"http://{HOST}:{self.internal_port}"

    @property
    def name(self) -> str:
        return f"relay{self.index + 1}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/websocket"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "relay.log"

    @property
    def metrics_dir(self) -> Path:
        return self.base_dir / "metrics"

    @property
    def worker_pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.running and self.proc is not None else []


@dataclass
class WebNode(_Child):
    """The web tier: the example's Django project under ``python -m relay web``."""

    port: int
    base_dir: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "web.log"


class Cluster:
    """PostgreSQL, a ZooKeeper ensemble, N relays and HAProxy on loopback, in ``state_dir``.

    ``port=0`` puts HAProxy on a free port (tests); ``stats_port=0`` likewise for its stats
    page. ``database_url`` uses an existing database instead of the embedded server (it is
    migrated and, with ``seed``, seeded all the same). Use as a context manager, or call
    ``start()``/``stop()``; ``stop()`` is idempotent and also cleans up a failed start.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 8000,
        stats_port: int = 0,
        relays: int = 3,
        zookeepers: int = 3,
        workers: int = 2,
        graceful_timeout: int = 30,
        database_url: str | None = None,
        seed: bool = True,
        collectstatic: bool = False,
        log_level: str = "info",
        verbose: bool = False,
    ) -> None:
        if relays < 1 or zookeepers < 1:
            raise ValueError("a cluster needs at least one relay and one ZooKeeper node")
        self.state_dir = Path(state_dir).absolute()
        self.port = port or free_port()
        self.stats_port = stats_port or free_port()
        self.workers = workers
        self.graceful_timeout = graceful_timeout
        self.seed = seed
        self.collectstatic = collectstatic
        self.log_level = log_level
        self.verbose = verbose
        self._external_database_url = database_url
        self.database_url = database_url or ""
        self.postgres: EmbeddedPostgres | None = None
        self.java, self.zookeeper_jar = find_zookeeper()
        self.haproxy_bin = find_haproxy()
        self.zookeepers = [
            ZooKeeperNode(
                index=i,
                client_port=free_port(),
                peer_port=free_port(),
                election_port=free_port(),
                base_dir=self.state_dir / f"zk{i + 1}",
            )
            for i in range(zookeepers)
        ]
        self.relays = [
            RelayNode(
                index=i,
                port=free_port(),
                internal_port=free_port(),
                base_dir=self.state_dir / f"relay{i + 1}",
            )
            for i in range(relays)
        ]
        self.web = WebNode(port=free_port(), base_dir=self.state_dir / "web")
        self.haproxy: subprocess.Popen[bytes] | None = None
        self._haproxy_restarts = 0
        self._haproxy_started_at = 0.0

    # -- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """HAProxy's frontend: ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/websocket"

    @property
    def stats_url(self) -> str:
        return f"http://{HOST}:{self.stats_port}/"

    @property
    def zk_connect(self) -> str:
        """The ensemble's connect string, as ``RELAY_ZOOKEEPER`` gets it."""
        return ",".join(f"{HOST}:{zk.client_port}" for zk in self.zookeepers)

    @property
    def haproxy_config(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def haproxy_log(self) -> Path:
        return self.state_dir / "haproxy.log"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start everything and wait until it serves; on failure stop what was started."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start_postgres()
            for zk in self.zookeepers:  # the JVMs boot while Django migrates
                self._write_zk_config(zk)
                self._spawn_zk(zk)
            self._prepare_database()
            self._wait_quorum(_ZK_START_TIMEOUT_S)
            for relay in self.relays:
                self._spawn_relay(relay)
            self._spawn_web()
            for relay in self.relays:
                self._wait_relay(relay, _RELAY_START_TIMEOUT_S)
            self._wait_web(_RELAY_START_TIMEOUT_S)
            self._write_haproxy_config()
            self._spawn_haproxy()
            self._wait_haproxy(_HAPROXY_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything, in reverse order. Idempotent; never leaves a child running.

        No stop signal cuts it short (``stop_deferred``: ``start()`` calls it on failure,
        still inside ``main()``'s ``stoppable()``), and a handle is dropped only once its
        child is gone, so even a stop cut short otherwise (an exception) is finished by the
        next call."""
        with stop_deferred():
            self._stop()

    def _stop(self) -> None:
        if self.haproxy is not None:
            self._log("stopping HAProxy")
            # SIGTERM: hard stop (SIGUSR1 would wait 1 h).
            stop_process_group(self.haproxy, _STOP_TIMEOUT_S)
            self.haproxy = None
        if self.web.proc is not None:
            self._log("stopping the web tier")
            stop_process_group(self.web.proc, self.graceful_timeout + 5)
            self.web.proc = None
        if any(relay.running for relay in self.relays):
            self._log(f"stopping relays (graceful timeout {self.graceful_timeout} s)")
        for relay in self.relays:  # SIGTERM to all first, so they drain in parallel
            if relay.proc is not None and relay.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    relay.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.graceful_timeout + 5
        for relay in self.relays:
            if relay.proc is not None:
                stop_process_group(relay.proc, max(0.0, deadline - time.monotonic()))
                relay.proc = None
        if any(zk.proc is not None for zk in self.zookeepers):
            self._log("stopping ZooKeeper")
        for zk in reversed(self.zookeepers):
            if zk.proc is not None:
                stop_process_group(zk.proc, _STOP_TIMEOUT_S)
                zk.proc = None
        if self.postgres is not None and self.postgres.is_running():
            self._log("stopping PostgreSQL")
            self.postgres.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- chaos ----------------------------------------------------------------------------

    def kill_relay(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal relay ``i``. SIGKILL goes to its whole process group (master and workers,
        as a crashed container); any other signal to the gunicorn master only (as ``docker
        stop``: SIGTERM drains). Returns at once; ``relays[i].proc.wait()`` to wait."""
        proc = self.relays[i].proc
        if proc is None or proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            signal_group(proc, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            wait_group_gone(proc.pid)
        else:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def restart_relay(self, i: int, timeout: float = _RELAY_START_TIMEOUT_S) -> None:
        """Stop relay ``i`` if it runs (SIGTERM, graceful timeout), start it on the same
        port and wait for its ``/readyz``."""
        relay = self.relays[i]
        stop_process_group(relay.proc, self.graceful_timeout + 5)
        self._spawn_relay(relay)
        self._wait_relay(relay, timeout)

    def kill_zk(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Signal ZooKeeper node ``i`` (the JVM); with SIGKILL, wait until it is gone."""
        proc = self.zookeepers[i].proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def restart_zk(self, i: int, timeout: float = _ZK_START_TIMEOUT_S) -> None:
        """Stop node ``i`` if it runs, start it again (same ports and data) and wait until
        it is a leader or follower."""
        zk = self.zookeepers[i]
        stop_process_group(zk.proc, _STOP_TIMEOUT_S)
        self._spawn_zk(zk)
        wait_until_ready(
            zk.proc,
            lambda: zk.mode() in ("leader", "follower"),
            timeout,
            name=f"ZooKeeper {zk.myid} (rejoining)",
            log_path=zk.log_path,
            error=ClusterError,
        )

    def zk_mode(self, i: int) -> str | None:
        return self.zookeepers[i].mode()

    def zk_leader(self) -> int | None:
        """The index of the node that says it leads, if any."""
        for zk in self.zookeepers:
            if zk.mode() == "leader":
                return zk.index
        return None

    def pids(self) -> list[int]:
        """Every live process this cluster started (with gunicorn workers and PostgreSQL's
        postmaster); the tests check it is empty after ``stop()``."""
        procs = [self.haproxy, *(r.proc for r in self.relays), *(z.proc for z in self.zookeepers)]
        found: list[int] = []
        for proc in procs:
            if proc is not None and proc.poll() is None:
                found.append(proc.pid)
                found.extend(descendants(proc.pid))
        postmaster = self.postmaster_pid()
        if postmaster is not None:
            found.append(postmaster)
        return found

    def postmaster_pid(self) -> int | None:
        """The embedded PostgreSQL's pid while it runs."""
        return None if self.postgres is None else self.postgres.running_pid()

    # -- supervision (main) ---------------------------------------------------------------

    def supervise(self) -> None:
        """Restart a child that died; ``ClusterError`` when one keeps dying."""
        now = time.monotonic()
        for zk in self.zookeepers:
            if zk.proc is not None and zk.proc.poll() is not None:
                self._note_death(f"ZooKeeper {zk.myid}", zk.proc, zk.log_path, zk, now)
                stop_process_group(zk.proc, 0)  # see below
                self._spawn_zk(zk)
        for relay in self.relays:
            if relay.proc is not None and relay.proc.poll() is not None:
                self._note_death(relay.name, relay.proc, relay.log_path, relay, now)
                # What is left of its process group (a dead master's workers) goes too:
                # once the handle is replaced, nothing would stop it.
                stop_process_group(relay.proc, 0)
                self._spawn_relay(relay)
        if self.web.proc is not None and self.web.proc.poll() is not None:
            self._note_death("web", self.web.proc, self.web.log_path, self.web, now)
            stop_process_group(self.web.proc, 0)  # see above
            self._spawn_web()
        if self.haproxy is not None and self.haproxy.poll() is not None:
            if now - self._haproxy_started_at > 60:
                self._haproxy_restarts = 0
            self._haproxy_restarts += 1
            self._log(f"HAProxy exited with {self.haproxy.returncode}; restarting")
            if self._haproxy_restarts > _MAX_RESTARTS:
                raise ClusterError(f"HAProxy keeps exiting:\n{log_tail(self.haproxy_log)}")
            stop_process_group(self.haproxy, 0)  # see above
            self._spawn_haproxy()

    def _note_death(
        self,
        name: str,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        node: _Child,
        now: float,
    ) -> None:
        if now - node.started_at > 60:
            node.restarts = 0
        node.restarts += 1
        _say(f"{name} exited with {proc.returncode}; restarting (log {log_path})")
        if node.restarts > _MAX_RESTARTS:
            raise ClusterError(f"{name} keeps exiting:\n{log_tail(log_path)}")

    def describe(self) -> str:
        """What runs where, for humans."""
        lines = [
            "ddp-relay local cluster (round robin, no stickiness)",
            f"  Live demo page  {self.url}/   (open it in two windows, then restart a relay: "
            "the session resumes)",
            f"  DDP WebSocket   {self.ws_url}",
            f"  DDP SockJS      {self.url}/sockjs",
            f"  Web tier        {self.web.url}  (pid {self.web.pid}; through HAProxy: all "
            "but /websocket and /sockjs)",
            f"  Django admin    {self.url}/admin/   (user admin, password "
            f"{os.environ.get('DEMO_ADMIN_PASSWORD', 'ddp-relay-demo')})",
            f"  HAProxy stats   {self.stats_url}",
            f"  Database        {self.database_url}",
            f"  ZooKeeper       {self.zk_connect}",
        ]
        for zk in self.zookeepers:
            lines.append(
                f"    zk{zk.myid}  client {zk.client_port}  peer {zk.peer_port}  election "
                f"{zk.election_port}  pid {zk.pid}  {zk.mode() or '?'}"
            )
        lines.append("  Relays")
        for relay in self.relays:
            lines.append(
                f"    {relay.name}  {relay.url}  (ws {relay.ws_url}, "
                f"{relay.internal_url}/metrics)  pid {relay.pid}"
            )
        lines.append(f"  State and logs  {self.state_dir}")
        return "\n".join(lines)

    # -- internals ------------------------------------------------------------------------

    def _log(self, message: str) -> None:
        if self.verbose:
            _say(message)

    def _start_postgres(self) -> None:
        if self._external_database_url:
            return
        self._log("starting PostgreSQL")
        # Deferred: a stop signal during pg_ctl start would otherwise leave a postmaster
        # coming up that no one stops. It takes effect once the server runs.
        with stop_deferred():
            self.postgres = EmbeddedPostgres(self.state_dir / "postgres")
            self.postgres.start()
        self.postgres.create_database("relay")
        self.database_url = self.postgres.dsn("relay")

    def _django_env(self) -> dict[str, str]:
        return example_env(self.database_url, keep_caller_settings=True)

    def _manage(self, *args: str) -> None:
        log_path = self.state_dir / "manage.log"
        with log_path.open("ab") as log:
            result = subprocess.run(
                manage_argv(*args),
                env=self._django_env(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if result.returncode != 0:
            raise ClusterError(f"manage.py {' '.join(args)} failed:\n{log_tail(log_path)}")

    def _prepare_database(self) -> None:
        self._log("migrating the example project")
        self._manage("migrate", "--noinput", "-v", "0")
        if self.collectstatic:
            self._manage("collectstatic", "--noinput", "-v", "0")
        if self.seed:
            self._manage("seed_demo")

    def _write_zk_config(self, zk: ZooKeeperNode) -> None:
        data = zk.base_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        (data / "myid").write_text(f"{zk.myid}\n")
        zk.config_path.write_text(
            local_zookeeper.config(
                data_dir=data,
                client_port=zk.client_port,
                init_limit=20,
                servers={o.myid: (o.peer_port, o.election_port) for o in self.zookeepers},
                header="# Generated by devstack.cluster; rewritten at every start.",
            )
        )

    def _spawn_zk(self, zk: ZooKeeperNode) -> None:
        argv = local_zookeeper.command(self.java, self.zookeeper_jar, zk.config_path)
        with stop_deferred():  # see _spawn_relay
            zk.proc = spawn(argv, zk.log_path, cwd=zk.base_dir)
        zk.started_at = time.monotonic()

    def _wait_quorum(self, timeout: float) -> None:
        self._log("waiting for the ZooKeeper quorum")
        deadline = time.monotonic() + timeout
        while True:
            modes = []
            for zk in self.zookeepers:
                check_alive(zk.proc, f"ZooKeeper {zk.myid}", zk.log_path, ClusterError)
                modes.append(zk.mode())
            if all(mode in ("leader", "follower") for mode in modes) and "leader" in modes:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- zk{zk.myid} ({zk.log_path}):\n{log_tail(zk.log_path, 15)}"
                    for zk in self.zookeepers
                )
                raise ClusterError(f"no ZooKeeper quorum in {timeout} s (modes {modes}):\n{tails}")
            time.sleep(0.1)

    def relay_environment(self, relay: RelayNode) -> dict[str, str]:
        """What relay ``relay`` runs with (the relays of docker-compose.yml get the same
        settings: ``tests/deploy/test_compose.py``)."""
        env = self._django_env()
        env.update(
            relay_env(
                relay.port,
                workers=self.workers,
                graceful_timeout=self.graceful_timeout,
                log_level=self.log_level,
                metrics_dir=relay.metrics_dir,
            )
        )
        # DDP only: the web tier serves the Django project.
        env["RELAY_WSGI_APP"] = ""
        env["RELAY_INTERNAL_HOST"] = HOST
        env["RELAY_INTERNAL_PORT"] = str(relay.internal_port)
        env["RELAY_ZOOKEEPER"] = self.zk_connect
        # HAProxy appends the client's address to X-Forwarded-For (option forwardfor).
        env["RELAY_FORWARDED_COUNT"] = "1"
        return env

    def _spawn_relay(self, relay: RelayNode) -> None:
        fresh_metrics_dir(relay.metrics_dir)
        env = self.relay_environment(relay)
        relay.env = env
        argv = gunicorn_argv(f"ddp-{relay.name}")
        # Deferred: the child leads a session of its own, out of reach of the signals
        # sent to this one's group; an interrupt between its fork and the assignment
        # would leave it running with no handle to stop it by.
        with stop_deferred():
            relay.proc = spawn(argv, relay.log_path, env=env, cwd=ROOT)
        relay.started_at = time.monotonic()

    def _wait_relay(self, relay: RelayNode, timeout: float) -> None:
        wait_until_ready(
            relay.proc,
            lambda: http_status(relay.url + "/readyz") == 200,
            timeout,
            name=relay.name,
            log_path=relay.log_path,
            error=ClusterError,
        )

    def _spawn_web(self) -> None:
        # `ddp-relay web` (compose's `web` service), through this interpreter: the venv's
        # console script need not be on PATH.
        argv = [sys.executable, "-m", "relay", "web", "--bind", f"{HOST}:{self.web.port}"]
        argv += ["--workers", "1"]
        with stop_deferred():  # see _spawn_relay
            self.web.proc = spawn(argv, self.web.log_path, env=self._django_env(), cwd=ROOT)
        self.web.started_at = time.monotonic()

    def _wait_web(self, timeout: float) -> None:
        wait_until_ready(
            self.web.proc,
            lambda: http_status(self.web.url + "/livez") == 200,
            timeout,
            name="the web tier",
            log_path=self.web.log_path,
            error=ClusterError,
        )

    def _write_haproxy_config(self) -> None:
        servers = "".join(
            f"    server {relay.name} {HOST}:{relay.port} check inter 1s fall 2 rise 2\n"
            for relay in self.relays
        )
        self.haproxy_config.write_text(
            f"""\
# Generated by devstack.cluster (the loopback twin of deploy/haproxy.cfg); rewritten at
# every start. Round robin, NO stickiness: any relay serves any DDP session.

global
    log stdout format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    # An upgraded WebSocket is a tunnel: DDP heartbeats (15 s) keep it far from this.
    timeout tunnel 1h
    timeout client-fin 5s
    # A relay that refuses the connection (killed, not yet marked down) costs a retry on
    # another relay, not an error.
    retries 3
    option redispatch 1

frontend ddp
    bind {HOST}:{self.port}
    # The client's address for the relays' per-address limits (RELAY_FORWARDED_COUNT=1).
    option forwardfor
    # DDP to the relays, and /readyz (through the balancer: is a relay ready to take
    # DDP?); the Django project (admin, views) to the web tier.
    acl ddp path_beg /websocket /sockjs
    acl ddp path /readyz
    use_backend relays if ddp
    default_backend web

frontend stats
    bind {HOST}:{self.stats_port}
    stats enable
    stats uri /
    stats refresh 2s

backend relays
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
{servers}
backend web
    balance roundrobin
    # ddp-relay web answers /livez itself, whatever the Host (relay/server/web.py).
    option httpchk GET /livez
    http-check expect status 200
    server web {HOST}:{self.web.port} check inter 1s fall 2 rise 2
"""
        )

    def _spawn_haproxy(self) -> None:
        # -db: foreground, no daemon, so this process supervises (and stops) it.
        argv = [self.haproxy_bin, "-db", "-f", str(self.haproxy_config)]
        with stop_deferred():  # see _spawn_relay
            self.haproxy = spawn(argv, self.haproxy_log, cwd=ROOT)
        self._haproxy_started_at = time.monotonic()

    def backend_status(self) -> dict[str, str]:
        """HAProxy's view of each relay (``UP``, ``DOWN``, ``UP 1/2``...), from its stats."""
        try:
            with urllib.request.urlopen(self.stats_url + ";csv", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        rows = [line.split(",") for line in text.splitlines()]
        if not rows or not rows[0] or not rows[0][0].startswith("# pxname"):
            return {}
        header = rows[0]
        header[0] = "pxname"
        status = header.index("status")
        return {
            row[1]: row[status]
            for row in rows[1:]
            if len(row) > status and row[0] == "relays" and row[1] not in ("BACKEND", "FRONTEND")
        }

    def _wait_haproxy(self, timeout: float) -> None:
        self._log("waiting for HAProxy")
        deadline = time.monotonic() + timeout
        while True:
            check_alive(self.haproxy, "HAProxy", self.haproxy_log, ClusterError)
            states = self.backend_status()
            if (
                len(states) == len(self.relays)
                and all(s == "UP" for s in states.values())
                and http_status(self.url + "/readyz") == 200
            ):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"HAProxy not serving in {timeout} s (relays {states}):\n"
                    f"{log_tail(self.haproxy_log)}"
                )
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    interrupt_on_stop_signals()  # first: from here on, a stop signal is at least noted
    parser = argparse.ArgumentParser(
        prog="python -m devstack.cluster",
        description="PostgreSQL, a 3-node ZooKeeper ensemble, three relays and HAProxy on "
        "loopback (docker-compose.yml without Docker). Ctrl-C stops them all.",
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT", "8000")), help="HAProxy's port"
    )
    parser.add_argument("--stats-port", type=int, default=0, help="HAProxy stats (0: free)")
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--zookeepers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("RELAY_WORKERS", "2")))
    parser.add_argument(
        "--graceful-timeout",
        type=int,
        default=int(os.environ.get("RELAY_GRACEFUL_TIMEOUT", "30")),
        help="seconds a stopping relay may drain (default RELAY_GRACEFUL_TIMEOUT or 30)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("RELAY_STATE_DIR", ROOT / ".state")) / "cluster",
    )
    args = parser.parse_args(argv)

    cluster: Cluster | None = None

    def serve() -> int:
        nonlocal cluster
        cluster = Cluster(
            args.state_dir,
            port=args.port,
            stats_port=args.stats_port,
            relays=args.relays,
            zookeepers=args.zookeepers,
            workers=args.workers,
            graceful_timeout=args.graceful_timeout,
            collectstatic=True,
            verbose=True,
        )
        _say(f"starting in {cluster.state_dir}")
        cluster.start()
        print(f"\n{cluster.describe()}\nPress Ctrl-C to stop.\n", flush=True)
        while True:
            time.sleep(0.5)
            cluster.supervise()

    def failed(exc: Exception) -> int:
        # After a stop signal, a failed step is most likely one the signal killed too
        # (manage.py is in this process group): said, but the stop was asked for.
        if not isinstance(exc, ClusterError) and stop_requested() is None:
            raise exc
        _say(str(exc))
        return 1

    def cleanup() -> None:
        if cluster is not None:
            cluster.stop()

    def stopped(signum: int | None) -> None:
        if signum is not None:
            _say(f"stopped ({signal.Signals(signum).name})")
        elif cluster is not None:
            _say("stopped")

    return run_until_stopped(serve, cleanup, failed, stopped)


if __name__ == "__main__":
    raise SystemExit(main())
