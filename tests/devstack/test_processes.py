"""How a launcher is stopped by signals (``devstack.processes``), in this very process.

One ``KeyboardInterrupt`` for any number of stop signals, only inside ``stoppable()``,
held back by ``stop_deferred()`` until its end; nothing raised into the cleanup, even for
two different signals pending at once (Python then runs both handlers back to back: the
case that cut ``make cluster``'s cleanup short). And ``stop_process_tree`` kills the
workers of a master it had to kill. ``free_port`` stays out of the kernel's ephemeral
range. The launchers end to end: ``test_shutdown.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import (
    STOP_SIGNALS,
    _ephemeral_low,
    descendants,
    free_port,
    ignore_stop_signals,
    interrupt_on_stop_signals,
    stop_deferred,
    stop_process_tree,
    stop_requested,
    stoppable,
)


def _signal_self(*sigs: int) -> None:
    for sig in sigs:
        os.kill(os.getpid(), sig)


def _let_handlers_run() -> None:
    # Python runs a handler between two bytecodes of the main thread; the signal may also
    # have been taken by another thread of this process first.
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def stop_handlers() -> Iterator[None]:
    """This process's handlers for the stop signals are put back afterwards (pytest's
    SIGINT handler among them), after every signal sent was handled by ours."""
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        interrupt_on_stop_signals()
        yield
    finally:
        _let_handlers_run()
        interrupt_on_stop_signals()  # clears the module's state for the next test
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@pytest.mark.usefixtures("stop_handlers")
def test_many_stop_signals_raise_one_keyboard_interrupt_and_none_into_the_cleanup() -> None:
    cleanup_steps = 0
    with pytest.raises(KeyboardInterrupt), stoppable():
        _signal_self(signal.SIGTERM, signal.SIGTERM)
        _let_handlers_run()
    # The cleanup: repeated signals of every kind are only noted.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        _signal_self(sig)
        _let_handlers_run()
        cleanup_steps += 1
    assert cleanup_steps == 4
    assert stop_requested() == signal.SIGTERM


@pytest.mark.usefixtures("stop_handlers")
def test_two_signals_pending_at_once_still_raise_only_one() -> None:
    both = {signal.SIGINT, signal.SIGTERM}
    reached_cleanup = False
    signal.pthread_sigmask(signal.SIG_BLOCK, both)
    try:
        _signal_self(signal.SIGINT, signal.SIGTERM)  # pending, both
        try:
            with stoppable():
                signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
                _let_handlers_run()
        except KeyboardInterrupt:
            # Python runs the second handler right after the first one raised, at the
            # next bytecode: here, in the cleanup. It must not raise again.
            _let_handlers_run()
            reached_cleanup = True
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, both)
    assert reached_cleanup
    assert stop_requested() in both


@pytest.mark.usefixtures("stop_handlers")
def test_a_stop_signal_waits_for_the_end_of_a_deferred_section() -> None:
    finished = False
    with pytest.raises(KeyboardInterrupt), stoppable():
        with stop_deferred():
            _signal_self(signal.SIGTERM)
            _let_handlers_run()
            finished = True  # a child started here keeps its handle
        raise AssertionError("the stop signal was not raised at the end of the section")
    assert finished


@pytest.mark.usefixtures("stop_handlers")
def test_a_stop_signal_before_stoppable_raises_on_entry_and_never_outside() -> None:
    _signal_self(signal.SIGHUP)
    _let_handlers_run()  # outside stoppable(): nothing raised
    assert stop_requested() == signal.SIGHUP
    with pytest.raises(KeyboardInterrupt), stoppable():
        raise AssertionError("a start-up step ran after the stop was asked for")
    with stop_deferred():  # a cleanup's section, after the one interrupt: nothing raised
        _signal_self(signal.SIGTERM)
        _let_handlers_run()


@pytest.mark.usefixtures("stop_handlers")
def test_ignore_stop_signals_after_the_cleanup() -> None:
    ignore_stop_signals()
    _signal_self(signal.SIGTERM, signal.SIGINT)
    _let_handlers_run()
    assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in STOP_SIGNALS)
    assert stop_requested() is None  # ignored, not even noted


def test_stop_process_tree_kills_the_workers_of_a_master_it_had_to_kill(tmp_path: Path) -> None:
    # A "master" that ignores SIGTERM, with a "worker" that does too (SIG_IGN is inherited).
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "time.sleep(60)\n"
    )
    master = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not (workers := descendants(master.pid)):
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.02)
        stop_process_tree(master, timeout=0.5)
        assert master.returncode == -signal.SIGKILL
        for pid in workers:
            stat = Path(f"/proc/{pid}/stat")
            assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        for pid in descendants(master.pid):
            os.kill(pid, signal.SIGKILL)
        master.kill()
        master.wait()


def test_free_ports_are_below_the_ephemeral_range_bindable_and_never_repeated() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= port < _ephemeral_low() for port in ports)
    for port in ports[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))


def test_the_ephemeral_range_falls_back_to_linux_s_default(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("40000\t60999\n")
    assert _ephemeral_low(str(tmp_path / "range")) == 40_000
    assert _ephemeral_low(str(tmp_path / "missing")) == 32_768
