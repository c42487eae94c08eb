"""Session resumption without a load balancer: Meteor 3.5's ``session`` + ``receivedCount``.

Driven with raw frames so every count is exact: on one relay of one worker, across the
two workers of the shared relay (the coordinator's SQLite file), and across two relays
that share the session's ZooKeeper. Resumption under chaos (HAProxy, relays and
ZooKeeper nodes killed) is ``tests/e2e/test_chaos.py``, on the local cluster.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import psycopg2
import pytest
import websocket
from kazoo.client import KazooClient

from coordinator.paths import Paths
from devstack.processes import descendants
from tests.fixtures.relays import RelayProcess, RelayStack, RelayStacks

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def one_worker(module_relay_stack: RelayStacks) -> RelayStack:
    """One relay of one worker on a database of its own (the tests write to it)."""
    return module_relay_stack(workers=1)


class Raw:
    """A DDP client on raw frames that counts what it receives the way Meteor 3.5 does."""

    def __init__(self, url: str) -> None:
        self.ws = websocket.create_connection(url, timeout=10)
        self.got: list[dict[str, Any]] = []

    def send(self, **msg: Any) -> None:
        self.ws.send(json.dumps(msg))

    def recv(self) -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = json.loads(self.ws.recv())
            if msg["msg"] not in ("ping", "pong"):
                self.got.append(msg)
                return msg

    def until(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        seen = []
        while True:
            msg = self.recv()
            seen.append(msg)
            if msg["msg"] == kind and all(msg.get(k) == v for k, v in match.items()):
                return seen

    def drop(self) -> None:
        self.ws.sock.close()  # no close frame: the connection just dies


def start(relay: RelayProcess) -> tuple[Raw, str]:
    client = Raw(relay.ws_url)
    client.send(msg="connect", version="1", support=["1", "pre2", "pre1"])
    session = client.recv()["session"]
    client.send(msg="sub", id="all", name="books.all", params=[])
    client.until("ready")
    return client, session


def reconnect(
    relay: RelayProcess, session: str, received: int | None
) -> tuple[Raw, dict[str, Any]]:
    client = Raw(relay.ws_url)
    msg: dict[str, Any] = {"msg": "connect", "version": "1", "support": ["1"], "session": session}
    if received is not None:
        msg["receivedCount"] = received
    client.ws.send(json.dumps(msg))
    return client, client.recv()


def test_resume_replays_what_was_lost_in_flight(one_worker: RelayStack) -> None:
    relay = one_worker.relay
    first, session = start(relay)
    received = len(first.got)  # connected + 13 added + ready
    first.drop()
    # the client lost the last three messages it was sent
    second, connected = reconnect(relay, session, received - 3)
    assert connected == {"msg": "connected", "session": session}
    replay = [second.recv() for _ in range(3)]
    assert replay == first.got[-3:]
    second.send(msg="sub", id="all", name="books.all", params=[])
    assert second.recv() == {"msg": "ready", "subs": ["all"]}  # known: not re-run
    second.ws.close()


def test_changes_made_while_away_arrive_once(one_worker: RelayStack) -> None:
    relay, url = one_worker.relay, one_worker.database_url
    first, session = start(relay)
    received = len(first.got)
    first.drop()
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE bookstore_book SET title = 'While away' WHERE id = 'small-gods'")
    conn.close()
    second, connected = reconnect(relay, session, received)
    assert connected["session"] == session
    changed = second.until("changed", id="small-gods")[-1]
    assert changed["fields"] == {"title": "While away"}
    assert not [m for m in second.got if m["msg"] == "added"]  # no full resync
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("UPDATE bookstore_book SET title = 'Small Gods' WHERE id = 'small-gods'")
    conn.close()
    assert second.until("changed", id="small-gods")[-1]["fields"] == {"title": "Small Gods"}
    second.ws.close()


def test_completed_methods_are_answered_again_not_rerun(one_worker: RelayStack) -> None:
    relay = one_worker.relay
    first, session = start(relay)
    doc = {"title": "Once", "authorId": "jemisin", "price": "1.00", "tags": []}
    first.send(msg="method", id="1", method="books.create", params=[doc], randomSeed="resume-1")
    result = first.until("result", id="1")[-1]
    first.until("updated")
    received = len(first.got)
    first.drop()
    second, connected = reconnect(relay, session, received)
    assert connected["session"] == session
    second.send(msg="method", id="1", method="books.create", params=[doc], randomSeed="resume-1")
    again = second.until("result", id="1")[-1]
    assert again == result  # a second run would fail: the seeded id exists already
    second.until("updated")
    second.send(msg="method", id="2", method="books.remove", params=[result["result"]])
    second.until("updated")
    second.ws.close()


@pytest.mark.parametrize("received", [None, 10_000, 0])
def test_no_exact_resume_means_a_new_session(one_worker: RelayStack, received: int | None) -> None:
    relay = one_worker.relay
    first, session = start(relay)
    first.drop()
    second, connected = reconnect(relay, session, received)
    assert connected["msg"] == "connected" and connected["session"] != session
    second.ws.close()


def test_a_deliberate_disconnect_is_not_resumable(one_worker: RelayStack) -> None:
    relay = one_worker.relay
    first, session = start(relay)
    received = len(first.got)
    first.send(msg="disconnect")
    first.ws.close()
    second, connected = reconnect(relay, session, received)
    assert connected["session"] != session
    second.ws.close()


def test_resume_lands_on_any_worker_of_the_node(relay_server: Any) -> None:
    """Two gunicorn workers share session ownership through the node's SQLite file."""
    client, session = start(relay_server)
    received = len(client.got)  # Meteor 3.5 counts across the whole session
    for n in range(8):  # gunicorn spreads the reconnects over both workers
        client.drop()
        client, connected = reconnect(relay_server, session, received)
        assert connected["session"] == session, f"reconnect {n} was not resumed"
        received += 1  # the new connected counts too
        client.send(msg="method", id=f"m{n}", method="users.whoami", params=[])
        got = client.until("updated")
        assert [m["msg"] for m in got] == ["result", "updated"]  # nothing replayed twice
        received += len(got)
    client.ws.close()


