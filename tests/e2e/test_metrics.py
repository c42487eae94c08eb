"""The metrics of issue #13 on a real relay: two gevent workers in multiprocess mode, real
PostgreSQL, ``/metrics`` scraped on the internal port before and during traffic (a client
subscribing, commits, a method call, the listener's connection killed, a session parked
and resumed), checking that each metric is there and moves as it should.

One relay, one module: the steps share it and run in order, each asserting on what the
previous ones left. Every wait is bounded (``eventually``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.relays import RelayProcess, RelayStack, RelayStacks

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def stack(module_relay_stack: RelayStacks, tmp_path_factory: pytest.TempPathFactory) -> RelayStack:
    metrics_dir = tmp_path_factory.mktemp("prometheus")
    return module_relay_stack(
        workers=2,
        internal_port=True,
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "RELAY_BACKEND_CONCURRENCY": "4"},
    )


@pytest.fixture(scope="module")
def relay(stack: RelayStack) -> RelayProcess:
    return stack.relay


def scrape(relay: RelayProcess) -> Samples:
    with urllib.request.urlopen(relay.internal_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(ls) for (n, ls) in samples if n == name]


def eventually(
    relay: RelayProcess, check: Callable[[Samples], bool], what: str, timeout: float = 10.0
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(relay)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


class Client:
    """A DDP client on raw frames, counting what it receives as Meteor 3.5 does."""

    def __init__(self, relay: RelayProcess, **connect: Any) -> None:
        self.ws = websocket.create_connection(relay.ws_url, timeout=10)
        self.received = 0
        self.send(msg="connect", version="1", support=["1"], **connect)
        self.connected = self.until("connected")

    def send(self, **msg: Any) -> None:
        self.ws.send(json.dumps(msg))

    def until(self, kind: str, **match: Any) -> dict[str, Any]:
        while True:
            msg: dict[str, Any] = json.loads(self.ws.recv())
            if msg["msg"] in ("ping", "pong"):
                continue
            self.received += 1
            if msg["msg"] == kind and all(msg.get(k) == v for k, v in match.items()):
                return msg

    def drop(self) -> None:
        sock = self.ws.sock
        assert sock is not None
        sock.close()  # no close frame: the connection just dies


@pytest.fixture(scope="module")
def db(stack: RelayStack) -> Iterator[Callable[[str], None]]:
    conn = psycopg2.connect(stack.database_url)
    conn.autocommit = True

    def execute(statement: str) -> None:
        with conn.cursor() as cur:
            cur.execute(statement)

    yield execute
    conn.close()


def retitle(db: Callable[[str], None], title: str) -> None:
    db(f"UPDATE bookstore_book SET title = '{title}' WHERE id = 'small-gods'")


def test_before_traffic_every_series_is_there(relay: RelayProcess) -> None:
    samples = eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_listener_connected") == 1
            and value(s, "ddp_relay_coordinator_connected") == 1
            and len(series(s, "ddp_relay_process_open_fds")) == 2
        ),
        "both workers' listeners and coordinators connected, their process metrics in",
    )
    (build,) = series(samples, "ddp_relay_build_info")
    assert build["version"] and build["python"].count(".") == 2 and build["django"] != "none"
    assert value(samples, "ddp_relay_build_info") == 1  # livemax: not one per worker
    pids = {s["pid"] for s in series(samples, "ddp_relay_process_open_fds")}
    assert len(pids) == 2  # liveall: one series per worker
    for pid in pids:
        fds = value(samples, "ddp_relay_process_open_fds", pid=pid)
        assert 0 < fds < value(samples, "ddp_relay_process_max_fds", pid=pid)
        assert value(samples, "ddp_relay_process_resident_memory_bytes", pid=pid) > 10e6
        assert value(samples, "ddp_relay_process_cpu_seconds_total", pid=pid) > 0
    assert value(samples, "ddp_relay_workpool_size") == 8  # 4 per worker, summed
    # Pre-created at 0: alerts see these series before the first event.
    for name, label, values in [
        ("ddp_relay_disconnects_total", "reason", ["slow", "heartbeat_timeout"]),
        ("ddp_relay_resumes_total", "outcome", ["resumed", "unavailable", "lost"]),
        ("ddp_relay_resyncs_total", "reason", ["epoch", "pruned"]),
        ("ddp_relay_backfills_total", "reason", ["gap", "reconnect"]),
        ("ddp_relay_listener_lag_seconds", "channel_class", ["model", "event", "presence"]),
        ("ddp_relay_listener_lag_changes", "channel_class", ["model", "event", "presence"]),
    ]:
        present = {s[label] for s in series(samples, name)}
        assert set(values) <= present, (name, present)
    assert ("ddp_relay_method_seconds_count", frozenset({("method", "other")})) in samples


def test_a_subscriber_commits_and_a_method_move_their_metrics(
    relay: RelayProcess, db: Callable[[str], None]
) -> None:
    before = scrape(relay)
    client = Client(relay)
    client.send(msg="sub", id="all", name="books.all", params=[])
    client.until("ready", subs=["all"])
    eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_subscriptions_open") >= 1 and value(s, "ddp_relay_sessions") >= 1
        ),
        "the subscription counted",
    )
    for n in range(3):
        retitle(db, f"Metrics {n}")
        client.until("changed", id="small-gods")
    # The lag window shows the commits just routed (the sampler takes it each second).
    during = eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_commit_to_client_seconds_count")
            >= value(before, "ddp_relay_commit_to_client_seconds_count") + 3
        ),
        "commit-to-client observed for each commit",
    )
    latency = value(during, "ddp_relay_commit_to_client_seconds_sum") - value(
        before, "ddp_relay_commit_to_client_seconds_sum"
    )
    assert 0 <= latency < 3 * 2.0  # same clock: milliseconds each, not seconds
    assert value(during, "ddp_relay_backfills_total", reason="listen") > value(
        before, "ddp_relay_backfills_total", reason="listen"
    )
    retitle(db, "Metrics lag")
    client.until("changed", id="small-gods")
    eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_listener_lag_changes", channel_class="model") >= 1
            and value(s, "ddp_relay_listener_lag_seconds", channel_class="model") > 0
        ),
        "the listener's lag window shows the commit",
        timeout=3.0,
    )
    # A method: timed under its own name, its pool wait observed.
    doc = {"title": "Counted", "authorId": "jemisin", "price": "1.00", "tags": []}
    client.send(msg="method", id="m1", method="books.create", params=[doc], randomSeed="m-1")
    created = client.until("result", id="m1")["result"]
    client.until("updated")
    client.send(msg="method", id="m2", method="books.remove", params=[created])
    client.until("updated")
    after = eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_bytes_sent_total") > value(before, "ddp_relay_bytes_sent_total")
        ),
        "bytes out counted",
        timeout=3.0,
    )
    for method in ("books.create", "books.remove"):
        assert value(after, "ddp_relay_method_seconds_count", method=method) >= 1
    assert value(after, "ddp_relay_workpool_wait_seconds_count") > value(
        before, "ddp_relay_workpool_wait_seconds_count"
    )
    client.ws.close()
    eventually(relay, lambda s: value(s, "ddp_relay_subscriptions_open") == 0, "unsubscribed")


def test_a_killed_listener_reconnects_backfills_and_goes_on(
    relay: RelayProcess, db: Callable[[str], None], stack: RelayStack
) -> None:
    client = Client(relay)
    client.send(msg="sub", id="all", name="books.all", params=[])
    client.until("ready", subs=["all"])
    before = scrape(relay)
    name = stack.database_url.rsplit("/", 1)[1]
    db(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE application_name = 'ddp-relay listener' AND datname = '{name}'"
    )
    retitle(db, "After the kill")  # while it reconnects, or after: it arrives either way
    client.until("changed", id="small-gods")
    after = eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_backfills_total", reason="reconnect")
            > value(before, "ddp_relay_backfills_total", reason="reconnect")
            and value(s, "ddp_relay_listener_connected") == 1
        ),
        "the reconnect's backfill counted, the listener up again",
    )
    assert value(after, "ddp_relay_resyncs_total") == value(before, "ddp_relay_resyncs_total")
    client.ws.close()


def test_a_parked_session_is_counted_then_resumed(relay: RelayProcess, stack: RelayStack) -> None:
    def stored() -> int:
        """What the gauge must say: the parked states still inside their window (the
        earlier tests' clients, closed without a DDP disconnect, are parked too)."""
        with psycopg2.connect(stack.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM ddp_parked_session WHERE expires_at > now()")
            row = cur.fetchone()
        conn.close()
        assert row is not None
        return int(row[0])

    before = scrape(relay)
    client = Client(relay)
    client.send(msg="sub", id="all", name="books.all", params=[])
    client.until("ready", subs=["all"])
    session, received = client.connected["session"], client.received
    client.drop()
    parked = eventually(
        relay,
        lambda s: (
            value(s, "ddp_relay_resumes_total", outcome="parked")
            > value(before, "ddp_relay_resumes_total", outcome="parked")
        ),
        "the session parked",
    )
    assert value(parked, "ddp_relay_disconnects_total", reason="transport_closed") > value(
        before, "ddp_relay_disconnects_total", reason="transport_closed"
    )
    count = stored()
    assert count >= 1
    eventually(
        relay,
        lambda s: value(s, "ddp_relay_parked_sessions") == count,
        f"the leader's count of parked sessions reaching {count}",
    )
    again = Client(relay, session=session, receivedCount=received)
    assert again.connected["session"] == session  # resumed, on either worker
    assert stored() == count - 1  # its spent state deleted at the claim
    resumed = eventually(
        relay,
        lambda s: value(s, "ddp_relay_parked_sessions") == count - 1,
        "the resumed session no longer counted as parked",
    )
    assert (
        value(resumed, "ddp_relay_resume_seconds_count")
        == value(before, "ddp_relay_resume_seconds_count") + 1
    )
    assert (
        value(resumed, "ddp_relay_resumes_total", outcome="resumed")
        == value(before, "ddp_relay_resumes_total", outcome="resumed") + 1
    )
    again.send(msg="disconnect")  # deliberate: not parked again
    again.ws.close()


def test_the_internal_port_alone_serves_metrics(relay: RelayProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(relay.url + "/metrics", timeout=5)
    refused.value.close()
    assert refused.value.code == 404  # the public port: metrics stay internal
