"""The metrics sampler: one round sets every state gauge from what the worker's parts
know; the leader alone reports the parked sessions; a failing /proc read or count does
not stop the round."""

from __future__ import annotations

from dataclasses import dataclass, field

import gevent
import pytest
from prometheus_client import REGISTRY

from relay import metrics as metrics_module
from relay.metrics import TALLY, get_metrics
from relay.server.sampler import Sampler, Sources
from relay.stream.lag import LagWindow


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@dataclass
class Pool:
    busy: int = 3
    size: int = 8


@dataclass
class ListenerState:
    lag: LagWindow = field(default_factory=LagWindow)
    backlog: int = 0


@dataclass
class ResumerState:
    connected: bool = True
    leader: bool = True
    parked: int | None = 5
    counts: int = 0

    def coordinator_connected(self) -> bool:
        return self.connected

    def is_leader(self) -> bool:
        return self.leader

    def count_parked(self) -> int | None:
        self.counts += 1
        return self.parked


def test_a_round_sets_every_state_gauge() -> None:
    listener, resumer = ListenerState(backlog=7), ResumerState()
    listener.lag.late("ddp_bookstore_book", 2.5)
    listener.lag.behind("ddp_ev_chat_00000000", 12)
    sampler = Sampler(get_metrics(), Sources(Pool(), lambda: 11, listener, resumer))
    before = value("ddp_relay_bytes_sent_total") or 0.0
    TALLY.bytes_sent += 4096
    sampler.run_round()
    assert value("ddp_relay_workpool_busy") == 3 and value("ddp_relay_workpool_size") == 8
    assert value("ddp_relay_subscriptions_open") == 11
    assert value("ddp_relay_notification_backlog") == 7
    assert value("ddp_relay_listener_lag_seconds", channel_class="model") == 2.5
    assert value("ddp_relay_listener_lag_changes", channel_class="event") == 12
    assert value("ddp_relay_coordinator_connected") == 1
    assert value("ddp_relay_parked_sessions") == 5
    assert value("ddp_relay_bytes_sent_total") == before + 4096 and TALLY.bytes_sent == 0
    assert (value("ddp_relay_process_open_fds") or 0) > 0
    assert (value("ddp_relay_process_resident_memory_bytes") or 0) > 0
    # The next round: the lag window was taken (back to 0), the coordinator is down.
    resumer.connected = False
    sampler.run_round()
    assert value("ddp_relay_listener_lag_seconds", channel_class="model") == 0
    assert value("ddp_relay_listener_lag_changes", channel_class="event") == 0
    assert value("ddp_relay_coordinator_connected") == 0


def test_only_the_leader_counts_the_parked_sessions_every_few_rounds() -> None:
    resumer = ResumerState(parked=9)
    sampler = Sampler(get_metrics(), Sources(Pool(), lambda: 0, None, resumer), parked_every=3)
    for _ in range(6):
        sampler.run_round()
    assert resumer.counts == 3  # the first round, then every third
    assert value("ddp_relay_parked_sessions") == 9
    resumer.parked = None  # the database cannot say: the last count stands
    for _ in range(3):
        sampler.run_round()
    assert value("ddp_relay_parked_sessions") == 9
    resumer.leader = False  # another relay leads: it reports, this one says 0
    for _ in range(3):
        sampler.run_round()
    assert value("ddp_relay_parked_sessions") == 0


def test_nothing_configured_reads_as_nothing_to_lose() -> None:
    sampler = Sampler(get_metrics(), Sources(Pool(busy=0, size=1), lambda: 0))
    get_metrics().listener_connected.set(0)
    get_metrics().coordinator_connected.set(0)
    sampler.run_round()
    assert value("ddp_relay_listener_connected") == 1
    assert value("ddp_relay_coordinator_connected") == 1
    assert value("ddp_relay_parked_sessions") == 0


def test_a_round_without_proc_still_sets_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable() -> object:
        raise OSError("no /proc here")

    monkeypatch.setattr("relay.server.sampler.read_process", unreadable)
    sampler = Sampler(get_metrics(), Sources(Pool(busy=2), lambda: 4))
    sampler.run_round()
    assert value("ddp_relay_workpool_busy") == 2 and value("ddp_relay_subscriptions_open") == 4
    assert metrics_module.read_process is not unreadable  # only the sampler's name patched


def test_the_sampler_runs_on_its_own_greenlet() -> None:
    count = [0]
    sampler = Sampler(
        get_metrics(),
        Sources(Pool(), lambda: count.__setitem__(0, count[0] + 1) or 0),
        interval=0.01,
    )
    sampler.start()
    try:
        with gevent.Timeout(5):
            while count[0] < 3:
                gevent.sleep(0.01)
    finally:
        sampler.stop()
