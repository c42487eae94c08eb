"""``make cluster`` end to end: ``devstack.cluster.Cluster`` on free loopback ports (the
``cluster`` fixture of ``tests/fixtures/relays.py``).

One test drives the whole local cluster (embedded PostgreSQL, a 3-node ZooKeeper
ensemble, three relays with two workers each, HAProxy in round robin without
stickiness) the way a chaos test would:

* 12 ``DDPClient`` sessions through HAProxy land on all three relays (each relay's
  ``ddp_relay_sessions`` gauge on its own ``/metrics``);
* all subscribe ``books.all``; ``books.rename`` through one reaches every client, whichever
  relay serves it;
* one relay SIGKILLed (master and workers): its clients see the socket close, HAProxy
  marks it DOWN, and new sessions land on the two survivors only, none refused;
* the ZooKeeper leader SIGKILLed: the two others elect a new leader (``srvr``);
* ``stop()`` leaves no process behind (relays and their workers, HAProxy, the JVMs,
  PostgreSQL's postmaster).

Before that, on the same cluster, the dashboard is checked the way an on-call engineer
would use it: a real Prometheus (Debian's) scrapes the three relays' internal ports with
the compose stack's configuration, locust runs a reconnect storm (resumes across relays)
beside read-heavy writers through HAProxy, and every panel's query must return data while
locust runs: a finite value, so a latency quantile over an empty histogram (NaN) does not
pass. The "Failing readiness checks" panel is empty when all is well, so it is checked
just before, while every relay's listener connections are being killed, where it must
name them (and the backfill panels then have the reconnects' backfills).

No java/ZooKeeper jar or haproxy (or PostgreSQL): FAILS under CI or
``RELAY_REQUIRE_SERVICES=1``, else skipped with a loud reason.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.cluster import Cluster
from relay.client import DDPClient
from tests.deploy.prometheus_server import (
    compose_config,
    dashboard_queries,
    query,
    running_prometheus,
)
from tests.e2e.locust_runs import (
    READHEAVY,
    STORM,
    assert_clean,
    describe,
    finish,
    start_locust,
    stats,
)
from tests.fixtures.postgres import listeners_killed
from tests.fixtures.relays import running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CLIENTS = 12
BOOKS = "bookstore.book"
#: The locust run the dashboard is read during: users (the storm's and the read-heavy
#: user classes share them) and seconds.
LOCUST_USERS = 12
#: (An upper bound: the test stops locust once every panel has data.)
LOCUST_SECONDS = 120
FAILING_CHECKS = "Failing readiness checks"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module: the dashboard test reads it, then ``test_cluster``
    breaks it."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as the_cluster:
        yield the_cluster


def _finite(result: list[Any]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _panel_data(prometheus: str) -> dict[str, list[Any]]:
    """Each dashboard query's instant vector (Grafana's ``$__rate_interval`` as 1m)."""
    return {
        f"{title}: {expr}": query(prometheus, expr.replace("$__rate_interval", "1m"))
        for title, expr in dashboard_queries()
    }


@pytest.mark.timeout(420)  # the module's cluster starts in this test's setup
def test_every_dashboard_panel_has_data_during_a_locust_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    targets = [f"127.0.0.1:{relay.internal_port}" for relay in cluster.relays]
    failing = next(expr for title, expr in dashboard_queries() if title == FAILING_CHECKS)
    with running_prometheus(compose_config(*targets), tmp_path) as prometheus:
        _wait(lambda: len(query(prometheus, "up == 1")) == 3, 30, "three relays scraped")
        # Listeners down: the readiness panel names the failing check. Before locust: with
        # every relay's listener down, HAProxy has no relay in service for a few seconds.
        # A subscriber on each relay, so that each has a channel to backfill afterwards.
        watchers = [DDPClient(relay.ws_url, timeout=10) for relay in cluster.relays]
        try:
            for watcher in watchers:
                watcher.connect()
                watcher.subscribe("books.all")
            with listeners_killed(cluster.database_url):
                _wait(lambda: bool(query(prometheus, failing)), 30, "a failing check shown")
                shown = {sample["metric"]["check"] for sample in query(prometheus, failing)}
                assert shown == {"listener"}, shown
            # Back up: every relay ready (a sample only when the minimum is 1, so a
            # Prometheus that does not answer does not pass for it) and backfilling.
            _wait(lambda: bool(query(prometheus, "min(ddp_relay_ready) == 1")), 60, "all ready")
            backfilled = (
                'count(sum by (instance) (ddp_relay_backfills_total{reason="reconnect"}) > 0)'
            )
            _wait(
                lambda: [s["value"][1] for s in query(prometheus, backfilled)] == ["3"],
                30,
                "every relay's backfill after its listener came back",
            )
        finally:
            for watcher in watchers:
                with contextlib.suppress(Exception):
                    watcher.close()
        _wait(lambda: _all_up(cluster), 30, "HAProxy to take every relay back")
        env = {"LOADTEST_STORM_PERIOD": "2", "LOADTEST_WRITERS": "2"}
        locust = start_locust(
            cluster.url, tmp_path, env, (STORM, READHEAVY), LOCUST_USERS, LOCUST_SECONDS
        )
        try:
            _wait(lambda: bool(query(prometheus, "sum(ddp_relay_sessions) > 0")), 30, "sessions")
            _wait(lambda: _resumes(tmp_path) > 0, 30, "a storm's sessions resumed")
            # While locust runs, every panel has data.
            deadline = time.monotonic() + 60
            while True:
                data = _panel_data(prometheus)
                empty = [q for q, result in data.items() if FAILING_CHECKS not in q
                         and not _finite(result)]  # fmt: skip
                if not empty or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert not empty, "panels without data:\n" + "\n".join(empty)
            assert locust.poll() is None, "locust ended before every panel had data"
        finally:
            if locust.poll() is None:
                locust.send_signal(signal.SIGTERM)  # locust stops its users, writes its CSVs
            done = finish(locust, LOCUST_SECONDS)
    output = describe(done)
    rows = stats(tmp_path)
    # Locust is stopped as soon as every panel has data: a storm or two has resumed by then.
    assert int(rows[("DDP", "resume")]["Request Count"]) > 0, output
    assert int(rows[("LIVE", "commit-to-client")]["Request Count"]) > 0, output
    assert_clean(tmp_path, done, output)


def _resumes(out: Path) -> int:
    """The resumes locust has counted so far (it rewrites its CSV every second)."""
    with contextlib.suppress(OSError, KeyError, ValueError):
        return int(stats(out)[("DDP", "resume")]["Request Count"])
    return 0


def _all_up(cluster: Cluster) -> bool:
    status = cluster.backend_status()
    return all(status.get(relay.name, "").startswith("UP") for relay in cluster.relays)


def _sessions(port: int) -> int:
    """The relay's ``ddp_relay_sessions`` gauge (summed over its workers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("ddp_relay_sessions ", "ddp_relay_sessions{")):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _total_is(ports: list[int], n: int) -> Callable[[], bool]:
    return lambda: sum(_sessions(port) for port in ports) == n


