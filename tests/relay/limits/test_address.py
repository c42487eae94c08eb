"""relay.limits.address: the client address behind trusted proxies, and per-address limits.

``client_address`` is checked against Meteor's own algorithm (``_clientAddress`` in
``ddp-server/livedata_server.js``: trim, split on commas with the spaces around them, take
the Nth entry from the right) for any header, and never returns anything that is not one
of its inputs. The per-address tables hold their limits under any sequence of opens,
closes and attempts, and stay as small as the live entries (bounded by their caps).
"""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.limits.address import (
    MAX_ADDRESS_CHARS,
    MAX_FORWARDED_FOR_CHARS,
    UNKNOWN,
    AddressBudget,
    AddressRate,
    ConnectionsPerAddress,
    address_key,
    client_address,
)
from relay.limits.ratelimit import too_many_requests_reason

PROPERTY = settings(max_examples=300, deadline=None)


def meteor_client_address(
    remote_addr: str | None, forwarded_for: str | None, count: int
) -> str | None:
    """``Session._clientAddress`` as Meteor's JavaScript does it (for headers without the
    few characters whose whitespace class differs between JS and Python)."""
    if count == 0:
        return remote_addr
    if forwarded_for is None:
        return None
    entries = re.split(r"\s*,\s*", forwarded_for.strip())
    if count > len(entries):
        return None
    return entries[len(entries) - count]


# -- client_address ---------------------------------------------------------------------------


def test_without_trusted_proxies_the_socket_address_is_the_clients() -> None:
    assert client_address("203.0.113.7", "198.51.100.1", 0) == "203.0.113.7"
    assert client_address("203.0.113.7", None, 0) == "203.0.113.7"
    assert client_address("", None, 0) is None  # a socket without a peer address


@pytest.mark.parametrize(
    ("header", "count", "expected"),
    [
        ("198.51.100.1", 1, "198.51.100.1"),
        ("6.6.6.6, 198.51.100.1", 1, "198.51.100.1"),  # the client wrote the first entry
        ("6.6.6.6 ,198.51.100.1 , 10.0.0.2", 2, "198.51.100.1"),
        ("  198.51.100.1 , 10.0.0.2  ", 2, "198.51.100.1"),
        ("198.51.100.1, 10.0.0.2", 3, None),  # fewer entries than proxies (Meteor: null)
        ("2001:db8::1, 10.0.0.2", 2, "2001:db8::1"),
        ("a,,b", 2, None),  # an empty entry is no address (Meteor would return "")
        ("", 1, None),
    ],
)
def test_with_n_trusted_proxies_the_nth_entry_from_the_right(
    header: str, count: int, expected: str | None
) -> None:
    assert client_address("10.0.0.9", header, count) == expected


def test_with_trusted_proxies_but_no_header_there_is_no_address() -> None:
    # A request that bypassed the proxies: its socket address is not the client's either.
    assert client_address("10.0.0.9", None, 1) is None


def test_negative_proxy_counts_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        client_address("10.0.0.9", "1.2.3.4", -1)


def test_an_oversized_entry_is_no_address() -> None:
    long_entry = "x" * (MAX_ADDRESS_CHARS + 1)
    assert client_address("10.0.0.9", f"{long_entry}, 10.0.0.2", 2) is None
    assert client_address(long_entry, None, 0) is None
    fits = "y" * MAX_ADDRESS_CHARS
    assert client_address("10.0.0.9", f"{fits}, 10.0.0.2", 2) == fits


def test_only_the_right_end_of_a_huge_header_is_read() -> None:
    padding = ",".join(["6.6.6.6"] * 5000)  # far past MAX_FORWARDED_FOR_CHARS
    assert len(padding) > MAX_FORWARDED_FOR_CHARS
    header = f"{padding}, 198.51.100.1, 10.0.0.2"
    assert client_address("10.0.0.9", header, 2) == "198.51.100.1"
    # An entry the truncation may have cut is no address rather than a fragment.
    one_giant = "1" * (MAX_FORWARDED_FOR_CHARS + 10) + ", 10.0.0.2"
    assert client_address("10.0.0.9", one_giant, 2) is None
    assert client_address("10.0.0.9", one_giant, 1) == "10.0.0.2"


