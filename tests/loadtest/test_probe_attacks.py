"""``loadtest.probe.attacks``: the attackers' messages, and what they report when the
relay is not there at all (each counts its failures and stops on time; the attacker
process reports an error instead of hanging). The attacks against a real relay run in
tests/e2e/test_probe_smoke.py and, at full size, through ``python -m loadtest.probe``.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.probe import attacks


@given(
    st.sampled_from(["param", "name", "sub"]),
    st.integers(min_value=200, max_value=200_000),
    st.integers(min_value=0, max_value=10**6),
)
def test_flood_payloads_have_the_size_asked_and_parse(kind: str, size: int, n: int) -> None:
    data = attacks.flood_payload(kind, f"q0.{n}", size, "lathe")
    assert len(data) == size
    msg = json.loads(data)
    assert msg["id"] == f"q0.{n}"
    assert msg["msg"] == ("sub" if kind == "sub" else "method")


def test_flood_payload_kinds() -> None:
    assert json.loads(attacks.flood_payload("param", "a", 300, "lathe"))["params"][0] == "lathe"
    assert json.loads(attacks.flood_payload("name", "a", 300, "x"))["method"].startswith("probe.x")
    with pytest.raises(ValueError):
        attacks.flood_payload("nope", "a", 300, "x")


def test_guesses_are_meteor_digests_and_differ() -> None:
    one, two = attacks._guess(0, 1), attacks._guess(0, 2)
    assert one["algorithm"] == "sha-256" and len(one["digest"]) == 64
    assert one != two


def _dead_url() -> str:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"ws://127.0.0.1:{port}/websocket"


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def put(self, item: tuple[str, dict[str, Any]]) -> None:
        self.items.append(item)


def test_park_counts_refused_connections() -> None:
    events = Events()
    attacks.child("park", attacks.ParkConfig(_dead_url(), cycles=3), events)
    kinds = [k for k, _ in events.items]
    assert kinds[0] == "engaged" and kinds[-1] == "done"
    summary = events.items[-1][1]
    assert summary["cycles"] == 0
    assert summary["errors"] == {"connect: ConnectionRefusedError": 3}


def test_orm_counts_refused_connections() -> None:
    summary = attacks.run_orm(
        attacks.OrmConfig(_dead_url(), sessions=2, seconds=1), lambda e, d: None
    )
    assert summary["calls"] == 0
    assert summary["errors"] == {"connect: ConnectionRefusedError": 2}


def test_queue_and_login_stop_on_time_without_a_relay() -> None:
    started = time.monotonic()
    queue = attacks.run_queue(attacks.QueueConfig(_dead_url(), seconds=1), lambda e, d: None)
    login = attacks.run_login(attacks.LoginConfig(_dead_url(), seconds=1), lambda e, d: None)
    assert time.monotonic() - started < 10
    assert queue["sent"] == 0 and queue["connect_failures"] >= 1
    assert login["attempts"] == 0 and login["outcomes"]["connect: ConnectionRefusedError"] >= 1


def test_fuzz_without_a_relay_sends_nothing_and_says_so() -> None:
    summary = attacks.run_fuzz(
        attacks.FuzzConfig(_dead_url(), frames=100, connections=2, seconds=1), lambda e, d: None
    )
    assert summary["connected"]["frames"] == 0
    assert summary["connect_failures"] >= 2


def test_the_attacker_process_reports_an_error_instead_of_hanging() -> None:
    events = Events()
    attacks.child("park", "not a config", events)
    kind, data = events.items[-1]
    assert kind == "error" and "AttributeError" in data["traceback"]
