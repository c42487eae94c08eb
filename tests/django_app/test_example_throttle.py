"""The admin login throttle (``example/example/throttle.py``): the client address behind
trusted proxies, and the counters, against a reference model and under concurrency."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

import pytest
from django.core.cache.backends.locmem import LocMemCache
from example.throttle import LoginThrottle, client_address, normalize_username
from hypothesis import given
from hypothesis import strategies as st

_caches = 0


def fresh_cache() -> LocMemCache:
    """A cache of its own (LocMemCache shares storage by name)."""
    global _caches
    _caches += 1
    return LocMemCache(f"throttle-test-{_caches}", {})


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def throttle(**limits: Any) -> LoginThrottle:
    options = {"window": 900, "per_username": 3, "per_address": 5, **limits}
    return LoginThrottle(fresh_cache(), **options)


# -- client_address ---------------------------------------------------------------------

hop = st.from_regex(r"[0-9a-f:.]{1,39}", fullmatch=True)
remote = st.sampled_from(["10.0.0.1", "192.0.2.7", "::1", ""])


@given(remote=remote, header=st.none() | st.text(max_size=80), count=st.integers(-3, 0))
def test_without_trusted_proxies_the_peer_is_the_client(
    remote: str, header: str | None, count: int
) -> None:
    meta = {"REMOTE_ADDR": remote}
    if header is not None:
        meta["HTTP_X_FORWARDED_FOR"] = header
    assert client_address(meta, count) == remote


@given(
    remote=remote,
    forged=st.lists(hop, max_size=5),
    trusted=st.lists(hop, min_size=1, max_size=4),
    spaces=st.sampled_from([",", ", ", " , "]),
)
def test_the_entry_the_outermost_trusted_proxy_wrote_wins(
    remote: str, forged: list[str], trusted: list[str], spaces: str
) -> None:
    """Whatever a client writes to the left of what the N trusted proxies appended does
    not change who it is."""
    meta = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": spaces.join(forged + trusted)}
    assert client_address(meta, len(trusted)) == trusted[0]


@given(remote=remote, hops=st.lists(hop, max_size=3), extra=st.integers(1, 3))
def test_a_header_shorter_than_the_proxy_count_gives_the_peer(
    remote: str, hops: list[str], extra: int
) -> None:
    meta = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": ",".join(hops)} if hops else {}
    meta["REMOTE_ADDR"] = remote
    assert client_address(meta, len(hops) + extra) == remote
    assert client_address({"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": " , "}, 1) == remote


@given(name=st.text(max_size=30))
def test_username_normalization(name: str) -> None:
    once = normalize_username(name)
    assert normalize_username(once) == once
    assert normalize_username(name.upper()) == normalize_username(name.lower()) or (
        name.upper().casefold() != name.lower().casefold()  # e.g. "ß": no case pair
    )
    assert normalize_username(f"  {name}\t") == once


# -- the counters -------------------------------------------------------------------------


def test_the_username_limit() -> None:
    clock = Clock()
    t = throttle(clock=clock)
    for _ in range(3):
        assert t.attempt("10.0.0.1", "admin").allowed  # each then fails: stays counted
    clock.now += 100
    refused = t.attempt("10.0.0.2", "Admin ")  # another address, same user
    assert not refused.allowed and refused.retry_after == 800
    # A refused attempt is not counted and does not move the window.
    clock.now += 500
    assert t.attempt("10.0.0.3", "admin").retry_after == 300
    assert t.attempt("10.0.0.1", "someone-else").allowed


def test_the_address_limit() -> None:
    t = throttle(clock=Clock())
    for n in range(5):
        assert t.attempt("10.0.0.1", f"user{n}").allowed
    refused = t.attempt("10.0.0.1", "user9")
    assert not refused.allowed and refused.retry_after == 900
    assert t.attempt("10.0.0.2", "user9").allowed  # the username itself is not throttled


def test_a_success_gives_its_reservation_back_and_clears_the_username() -> None:
    t = throttle(clock=Clock())
    t.attempt("10.0.0.1", "admin")
    t.attempt("10.0.0.1", "admin")
    t.attempt("10.0.0.1", "admin").succeeded()
    # The username starts again (3 more); the address keeps its 2 failures (3 more).
    for _ in range(3):
        assert t.attempt("10.0.0.1", "admin").allowed
    assert not t.attempt("10.0.0.1", "admin").allowed
    assert not t.attempt("10.0.0.1", "other").allowed  # 2 + 3 = 5 failures from there
    refused = t.attempt("10.0.0.1", "admin")
    refused.succeeded()  # a refused attempt has nothing to give back
    assert not t.attempt("10.0.0.9", "admin").allowed


def test_a_limit_of_zero_turns_that_counter_off() -> None:
    t = throttle(per_username=0, per_address=2, clock=Clock())
    assert t.attempt("10.0.0.1", "admin").allowed
    assert t.attempt("10.0.0.2", "admin").allowed
    assert t.attempt("10.0.0.3", "admin").allowed
    t.attempt("10.0.0.1", "admin").succeeded()  # no username counter to clear
    assert t.attempt("10.0.0.1", "x").allowed  # the address's second failure
    assert not t.attempt("10.0.0.1", "y").allowed
    unlimited = throttle(per_username=0, per_address=0)
    assert all(unlimited.attempt("10.0.0.1", "admin").allowed for _ in range(50))


def test_the_window_ends() -> None:
    t = throttle(window=1, per_username=1, per_address=0)
    assert t.attempt("10.0.0.1", "admin").allowed
    refused = t.attempt("10.0.0.1", "admin")
    assert not refused.allowed and refused.retry_after == 1
    time.sleep(1.1)  # LocMemCache expires on the real clock
    assert t.attempt("10.0.0.1", "admin").allowed


def test_a_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoginThrottle(fresh_cache(), window=0, per_username=1, per_address=1)


def test_the_cache_never_holds_usernames_or_addresses_in_clear() -> None:
    cache = fresh_cache()
    t = LoginThrottle(cache, window=60, per_username=3, per_address=3)
    t.attempt("203.0.113.5", "Some.Admin")
    keys = " ".join(cache._cache)  # type: ignore[attr-defined]
    assert "203.0.113.5" not in keys and "some.admin" not in keys.lower()
    assert hashlib.sha256(b"some.admin").hexdigest() in keys


def test_parallel_guesses_get_exactly_the_limit() -> None:
    """Reserving before the password is checked: 40 guesses at once for one username
    get exactly 3 tries, not one per request that passed a check before any failed."""
    t = throttle(per_username=3, per_address=0)
    barrier = threading.Barrier(40)
    results: list[bool] = []

    def guess() -> None:
        barrier.wait()
        results.append(t.attempt("10.0.0.1", "admin").allowed)

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(results) == {True: 3, False: 37}


events = st.lists(
    st.tuples(
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        st.sampled_from(["admin", "ADMIN", "reader", "eve"]),
        st.booleans(),  # the password was right
    ),
    max_size=60,
)


@given(events=events, per_username=st.integers(0, 4), per_address=st.integers(0, 6))
def test_matches_a_reference_model(
    events: list[tuple[str, str, bool]], per_username: int, per_address: int
) -> None:
    """Within one window: an attempt is allowed while both its counters are under their
    limits; failures count, a success clears its username and does not count for its
    address, a refusal counts nowhere."""
    t = throttle(per_username=per_username, per_address=per_address, clock=Clock())
    by_user: Counter[str] = Counter()
    by_address: Counter[str] = Counter()
    for address, username, right in events:
        user = username.casefold()
        expected = (per_username <= 0 or by_user[user] < per_username) and (
            per_address <= 0 or by_address[address] < per_address
        )
        attempt = t.attempt(address, username)
        assert attempt.allowed == expected
        if not expected:
            assert 1 <= attempt.retry_after <= 900
            continue
        if right:
            attempt.succeeded()
            by_user[user] = 0
        else:
            by_user[user] += 1
            by_address[address] += 1
