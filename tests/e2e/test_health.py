"""Health on real relays: gunicorn with two workers on the real PostgreSQL and ZooKeeper.

The internal port serves ``/metrics``, the detailed ``/readyz``, ``/livez`` and
``/startupz``; the public port serves DDP and a terse ``/readyz`` and hides ``/metrics``.
Readiness follows what breaks: the PostgreSQL listener's backend killed (503, the listener
check and its gauge at 0, then back), ZooKeeper stopped (503, or "degraded" 200 when the
coordinator is not required), a worker draining on SIGTERM (503 from the other worker,
which reads its report), a worker whose loop stops (not ready, then not live).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from relay.server.health import LIVENESS_SECONDS
from tests.fixtures.postgres import listeners_killed
from tests.fixtures.relays import RelayProcess, RelayStacks
from tests.fixtures.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def readyz(relay: RelayProcess) -> tuple[int, dict[str, Any]]:
    status, body = fetch(f"{relay.internal_url}/readyz")
    return status, json.loads(body)


def gauge(relay: RelayProcess, check: str) -> float | None:
    """``ddp_relay_ready{check=...}`` as the worker that answered reports it."""
    _, text = fetch(f"{relay.internal_url}/metrics")
    found = re.search(rf'^ddp_relay_ready\{{check="{check}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def wait_for(what: str, condition: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def started(relay: RelayProcess, workers: int = 2) -> dict[str, Any]:
    """The detailed /readyz once every worker has started and reported ready."""
    wait_for("startup", lambda: fetch(f"{relay.internal_url}/startupz")[0] == 200, 30)

    def all_ready() -> dict[str, Any] | None:
        status, body = readyz(relay)
        return body if status == 200 and len(body["workers"]) == workers else None

    body: dict[str, Any] = wait_for("every worker ready", all_ready, 30)
    return body


def test_internal_port_serves_health_and_metrics_and_the_public_port_does_not(
    relay_stack: RelayStacks,
) -> None:
    relay = relay_stack(workers=2, internal_port=True).relay
    assert relay.internal_url != relay.url
    body = started(relay)
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"draining", "postgres", "listener", "coordinator"}
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["listener"]["lag_seconds"] == 0.0
    assert body["checks"]["postgres"]["reason"] == "reachable"
    assert len(body["workers"]) == 2
    for path in ("/livez", "/healthz", "/startupz"):
        assert fetch(relay.internal_url + path)[0] == 200, path
    status, text = fetch(relay.internal_url + "/metrics")
    assert status == 200 and "# TYPE ddp_relay_ready gauge" in text
    # The gauge follows the report of the next second.
    wait_for("the gauge at 1", lambda: gauge(relay, "listener") == 1.0, 10)
    # The public port: DDP, the project and a terse /readyz; no metrics.
    assert fetch(relay.url + "/readyz") == (200, "ready\n"), readyz(relay)
    assert fetch(relay.url + "/metrics")[0] == 404
    assert fetch(relay.url + "/sockjs/info")[0] == 200
    # The internal port serves nothing else.
    assert fetch(relay.internal_url + "/sockjs/info")[0] == 404
    assert fetch(relay.internal_url + "/admin/")[0] == 404


def test_a_killed_listener_makes_the_relay_not_ready_until_it_is_back(
    relay_stack: RelayStacks,
) -> None:
    stack = relay_stack(workers=2, internal_port=True)
    relay = stack.relay
    started(relay)
    with listeners_killed(stack.database_url):

        def listener_down() -> dict[str, Any] | None:
            status, body = readyz(relay)
            listener = body["checks"]["listener"]
            return body if status == 503 and not listener["ok"] else None

        body = wait_for("503 with the listener down", listener_down, 30)
        assert body["status"] == "not ready"
        assert body["checks"]["listener"]["lag_seconds"] is None
        assert "disconnected" in body["checks"]["listener"]["reason"]
        assert fetch(relay.url + "/readyz") == (503, "not ready\n")
        wait_for("the gauge at 0", lambda: gauge(relay, "listener") == 0.0, 30)
        # Not a liveness failure: restarting the pod would not bring PostgreSQL back.
        assert fetch(relay.internal_url + "/livez")[0] == 200
    # Reconnected (backoff up to 5 s) and caught up: ready again, on every worker.
    body = started(relay)
    assert body["checks"]["listener"]["ok"]
    wait_for("the gauge at 1", lambda: gauge(relay, "listener") == 1.0, 30)


def test_zookeeper_down_is_not_ready_or_degraded_when_not_required(
    relay_stack: RelayStacks, zk_outage: ZooKeeperServer
) -> None:
    strict = relay_stack(workers=2, internal_port=True, zookeeper=True, database="shared").relay
    lenient = relay_stack(
        workers=2,
        internal_port=True,
        zookeeper=True,
        database="shared",
        env={"RELAY_COORDINATOR_REQUIRED": "false"},
    ).relay
    for relay in (strict, lenient):
        body = started(relay)
        assert body["checks"]["coordinator"]["state"] == "connected"
    zk_outage.stop()
    try:

        def coordinator_down(relay: RelayProcess, code: int) -> Callable[[], Any]:
            def check() -> dict[str, Any] | None:
                status, body = readyz(relay)
                ok = body["checks"]["coordinator"]["ok"]
                return body if status == code and not ok else None

            return check

        body = wait_for("strict relay 503", coordinator_down(strict, 503), 30)
        assert body["status"] == "not ready"
        assert body["checks"]["coordinator"]["required"] is True
        assert "zookeeper" in body["checks"]["coordinator"]["reason"]
        # The workers' sessions notice the outage at their own moments: the pod converges.
        wait_for("public 503", lambda: fetch(strict.url + "/readyz") == (503, "not ready\n"), 10)
        body = wait_for("lenient relay degraded", coordinator_down(lenient, 200), 30)
        assert body["status"] == "degraded"
        assert body["checks"]["coordinator"]["required"] is False
        wait_for("public 200", lambda: fetch(lenient.url + "/readyz") == (200, "ready\n"), 10)
        wait_for("the gauge at 0", lambda: gauge(strict, "coordinator") == 0.0, 10)
        # PostgreSQL and the listener are fine meanwhile.
        assert body["checks"]["postgres"]["ok"] and body["checks"]["listener"]["ok"]
    finally:
        zk_outage.start()
    for relay in (strict, lenient):
        started(relay)

        # A degraded pod also answers 200: wait for the coordinator itself to be back.
        # kazoo's reconnect backs off while the server is down, so this can take a while.
        def recovered(relay: RelayProcess = relay) -> dict[str, Any] | None:
            status, body = readyz(relay)
            ok = status == 200 and body["status"] == "ready"
            return body if ok and body["checks"]["coordinator"]["ok"] else None

        wait_for("coordinator back", recovered, 60)


def test_a_draining_worker_makes_the_pod_not_ready(relay_stack: RelayStacks) -> None:
    relay = relay_stack(workers=2, internal_port=True).relay
    body = started(relay)
    pid = int(sorted(body["workers"])[0])
    os.kill(pid, signal.SIGTERM)

    def draining_seen() -> dict[str, Any] | None:
        status, body = readyz(relay)
        return body if status == 503 and not body["checks"]["draining"]["ok"] else None

    body = wait_for("503 while the worker drains", draining_seen, 10, every=0.01)
    assert body["checks"]["draining"]["failing_workers"] == [pid]
    # gunicorn replaces it; the new worker starts and the pod is ready again.
    body = started(relay)
    assert str(pid) not in body["workers"]


def test_a_stopped_worker_loop_is_not_ready_but_still_live(relay_stack: RelayStacks) -> None:
    relay = relay_stack(workers=2, internal_port=True).relay
    body = started(relay)
    pid = int(sorted(body["workers"])[0])
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)  # its loop stops, as if it were stuck
    try:

        def stale() -> dict[str, Any] | None:
            status, body = readyz(relay)
            return body if status == 503 and "no report" in body["reason"] else None

        body = wait_for("not ready once its report is stale", stale, 15)
        assert body["workers"][str(pid)]["status"] == "not ready"
        # Stale is not yet stuck: live until LIVENESS_SECONDS (20 s), which the same
        # report age decides (tests/relay/server/test_health.py; not waited for here).
        assert time.monotonic() - stopped_at < LIVENESS_SECONDS
        assert fetch(relay.internal_url + "/livez")[0] == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    body = started(relay)
    assert body["status"] == "ready"