def wait_until_members(stack: RelayStack, hosts: str, timeout: float = 30.0) -> None:
    """Until every worker of the stack is a member in ZooKeeper: a relay serves before its
    coordinator is connected, and a session it opens meanwhile cannot be resumed elsewhere
    (``unregistered``), which is not what this test is about."""
    pids = [pid for relay in stack.relays for pid in descendants(relay.proc.pid)]
    wanted = {f"{socket.gethostname()}-{pid}" for pid in pids}
    zk = KazooClient(hosts=hosts)
    zk.start(timeout=10)
    try:
        deadline = time.monotonic() + timeout
        members = Paths().members
        while True:
            present = set(zk.get_children(members)) if zk.exists(members) else set()
            if pids and wanted <= present:
                return
            assert time.monotonic() < deadline, f"members {sorted(present)}, wanted {wanted}"
            time.sleep(0.1)
    finally:
        zk.stop()
        zk.close()


def test_resume_lands_on_another_relay_through_zookeeper(
    relay_stack: RelayStacks, zk_server: str
) -> None:
    """Two relays with ``RELAY_ZOOKEEPER``: a session parked by one is claimed by the other."""
    stack = relay_stack(2, workers=1, zookeeper=True)
    here, there = stack.relays
    wait_until_members(stack, zk_server)
    first, session = start(here)
    received = len(first.got)
    first.drop()
    second, connected = reconnect(there, session, received)
    assert connected == {"msg": "connected", "session": session}
    second.send(msg="sub", id="all", name="books.all", params=[])
    assert second.recv() == {"msg": "ready", "subs": ["all"]}  # known: not re-run
    second.ws.close()
