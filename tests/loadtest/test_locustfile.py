"""``loadtest/locustfile.py`` loads under locust, and refuses a host that is not loopback.

Locust runs in a subprocess (``sys.executable -m locust``): importing it here would
monkey-patch the test process with gevent. No server is needed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


def locust(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_locust_finds_the_ddp_user_from_any_directory(tmp_path: Path) -> None:
    proc = locust("--list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "DDPUser" in proc.stdout


def test_a_host_that_is_not_loopback_is_refused_before_connecting(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing should be tried.
    proc = locust(
        "--headless",
        "-u",
        "1",
        "-r",
        "1",
        "-t",
        # long enough for locust to spawn the user on a busy machine; it stops at once
        "8s",
        "-H",
        "http://192.0.2.1:8000",
        "--only-summary",
        "--csv",
        str(tmp_path / "out"),
        cwd=tmp_path,
        env={"LOADTEST_ALLOW_REMOTE": ""},
    )
    assert proc.returncode == 1, proc.stderr
    with (tmp_path / "out_failures.csv").open(newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["Name"] == "connect" and "not a loopback host" in row["Error"], row
    with (tmp_path / "out_stats.csv").open(newline="") as f:
        names = {r["Name"] for r in csv.DictReader(f) if r["Type"] == "DDP"}
    assert names == {"connect"}
