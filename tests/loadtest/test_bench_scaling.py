"""``loadtest.bench.scaling``, the scaling model of docs/scaling.md: its arithmetic (the
NOTIFY fit, listeners under a round-robin balancer, each component's load, the search for
the largest deployment and the component that breaks first), the design steps it
compares, and the inputs file (it loads; every measured input names the command that
produced it; every assumption says why).

Pure: no service is started.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from loadtest.bench import scaling
from loadtest.bench.scaling import (
    DEFAULT_INPUTS,
    Fit,
    Inputs,
    Scenario,
    Shape,
    channel_listeners,
    database_listeners,
    first_limit,
    fit_notify,
    largest,
    load_inputs,
    loads,
    notified,
    occupied,
    step_rows,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    return load_inputs()[0]


def _load(shape: Shape, inputs: Inputs, component: str) -> scaling.Load:
    return next(load for load in loads(shape, inputs) if load.component.startswith(component))


# -- the inputs file ---------------------------------------------------------------------------


def test_the_inputs_file_is_the_documented_one() -> None:
    assert DEFAULT_INPUTS == ROOT / "docs" / "scaling-inputs.json"
    assert "docs/scaling-inputs.json" in (ROOT / "docs" / "scaling.md").read_text()


def test_every_measured_input_names_its_command() -> None:
    raw = json.loads(DEFAULT_INPUTS.read_text())
    assert raw["inputs"]
    for name, entry in raw["inputs"].items():
        assert entry.get("what"), name
        assert entry.get("measured"), name
        command = entry.get("command", "")
        assert command.startswith(".venv/bin/python -m loadtest.bench"), name
        assert "points" in entry or "value" in entry, name


def test_every_assumption_says_why() -> None:
    raw = json.loads(DEFAULT_INPUTS.read_text())
    for name, entry in raw["assumptions"].items():
        assert entry.get("why") and isinstance(entry["value"], int | float), name


def test_the_inputs_load(inputs: Inputs) -> None:
    assert inputs.notify.a > 0 and inputs.notify.b > 0
    assert inputs.zk_writes == {"create": 1, "park": 1, "resume": 1, "drop": 1, "reap": 1}
    assert inputs.relay_us_per_delivery == 15  # the default the brief gives, until measured
    assert math.isclose(inputs.zk_writes_per_s, 2 * 1e6 / 405)


def test_the_fit_follows_the_measured_points(inputs: Inputs) -> None:
    raw = json.loads(DEFAULT_INPUTS.read_text())
    for listeners, rate in raw["inputs"]["notify_4_writers"]["points"]:
        assert inputs.notify.ceiling(listeners) == pytest.approx(rate, rel=0.35), listeners


def test_overrides_replace_values() -> None:
    changed, _ = load_inputs(overrides={"relay_us_per_delivery": 30, "db_cores": 4})
    assert (changed.relay_us_per_delivery, changed.db_cores) == (30, 4)
    with pytest.raises(KeyError):
        load_inputs(overrides={"no_such_input": 1})
    with pytest.raises(KeyError):  # points, not one value
        load_inputs(overrides={"notify_4_writers": 1})


# -- the NOTIFY fit ----------------------------------------------------------------------------


def test_fit_recovers_a_line() -> None:
    a, b = 60e-6, 10e-6
    fit = fit_notify([(n, 1 / (a + b * n)) for n in (1, 10, 50, 100, 200)])
    assert fit.a == pytest.approx(a) and fit.b == pytest.approx(b)


def test_doubling_listeners_lowers_the_ceiling_as_the_fit_says(inputs: Inputs) -> None:
    fit = inputs.notify
    for n in (10, 100, 1000):
        assert fit.ceiling(2 * n) < fit.ceiling(n)
        assert fit.ceiling(2 * n) == pytest.approx(1 / (fit.a + 2 * n * fit.b))
        # Listeners dominate: twice the listeners, nearly half the commits.
        assert fit.ceiling(2 * n) / fit.ceiling(n) == pytest.approx(
            (fit.a + n * fit.b) / (fit.a + 2 * n * fit.b)
        )


def test_a_negative_intercept_is_clamped() -> None:
    # Rates that fall faster than 1/n: the line through them would cross below zero.
    fit = fit_notify([(10, 1000.0), (100, 50.0)])
    assert fit.a == 0.0 and fit.b > 0


def test_a_fit_needs_two_listener_counts() -> None:
    with pytest.raises(ValueError):
        fit_notify([(10, 1000.0)])
    with pytest.raises(ValueError):
        fit_notify([(10, 1000.0), (10, 900.0)])


# -- listeners ---------------------------------------------------------------------------------


def test_occupied_bins() -> None:
    assert occupied(10, 0) == 0
    assert occupied(10, 1) == pytest.approx(1)
    assert occupied(10, 1e6) == pytest.approx(10)
    assert occupied(1, 5) == 1
    assert occupied(100, 20) < 20  # twenty members of a room share some workers
    assert occupied(100, 20) < occupied(100, 40) < occupied(100, 80)


def _shape(**change: object) -> Shape:
    base = Shape(
        relays=10,
        workers_per_relay=4,
        sessions_per_worker=1000,
        commits_per_s=100.0,
        subscriptions_per_channel=40_000,
        deliveries_per_commit=40_000,
    )
    return replace(base, **change)  # type: ignore[arg-type]


def test_a_listener_per_pod_divides_the_listeners_by_the_workers() -> None:
    assert database_listeners(_shape()) == 40
    assert database_listeners(_shape(listener="pod")) == 10
    assert channel_listeners(_shape()) == pytest.approx(40)
    assert channel_listeners(_shape(listener="pod")) == pytest.approx(10)


def test_before_postgresql_19_every_listener_of_the_database_is_signalled(inputs: Inputs) -> None:
    # Few subscribers per channel: on 15 the others are signalled at the idle share.
    sparse = _shape(subscriptions_per_channel=2, deliveries_per_commit=2)
    heard = channel_listeners(sparse)
    assert notified(sparse, inputs) == pytest.approx(
        heard + inputs.idle_listener_share * (40 - heard)
    )
    assert notified(replace(sparse, postgres=19), inputs) == pytest.approx(heard)
    pg15 = _load(sparse, inputs, "NOTIFY").capacity
    pg19 = _load(replace(sparse, postgres=19), inputs, "NOTIFY").capacity
    assert pg19 > pg15


# -- the components ----------------------------------------------------------------------------


def test_notify_load_is_commits_times_the_fitted_time(inputs: Inputs) -> None:
    shape = _shape()
    load = _load(shape, inputs, "NOTIFY")
    assert load.demand == 100
    assert load.utilisation == pytest.approx(100 * inputs.notify.seconds(40))


def test_a_durable_commit_holds_the_lock_through_its_flush(inputs: Inputs) -> None:
    durable = _load(_shape(durable=True), inputs, "NOTIFY")
    assert 1 / durable.capacity == pytest.approx(inputs.notify.seconds(40) + inputs.wal_flush_s)


def test_relay_cpu_counts_deliveries_and_commits_routed(inputs: Inputs) -> None:
    load = _load(_shape(), inputs, "relay worker CPU")
    # Every worker has subscribers: it gets every commit and 1/40 of the deliveries.
    expected = 100 * 1000 * inputs.relay_us_per_delivery + 100 * inputs.relay_us_per_commit
    assert load.demand == pytest.approx(expected / 1e6)


def test_partitions_cut_the_commits_a_worker_routes_only_for_sparse_subscriptions(
    inputs: Inputs,
) -> None:
    rooms = _shape(subscriptions_per_channel=40_000, deliveries_per_commit=20)
    partitioned = replace(rooms, partitions=4096, subscriptions_per_channel=20)
    assert (
        _load(partitioned, inputs, "relay worker CPU").demand
        < _load(rooms, inputs, "relay worker CPU").demand
    )
    # A feed: every subscriber needs every partition, nothing changes.
    feed = replace(_shape(), partitions=4096)
    assert _load(feed, inputs, "relay worker CPU").demand == pytest.approx(
        _load(_shape(), inputs, "relay worker CPU").demand
    )


def test_logical_decoding_replaces_notify(inputs: Inputs) -> None:
    names = [load.component for load in loads(_shape(transport="logical"), inputs)]
    assert not any(name.startswith("NOTIFY") or name.startswith("listening") for name in names)
    assert "channel counter row lock" in names and "logical decoding (one slot)" in names


def test_zookeeper_writes_follow_the_lifecycle(inputs: Inputs) -> None:
    shape = _shape(session_lifetime_s=1000.0, reconnects_per_hour=3600.0)
    # 40,000 sessions: 40 starts/s (create, park, reap) and 40,000 resumes/s (park, claim),
    # and an expiry index entry per park, deleted per reap.
    indexed = _load(shape, inputs, "ZooKeeper writes (steady)")
    assert indexed.demand == pytest.approx(40 * 5 + 40_000 * 3)
    before = _load(replace(shape, sweep="all"), inputs, "ZooKeeper writes (steady)")
    assert before.demand == pytest.approx(40 * 3 + 40_000 * 2)


def test_the_sweep_reads_every_record_or_only_the_expired(inputs: Inputs) -> None:
    every = _load(_shape(sweep="all"), inputs, "coordinator leader's sweep")
    expired = _load(_shape(), inputs, "coordinator leader's sweep")
    assert every.demand > 10 * expired.demand


# -- the first limit and the largest deployment ------------------------------------------------


def test_the_first_limit_is_the_most_loaded_component(inputs: Inputs) -> None:
    rooms = _shape(durable=True, commits_per_s=2000.0, deliveries_per_commit=20, partitions=4096)
    found = loads(replace(rooms, subscriptions_per_channel=20), inputs)
    assert first_limit(found).component.startswith("NOTIFY")
    assert first_limit(found).utilisation == max(load.utilisation for load in found)
    many = loads(_shape(sessions_per_worker=100_000, commits_per_s=1.0, sweep="all"), inputs)
    assert first_limit(many).component == "coordinator leader's sweep"


def test_largest_fits_and_one_more_relay_breaks(inputs: Inputs) -> None:
    scenario = Scenario("rooms", commits_per_session_per_s=1 / 60, room=20)
    relays, breaks = largest(scenario, inputs)
    assert relays >= 1
    assert all(load.utilisation <= 1 for load in loads(scenario.at(relays), inputs))
    over = loads(scenario.at(relays + 1), inputs)
    assert first_limit(over).component == breaks.component
    assert breaks.utilisation > 1


def test_largest_is_zero_when_one_relay_is_too_many(inputs: Inputs) -> None:
    scenario = Scenario("impossible", commits_per_s=1e9)
    relays, breaks = largest(scenario, inputs)
    assert relays == 0 and breaks.utilisation > 1


def test_the_steps_of_the_design(inputs: Inputs) -> None:
    rooms = Scenario("rooms", commits_per_session_per_s=1 / 60, room=20)
    rows = {row["step"][:4]: row for row in step_rows(rooms, inputs)}
    before, built, pod = rows["befo"], rows["as b"], rows["(i) "]
    assert before["breaks"] == "coordinator leader's sweep"
    assert built["relays"] > before["relays"]
    assert pod["relays"] >= built["relays"]
    logical = step_rows(rooms, inputs)[-1]
    assert logical["relays"] > pod["relays"]
    assert not logical["breaks"].startswith("NOTIFY")


def test_durable_commits_cap_notify_whatever_the_listeners(inputs: Inputs) -> None:
    durable = Scenario("rooms", commits_per_session_per_s=1 / 60, room=20, durable=True)
    rows = step_rows(durable, inputs)
    notify_rows = [row for row in rows if "logical" not in row["step"]]
    assert all(row["commits_per_s"] < 1 / inputs.wal_flush_s for row in notify_rows)
    assert rows[-1]["commits_per_s"] > 1 / inputs.wal_flush_s


# -- the command -------------------------------------------------------------------------------


def test_main_prints_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert scaling.main([]) == 0
    out = capsys.readouterr().out
    raw = json.loads(DEFAULT_INPUTS.read_text())
    for name in raw["scenarios"]:
        assert f"### {name}" in out
    assert "NOTIFY fit:" in out


def test_main_prints_one_shape(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--relays", "20", "--commits", "500", "--listener", "pod", "--set", "db_cores=4"]
    assert scaling.main(argv) == 0
    out = capsys.readouterr().out
    assert "20 relays x 2 workers x 5,000 sessions = 200,000 sessions" in out
    assert out.count("**first limit**") == 1
    assert "| changelog (primary CPU) | 0.115 | 2 | cores |" in out


def test_a_fit_is_seconds_per_commit() -> None:
    fit = Fit(a=50e-6, b=10e-6)
    assert fit.seconds(5) == pytest.approx(100e-6)
    assert fit.ceiling(5) == pytest.approx(10_000)