HEADER_CHARS = st.text(alphabet=string.ascii_letters + string.digits + ".:, \t", max_size=80)


@PROPERTY
@given(
    remote=st.one_of(st.none(), st.text(max_size=20)),
    header=st.one_of(st.none(), HEADER_CHARS),
    count=st.integers(0, 6),
)
def test_client_address_is_meteors_except_for_empty_addresses(
    remote: str | None, header: str | None, count: int
) -> None:
    meteor = meteor_client_address(remote, header, count)
    assert client_address(remote, header, count) == (meteor or None)


@PROPERTY
@given(
    remote=st.one_of(st.none(), st.text(max_size=300)),
    header=st.one_of(st.none(), st.text(max_size=400), HEADER_CHARS),
    count=st.integers(0, 8),
)
def test_client_address_never_invents_an_address(
    remote: str | None, header: str | None, count: int
) -> None:
    found = client_address(remote, header, count)
    if found is None:
        return
    assert 0 < len(found) <= MAX_ADDRESS_CHARS
    if count == 0:
        assert found == remote
    else:
        assert header is not None
        assert found in [entry.strip() for entry in header.split(",")]


# -- address_key ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "prefix", "key"),
    [
        ("203.0.113.7", 64, "203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8::1", 128, "2001:db8::1/128"),
        ("::ffff:203.0.113.7", 64, "203.0.113.7"),  # IPv4-mapped: the IPv4 client
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("unknown", 64, "unknown"),  # not an IP: counted verbatim
        (None, 64, UNKNOWN),
    ],
)
def test_address_keys(address: str | None, prefix: int, key: str) -> None:
    assert address_key(address, prefix) == key


def test_address_keys_are_bounded_and_the_prefix_checked() -> None:
    assert len(address_key("z" * 10_000)) == MAX_ADDRESS_CHARS
    for bad in (0, 129, -1):
        with pytest.raises(ValueError, match="ipv6_prefix"):
            address_key("::1", bad)


# -- ConnectionsPerAddress --------------------------------------------------------------------


def test_connections_past_the_limit_are_refused_until_one_closes() -> None:
    connections = ConnectionsPerAddress(2)
    assert connections.try_open("198.51.100.1") and connections.try_open("198.51.100.1")
    assert not connections.try_open("198.51.100.1")
    assert connections.try_open("198.51.100.2")  # another address is not affected
    assert connections.open_count("198.51.100.1") == 2  # the refused one was not counted
    connections.closed("198.51.100.1")
    assert connections.try_open("198.51.100.1")
    assert not connections.try_open("198.51.100.1")


def test_an_ipv6_host_cannot_rotate_through_its_network() -> None:
    connections = ConnectionsPerAddress(2)
    assert connections.try_open("2001:db8::1") and connections.try_open("2001:db8::2")
    assert not connections.try_open("2001:db8::ffff")
    assert connections.try_open("2001:db8:0:1::1")  # the next /64 is someone else
    per_address = ConnectionsPerAddress(2, ipv6_prefix=128)
    assert all(per_address.try_open(f"2001:db8::{i}") for i in range(1, 10))


def test_clients_without_an_address_are_limited_together() -> None:
    connections = ConnectionsPerAddress(1)
    assert connections.try_open(None)
    assert not connections.try_open(None)
    assert connections.open_count(None) == 1


def test_entries_go_when_their_last_connection_closes_and_unpaired_closes_are_ignored() -> None:
    connections = ConnectionsPerAddress(5)
    for _ in range(3):
        connections.try_open("198.51.100.1")
    assert len(connections) == 1
    for _ in range(3):
        connections.closed("198.51.100.1")
    assert len(connections) == 0
    connections.closed("198.51.100.1")  # one close too many
    connections.closed("198.51.100.9")  # never opened
    assert len(connections) == 0 and connections.open_count("198.51.100.1") == 0
    assert connections.try_open("198.51.100.1")


def test_a_zero_limit_means_no_limit_and_no_table() -> None:
    connections = ConnectionsPerAddress(0)
    assert all(connections.try_open("198.51.100.1") for _ in range(10_000))
    assert len(connections) == 0
    connections.closed("198.51.100.1")


