"""Child processes of the local tools and the tests: start one, wait until it serves, stop it.

Outside the layers, like ``devstack.embedded_postgres``: ``devstack.devserver``,
``devstack.cluster``, the test fixtures and the benchmark harness use it; production never
does. Standard library only.

Its job: a free loopback port below the ephemeral range (``free_port``); a child started in
a session of its own with its output appended to a log (``spawn``); waiting, with a
deadline, until a child serves, failing at once with its log tail when it exits first
(``wait_until_ready``, ``check_alive``, ``http_status``); stopping it within a deadline,
SIGTERM then SIGKILL (``stop_process``; ``stop_process_tree`` also kills the descendants of
a child it had to kill; ``stop_process_group`` also kills what is left of its process group
and waits until that is gone); the ``/proc`` look-ups those need (``descendants``); and how
a launcher (``make run``, ``make cluster``) is stopped by signals
(``interrupt_on_stop_signals``, ``stoppable``, ``stop_deferred``, ``stop_requested``,
``ignore_stop_signals``).

Stop signals. SIGTERM (``kill``, ``timeout``, a supervisor), SIGINT (Ctrl-C) and SIGHUP (a
closed terminal) ask a launcher to stop, often more than once: GNU make forwards the
SIGTERM its process group got, so the launcher gets two within microseconds; a supervisor
repeats them. A launcher's start-up and serving run inside ``stoppable()``, where the first
stop signal raises ``KeyboardInterrupt``; that is the only one ever raised. Every later
signal, and any signal outside ``stoppable()`` (its cleanup), is only noted
(``stop_requested``), so nothing can raise into a cleanup, a ``finally`` or an ``except``.
Within ``stop_deferred()`` (starting a child and recording it, starting PostgreSQL, a
cleanup called during start-up) the interrupt waits until the section ends, so a child is
never started without its launcher knowing it has to be stopped. Once its cleanup is
over, a launcher ignores them (``ignore_stop_signals``) so that one arriving while the
interpreter exits cannot turn a clean stop into a death by signal.

What it must not do: know what it starts (the recipes for gunicorn relays and ZooKeeper
are in ``devstack.launch`` and ``devstack.local_zookeeper``), import anything beyond the
standard library (``python -m devstack.cluster`` and ``python -m devstack.embedded_postgres``
run on a bare interpreter), bind anything but the host it is given (127.0.0.1 by
default), return from a stop while the child it stopped may still run, or raise a second
``KeyboardInterrupt`` for a second stop signal.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "LOG_TAIL_LINES",
    "STOP_SIGNALS",
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
    "stop_deferred",
    "stop_process",
    "stop_process_group",
    "stop_process_tree",
    "stop_requested",
    "stoppable",
    "wait_group_gone",
    "wait_until_ready",
]

#: How many lines of a child's log an error message quotes.
LOG_TAIL_LINES = 40
#: How long to wait for a child to be reaped after SIGKILL.
_KILL_WAIT_S = 5.0


#: Where ``free_port`` looks when the kernel's ephemeral range leaves room below it.
_LOWEST_PORT = 10_000
#: Ports this process has handed out: never twice, even once their server has gone.
_handed_out: set[int] = set()


def _ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The lowest port the kernel gives outgoing connections (Linux's default 32768)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    Taken at random below the kernel's ephemeral range, not by binding to port 0: a port
    from that range is free again as soon as the probe closes, and any outgoing connection
    on the machine (a ZooKeeper client, a database pool) may take it before the server it
    was meant for binds it ("Address already in use", seen in the e2e suite). Below the
    range only another server can, and the ports this process handed out are never reused.
    """
    high = _ephemeral_low() - 1
    rng = random.SystemRandom()
    for _ in range(200 if high - _LOWEST_PORT >= 1_000 else 0):
        port = rng.randint(_LOWEST_PORT, high)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port


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


