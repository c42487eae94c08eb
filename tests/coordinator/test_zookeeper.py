"""ZooKeeper-only behaviour: outages (SUSPENDED is not LOST), session expiry, the znode
layout and record encoding, and the gevent handler (in a monkey-patched subprocess).

The shared behaviour of every coordinator is in ``test_contract.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from coordinator.base import Member, SessionRecord, State
from coordinator.codec import decode_record, encode_record
from coordinator.errors import CoordinatorError, NotConnectedError
from coordinator.zk import ZooKeeperCoordinator
from tests.coordinator.util import LeaderEvents, StateEvents, wait_until
from tests.fixtures.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.timeout(60)

ROOT_DIR = Path(__file__).resolve().parents[2]

MakeZK = Callable[..., ZooKeeperCoordinator]


def _root() -> str:
    return f"/ddp-relay-test/{uuid.uuid4().hex}/v1"


@pytest.fixture
def make_zk(zk_server: str) -> Iterator[MakeZK]:
    """``make_zk(root=..., session_timeout=...)``: started threading-handler coordinators."""
    made: list[ZooKeeperCoordinator] = []

    def make(root: str, session_timeout: float = 10.0) -> ZooKeeperCoordinator:
        c = ZooKeeperCoordinator(
            zk_server, root=root, handler="threading", session_timeout=session_timeout
        )
        made.append(c)
        assert c.start(timeout=10.0)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def raw(zk_server: str) -> Iterator[KazooClient]:
    """A plain kazoo client, to look at the znodes directly."""
    client = KazooClient(hosts=zk_server)
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def test_record_encoding_round_trips_and_rejects_garbage() -> None:
    record = SessionRecord("S1", "relay-a", 3, 17, True, 1234.5, b"\x00\n\xffpointer")
    data = encode_record(record)
    assert data.startswith(b'{"v":1,') and len(data) < 200
    assert decode_record("S1", data) == record
    for bad in (b"", b"nonsense", b'{"v":2}\n', b'{"v":1}\n', b"[1]\n"):
        with pytest.raises(CoordinatorError):
            decode_record("S1", bad)


def test_znode_layout(make_zk: MakeZK, raw: KazooClient) -> None:
    root = _root()
    c = make_zk(root=root)
    c.register_member(Member("relay-a", "10.0.0.1:8000", 5.0))
    c.create_session("S1", "relay-a")
    c.run_for_leader()
    wait_until(c.is_leader, "leadership")
    assert sorted(raw.get_children(root)) == ["election", "members", "sessions"]
    assert raw.get_children(f"{root}/sessions") == ["S1"]
    member_data, member_stat = raw.get(f"{root}/members/relay-a")
    assert member_stat.ephemeralOwner != 0
    assert member_data == b'{"address":"10.0.0.1:8000","started_at":5.0}'
    session_data, session_stat = raw.get(f"{root}/sessions/S1")
    assert session_stat.ephemeralOwner == 0  # persistent: survives its relay
    assert decode_record("S1", session_data).epoch == 1
    (candidate,) = raw.get_children(f"{root}/election")
    assert "-n_" in candidate


def test_member_id_held_by_another_live_session_is_an_error(
    make_zk: MakeZK,
) -> None:
    root = _root()
    a, b = make_zk(root=root), make_zk(root=root)
    a.register_member(Member("relay-a", "a", 1.0))
    with pytest.raises(CoordinatorError):
        b.register_member(Member("relay-a", "b", 2.0))
    assert [m.address for m in a.members()] == ["a"]


def test_outage_is_suspended_not_lost_and_recovers(
    make_zk: MakeZK, zk_outage: ZooKeeperServer
) -> None:
    root = _root()
    c = make_zk(root=root, session_timeout=10.0)
    states, leadership = StateEvents(), LeaderEvents()
    c.add_listener(states)
    member = Member("relay-a", "10.0.0.1:8000", 1.0)
    c.register_member(member)
    c.create_session("S1", "relay-a")
    c.run_for_leader(leadership)
    assert leadership.wait_for(True)

    zk_outage.stop()
    assert states.wait_for(State.SUSPENDED), "no SUSPENDED after the server went away"
    assert c.state is State.SUSPENDED
    assert not c.is_leader()
    assert leadership.wait_for(False), "leadership not paused while SUSPENDED"
    for call in (
        lambda: c.get_session("S1"),
        lambda: c.create_session("S2", "relay-a"),
        lambda: c.claim_session("S1", "relay-b", 1),
        c.members,
    ):
        started = time.monotonic()
        with pytest.raises(NotConnectedError):
            call()
        assert time.monotonic() - started < 0.5, "NotConnectedError was not prompt"
    c.register_member(Member("relay-a2", "10.0.0.1:8001", 2.0))  # recorded, no error

    zk_outage.start()
    assert states.wait_for(State.CONNECTED, timeout=20), "did not reconnect"
    assert State.LOST not in states.drain()
    wait_until(
        lambda: [m.relay_id for m in c.members()] == ["relay-a", "relay-a2"],
        "both members after the reconnect",
    )
    assert leadership.wait_for(True), "leadership not resumed"
    record = c.get_session("S1")
    assert record is not None and record.epoch == 1


def test_session_expiry_is_lost_and_ephemerals_come_back(make_zk: MakeZK, zk_server: str) -> None:
    root = _root()
    c = make_zk(root=root, session_timeout=4.0)
    other = make_zk(root=root, session_timeout=4.0)
    states, leadership = StateEvents(), LeaderEvents()
    c.add_listener(states)
    c.register_member(Member("relay-a", "a", 1.0))
    c.run_for_leader(leadership)
    assert leadership.wait_for(True)
    other.run_for_leader()

    # Expire c's session the way kazoo's own test harness does: a second client on the
    # same session id closes it.
    session_id, password = c._client.client_id
    twin = KazooClient(hosts=zk_server, client_id=(session_id, password))
    twin.start(timeout=10)
    twin.stop()
    twin.close()

    assert states.wait_for(State.LOST, timeout=20), "no LOST after the session expired"
    assert states.wait_for(State.CONNECTED, timeout=20), "no new session"
    assert c._client.client_id[0] != session_id
    wait_until(lambda: [m.relay_id for m in c.members()] == ["relay-a"], "member re-created")
    # The other candidate took over when c's candidacy vanished; c queues up behind it.
    wait_until(other.is_leader, "the other candidate to lead")
    assert not c.is_leader()


def test_gevent_handler_in_a_monkey_patched_process(zk_server: str) -> None:
    script = textwrap.dedent(
        f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent
        from coordinator.base import Member
        from coordinator.errors import FencedError
        from coordinator.zk import ZooKeeperCoordinator

        root = "/ddp-relay-test/{uuid.uuid4().hex}/v1"
        a = ZooKeeperCoordinator({zk_server!r}, root=root, handler="gevent")
        b = ZooKeeperCoordinator({zk_server!r}, root=root, handler="gevent")
        assert a.start(10) and b.start(10)
        a.register_member(Member("relay-a", "a", 1.0))
        a.create_session("S1", "relay-a")
        a.park_session("S1", "relay-a", 1, 5, b"f", 1e9)

        def claim(c, owner):
            try:
                return c.claim_session("S1", owner, 1).owner
            except FencedError:
                return None

        jobs = [gevent.spawn(claim, c, f"relay-{{i}}") for i, c in enumerate([a, b] * 4)]
        gevent.joinall(jobs, timeout=10)
        winners = [j.value for j in jobs if j.value]
        assert len(winners) == 1, winners
        a.run_for_leader()
        with gevent.Timeout(10):
            while not a.is_leader():
                gevent.sleep(0.02)
        assert [m.relay_id for m in b.members()] == ["relay-a"]
        a.stop()
        b.stop()
        print("GEVENT-OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=ROOT_DIR,
        env=env,
    )
    assert proc.returncode == 0 and "GEVENT-OK" in proc.stdout, proc.stdout + proc.stderr


# --- the expiry index -------------------------------------------------------------------------


def _count_reads(c: ZooKeeperCoordinator) -> list[str]:
    """Record the paths of the coordinator's reads from now on."""
    reads: list[str] = []
    get_async = c._client.get_async

    def counted(path: str, *args: object, **kwargs: object) -> object:
        reads.append(path)
        return get_async(path, *args, **kwargs)

    c._client.get_async = counted  # type: ignore[method-assign]
    return reads


