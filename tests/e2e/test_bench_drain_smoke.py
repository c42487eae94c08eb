"""``python -m loadtest.bench drain`` at a tiny size: a drained relay's sessions all resume.

The benchmark starts its own PostgreSQL, ZooKeeper and two relays of one worker; 30
sessions from the Node.js generator (``loadtest/bench/draingen.js``, ``ws`` from
tests/e2e/node) subscribe on the first relay, which is then sent SIGTERM while a rename
is committed every 100 ms: every session must be parked by it, resumed on the other with
its own session id, get every write once and in order, and end with the database's
titles. The real figures (5,000 sessions on 3 relays) are the command's, with
``--sessions 5000``.

Needs PostgreSQL, ZooKeeper, ``node`` and ``npm ci`` in tests/e2e/node (``make deps``,
``make deps-zookeeper``): without them the test fails in CI / under ``make test`` and is
skipped elsewhere.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.launch import ROOT
from tests.fixtures.postgres import require_pg_bin
from tests.fixtures.services import require
from tests.fixtures.zookeeper import require_zookeeper

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(150)]

SESSIONS = 30
RELAYS = 2
#: The run takes about 15 s here; the subprocess is killed well before pytest's timeout.
SUBPROCESS_TIMEOUT_S = 120


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_pg_bin()
    require_zookeeper()
    require("node", shutil.which("node") is not None)
    require(
        "the ws npm package (npm ci in tests/e2e/node)",
        (ROOT / "tests" / "e2e" / "node" / "node_modules" / "ws" / "package.json").is_file(),
    )
    out = tmp_path_factory.mktemp("bench-drain")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "drain",
            "--runs=1",
            f"--sessions={SESSIONS}",
            f"--relays={RELAYS}",
            "--settle=0.5",
            f"--out={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    report = (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    assert proc.returncode == 0, report
    path = Path(out) / "results.json"
    assert path.is_file(), report
    data: dict[str, Any] = json.loads(path.read_text())
    data["_stdout"] = proc.stdout
    return data


def _run(results: dict[str, Any]) -> dict[str, Any]:
    (entry,) = results["drain"]
    assert entry["sessions"] == SESSIONS
    (run,) = entry["runs"]
    return dict(run)


def test_every_session_is_parked_and_resumed_on_the_other_relay(results: dict[str, Any]) -> None:
    run = _run(results)
    assert run["ready"] == run["closed"] == SESSIONS
    assert run["close_codes"] == {"1001": SESSIONS}  # going away: the drain's close
    assert run["parked"] == SESSIONS and run["a_outcomes"] == {"parked": SESSIONS}
    assert run["a_disconnects"].get("shutdown") == SESSIONS
    assert run["a_exit_code"] == 0
    assert (run["resumed"], run["not_resumed"], run["reconnect_failed"]) == (SESSIONS, 0, 0)
    assert run["resumed_by_relay"] == [0, SESSIONS]
    assert run["target_outcomes"] == {"resumed": SESSIONS}
    assert run["relay_alive"]


def test_every_resumed_session_had_every_write_exactly_once(results: dict[str, Any]) -> None:
    run = _run(results)
    assert run["writes"] > run["pre_writes"]  # writes went on during the drain
    assert (run["missing"], run["duplicates"], run["out_of_order"]) == (0, 0, 0)
    assert (run["views_checked"], run["views_mismatched"]) == (SESSIONS, 0)
    assert run["exact"]


def test_reports_the_throughputs(results: dict[str, Any]) -> None:
    run = _run(results)
    for key in (
        "park_s",
        "parking_rate",
        "a_exit_s",
        "resume_span_s",
        "resume_rate",
        "gap_p50_ms",
        "gap_p99_ms",
        "server_resume_mean_ms",
    ):
        assert _finite(run[key]) and run[key] >= 0, (key, run[key])
    assert run["gap_p50_ms"] <= run["gap_p99_ms"] <= run["gap_max_ms"]
    assert run["zk_writes"] >= SESSIONS  # a park and a claim per session, at least
    stdout = results["_stdout"]
    assert "| run | SIGTERM to last close |" in stdout
    assert results["command"].startswith("python -m loadtest.bench drain")