def stop_process_tree(proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """``stop_process`` for a child that has children of its own in the caller's process
    group (a gunicorn master and its workers): when it does not exit within ``timeout`` s,
    its descendants are SIGKILLed with it and waited for."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    # Listed while the parent still runs: once it is dead they are orphans that nothing
    # links to it any more.
    left = descendants(proc.pid)
    proc.kill()
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_WAIT_S)
    deadline = time.monotonic() + _KILL_WAIT_S
    while _alive(left) and time.monotonic() < deadline:
        time.sleep(0.02)


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


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still run (not zombies)."""
    wanted = set(pids)
    return [pid for pid, fields in _proc_stats() if pid in wanted and fields[0] != "Z"]


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


# -- stop signals ---------------------------------------------------------------------------

#: What asks a launcher to stop: ``kill``/``timeout``/a supervisor, Ctrl-C, a closed terminal.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _StopState:
    """What the stop-signal handler knows. Module state: signals belong to the process."""

    requested: int | None = None  # the first stop signal received
    raised = False  # the one KeyboardInterrupt has been raised
    interruptible = False  # inside stoppable()
    deferred = 0  # how many stop_deferred() sections are open


_stop = _StopState()


def _raise_if_due() -> None:
    # Set ``raised`` before raising: a handler that runs between the test and the raise
    # (handlers run between any two bytecodes, even inside another handler) then raises
    # itself and this raise is skipped, or finds ``raised`` set and returns. Either way
    # exactly one KeyboardInterrupt leaves here.
    if (
        _stop.requested is not None
        and _stop.interruptible
        and not _stop.deferred
        and not _stop.raised
    ):
        _stop.raised = True
        raise KeyboardInterrupt(f"signal {_stop.requested}")


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if _stop.requested is None:
        _stop.requested = signum
    _raise_if_due()


def interrupt_on_stop_signals() -> None:
    """Handle ``STOP_SIGNALS`` from now on: noted, and raised once as ``KeyboardInterrupt``
    inside ``stoppable()`` (Python's default for SIGTERM and SIGHUP exits without running
    a ``finally``; its SIGINT handler raises at every Ctrl-C, into the cleanup too).

    Call it first thing, before anything is started: until then a stop signal's default
    action ends the process, which has nothing to clean up yet. SIGINT and SIGHUP that
    this process inherited as ignored (``nohup``, a shell's background job) stay ignored.
    """
    _stop.requested = None
    _stop.raised = False
    _stop.interruptible = False
    _stop.deferred = 0
    for sig in STOP_SIGNALS:
        if sig != signal.SIGTERM and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, _on_stop_signal)


def stop_requested() -> int | None:
    """The first stop signal received since ``interrupt_on_stop_signals()``, else None."""
    return _stop.requested


@contextlib.contextmanager
def stoppable() -> Iterator[None]:
    """A launcher's start-up and serving: the first stop signal raises ``KeyboardInterrupt``
    here (at once on entry for one that came before). Its cleanup goes after the block, in
    an ``except``/``finally``, where no stop signal raises."""
    _stop.interruptible = True
    try:
        _raise_if_due()
        yield
    finally:
        _stop.interruptible = False


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """A section no stop signal may cut short (starting a child and keeping its handle,
    starting PostgreSQL, a cleanup): inside ``stoppable()``, a stop signal that arrives
    meanwhile raises ``KeyboardInterrupt`` when the section ends, not before."""
    _stop.deferred += 1
    try:
        yield
    finally:
        _stop.deferred -= 1
    _raise_if_due()


def ignore_stop_signals() -> None:
    """Once the cleanup is over: ignore stop signals until the process exits. At exit
    Python puts back the default action of every signal it handled, so a supervisor's
    next SIGTERM would turn a clean stop into a death by signal (status -15, not 0).
    Not earlier: a child started meanwhile (``pg_ctl stop``) would inherit the ignoring."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def run_until_stopped(
    serve: Callable[[], int],
    cleanup: Callable[[], None],
    failed: Callable[[Exception], int],
    stopped: Callable[[int | None], None],
) -> int:
    """A launcher's life (``make run``, ``make cluster``), after
    ``interrupt_on_stop_signals()``: ``serve`` inside ``stoppable()``, then ``cleanup``,
    always and uninterruptibly, then ``stopped`` (told the stop signal, if any) and
    ``ignore_stop_signals()`` even when the cleanup failed.

    ``failed`` gets an exception ``serve`` raised: it re-raises it, or returns the exit
    status. After a stop signal a failed step is most likely one the signal killed too
    (children share the launcher's process group), so it is part of the stop. Returns 0
    after a requested stop, else ``serve``'s (or ``failed``'s) status.
    """
    rc = 0
    try:
        with stoppable():
            rc = serve()
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        rc = failed(exc)
    finally:
        try:
            cleanup()
        finally:
            # Even when stopping failed (its error propagates): signals arriving during
            # the interpreter's exit must not turn a requested stop into a death by signal.
            stopped(stop_requested())
            ignore_stop_signals()
    return 0 if stop_requested() is not None else rc
