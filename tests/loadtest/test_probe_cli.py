"""``python -m loadtest.probe``: the command line gives the acceptance's parameters by
default (2 workers; 600 messages of ~1 MiB behind a 15 s method; 24 sessions; 50
cycles; 100,000 frames; 256 MiB and 250 ms), maps them onto the attackers' configs, and
keeps the attacker off the honest client's book.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from loadtest.probe import attacks, cli, report


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def fake_stack() -> Any:
    relay = SimpleNamespace(ws_url="ws://127.0.0.1:9/websocket")
    return SimpleNamespace(relay=relay, book_ids=["a-book", "b-book", "c-book"], author_ids=["x"])


def test_defaults_are_the_acceptance() -> None:
    q = parse("queue")
    assert (q.workers, q.clients, q.messages, q.message_bytes, q.slow_ms) == (
        2, 1, 600, 1_000_000, 15_000,
    )  # fmt: skip
    assert (q.honest_address, q.attacker_address) == ("127.0.0.2", "127.0.0.1")
    assert (q.rss_limit_mib, q.latency_limit_ms, q.log_level) == (256.0, 250.0, "info")
    assert (parse("orm").sessions, parse("orm").slow_ms) == (24, 15_000)
    assert parse("park").cycles == 50
    assert (parse("fuzz").frames, parse("fuzz").connections) == (100_000, 8)


@pytest.mark.parametrize("argv", [["nope"], ["queue", "--clients", "0"], ["fuzz", "--env", "X"]])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


def test_env_option() -> None:
    assert parse("orm", "--env", "RELAY_X=1", "--env", "Y=a=b").env == [
        ("RELAY_X", "1"),
        ("Y", "a=b"),
    ]


@pytest.mark.parametrize("attack", cli.ATTACKS)
def test_configs_never_touch_the_honest_book(attack: str) -> None:
    args = parse(attack)
    config = cli.attack_config(fake_stack(), attack, args, "127.0.0.9")
    assert config.url == "ws://127.0.0.1:9/websocket" and config.source == "127.0.0.9"
    text = repr(config)
    assert "a-book" not in text  # the honest client's (the first seeded book)


def test_queue_config_carries_every_option() -> None:
    args = parse("queue", "--clients", "50", "--payload", "name", "--no-read", "--messages", "3")
    config = cli.attack_config(fake_stack(), "queue", args, "127.0.0.1")
    assert config == attacks.QueueConfig(
        "ws://127.0.0.1:9/websocket", "127.0.0.1", 50, 3, 1_000_000, 15_000, "b-book",
        120.0, "name", False,
    )  # fmt: skip


def test_unknown_attack_is_a_probe_error() -> None:
    with pytest.raises(cli.ProbeError):
        cli.attack_config(fake_stack(), "nope", parse("orm"), "127.0.0.1")


def test_options_from_arguments() -> None:
    options = cli.options_from(parse("fuzz", "--frames", "5000", "--latency-limit-ms", "100"))
    assert options.limits == report.Limits(256 * report.MIB, 100.0, 5000)
    assert options.honest_source == "127.0.0.2"


def test_cpu_share_splits_the_machine() -> None:
    before = {"machine": 100.0, "steal": 1.0, "probe": 5.0, "relay": 10.0, "pg1": 2.0}
    after = {"machine": 120.0, "steal": 1.5, "probe": 9.0, "relay": 24.0, "pg1": 3.0, "pg2": 0.5}
    share = cli._cpu_share(before, after, wall=10.0)
    assert share["relay_cores"] == pytest.approx(1.4)
    assert share["probe_cores"] == pytest.approx(0.4)
    assert share["postgres_cores"] == pytest.approx(0.15)  # a backend that came meanwhile
    assert share["other_cores"] == pytest.approx(0.05)
    assert share["stolen_cores"] == pytest.approx(0.05)
