"""Child processes of the local tools and the tests: start one, wait until it serves, stop it.

Outside the layers, like ``relay.dev.embedded_postgres``: ``relay.dev.devserver``,
``relay.dev.cluster``, the test fixtures and the benchmark harness use it; production never
does. Standard library only.

Its job: a free loopback port (``free_port``); a child started in a session of its own
with its output appended to a log (``spawn``); waiting, with a deadline, until a child
serves, failing at once with its log tail when it exits first (``wait_until_ready``,
``check_alive``, ``http_status``); stopping it within a deadline, SIGTERM then SIGKILL
(``stop_process``; ``stop_process_group`` also kills what is left of its process group and
waits until that is gone); and the ``/proc`` look-ups those need (``descendants``).

What it must not do: know what it starts (the recipes for gunicorn relays and ZooKeeper
are in ``relay.dev.launch`` and ``relay.dev.local_zookeeper``), import anything beyond the
standard library (``python -m relay.dev.cluster`` and ``python -m relay.dev.embedded_postgres``
run on a bare interpreter), bind anything but the host it is given (127.0.0.1 by
default), or return from a stop while the child it stopped may still run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LOG_TAIL_LINES",
    "check_alive",
    "descendants",
    "free_port",
    "http_status",
    "ignore_stop_signals",
    "interrupt_on_stop_signals",
    "log_end",
    "log_tail",
    "signal_group",
    "spawn",
    "stop_process",
    "stop_process_group",
    "wait_group_gone",
    "wait_until_ready",
]

#: How many lines of a child's log an error message quotes.
LOG_TAIL_LINES = 40
#: How long to wait for a child to be reaped after SIGKILL.
_KILL_WAIT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (bind to 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of the log at ``path`` ('' if it cannot be read)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as log:
            return "".join(deque(log, maxlen=lines))
    except OSError:
        return ""


def log_end(path: Path, chars: int = 20_000) -> str:
    """The last ``chars`` characters of the log at ``path`` ('' if it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def spawn(
    argv: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    new_session: bool = True,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` and no stdin.

    ``new_session``: the child leads a session (and process group) of its own, so a
    terminal's Ctrl-C reaches only the caller, which then stops its children in order.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
            preexec_fn=preexec_fn,
        )


def check_alive(
    proc: subprocess.Popen[bytes] | None,
    name: str,
    log_path: Path,
    error: Callable[[str], Exception] = RuntimeError,
) -> None:
    """Raise ``error`` with ``log_path``'s tail when ``proc`` is missing or has exited."""
    if proc is None or proc.poll() is not None:
        code = proc.returncode if proc is not None else None
        raise error(f"{name} exited with {code}; log {log_path}:\n{log_tail(log_path)}")


def wait_until_ready(
    proc: subprocess.Popen[bytes] | None,
    ready: Callable[[], bool],
    timeout: float,
    *,
    name: str,
    log_path: Path,
    error: Callable[[str], Exception] = RuntimeError,
    interval: float = 0.1,
) -> None:
    """Poll ``ready()`` until it is true; ``error`` (with the log tail) when ``proc`` exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        check_alive(proc, name, log_path, error)
        if time.monotonic() > deadline:
            raise error(f"{name} not ready in {timeout:g} s; log {log_path}:\n{log_tail(log_path)}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM, wait ``timeout`` s, then SIGKILL and reap: never leaves the child behind."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=_KILL_WAIT_S)


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the child's process group (it leads its own session), else to the child."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _proc_stats() -> list[tuple[int, list[str]]]:
    """``(pid, fields after comm)`` of every process (Linux ``/proc/<pid>/stat``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        found.append((int(entry.name), stat[stat.rfind(")") + 2 :].split()))
    return found


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for child, fields in _proc_stats():
        parents.setdefault(int(fields[1]), []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    return [pid for pid, fields in _proc_stats() if fields[0] != "Z" and int(fields[2]) == pgid]


def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no process of group ``pgid`` runs any more (SIGKILL is not instant)."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_process_group(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the child (a session leader), wait ``timeout`` s, then SIGKILL its whole
    process group (gunicorn workers of a killed master, ...) and wait until it is gone."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_KILL_WAIT_S)
    wait_group_gone(proc.pid)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interrupt_on_stop_signals() -> None:
    """SIGTERM (kill, ``timeout``, a supervisor) and SIGINT raise ``KeyboardInterrupt`` in
    the main thread, so a tool's ``finally`` stops its children whichever way it is
    stopped: Python's default for SIGTERM exits without running it."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def ignore_stop_signals() -> None:
    """From the start of a cleanup: a second Ctrl-C or SIGTERM must not cut it short and
    leave children behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
