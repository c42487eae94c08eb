"""``loadtest/reconnect.py``: when the storm comes (property test against a brute-force
model), how a reconnect is judged, and a real storm against the e2e relay: every user's
socket is cut on the same boundary and each comes back resumed, its cache intact.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.reconnect import RESUME, DroppableClient, StormScenario, next_storm
from tests.fixtures.relays import RelayProcess

Reports = list[tuple[str, float, int, BaseException | None]]


@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
    st.sampled_from([0.5, 1.0, 2.0, 10.0, 60.0]),
)
def test_the_next_storm_is_the_first_boundary_after_now(now: float, period: float) -> None:
    boundary = next_storm(now, period)
    assert boundary > now
    assert boundary - now <= period
    # Brute force: the boundaries are the multiples of the period.
    k = round(boundary / period)
    assert math.isclose(boundary, k * period, rel_tol=1e-12)
    assert (k - 1) * period <= now


@pytest.mark.parametrize("period", [0.0, -1.0, float("nan")])
def test_a_period_must_be_positive(period: float) -> None:
    with pytest.raises(ValueError, match="period must be positive"):
        next_storm(1.0, period)


def test_a_storm_on_a_connection_that_never_opened_reconnects_and_reports() -> None:
    reports: Reports = []
    # Nothing listens on port 9 (discard) of loopback here: the connect fails at once.
    storm = StormScenario(
        "http://127.0.0.1:9", sockjs=False, report=lambda *a: reports.append(a), timeout=2
    )
    assert storm.connect() is False
    storm.storm()  # no client yet: tries to connect again, and reports it
    assert [name for name, *_ in reports] == ["connect", "connect"]
    assert all(exc is not None for *_, exc in reports)


@pytest.mark.e2e
def test_a_storm_of_users_all_resume(relay_server: RelayProcess) -> None:
    reports: Reports = []
    lock = threading.Lock()

    def report(name: str, ms: float, length: int, exc: BaseException | None) -> None:
        with lock:
            reports.append((name, ms, length, exc))

    users = [StormScenario(relay_server.url, sockjs=False, report=report) for _ in range(6)]
    try:
        assert all(user.connect() for user in users)
        sessions = [user.client.session for user in users if user.client]
        docs = [user.client.docs("bookstore.book") for user in users if user.client]
        # Everybody at once, as on a storm boundary.
        threads = [threading.Thread(target=user.storm) for user in users]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - start < 30
        assert [name for name, *_ in reports] == [RESUME] * len(users), reports
        assert [exc for *_, exc in reports] == [None] * len(users), reports
        for user, session, before in zip(users, sessions, docs, strict=True):
            client = user.client
            assert isinstance(client, DroppableClient)
            assert client.session == session  # resumed: the same session id
            assert client.counts() == (1, 1, 0)
            assert client.docs("bookstore.book") == before
            assert client.violations == []
    finally:
        for user in users:
            user.close()
