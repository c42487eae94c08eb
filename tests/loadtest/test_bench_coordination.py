"""``loadtest.bench.coordination`` without its command: the request counter (on a fake
kazoo client), the figures of a row, mntr's text, the report's tables, the mode's options;
and, against the test session's ZooKeeper, the requests each step of a session's life
costs with the real ``coordinator.zk`` (the scaling model's input: a change of the
coordinator that adds a request shows here first).

The full command (a server of its own, client processes) is run by hand; its figures are
in docs/scaling.md.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter as Tally
from typing import Any

import pytest

from coordinator.base import check_id
from devstack import local_zookeeper
from loadtest.bench import cli
from loadtest.bench.coordination import (
    Counter,
    aggregate,
    count_steps,
    mntr_delta,
    parse_mntr,
    per_step,
    percentile,
    report,
    session_id,
    split,
)


class _Result:
    """What kazoo's ``*_async`` returns, as far as the counter cares: an object."""


class _Client:
    def __getattr__(self, name: str) -> Any:
        if not name.endswith("_async"):
            raise AttributeError(name)
        return lambda *args, **kwargs: _Result()


class _Coordinator:
    def __init__(self) -> None:
        self._client = _Client()
        self.waited = 0

    def _wait(self, result: Any) -> Any:
        self.waited += 1
        return result


def test_session_ids_are_meteor_like_and_valid_znode_names() -> None:
    rng = random.Random(1)
    ids = {session_id(rng) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(sid) == 17 and check_id("session id", sid) == sid for sid in ids)


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([], 0.5) == 0.0


def test_the_counter_counts_reads_and_writes_and_times_writes() -> None:
    coordinator = _Coordinator()
    counter = Counter()
    counter.attach(coordinator)
    client: Any = coordinator._client
    for result in (client.get_async("/a"), client.set_async("/a", b""), client.exists_async("/a")):
        coordinator._wait(result)
    client.create_async("/b", b"")  # not waited for: no latency
    assert coordinator.waited == 3
    assert len(counter.write_latencies) == 1
    counts = counter.take()
    assert counts == Tally({"get": 1, "set": 1, "exists": 1, "create": 1})
    assert split(counts) == (2, 2)
    assert counter.take() == Tally()


def test_per_step_divides_by_the_steps() -> None:
    row = per_step(Tally({"get": 400, "set": 200}), 200)
    assert (row["reads"], row["writes"]) == (2.0, 1.0)
    assert row["by_kind"] == {"get": 2.0, "set": 1.0}
    assert per_step(Tally(), 0)["reads"] == 0


MNTR = (
    "zk_version\t3.8.0-abc, built on 2024-12-29\n"
    "zk_server_state\tstandalone\n"
    "zk_cnt_updatelatency\t10\n"
    "zk_cnt_readlatency\t7\n"
    "zk_avg_fsynctime\t0.04\n"
)


def test_parse_mntr_keeps_numbers() -> None:
    parsed = parse_mntr(MNTR)
    assert parsed["zk_cnt_updatelatency"] == 10.0
    assert parsed["zk_avg_fsynctime"] == 0.04
    assert "zk_version" not in parsed and "zk_server_state" not in parsed


def test_mntr_delta_is_reads_and_writes() -> None:
    after = parse_mntr(MNTR.replace("\t10\n", "\t25\n").replace("\t7\n", "\t9\n"))
    assert mntr_delta(parse_mntr(MNTR), after) == (2.0, 15.0)


