"""Running real locust, headless, on the locustfiles of ``loadtest/``, and reading its CSVs.

Locust runs in its own process (it monkey-patches with gevent at import), started as
``sys.executable -m locust`` so it uses this venv's locust and gevent. ``run_locust``
writes ``<out>/locust_stats.csv`` and the failures and exceptions files beside it;
``stats`` reads the first, ``assert_clean`` the other two. Not a test module:
``test_locust_smoke`` and ``test_cluster`` share it.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from devstack.launch import ROOT

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
READHEAVY = ROOT / "loadtest" / "locust_readheavy.py"
STORM = ROOT / "loadtest" / "locust_storm.py"
#: Locust start-up + the run + stopping users (their cleanup) fit well inside this.
SUBPROCESS_TIMEOUT_S = 90


def locust_command(
    host: str, out: Path, locustfiles: Sequence[Path], users: int, run_time_s: int
) -> list[str]:
    """``locust`` headless on ``host`` with ``locustfiles`` (several: their user classes
    share the users), CSVs under ``out``."""
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        ",".join(str(path) for path in locustfiles),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(users),
        "-t",
        f"{run_time_s}s",
        "-H",
        host,
        "--only-summary",
        "--csv",
        str(out / "locust"),
        "--loglevel",
        "WARNING",
    ]


def run_locust(
    host: str,
    out: Path,
    env: Mapping[str, str],
    locustfiles: Sequence[Path] = (LOCUSTFILE,),
    users: int = 8,
    run_time_s: int = 6,
) -> subprocess.CompletedProcess[str]:
    """Runs locust to its end (``run_time_s`` plus stopping); the finished process."""
    return finish(start_locust(host, out, env, locustfiles, users, run_time_s), run_time_s)


def start_locust(
    host: str,
    out: Path,
    env: Mapping[str, str],
    locustfiles: Sequence[Path],
    users: int,
    run_time_s: int,
) -> subprocess.Popen[str]:
    """Starts locust and returns at once (the caller acts on the system meanwhile, then
    ``finish``es it)."""
    return subprocess.Popen(
        locust_command(host, out, locustfiles, users, run_time_s),
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], run_time_s: int) -> subprocess.CompletedProcess[str]:
    """Waits for a ``start_locust`` process; what ``run_locust`` would have returned."""
    try:
        stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S + run_time_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """Everything locust printed, for an assertion message."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_clean(out: Path, proc: subprocess.CompletedProcess[str], output: str) -> None:
    """No failure, no exception, exit 0."""
    with (out / "locust_failures.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [], output
    with (out / "locust_exceptions.csv").open(newline="") as f:
        assert list(csv.DictReader(f)) == [], output
    assert proc.returncode == 0, output


def stats(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    """``locust_stats.csv`` by (type, name), without the aggregate row."""
    with (out / "locust_stats.csv").open(newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f) if r["Name"] != "Aggregated"}
