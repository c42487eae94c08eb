"""``make run`` and ``make cluster`` stop cleanly, however a supervisor signals them.

Each test starts ``python -m devstack.devserver`` or ``python -m devstack.cluster`` as a
supervisor does: in a session (process group) of its own, with ``RELAY_STATE_DIR`` in the
test's tmp dir and ``PORT`` free, so it never meets a user's ``.state`` or port 8000. Then it
signals the whole group the way the issue saw it stopped: two SIGTERMs microseconds apart
(GNU make forwards the one it got), SIGINT then SIGTERM, signals repeated all through the
cleanup, and a burst while the stack is still starting (PostgreSQL coming up; relays
waiting for readiness). After each, the launcher must exit with status 0 and no process of
its stack may be left: they are found in ``/proc`` by the state dir in their command line,
environment or working directory (the PostgreSQL cluster may live behind a symlink in
$TMPDIR when run as root), plus their descendants (PostgreSQL backends rewrite their
command line over their environment). So the PostgreSQL postmaster and backends, the
ZooKeeper JVMs, gunicorn masters and workers, HAProxy and ``manage.py`` are all seen,
not just the launcher.

Cost: three devserver starts (a few seconds each) and two cluster starts (10-30 s each on
a 2-core machine). A test that fails still kills everything it started (its process group,
then whatever the ``/proc`` search finds) and deletes its PostgreSQL cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT
from devstack.processes import free_port, http_status, log_tail, spawn
from tests.fixtures.postgres import require_pg_bin
from tests.fixtures.relays import require_cluster_tools

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

# The caller's settings that would point the stack elsewhere than its own state dir.
_DROPPED_ENV = (
    "DATABASE_URL",
    "RELAY_ZOOKEEPER",
    "RELAY_COORDINATOR_PATH",
    "PROMETHEUS_MULTIPROC_DIR",
    "RELAY_STATE_DIR",
    "PORT",
)
_SERVE_TIMEOUT_S = 180.0
_EXIT_TIMEOUT_S = 120.0
_BANNER = "Press Ctrl-C to stop."


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def stack_processes(state: Path) -> dict[int, str]:
    """Every live process of the stack run on ``state``: ``{pid: command line}``."""
    markers = {str(state)}
    for dirpath, dirnames, filenames in os.walk(state):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):  # the PostgreSQL cluster, as root: $TMPDIR/ddp-relay-pg-*
                markers.add(os.path.realpath(path))
    wanted = [m.encode() for m in markers]
    parent: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 2 or fields[0] in ("Z", "X"):
            continue  # gone, or a zombie: it runs nothing any more
        parent[pid] = int(fields[1])
        if pid == os.getpid():
            continue
        blob = _read(f"/proc/{pid}/cmdline") + _read(f"/proc/{pid}/environ")
        with contextlib.suppress(OSError):
            blob += os.readlink(f"/proc/{pid}/cwd").encode()
        if any(marker in blob for marker in wanted):
            found.add(pid)
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {
        pid: _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")[:160]
        for pid in sorted(found)
    }


@dataclass
class Launcher:
    """``python -m devstack.<tool>`` in a session of its own, on its state dir and port."""

    proc: subprocess.Popen[bytes]
    state: Path
    port: int
    log: Path

    @property
    def readyz(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited with {self.proc.returncode} before {what}:\n{log_tail(self.log)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} in {timeout:g} s:\n{log_tail(self.log)}")
            time.sleep(0.02)

    def wait_serving(self) -> None:
        self.wait_for(
            lambda: _BANNER in self.output() and http_status(self.readyz) == 200,
            "serving",
            _SERVE_TIMEOUT_S,
        )

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill_everything(self) -> None:
        """Whatever happened: SIGKILL its process group and every process of its stack,
        then delete its PostgreSQL cluster (as root it lives in $TMPDIR)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (left := stack_processes(self.state)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for pg_state in (self.state / "postgres", self.state / "cluster" / "postgres"):
            if pg_state.exists():
                with contextlib.suppress(Exception):
                    EmbeddedPostgres(pg_state).destroy()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[str], Launcher]]:
    started: list[Launcher] = []

    def start(module: str) -> Launcher:
        state = tmp_path / "state"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        # A bounded drain, in case a relay hung: the test's own time limit stays far.
        env.update(PORT=str(port), RELAY_STATE_DIR=str(state), RELAY_GRACEFUL_TIMEOUT="10")
        log = tmp_path / f"{module.rsplit('.', 1)[-1]}.log"
        proc = spawn([sys.executable, "-m", module], log, env=env, cwd=ROOT, new_session=True)
        launcher = Launcher(proc, state, port, log)
        started.append(launcher)
        return launcher

    try:
        yield start
    finally:
        for launcher in started:
            launcher.kill_everything()