def _client_result(steps: int, writes: int, latency: float) -> dict[str, Any]:
    return {
        "error": None,
        "steps": steps,
        "errors": 0,
        "counts": {"create": writes // 2, "set": writes - writes // 2, "get": writes},
        "write_latencies": [latency] * writes,
        "step_latencies": {"create": [latency], "resume": [2 * latency]},
        "cpu_s": 0.5,
        "sessions": steps // 4,
    }


def test_aggregate_sums_the_clients() -> None:
    row = aggregate(
        2,
        2.0,
        [_client_result(400, 400, 0.001), _client_result(400, 400, 0.003)],
        zk_cpu_s=0.4,
        machine_cpu_s=3.0,
        steal_s=0.0,
        wall_s=2.0,
        server_reads=800,
        server_writes=800,
    )
    assert row["steps_per_s"] == 400
    assert row["writes_per_s"] == 400 and row["reads_per_s"] == 400
    assert row["write_p50_ms"] == 2.0  # the median of 400 at 1 ms and 400 at 3 ms
    assert row["write_p99_ms"] == 3.0
    assert row["zk_cpu_us_per_write"] == 500.0
    assert row["zk_cpu_cores"] == 0.2
    assert row["client_cpu_cores"] == 0.5
    assert row["machine_cpu_cores"] == 1.5
    assert row["step_p50_ms"]["resume"] == 4.0


def test_report_prints_the_three_tables() -> None:
    steps = {
        "create": {"calls": "create_session", "reads": 0, "writes": 1, "server_reads": 0,
                   "server_writes": 1},
    }  # fmt: skip
    row = aggregate(
        1, 1.0, [_client_result(4, 4, 0.001)], zk_cpu_s=0.1, machine_cpu_s=0.5, steal_s=0.0,
        wall_s=1.0, server_reads=4, server_writes=4,
    )  # fmt: skip
    result = {
        "zookeeper": "3.8.0",
        "servers": 1,
        "modes": ["standalone"],
        "sample": 10,
        "seconds": 1.0,
        "ops_per_step": steps,
        "rows": [row],
        "pipelined": {
            "in_flight": 256,
            "writes_per_s": 4000,
            "batch_p50_ms": 60.0,
            "zk_cpu_us_per_write": 150.0,
            "zk_cpu_cores": 0.6,
            "client_cpu_cores": 0.7,
            "machine_cpu_cores": 1.5,
            "steal_cores": 0.0,
        },
        "leader": {
            "records": 100,
            "sweep_s": 0.02,
            "sweep_us_per_record": 200.0,
            "sweep_reads": 101,
            "reaped": 100,
            "reaps_per_s": 1000,
            "data_bytes_per_znode": 140.0,
        },
    }
    text = "\n".join(report(result))
    assert "1 standalone server" in text
    assert "| create | create_session | 0 | 1 | 0 / 1 |" in text
    assert "| 1 | 4 | 4 | 4 |" in text
    assert "4,000 writes/s" in text
    assert "200.0 µs per record" in text
    assert "NOTE" not in text


def test_the_mode_and_its_options() -> None:
    args = cli.build_parser().parse_args(["coordination"])
    assert (args.clients, args.seconds, args.sample, args.servers) == ([1, 4, 16], 3.0, 200, 1)
    args = cli.build_parser().parse_args(
        ["coordination", "--clients", "2,8", "--servers", "3", "--sample", "20"]
    )
    assert (args.clients, args.servers, args.sample) == ([2, 8], 3, 20)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["coordination", "--servers", "2"])
    assert "coordination" in cli.MODES


class _Served:
    """The test session's ZooKeeper, as ``count_steps`` reads it."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self.port = int(hosts.rsplit(":", 1)[1])

    def mntr_all(self) -> list[dict[str, float]]:
        return [parse_mntr(local_zookeeper.four_letter(self.port, b"mntr").decode())]


def test_requests_per_step_with_the_real_coordinator(zk_server: str) -> None:
    # A root of its own: other tests' session records are not this test's to sweep.
    steps = count_steps(_Served(zk_server), 20, root=f"/ddp-bench/{uuid.uuid4().hex}")
    expected = {
        "create": (0, 1),
        "resume": (2, 1),
        "drop": (1, 1),
        "reap": (1, 1),
    }
    for name, (reads, writes) in expected.items():
        assert (steps[name]["reads"], steps[name]["writes"]) == (reads, writes), name
        # The server saw the same (mntr counts every client's requests: other tests of the
        # session may run at the same time only in other processes, not during this one).
        assert steps[name]["server_writes"] >= writes, name
    # A park: the record's compare-and-set and its expiry index entry (the first park into
    # a minute also creates the minute).
    park = steps["park"]
    assert park["reads"] == 1 and 2 <= park["writes"] <= 2.5
    # The sweep reads the index (minutes listed, records read) and deletes the entries it
    # finds stale: the first parks' (the records were parked again at a new epoch).
    sweep = steps["sweep"]
    assert sweep["records"] == 10
    assert 1 <= sweep["reads"] <= 2.5 and sweep["writes"] <= 2.5
