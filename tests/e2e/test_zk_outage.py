"""ZooKeeper unavailable: new sessions keep working, resumes degrade to new sessions with
a metric, and resuming recovers when ZooKeeper returns (the local cluster, the ``cluster``
fixture of ``tests/fixtures/relays.py``)."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.cluster import Cluster
from tests.e2e.reconnects import ChaosClient, read_resume_counters

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def resume_outcomes(the_cluster: Cluster) -> Counter[str]:
    total: Counter[str] = Counter()
    for relay in the_cluster.relays:
        total += read_resume_counters(Path(relay.env["PROMETHEUS_MULTIPROC_DIR"]))
    return total


def reconnect_once(client: ChaosClient, cause: str, timeout: float = 60.0) -> str:
    """Drop the socket; return "resumed" or "new" once the client is settled again."""
    before = len(client.events)
    assert client.drop(cause)
    deadline = time.monotonic() + timeout
    while len(client.events) == before or not client.settled():
        assert time.monotonic() < deadline, f"no reconnect after {cause}"
        time.sleep(0.05)
    return client.events[-1][1]


def test_zookeeper_outage_degrades_resumes_and_recovers(cluster: Cluster) -> None:
    for i in range(len(cluster.zookeepers)):
        cluster.kill_zk(i)
    client = ChaosClient(cluster.ws_url, timeout=30, auto_reconnect=True, reconnect_max=2.0)
    try:
        started = time.monotonic()
        client.connect()  # a new session works without ZooKeeper
        client.subscribe("books.all")
        assert time.monotonic() - started < 5
        assert len(client.docs("bookstore.book")) >= 10
        assert reconnect_once(client, "zk_down") == "new"  # degraded, not broken
        degraded = resume_outcomes(cluster)
        assert degraded["unavailable"] + degraded["park_failed"] >= 1, degraded
        # All three at once: one node alone has no quorum to rejoin.
        with ThreadPoolExecutor(len(cluster.zookeepers)) as pool:
            list(pool.map(cluster.restart_zk, range(len(cluster.zookeepers))))
        # Once the relays' coordinators are back, a dropped session resumes exactly again.
        deadline = time.monotonic() + 90
        outcome = "new"
        while outcome != "resumed":
            assert time.monotonic() < deadline, f"never resumed again: {resume_outcomes(cluster)}"
            time.sleep(1.0)
            outcome = reconnect_once(client, "zk_back")
        assert client.violations == []
    finally:
        client.close()