def stop_and_check(
    launcher: Launcher,
    signals: Sequence[int],
    *,
    repeat: Sequence[int] = (),
    every: float = 0.05,
) -> None:
    """Send ``signals`` to the launcher's process group back to back, then ``repeat`` (in
    turn, every ``every`` s) until it exits; it must exit 0 with nothing of its stack left."""
    for sig in signals:
        launcher.signal_group(sig)
    deadline = time.monotonic() + _EXIT_TIMEOUT_S
    turn = 0
    while launcher.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(every)
        if repeat:
            launcher.signal_group(repeat[turn % len(repeat)])
            turn += 1
    rc = launcher.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    left = stack_processes(launcher.state)
    assert rc == 0, f"exit status {rc}; left {left}:\n{log_tail(launcher.log)}"
    assert left == {}, f"left running after the launcher exited: {left}\n{log_tail(launcher.log)}"
    assert http_status(launcher.readyz) is None, "something still answers on its port"


# -- make run -------------------------------------------------------------------------------


def test_make_run_two_sigterms_back_to_back(launch: Callable[[str], Launcher]) -> None:
    require_pg_bin()
    devserver = launch("devstack.devserver")
    devserver.wait_serving()
    stop_and_check(devserver, [signal.SIGTERM, signal.SIGTERM])


def test_make_run_sigint_then_sigterms_until_it_exits(launch: Callable[[str], Launcher]) -> None:
    require_pg_bin()
    devserver = launch("devstack.devserver")
    devserver.wait_serving()
    # SIGHUP too (a closed terminal): gunicorn, in the launcher's group, reloads on it.
    stop_and_check(
        devserver, [signal.SIGINT, signal.SIGTERM], repeat=[signal.SIGTERM, signal.SIGHUP]
    )


def test_make_run_signal_burst_while_postgres_starts(launch: Callable[[str], Launcher]) -> None:
    require_pg_bin()
    devserver = launch("devstack.devserver")
    pg_log = devserver.state / "postgres" / "postgres.log"
    devserver.wait_for(pg_log.exists, "starting PostgreSQL", _SERVE_TIMEOUT_S)
    stop_and_check(
        devserver,
        [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM],
        repeat=[signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
        every=0.02,
    )
    assert _BANNER not in devserver.output(), "the burst came too late: it served"


# -- make cluster ---------------------------------------------------------------------------


def test_make_cluster_two_sigterms_then_more_while_serving(
    launch: Callable[[str], Launcher],
) -> None:
    require_cluster_tools()
    cluster = launch("devstack.cluster")
    cluster.wait_serving()
    stop_and_check(
        cluster,
        [signal.SIGTERM, signal.SIGTERM],
        repeat=[signal.SIGTERM, signal.SIGINT],
        every=0.1,
    )


def test_make_cluster_sigint_then_sigterm_while_relays_start(
    launch: Callable[[str], Launcher],
) -> None:
    require_cluster_tools()
    cluster = launch("devstack.cluster")
    last_relay_log = cluster.state / "cluster" / "relay3" / "relay.log"
    cluster.wait_for(last_relay_log.exists, "starting the relays", _SERVE_TIMEOUT_S)
    assert _BANNER not in cluster.output(), "the relays were ready before the signals"
    stop_and_check(
        cluster,
        [signal.SIGINT, signal.SIGTERM],
        repeat=[signal.SIGTERM, signal.SIGHUP],
        every=0.1,
    )
