"""``loadtest/users.py`` through the locustfiles that use it: each loads under locust from
any directory and lists exactly its own user classes (the abstract base never runs), each
refuses a host that is not loopback before connecting, and the new locustfiles refuse a
bad setting at load time.

Locust runs in a subprocess (``sys.executable -m locust``): importing it here would
monkey-patch the test process with gevent. No server is needed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILES = {
    "locustfile.py": {"DDPUser"},
    "locust_readheavy.py": {"Writer", "IdleSubscriber"},
    "locust_storm.py": {"StormUser"},
}


def locust(
    locustfile: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / locustfile), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("locustfile", sorted(LOCUSTFILES))
def test_each_locustfile_lists_exactly_its_users(locustfile: str, tmp_path: Path) -> None:
    proc = locust(locustfile, "--list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    listed = {line.strip() for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert listed == LOCUSTFILES[locustfile], proc.stdout


def test_a_host_that_is_not_loopback_is_refused(tmp_path: Path) -> None:
    """Both new locustfiles in one run (locustfile.py: tests/loadtest/test_locustfile.py)."""
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing should be tried.
    proc = locust(
        "locust_readheavy.py," + str(ROOT / "loadtest" / "locust_storm.py"),
        "--headless", "-u", "2", "-r", "2", "-t", "6s",
        "-H", "http://192.0.2.1:8000", "--only-summary", "--csv", str(tmp_path / "out"),
        cwd=tmp_path,
        env={"LOADTEST_ALLOW_REMOTE": "", "LOADTEST_WRITERS": "0"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    with (tmp_path / "out_failures.csv").open(newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["Name"] == "connect" and "not a loopback host" in row["Error"], row
    assert int(row["Occurrences"]) == 2, row  # an IdleSubscriber and a StormUser


@pytest.mark.parametrize(
    ("locustfile", "env", "complaint"),
    [
        ("locust_storm.py", {"LOADTEST_STORM_PERIOD": "0"}, "LOADTEST_STORM_PERIOD"),
        ("locust_storm.py", {"LOADTEST_STORM_PERIOD": "soon"}, "soon"),
        ("locust_readheavy.py", {"LOADTEST_WRITERS": "-1"}, "LOADTEST_WRITERS"),
        ("locust_readheavy.py", {"LOADTEST_WRITERS": "two"}, "two"),
    ],
)
def test_a_bad_setting_stops_locust_with_its_name(
    locustfile: str, env: dict[str, str], complaint: str, tmp_path: Path
) -> None:
    proc = locust(locustfile, "--list", cwd=tmp_path, env=env)
    assert proc.returncode != 0, proc.stdout
    assert complaint in proc.stderr, proc.stderr
