"""``python -m loadtest.bench all`` at a tiny size: it runs, reports numbers, loses nothing.

The benchmark starts its own PostgreSQL and relay worker and drives them with the Node.js
load generator (``loadtest/bench/loadgen.js``, ``ws`` from tests/e2e/node): 20 sessions,
3 fan-out writes, 10 paced commits for the latency mode, a short trigger-overhead run.
Every session must receive every write exactly once, and every figure must be a number.
Then ``fanout --workers 2`` at the same size: the sessions, PSS and CPU are accounted per
worker and summed. Then the modes of issue #10: ``window`` (20 sessions on ``books.latest``
[20], then spread over 3 distinct queries; 4 commits that change every window; every
session's window must end equal to the database's) and ``storm --before`` (50 sessions
subscribe ``books.all`` at once, on this checkout and on the relay of commit 49143b3,
extracted, migrated and served side by side; about 12 s, so the smoke's one
``--before``: the window's would double its 12 s). Then the modes of issue #11: ``events``
(20 sessions, 6 events beside 3 renames, and 100 events/s for 1 s to 10 sessions: each
session gets each event once and in order and ends holding the stream's history) and
``presence`` (3 relays of 2 watchers, 20 joins a second for 2 s, a relay SIGKILLed under
3 members: rows written per join or leave, views equal to the database, about 60 s of
which 22 s wait for PostgreSQL's late table counters). The real figures (1,000 to 10,000
sessions) are in docs/benchmarks.md.

Needs PostgreSQL, ``node`` and ``npm ci`` in tests/e2e/node (``make deps``): without them
the test fails in CI / under ``make test`` and is skipped elsewhere.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.embedded_postgres import PostgresNotFound, find_pg_bin
from devstack.launch import ROOT
from tests.fixtures.services import require

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(60)]

SESSIONS = 20
WRITES = 3
WINDOW_WRITES = 4
STORM_SESSIONS = 50
LATENCY_RATE = 20
LATENCY_SECONDS = 0.5
#: The run takes about 15 s here; the subprocess is killed well before pytest's timeout.
SUBPROCESS_TIMEOUT_S = 45
EVENTS = 6
RENAMES = 3
PRESENCE_JOINS = 40  # 20 a second for 2 s
#: ``presence`` waits twice for PostgreSQL's table counters (11 s each) and a lease (5 s).
PRESENCE_TIMEOUT_S = 150


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _bench(out: Path, *args: str, timeout: float = SUBPROCESS_TIMEOUT_S) -> dict[str, Any]:
    """Run ``python -m loadtest.bench *args --out=out``; its results.json and stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", *args, f"--out={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    report = (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    assert proc.returncode == 0, report
    path = out / "results.json"
    assert path.is_file(), report
    data: dict[str, Any] = json.loads(path.read_text())
    data["_stdout"] = proc.stdout
    return data


@pytest.fixture(scope="module")
def requirements() -> None:
    try:
        find_pg_bin()
        has_pg = True
    except PostgresNotFound:
        has_pg = False
    require("PostgreSQL", has_pg)
    require("node", shutil.which("node") is not None)
    require(
        "the ws npm package (npm ci in tests/e2e/node)",
        (ROOT / "tests" / "e2e" / "node" / "node_modules" / "ws" / "package.json").is_file(),
    )


@pytest.fixture(scope="module")
def results(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench"),
        "all",
        "--runs=1",
        f"--sessions={SESSIONS}",
        f"--writes={WRITES}",
        "--interval=0.2",
        f"--latency-sessions={SESSIONS}",
        f"--rate={LATENCY_RATE}",
        f"--seconds={LATENCY_SECONDS}",
        "--transactions=50",
        "--rounds=2",
        "--settle=0.5",
    )


@pytest.fixture(scope="module")
def two_workers(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench-workers"),
        "fanout",
        "--runs=1",
        "--workers=2",
        f"--sessions={SESSIONS}",
        f"--writes={WRITES}",
        "--interval=0.2",
        "--settle=0.5",
    )


@pytest.mark.parametrize("mode", ["fanout", "latency"])
def test_every_session_gets_every_write_once(results: dict[str, Any], mode: str) -> None:
    (entry,) = results[mode]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    expected_writes = WRITES if mode == "fanout" else int(LATENCY_RATE * LATENCY_SECONDS)
    assert agg["sessions"] == SESSIONS
    assert run["ready"] == SESSIONS
    assert run["writes"] == expected_writes
    assert run["received"] == [SESSIONS] * expected_writes
    assert run["delivered"] == SESSIONS * expected_writes
    assert (agg["failed"], agg["missing"], agg["duplicates"]) == (0, 0, 0)
    assert agg["closed_after_ready"] == 0
    assert agg["all_done"] and agg["relay_alive"]


@pytest.mark.parametrize("mode", ["fanout", "latency"])
def test_reports_numbers(results: dict[str, Any], mode: str) -> None:
    agg = results[mode][0]["aggregate"]
    for key in ("all_p50_ms", "all_p99_ms", "delivery_p50_ms", "delivery_p99_ms"):
        assert _finite(agg[key]) and agg[key] >= 0, (key, agg[key])
    assert agg["delivery_p50_ms"] <= agg["delivery_p99_ms"] <= agg["all_p99_ms"]
    assert _finite(agg["deliveries_per_s_p50"]) and agg["deliveries_per_s_p50"] > 0
    assert _finite(agg["memory_per_session_bytes"])
    assert _finite(agg["relay_cpu_per_write_ms"])
    assert "| sessions |" in results["_stdout"]
    assert "gunicorn gevent workers" not in results["_stdout"]  # one worker: tables as before


def test_reports_write_overhead(results: dict[str, Any]) -> None:
    overhead = results["overhead"]
    assert set(overhead) == {"no listener", "bare LISTEN client", "relay listening"}
    for row in overhead.values():
        assert _finite(row["added_ms"]) and _finite(row["added_cpu_ms"])
        assert row["enabled_ms"] > 0 and row["disabled_ms"] > 0
        assert row["triggers"], "no user triggers on bookstore_book: the write side is missing"


def test_reports_the_machine(results: dict[str, Any]) -> None:
    machine = results["machine"]
    assert machine["nproc"] >= 1
    assert machine["postgres"].startswith("postgres")
    assert results["command"].startswith("python -m loadtest.bench all")


def test_two_workers_every_session_gets_every_write_once(two_workers: dict[str, Any]) -> None:
    (entry,) = two_workers["fanout"]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    assert two_workers["workers"] == agg["workers"] == run["workers"] == 2
    assert run["ready"] == SESSIONS
    assert run["received"] == [SESSIONS] * WRITES
    assert (agg["failed"], agg["missing"], agg["duplicates"]) == (0, 0, 0)
    assert agg["all_done"] and agg["relay_alive"]


def test_two_workers_are_accounted_per_worker(two_workers: dict[str, Any]) -> None:
    (entry,) = two_workers["fanout"]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    pids = run["worker_pids"]
    assert len(set(pids)) == 2
    # Each worker's sessions, from its ddp_relay_sessions gauge (the kernel spreads them).
    assert len(run["sessions_by_worker"]) == 2 and sum(run["sessions_by_worker"]) == SESSIONS
    assert run["pss_before"] == sum(run["pss_before_by_worker"])
    assert run["pss_after"] == sum(run["pss_after_by_worker"])
    assert len(run["relay_cpu_s_by_worker"]) == 2
    assert run["relay_cpu_s"] == pytest.approx(sum(run["relay_cpu_s_by_worker"]))
    assert 0.5 <= agg["busiest_worker_sessions_share"] <= 1
    assert _finite(agg["memory_per_session_bytes"])
    stdout = two_workers["_stdout"]
    assert "relay: 2 gunicorn gevent workers" in stdout
    assert "busiest worker: sessions / CPU |" in stdout


@pytest.fixture(scope="module")
def window(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench-window"),
        "window",
        "--runs=1",
        f"--sessions={SESSIONS}",
        "--distinct=1,3",
        f"--writes={WINDOW_WRITES}",
        "--interval=0.2",
        "--settle=0.5",
    )


@pytest.fixture(scope="module")
def storm(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench-storm"),
        "storm",
        "--runs=1",
        f"--sessions={STORM_SESSIONS}",
        "--generators=2",
        "--settle=0.5",
        "--before",
    )


@pytest.mark.parametrize(("index", "publication"), [(0, "books.latest"), (1, "bench.latest")])
def test_window_every_session_ends_with_the_database_s_window(
    window: dict[str, Any], index: int, publication: str
) -> None:
    entry = window["window"][index]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    assert (agg["tree"], agg["distinct"]) == ("after", [1, 3][index])
    assert run["publication"] == publication and run["n"] == 20
    assert run["ready"] == SESSIONS and run["writes"] == WINDOW_WRITES
    # Every commit changed every window: each session got each planned added / removed.
    assert run["received"] == [SESSIONS] * WINDOW_WRITES
    assert (run["missing"], run["duplicates"], run["protocol_errors"]) == (0, 0, 0)
    assert (run["checked"], run["mismatched"]) == (SESSIONS, 0)
    assert agg["exact"] and run["relay_alive"] and run["commit_clock"] == "server"


def test_window_reports_numbers(window: dict[str, Any]) -> None:
    for entry in window["window"]:
        agg = entry["aggregate"]
        for key in ("relay_cpu_per_commit_ms", "delivery_p50_ms", "delivery_p99_ms", "ramp_s"):
            assert _finite(agg[key]) and agg[key] >= 0, (key, agg[key])
        assert agg["delivery_p50_ms"] <= agg["delivery_p99_ms"] <= agg["delivery_max_ms"]
    assert window["trees"]["after"]["window"] == "cursor"
    assert "| relay | sessions | distinct queries | relay CPU per commit |" in window["_stdout"]


def test_storm_before_and_after(storm: dict[str, Any]) -> None:
    trees = storm["trees"]
    assert trees["after"]["revision"] is None
    assert trees["before"]["revision"].startswith("49143b3")
    assert trees["before"]["window"] == "queryset"  # it ran the old relay's code
    by_tree = {entry["aggregate"]["tree"]: entry for entry in storm["storm"]}
    assert set(by_tree) == {"after", "before"}
    for entry in by_tree.values():
        agg = entry["aggregate"]
        (run,) = entry["runs"]
        assert agg["complete"] and run["relay_alive"]
        assert run["ready"] == run["connected"] == STORM_SESSIONS
        assert run["generators"] == 2 and len(run["ready_ms"]) == STORM_SESSIONS
        assert run["expected_docs"] > 0 and run["docs_wrong"] == 0
        assert _finite(agg["subs_per_s"]) and agg["subs_per_s"] > 0
        assert 0 <= agg["ready_p50_ms"] <= agg["ready_p99_ms"] <= agg["span_ms"]
    assert "50 sessions: before / after:" in storm["_stdout"]


# -- issue #11: events and presence --------------------------------------------------------------


@pytest.fixture(scope="module")
def events(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench-events"),
        "events",
        "--runs=1",
        f"--sessions={SESSIONS}",
        f"--events={EVENTS}",
        f"--renames={RENAMES}",
        "--interval=0.1",
        "--sustain-rates=100",
        "--sustain-sessions=10",
        "--sustain-seconds=1",
        "--settle=0.5",
    )


def test_events_reach_every_session_once_in_order_beside_the_renames(
    events: dict[str, Any],
) -> None:
    (entry,) = events["events"]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    assert agg["exact"] and run["relay_alive"]
    assert run["ready"] == SESSIONS and run["failed"] == 0
    for kind, count in (("events", EVENTS), ("rows", RENAMES)):
        phase = run[kind]
        assert phase["writes"] == count and phase["commit_clock"] == "server"
        assert phase["received"] == [SESSIONS] * count, kind
        assert (phase["missing"], phase["duplicates"]) == (0, 0), kind
        assert _finite(phase["delivery_p50_ms"]) and _finite(phase["relay_cpu_s"]), kind
    assert (run["out_of_order"], run["protocol_errors"]) == (0, 0)
    # Every session's client-side collection `chat` ends as the stream's history.
    assert (run["history"], run["checked"], run["mismatched"]) == (EVENTS, SESSIONS, 0)
    assert "| 20 | event (chat.byBook) |" in events["_stdout"]
    assert "| 20 | row (books.all) |" in events["_stdout"]


def test_events_sustained(events: dict[str, Any]) -> None:
    (row,) = events["events"][0]["sustain"]
    assert row["rate"] == 100 and row["exact"] and row["published"] == 100
    (run,) = events["events"][0]["runs"]
    (sustained,) = run["sustain"]
    assert sustained["phase"]["received"] == [10] * 100
    assert sustained["checked"] == 10 and sustained["mismatched"] == 0
    assert _finite(row["lag_last_tenth_ms"]) and _finite(row["write_rate"])
    assert "| 100 |" in events["_stdout"]


@pytest.fixture(scope="module")
def presence(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _bench(
        tmp_path_factory.mktemp("bench-presence"),
        "presence",
        "--runs=1",
        "--watchers=2",
        "--rate=20",
        "--seconds=2",
        "--hold=0.2",
        "--lease=5",
        "--crash-sessions=3",
        "--settle=0.5",
        timeout=PRESENCE_TIMEOUT_S,
    )


@pytest.mark.timeout(PRESENCE_TIMEOUT_S + 30)
def test_presence_churn_converges_and_counts_its_writes(presence: dict[str, Any]) -> None:
    (entry,) = presence["presence"]
    agg = entry["aggregate"]
    (run,) = entry["runs"]
    assert agg["complete"], run
    assert run["ready"] == run["sessions"] and run["relays"] == 3
    # Every join left; a skipped join (no idle pool session) is not expected at 20/s.
    assert run["joins"] == run["leaves"] == PRESENCE_JOINS and run["starved"] == 0
    assert (run["failed_joins"], run["lost_churners"]) == (0, 0)
    # The database holds exactly the six watchers again, and every view equals it.
    assert run["converged"] and run["members_db"] == run["members_expected"] == 6
    assert (run["checked"], run["mismatched"], run["protocol_errors"]) == (6, 0, 0)
    # One transaction per join or leave: a hold and (first/last hold) the member row, one
    # pending row flushed into one changelog row and one NOTIFY.
    writes = run["writes"]
    assert run["writes_settled"]
    assert writes["ddp_presence_hold"] == {"ins": PRESENCE_JOINS, "upd": 0, "del": PRESENCE_JOINS}
    assert writes["ddp_presence"] == {"ins": PRESENCE_JOINS, "upd": 0, "del": PRESENCE_JOINS}
    assert run["changelog_rows"] == run["notifies"] == 2 * PRESENCE_JOINS
    assert agg["rows_per_change"] == pytest.approx(6.0)
    assert run["lag_matched"] > 0 and _finite(agg["lag_p50_ms"])


@pytest.mark.timeout(PRESENCE_TIMEOUT_S + 30)
def test_presence_after_a_relay_crash(presence: dict[str, Any]) -> None:
    (run,) = presence["presence"][0]["runs"]
    assert run["crash_held"] == 3 and run["crash_converged"]
    # The dead worker's holds go when its lease (5 s) expires and a live worker sweeps.
    assert 0 < run["crash_db_s"] <= 5 + 3 * 1.3 + 5
    assert run["relays_alive"] == [False, True, True]
    # Joins and leaves per second over the churn until its last leave: about the 20 asked.
    assert re.search(r"\| \d+ / \d+ \(20\) \| 6\.00 \|", presence["_stdout"])


@pytest.fixture(scope="module")
def versus(requirements: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require(
        "the socket.io npm package (npm ci in loadtest/peers)",
        (ROOT / "loadtest" / "peers" / "node_modules" / "socket.io" / "package.json").is_file(),
    )
    return _bench(
        tmp_path_factory.mktemp("versus"),
        "versus",
        "--runs=1",
        f"--sessions={SESSIONS}",
        f"--writes={WRITES}",
        "--interval=0.2",
        "--contenders=ddp-relay:2,socketio:2",
        "--settle=0.5",
    )


def test_versus_socketio_every_session_gets_every_write_once(versus: dict[str, Any]) -> None:
    """Socket.IO 4.8 on two node:cluster workers, fed by a trigger's NOTIFY, beside
    ddp-relay on the same generator: both deliver every write to every session once."""
    (entry,) = versus["versus"]
    assert set(entry["contenders"]) == {"ddp-relay:2", "socketio:2"}
    for key, contender in entry["contenders"].items():
        (run,) = contender["runs"]
        assert run["ready"] == SESSIONS and run["workers"] == 2, key
        assert run["delivered"] == SESSIONS * WRITES, key
        assert (run["missing"], run["duplicates"], run["failed"]) == (0, 0, 0), key
        assert run["relay_alive"] and sum(run["sessions_by_worker"]) == SESSIONS, key
        (figures,) = contender["figures"]
        assert all(_finite(v) for v in figures.values()), (key, figures)
    # The table gives ddp-relay's ratios to Socket.IO's run (time / CPU / subscribing /
    # memory; n/a where Socket.IO's figure is 0, as CPU at 20 sessions can be).
    ratio = r"(?:-?[\d.]+x|n/a)"
    row = rf"\| ddp-relay, 2 workers \|.*\| {ratio} / {ratio} / {ratio} / {ratio} \|"
    assert re.search(row, versus["_stdout"])
    assert "| Socket.IO 4.8, 2 workers |" in versus["_stdout"]
