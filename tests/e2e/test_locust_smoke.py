"""The locustfiles of ``loadtest/`` under real locust, headless, against the e2e relay.

``locustfile.py``: a few users for a few seconds, once per transport: every DDP request
name must be reported at least once, with no failures and no exceptions, the stamped
renames must come back as ``LIVE commit-to-client`` samples, and the seeded data must be
as it was afterwards (every rename undone, every created book removed). Locust runs in
its own process (it monkey-patches with gevent at import), started as
``sys.executable -m locust`` so it uses this venv's locust and gevent.

The ``live`` case turns on the scenario's cache checks (``LOADTEST_CHECK_LIVE=1``: a write
must be in the client's cache when its method completes, which is the write fence).

``locust_readheavy.py`` (two writers, the rest idle subscribers) must report more
commit-to-client samples than renames (each rename reaches several subscribers), and
``locust_storm.py`` (a storm every 2 s) a ``resume`` for every user and storm, all
resumed. Seconds each.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from relay.client import DDPClient
from tests.e2e.locust_runs import (
    LOCUSTFILE,
    READHEAVY,
    STORM,
    assert_clean,
    describe,
    run_locust,
    stats,
)
from tests.fixtures.relays import RelayProcess

pytestmark = pytest.mark.e2e

USERS = 8
RUN_TIME_S = 6
#: The names loadtest/scenario.py reports (REQUEST_NAMES there; not imported, so this
#: process never imports the load-test modules' dependencies by accident).
REQUEST_NAMES = {
    "connect",
    "books.all",
    "books.rename",
    "books.create",
    "books.remove",
    "books.byAuthorEmail",
    "unsub books.byAuthorEmail",
}
RENAME_MARK = " [locust "
CREATED_PREFIX = "locust book "


def snapshot(relay: RelayProcess) -> dict[str, dict[str, object]]:
    client = DDPClient(relay.ws_url)
    client.connect()
    try:
        client.subscribe("books.all")
        return client.docs("bookstore.book")
    finally:
        client.close()


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"LOADTEST_SOCKJS": "0"}, id="websocket"),
        pytest.param({"LOADTEST_SOCKJS": "1"}, id="sockjs"),
        pytest.param({"LOADTEST_SOCKJS": "0", "LOADTEST_CHECK_LIVE": "1"}, id="live"),
    ],
)
def test_locust_smoke(relay_server: RelayProcess, tmp_path: Path, env: dict[str, str]) -> None:
    before = snapshot(relay_server)
    proc = run_locust(relay_server.url, tmp_path, env, (LOCUSTFILE,), USERS, RUN_TIME_S)
    output = describe(proc)
    print(proc.stderr[-4000:])  # the summary locust printed (pytest -s, or on failure)

    # The data is as it was, whatever else happened: other e2e tests share this relay.
    after = snapshot(relay_server)
    assert not [d["title"] for d in after.values() if RENAME_MARK in str(d.get("title"))]
    assert not [d for d in after.values() if str(d.get("title")).startswith(CREATED_PREFIX)]
    assert {k: d["title"] for k, d in after.items()} == {k: d["title"] for k, d in before.items()}

    stats_path = tmp_path / "locust_stats.csv"
    assert stats_path.exists(), output
    with stats_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    per_name = {r["Name"]: r for r in rows if r["Type"] == "DDP"}
    assert set(per_name) == REQUEST_NAMES, output
    for name, row in per_name.items():
        assert int(row["Request Count"]) > 0, f"no {name} requests\n{output}"
        assert int(row["Failure Count"]) == 0, f"{name} failed\n{output}"
    # Every user subscribes books.all, so each stamped rename comes back to each of them.
    live = {r["Name"]: r for r in rows if r["Type"] == "LIVE"}
    assert set(live) == {"commit-to-client"}, output
    assert int(live["commit-to-client"]["Request Count"]) > 0, output
    assert_clean(tmp_path, proc, output)


def test_locust_read_heavy_reports_commit_to_client_for_every_subscriber(
    relay_server: RelayProcess, tmp_path: Path
) -> None:
    before = snapshot(relay_server)
    proc = run_locust(relay_server.url, tmp_path, {"LOADTEST_WRITERS": "2"}, (READHEAVY,), 8, 5)
    output = describe(proc)
    print(proc.stderr[-4000:])
    after = snapshot(relay_server)
    assert {k: d["title"] for k, d in after.items()} == {k: d["title"] for k, d in before.items()}
    rows = stats(tmp_path)
    assert set(rows) <= {
        ("DDP", "connect"), ("DDP", "books.all"), ("DDP", "books.rename"),
        ("LIVE", "commit-to-client"),
    }, output  # fmt: skip
    connects = int(rows[("DDP", "connect")]["Request Count"])
    renames = int(rows[("DDP", "books.rename")]["Request Count"])
    samples = int(rows[("LIVE", "commit-to-client")]["Request Count"])
    assert connects == 8 and renames > 0, output
    # Half the renames are stamped (the other half renames back); each reaches the 8 users.
    assert samples > renames, output
    assert float(rows[("LIVE", "commit-to-client")]["Max Response Time"]) < 10_000, output
    assert_clean(tmp_path, proc, output)


def test_locust_reconnect_storm_resumes_every_session(
    relay_server: RelayProcess, tmp_path: Path
) -> None:
    users = 6
    proc = run_locust(
        relay_server.url, tmp_path, {"LOADTEST_STORM_PERIOD": "2"}, (STORM,), users, 7
    )
    output = describe(proc)
    print(proc.stderr[-4000:])
    rows = stats(tmp_path)
    assert set(rows) == {("DDP", "resume")}, output
    # At least two storms in 7 s for every user (they all start within the first second).
    assert int(rows[("DDP", "resume")]["Request Count"]) >= 2 * users, output
    assert_clean(tmp_path, proc, output)