def _has_title(client: DDPClient, book_id: str, title: str) -> Callable[[], bool]:
    return lambda: client.docs(BOOKS).get(book_id, {}).get("title") == title


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rfind(")") + 2] != "Z"


def test_cluster(cluster: Cluster) -> None:
    clients: list[DDPClient] = []
    # On failure the report gets the cluster's layout and log tails (tests/fixtures/relays.py).
    try:
        _run(cluster, clients)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()


def _connect(cluster: Cluster) -> DDPClient:
    client = DDPClient(cluster.ws_url, timeout=10)
    client.connect()
    return client


def _run(cluster: Cluster, clients: list[DDPClient]) -> None:
    ports = [relay.internal_port for relay in cluster.relays]
    assert len(set(ports)) == 3 and cluster.port not in ports
    _wait(_total_is(ports, 0), 15, "the dashboard test's sessions to close")
    _wait(lambda: _all_up(cluster), 30, "HAProxy to have every relay in service")
    assert all(relay.env["RELAY_ZOOKEEPER"] == cluster.zk_connect for relay in cluster.relays)
    assert cluster.zk_connect.count(",") == 2

    # 1. Sessions through HAProxy land on every relay (round robin, no stickiness).
    owners: dict[int, int] = {}
    for _ in range(CLIENTS):
        before = [_sessions(port) for port in ports]
        clients.append(_connect(cluster))
        _wait(_total_is(ports, sum(before) + 1), 10, "the session")
        after = [_sessions(port) for port in ports]
        (owner,) = (i for i in range(3) if after[i] == before[i] + 1)
        owners[len(clients) - 1] = owner
    counts = [_sessions(port) for port in ports]
    assert sum(counts) == CLIENTS
    assert all(n > 0 for n in counts), f"sessions per relay: {counts}"

    # 2. Live updates across relays: a rename through one client reaches all twelve.
    for client in clients:
        client.subscribe("books.all")
    book_id = sorted(clients[0].docs(BOOKS))[0]
    title = f"renamed through the cluster {uuid.uuid4().hex[:8]}"
    clients[0].call("books.rename", book_id, title)
    for client in clients:
        client.wait_for(_has_title(client, book_id, title), timeout=15)

    # 3. SIGKILL one relay: its sessions close, HAProxy takes it out, new sessions go to
    # the survivors (a refused connect is retried on another relay, so none fails).
    victim = 1
    victim_pids = [cluster.relays[victim].pid, *cluster.relays[victim].worker_pids]
    assert len(victim_pids) == 1 + cluster.workers
    cluster.kill_relay(victim, signal.SIGKILL)
    assert not any(_alive(pid) for pid in victim_pids if pid is not None)
    for index, client in enumerate(clients):
        if owners[index] == victim:
            assert client.closed.wait(10), f"client {index} on the killed relay still open"
    survivors = [i for i in range(3) if i != victim]
    base = {i: _sessions(ports[i]) for i in survivors}
    for _ in range(6):
        clients.append(_connect(cluster))
    _wait(
        lambda: sum(_sessions(ports[i]) for i in survivors) == sum(base.values()) + 6,
        10,
        "the new sessions on the surviving relays",
    )
    _wait(
        lambda: cluster.backend_status().get(cluster.relays[victim].name, "").startswith("DOWN"),
        10,
        "HAProxy to mark the killed relay DOWN",
    )
    for _ in range(3):
        clients.append(_connect(cluster))
    _wait(
        lambda: sum(_sessions(ports[i]) for i in survivors) == sum(base.values()) + 9,
        10,
        "sessions after the relay was marked DOWN",
    )

    # 4. SIGKILL the ZooKeeper leader: the other two elect a new one.
    leader = cluster.zk_leader()
    assert leader is not None
    cluster.kill_zk(leader, signal.SIGKILL)
    others = [i for i in range(3) if i != leader]
    _wait(
        lambda: sorted(str(cluster.zk_mode(i)) for i in others) == ["follower", "leader"],
        90,  # seconds on a quiet machine; the JVMs are slow to elect on a loaded 2-core CI box
        "a new ZooKeeper leader",
    )

    # 5. stop() leaves nothing running.
    pids = cluster.pids()
    postmaster = cluster.postmaster_pid()
    assert postmaster is not None and postmaster in pids
    # HAProxy, 2 relays x (master + 2 workers), 2 JVMs, the postmaster (at least).
    assert len(pids) >= 1 + 2 * (1 + cluster.workers) + 2 + 1, pids
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()
    cluster.stop()
    assert [pid for pid in pids if _alive(pid)] == []
    assert cluster.pids() == []
