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

No java/ZooKeeper jar or haproxy (or PostgreSQL): FAILS under CI or
``RELAY_REQUIRE_SERVICES=1``, else skipped with a loud reason.
"""

from __future__ import annotations

import contextlib
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.cluster import Cluster
from relay.client import DDPClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CLIENTS = 12
BOOKS = "bookstore.book"


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