def test_connection_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="limit"):
        ConnectionsPerAddress(-1)
    with pytest.raises(ValueError, match="ipv6_prefix"):
        ConnectionsPerAddress(5, ipv6_prefix=0)


ADDRESSES = st.sampled_from(["198.51.100.1", "198.51.100.2", "2001:db8::1", "2001:db8::2", None])


@PROPERTY
@given(
    ops=st.lists(st.tuples(st.booleans(), ADDRESSES, st.integers(0, 50)), max_size=200),
    limit=st.integers(1, 4),
)
def test_open_connections_never_pass_the_limit_and_the_table_empties(
    ops: list[tuple[bool, str | None, int]], limit: int
) -> None:
    connections = ConnectionsPerAddress(limit)
    held: list[str | None] = []  # connections the table accepted, still open
    for opening, address, pick in ops:
        if opening:
            before = connections.open_count(address)
            accepted = connections.try_open(address)
            assert accepted == (before < limit)
            if accepted:
                held.append(address)
        elif held:
            connections.closed(held.pop(pick % len(held)))
        per_key = Counter(address_key(a) for a in held)
        assert all(n <= limit for n in per_key.values())
        assert len(connections) == len(per_key)
    for address in held:
        connections.closed(address)
    assert len(connections) == 0


# -- AddressBudget ----------------------------------------------------------------------------


def test_attempts_past_the_budget_are_refused_until_the_window_ends() -> None:
    logins = AddressBudget(3, 60.0, label="login-address")
    for t in (0.0, 1.0, 2.0):
        assert logins.check("198.51.100.1", now=t) is None
    rejection = logins.check("198.51.100.1", now=15.0)
    assert rejection is not None
    assert rejection.time_to_reset_ms == 45_000
    assert rejection.reason == too_many_requests_reason(45_000)
    assert rejection.label == "login-address" and rejection.rule_id is None
    assert rejection.meteor_error()["details"] == {"timeToReset": 45_000}
    assert logins.check("198.51.100.2", now=15.0) is None  # each address has its own
    assert logins.check("198.51.100.1", now=60.0) is not None  # refused ones counted too
    assert logins.check("198.51.100.1", now=60.001) is None  # a new window


def test_windows_are_per_address_opened_by_their_first_attempt() -> None:
    budget = AddressBudget(1, 10.0)
    assert budget.check("a", now=0.0) is None
    assert budget.check("b", now=8.0) is None
    rejection = budget.check("b", now=9.0)
    assert rejection is not None and rejection.time_to_reset_ms == 9_000


def test_finished_windows_are_pruned_as_attempts_arrive() -> None:
    budget = AddressBudget(5, 10.0)
    for i in range(100):
        budget.check(f"10.0.{i // 256}.{i % 256}", now=i * 0.01)
    assert len(budget) == 100
    budget.check("10.9.9.9", now=10.5)  # the first 50 windows are over
    assert len(budget) == 51
    budget.prune(now=100.0)
    assert len(budget) == 0


def test_past_max_addresses_new_addresses_share_one_budget() -> None:
    budget = AddressBudget(2, 10.0, max_addresses=3)
    for address in ("a", "b", "c"):
        assert budget.check(address, now=0.0) is None
    assert budget.check("d", now=0.0) is None
    assert budget.check("e", now=0.0) is None
    rejection = budget.check("f", now=4.0)
    assert rejection is not None and rejection.time_to_reset_ms == 6_000
    assert budget.check("a", now=4.0) is None  # tracked addresses keep their own budget
    assert len(budget) == 3
    # Once the tracked windows are over, new addresses get entries of their own again.
    assert budget.check("f", now=10.5) is None and budget.check("f", now=10.5) is None
    assert budget.check("f", now=10.5) is not None
    assert budget.check("g", now=10.5) is None


def test_a_zero_budget_means_no_limit_and_no_table() -> None:
    budget = AddressBudget(0, 60.0)
    assert all(budget.check("198.51.100.1", now=0.0) is None for _ in range(1000))
    assert len(budget) == 0