def test_the_sweep_reads_only_the_sessions_due(make_zk: MakeZK, raw: KazooClient) -> None:
    """After the first sweep (a full scan), a sweep reads the records the expiry index
    lists up to now, not every record: O(sessions ending), not O(sessions)."""
    root = _root()
    c = make_zk(root)
    for i in range(40):
        c.create_session(f"L{i}", "relay-a")  # live: never read by an index sweep
    for i in range(20):
        c.create_session(f"F{i}", "relay-a")
        c.park_session(f"F{i}", "relay-a", 1, 0, b"", expires_at=1e9 + 3600)  # later
    for sid in ("D1", "D2"):
        c.create_session(sid, "relay-a")
        c.park_session(sid, "relay-a", 1, 0, b"", expires_at=1e9)
    assert c.expired_sessions(now=1e9) == ["D1", "D2"]  # the full scan
    reads = _count_reads(c)
    assert c.expired_sessions(now=1e9) == ["D1", "D2"]
    assert sorted(p.rsplit("/", 1)[1] for p in reads) == ["D1", "D2"]


def test_the_sweep_deletes_stale_entries_and_emptied_minutes(
    make_zk: MakeZK, raw: KazooClient
) -> None:
    root = _root()
    c = make_zk(root)
    for sid in ("R", "C", "P", "K"):
        c.create_session(sid, "relay-a")
        c.park_session(sid, "relay-a", 1, 0, b"", expires_at=1e9)
    c.claim_session("C", "relay-b", 1)  # resumed: its entry is stale
    c.park_session("P", "relay-a", 1, 0, b"", expires_at=1e9 + 600)  # re-parked later
    c.expired_sessions(now=1e9)  # the full scan: the index untouched
    assert c.expired_sessions(now=1e9) == ["K", "R"]
    assert c.reap_session("R", now=1e9) and c.reap_session("K", now=1e9)
    assert c.expired_sessions(now=1e9) == []
    minute = f"{int(1e9 // 60):012d}"
    later = f"{int((1e9 + 600) // 60):012d}"
    # R and K (reaped) and C (resumed) and P's first entry are gone, with their minute.
    assert sorted(raw.get_children(f"{root}/expiry")) == [later, "indexed"]
    assert raw.get_children(f"{root}/expiry/{later}") == ["P.1"]
    assert not raw.exists(f"{root}/expiry/{minute}")
    assert c.expired_sessions(now=1e9 + 600) == ["P"]


def test_records_parked_before_the_index_are_found_once_by_a_full_scan(
    make_zk: MakeZK, raw: KazooClient
) -> None:
    """A tree whose records predate the index (no ``expiry/indexed`` marker): the first
    sweep reads every record, then marks the tree; later sweeps read the index only."""
    root = _root()
    c = make_zk(root)
    c.create_session("O", "relay-a")
    c.park_session("O", "relay-a", 1, 0, b"", expires_at=1e9)
    raw.delete(f"{root}/expiry", recursive=True)  # as parked by a relay before the index
    assert c.expired_sessions(now=1e9) == ["O"]  # the full scan
    assert raw.exists(f"{root}/expiry/indexed")
    reads = _count_reads(c)
    assert c.expired_sessions(now=1e9) == []  # the index: nothing in it
    assert reads == []


def test_entries_that_are_no_entries_are_deleted(make_zk: MakeZK, raw: KazooClient) -> None:
    root = _root()
    c = make_zk(root)
    c.expired_sessions(now=1e9)  # marks the (empty) tree indexed
    minute = f"{root}/expiry/{int(1e9 // 60):012d}"
    raw.create(f"{minute}/not-an-entry", makepath=True)
    assert c.expired_sessions(now=1e9) == []
    assert not raw.exists(minute)


# --- under gevent: bursts and timeouts ------------------------------------------------------


def test_a_burst_of_requests_from_many_greenlets_is_served(zk_server: str) -> None:
    """Thousands of greenlets calling at once (a relay parking every session on SIGTERM,
    or resuming a drained relay's): kazoo's wake-up socketpair fills, and without the
    submission lock a second writer broke the connection loop for good."""
    import gevent

    c = ZooKeeperCoordinator(zk_server, root=_root(), handler="gevent")
    try:
        assert c.start(timeout=10.0)
        c.create_session("S", "relay-a")
        calls = [gevent.spawn(c.get_session, "S") for _ in range(2_000)]
        gevent.joinall(calls, timeout=30)
        assert all(g.successful() for g in calls), next(g.exception for g in calls if g.exception)
        assert {g.value.owner for g in calls} == {"relay-a"}
    finally:
        c.stop()


def test_no_reply_in_time_is_not_connected_under_gevent(zk_server: str) -> None:
    """gevent's AsyncResult raises its own Timeout, a BaseException the handler's subclass
    does not catch: a call that gets no reply must still end as NotConnectedError."""
    c = ZooKeeperCoordinator(zk_server, root=_root(), handler="gevent", op_timeout=0.05)
    try:
        assert c.start(timeout=10.0)
        never = c._handler.async_result()
        with pytest.raises(NotConnectedError):
            c._attempt(lambda: c._wait(never))
    finally:
        c.stop()


def test_a_burst_of_parks_into_a_new_minute_indexes_every_one(zk_server: str) -> None:
    """Hundreds of greenlets parking at once into a minute not created yet (a relay
    drained on SIGTERM): each entry's parents are created without kazoo's asynchronous
    makepath, whose completion callback blocks in the event loop (gevent refuses it)."""
    import gevent

    root = _root()
    c = ZooKeeperCoordinator(zk_server, root=root, handler="gevent")
    try:
        assert c.start(timeout=10.0)
        ids = [f"B{i}" for i in range(300)]
        for sid in ids:
            c.create_session(sid, "relay-a")
        c.expired_sessions(now=0.0)  # the (empty of parked) tree is marked indexed
        parks = [gevent.spawn(c.park_session, sid, "relay-a", 1, 0, b"", 1e9) for sid in ids]
        gevent.joinall(parks, timeout=30)
        assert all(g.successful() for g in parks), next(g.exception for g in parks if g.exception)
        assert c.expired_sessions(now=1e9) == sorted(ids)  # through the index alone
    finally:
        c.stop()