@pytest.mark.parametrize(
    ("limit", "window", "max_addresses", "prefix", "message"),
    [
        (-1, 60.0, 10, 64, "limit"),
        (1, 0.0, 10, 64, "window"),
        (1, float("inf"), 10, 64, "window"),
        (1, float("nan"), 10, 64, "window"),
        (1, 60.0, 0, 64, "max_addresses"),
        (1, 60.0, 10, 200, "ipv6_prefix"),
    ],
)
def test_budgets_that_cannot_work_are_refused(
    limit: int, window: float, max_addresses: int, prefix: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        AddressBudget(limit, window, max_addresses=max_addresses, ipv6_prefix=prefix)


@PROPERTY
@given(
    attempts=st.lists(st.tuples(ADDRESSES, st.floats(0, 5)), max_size=200),
    limit=st.integers(1, 5),
    window=st.floats(0.5, 20),
)
def test_no_address_passes_more_than_the_budget_in_one_of_its_windows(
    attempts: list[tuple[str | None, float]], limit: int, window: float
) -> None:
    """With room for every address, each address's window (from its first attempt, for
    ``window`` seconds) passes at most ``limit`` attempts, and exactly the first ones."""
    budget = AddressBudget(limit, window)
    opened: dict[str, float] = {}
    passed: Counter[tuple[str, float]] = Counter()
    now = 0.0
    for address, delta in attempts:
        now += delta
        key = address_key(address)
        if key not in opened or now - opened[key] > window:
            opened[key] = now
        allowed = budget.check(address, now) is None
        passed_before = passed[(key, opened[key])]
        assert allowed == (passed_before < limit)
        if allowed:
            passed[(key, opened[key])] += 1
    assert all(n <= limit for n in passed.values())


@PROPERTY
@given(
    attempts=st.lists(st.tuples(st.text(max_size=8), st.floats(0, 3)), max_size=300),
    cap=st.integers(1, 10),
)
def test_a_budget_never_tracks_more_than_max_addresses(
    attempts: list[tuple[str, float]], cap: int
) -> None:
    budget = AddressBudget(3, 5.0, max_addresses=cap)
    now = 0.0
    for address, delta in attempts:
        now += delta
        rejection = budget.check(address, now)
        assert rejection is None or 0 <= rejection.time_to_reset_ms <= 5000
        assert len(budget) <= cap
    budget.prune(now + 5.001)
    assert len(budget) == 0


# -- AddressRate ------------------------------------------------------------------------------


def test_an_address_within_its_rate_is_never_paused() -> None:
    rate = AddressRate(1000, 4000)
    assert rate.take("10.0.0.1", 4000, now=0.0) == 0.0  # the burst
    assert rate.take("10.0.0.1", 500, now=1.0) == 0.0  # 1000 refilled
    assert rate.take("10.0.0.2", 4000, now=1.0) == 0.0  # another address has its own


def test_an_address_over_its_rate_is_paused_for_its_debt() -> None:
    rate = AddressRate(1000, 1000)
    assert rate.take("10.0.0.1", 3000, now=0.0) == 2.0  # 2000 bytes over: 2 s
    assert rate.take("10.0.0.1", 0, now=1.0) == 1.0
    assert rate.take("10.0.0.1", 0, now=2.0) == 0.0


@given(st.lists(st.tuples(st.integers(0, 50_000), st.floats(0, 2)), max_size=200))
def test_honouring_the_pauses_keeps_an_address_at_its_rate(steps: list[tuple[int, float]]) -> None:
    # A reader that waits what take() says never gets more than burst + rate * elapsed.
    rate = AddressRate(10_000, 20_000)
    now, total = 0.0, 0
    for size, gap in steps:
        now += gap
        total += size
        now += rate.take("a", size, now)
        assert total <= 20_000 + 10_000 * now + 1e-6


def test_addresses_are_bounded() -> None:
    rate = AddressRate(1, 1, max_addresses=3)
    for n in range(10):
        rate.take(f"10.0.0.{n}", 5, now=0.0)
    assert len(rate) <= 3


def test_no_rate_means_no_limit() -> None:
    assert AddressRate(0, 0).take("a", 10**9, now=0.0) == 0.0
