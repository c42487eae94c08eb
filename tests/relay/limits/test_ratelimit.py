"""relay.limits.ratelimit: Meteor's DDPRateLimiter, rule by rule, window by window.

The examples follow ``rate-limit.js`` and ``ddp-rate-limiter.js`` (reference 2.10): the
counter goes up before the check, ``limit`` events pass per window, the window is the
rule's and resets lazily once more than ``interval_ms`` has passed, and the error is
Meteor's to the character. The properties hold for any sequence of events and times: no
bucket passes more than ``limit`` events in one window (also past the bucket cap), a
quiet interval gives every bucket its whole budget back, and a rule never holds more than
its cap of buckets whatever names and ids a client rotates through.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.limits.ratelimit import (
    ACCOUNTS_METHODS,
    DEFAULT_ACCOUNTS_RULE,
    Event,
    RateLimiter,
    Rejection,
    Rule,
    RuleId,
    too_many_requests_reason,
)

PROPERTY = settings(max_examples=300, deadline=None)


def call(
    name: str = "login",
    *,
    connection: str = "c1",
    user: str | None = None,
    address: str | None = "10.0.0.1",
    kind: str = "method",
) -> Event:
    return Event(kind, name, user, connection, address)  # type: ignore[arg-type]


def accounts_limiter() -> tuple[RateLimiter, RuleId]:
    limiter = RateLimiter()
    return limiter, limiter.add_rule(DEFAULT_ACCOUNTS_RULE)


# -- the error -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ms", "seconds"), [(10_000, 10), (9_001, 10), (9_000, 9), (1, 1), (1000, 1), (0, 0)]
)
def test_the_reason_rounds_the_wait_up_to_whole_seconds(ms: int, seconds: int) -> None:
    assert too_many_requests_reason(ms) == (
        "Error, too many requests. Please slow down. "
        f"You must wait {seconds} seconds before trying again."
    )


def test_a_rejection_is_meteors_error_object_key_for_key() -> None:
    rejection = Rejection.after(7500, label="accounts")
    reason = (
        "Error, too many requests. Please slow down. You must wait 8 seconds before trying again."
    )
    assert rejection.error == "too-many-requests"
    assert rejection.reason == reason
    assert rejection.details == {"timeToReset": 7500}
    error = rejection.meteor_error()
    assert error == {
        "isClientSafe": True,
        "error": "too-many-requests",
        "reason": reason,
        "details": {"timeToReset": 7500},
        "message": f"{reason} [too-many-requests]",
        "errorType": "Meteor.Error",
    }
    assert list(error) == ["isClientSafe", "error", "reason", "details", "message", "errorType"]


# -- Meteor's default accounts rule ----------------------------------------------------------


def test_the_default_accounts_rule_is_meteors() -> None:
    rule = DEFAULT_ACCOUNTS_RULE
    assert (rule.limit, rule.interval_ms) == (5, 10_000)
    assert sorted(ACCOUNTS_METHODS) == ["createUser", "forgotPassword", "login", "resetPassword"]
    assert rule.matches(call("login")) and rule.matches(call("forgotPassword"))
    assert not rule.matches(call("logout"))
    assert not rule.matches(call("login", kind="subscription"))
    # Per connection and method name (and type, which the rule fixes).
    assert rule.bucket(call("login", connection="c9", user="u1")) == ("method", "login", "c9")


def test_the_sixth_login_within_ten_seconds_is_refused_with_the_time_left() -> None:
    limiter, rule_id = accounts_limiter()
    for i in range(5):
        assert limiter.check(call(), now=100.0 + i * 0.5) is None
    rejection = limiter.check(call(), now=102.5)
    assert rejection == Rejection(
        7500, too_many_requests_reason(7500), rule_id=rule_id, label="accounts"
    )
    # Refused calls count too: the client stays refused until the window ends.
    assert limiter.check(call(), now=109.9) is not None
    assert limiter.check(call(), now=110.0) is not None  # exactly the interval: not yet over
    assert limiter.check(call(), now=110.001) is None  # a new window, opened by this call
    for _ in range(4):
        assert limiter.check(call(), now=110.5) is None
    assert limiter.check(call(), now=110.5) is not None


def test_the_accounts_budget_is_per_connection_and_per_method() -> None:
    limiter, _ = accounts_limiter()
    for _ in range(5):
        assert limiter.check(call("login"), now=0.0) is None
    assert limiter.check(call("login"), now=0.0) is not None
    assert limiter.check(call("createUser"), now=0.0) is None  # another method's bucket
    assert limiter.check(call("login", connection="c2"), now=0.0) is None  # another connection
    # The user and the address do not split buckets: logging in as others does not help.
    assert limiter.check(call("login", user="u2", address="10.9.9.9"), now=0.0) is not None


def test_calls_no_rule_matches_are_never_refused_and_create_no_bucket() -> None:
    limiter, rule_id = accounts_limiter()
    for i in range(1000):
        assert limiter.check(call(f"m{i}", connection=f"c{i}"), now=0.0) is None
        assert limiter.check(call("login", kind="subscription"), now=0.0) is None
    assert limiter.bucket_count(rule_id) == 0


# -- windows --------------------------------------------------------------------------------


def test_each_bucket_has_its_own_window() -> None:
    # Not Meteor's shared window per rule: there, another connection's first call decides
    # when this one's count resets, and a sixth login within 10 s could pass.
    limiter = RateLimiter()
    rule_id = limiter.add_rule(Rule(connection_id=lambda _: True, limit=1, interval_ms=1000))
    assert limiter.check(call(connection="a"), now=0.0) is None  # a's window: 0..1
    assert limiter.check(call(connection="b"), now=0.9) is None  # b's window: 0.9..1.9
    rejection = limiter.check(call(connection="b"), now=0.9)
    assert rejection is not None and rejection.time_to_reset_ms == 1000
    assert limiter.bucket_count(rule_id) == 2
    assert limiter.check(call(connection="a"), now=1.5) is None  # a's renewed
    still = limiter.check(call(connection="b"), now=1.5)  # b's still running
    assert still is not None and still.time_to_reset_ms == 400
    limiter.prune(3.0)
    assert limiter.bucket_count(rule_id) == 0


def test_the_sixth_call_within_the_interval_is_refused_whatever_came_before() -> None:
    limiter = RateLimiter([DEFAULT_ACCOUNTS_RULE])
    for t in range(9):  # other connections' logins, spread out
        assert limiter.check(call("login", connection=f"c{t}"), now=float(t)) is None
    outcomes = [limiter.check(call("login", connection="me"), now=8.5 + i) for i in range(6)]
    assert outcomes[:5] == [None] * 5 and outcomes[5] is not None


def test_wait_is_rounded_up_to_a_whole_millisecond_and_never_exceeds_the_interval() -> None:
    limiter = RateLimiter()
    limiter.add_rule(Rule(name="x", limit=0, interval_ms=1000))
    first = limiter.check(call("x"), now=5.0001)
    assert first is not None and first.time_to_reset_ms == 1000  # 999.9 ms, rounded up
    # A clock earlier than the window's start (not monotonic) waits the interval, no more.
    earlier = limiter.check(call("x"), now=1.0)
    assert earlier is not None and earlier.time_to_reset_ms == 1000


def test_prune_drops_finished_windows_and_the_next_event_opens_a_new_one() -> None:
    limiter = RateLimiter()
    rule_id = limiter.add_rule(Rule(connection_id=lambda _: True, limit=1, interval_ms=1000))
    for i in range(50):
        limiter.check(call(connection=f"c{i}"), now=0.0)
    limiter.prune(now=0.5)
    assert limiter.bucket_count(rule_id) == 50  # the window is not over
    limiter.prune(now=1.5)
    assert limiter.bucket_count(rule_id) == 0
    assert limiter.check(call(connection="c0"), now=3.0) is None
    rejection = limiter.check(call(connection="c0"), now=3.2)
    assert rejection is not None and rejection.time_to_reset_ms == 800  # opened at 3.0


# -- rules: matchers, limits, messages ---------------------------------------------------------


def test_matchers_value_collection_and_callable() -> None:
    rule = Rule(
        type="subscription",
        name=["books", "authors"],
        user_id={None},  # anonymous sessions only
        client_address=lambda address: address is not None and address.startswith("10."),
    )
    sub = call("books", kind="subscription", address="10.1.2.3")
    assert rule.matches(sub)
    assert not rule.matches(call("books", kind="method", address="10.1.2.3"))
    assert not rule.matches(call("users", kind="subscription", address="10.1.2.3"))
    assert not rule.matches(call("books", kind="subscription", user="u1", address="10.1.2.3"))
    assert not rule.matches(call("books", kind="subscription", address="192.168.0.1"))
    assert not rule.matches(call("books", kind="subscription", address=None))
    assert rule.bucket(sub) == ("subscription", "books", None, "10.1.2.3")


def test_a_callable_matcher_counts_by_truthiness() -> None:
    rule = Rule(name=lambda name: len(name or ""))  # a number, not a bool
    assert rule.matches(call("x")) and not rule.matches(call(""))


def test_a_rule_without_matchers_has_one_bucket_for_everything() -> None:
    limiter = RateLimiter()
    rule_id = limiter.add_rule(Rule(limit=2))
    assert limiter.check(call("a", connection="1"), now=0.0) is None
    assert limiter.check(call("b", connection="2", kind="subscription"), now=0.0) is None
    assert limiter.check(call("c", connection="3"), now=0.0) is not None
    assert limiter.bucket_count(rule_id) == 1


def test_collections_are_frozen_so_rules_are_hashable_and_stable() -> None:
    names = ["a", "b"]
    rule = Rule(name=names)
    names.append("c")
    assert rule.name == frozenset({"a", "b"})
    assert not rule.matches(call("c"))
    assert hash(rule) == hash(Rule(name=("b", "a")))
    assert rule == Rule(name={"a", "b"})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": -1}, ValueError),
        ({"limit": True}, ValueError),
        ({"limit": 1.5}, ValueError),
        ({"interval_ms": 0}, ValueError),
        ({"interval_ms": -5}, ValueError),
        ({"interval_ms": float("inf")}, ValueError),
        ({"interval_ms": float("nan")}, ValueError),
        ({"type": "methods"}, ValueError),
        ({"type": ["method", "sub"]}, ValueError),
        ({"name": 5}, TypeError),
        ({"name": b"login"}, TypeError),
        ({"connection_id": {"c1": True}}, TypeError),
    ],
)
def test_rules_that_cannot_work_are_refused(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        Rule(**kwargs)


def test_a_limit_of_zero_refuses_everything_it_matches() -> None:
    limiter = RateLimiter([Rule(name="admin.purge", limit=0)])
    assert limiter.check(call("admin.purge"), now=0.0) is not None
    assert limiter.check(call("other"), now=0.0) is None


def test_the_longest_wait_wins_with_its_rules_message_and_label() -> None:
    limiter = RateLimiter()
    short = limiter.add_rule(Rule(name="x", limit=1, interval_ms=1000, label="short"))
    long = limiter.add_rule(
        Rule(
            name="x",
            limit=1,
            interval_ms=60_000,
            label="long",
            message=lambda ms: f"slow down for {ms} ms",
        )
    )
    limiter.add_rule(Rule(name="x", limit=100, interval_ms=120_000, label="generous"))
    assert limiter.check(call("x"), now=0.0) is None
    rejection = limiter.check(call("x"), now=0.25)
    assert rejection == Rejection(59_750, "slow down for 59750 ms", rule_id=long, label="long")
    # Once the long rule is removed the short one answers, with Meteor's reason.
    assert limiter.remove_rule(long) is True
    rejection = limiter.check(call("x"), now=0.5)
    assert rejection is not None and rejection.rule_id == short
    assert rejection.reason == too_many_requests_reason(500)


def test_a_fixed_message_replaces_the_reason_but_not_the_details() -> None:
    limiter = RateLimiter([Rule(name="x", limit=0, message="No.")])
    rejection = limiter.check(call("x"), now=0.0)
    assert rejection is not None and rejection.reason == "No."
    assert rejection.meteor_error()["details"] == {"timeToReset": 1000}


def test_removing_a_rule_removes_its_limit() -> None:
    limiter, rule_id = accounts_limiter()
    for _ in range(6):
        limiter.check(call(), now=0.0)
    assert limiter.remove_rule(rule_id) is True
    assert limiter.remove_rule(rule_id) is False
    assert limiter.check(call(), now=0.0) is None
    assert dict(limiter.rules) == {}
    with pytest.raises(KeyError):
        limiter.bucket_count(rule_id)


def test_rules_lists_what_was_added_by_id() -> None:
    limiter = RateLimiter([DEFAULT_ACCOUNTS_RULE])
    extra = Rule(name="x")
    extra_id = limiter.add_rule(extra)
    assert list(limiter.rules.values()) == [DEFAULT_ACCOUNTS_RULE, extra]
    assert limiter.rules[extra_id] is extra


def test_an_applications_failing_matcher_propagates() -> None:
    def broken(_value: str | None) -> bool:
        raise RuntimeError("matcher bug")

    limiter = RateLimiter([Rule(name=broken)])
    with pytest.raises(RuntimeError, match="matcher bug"):
        limiter.check(call("x"), now=0.0)


def test_the_bucket_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_buckets_per_rule"):
        RateLimiter(max_buckets_per_rule=0)


# -- bounded memory ---------------------------------------------------------------------------


def test_rotating_ids_past_the_cap_share_one_overflow_bucket() -> None:
    limiter = RateLimiter(max_buckets_per_rule=3)
    rule_id = limiter.add_rule(Rule(connection_id=lambda _: True, limit=2))
    for i in range(3):
        assert limiter.check(call(connection=f"c{i}"), now=0.0) is None
    # New keys past the cap are counted together: two pass, then every new key is refused.
    assert limiter.check(call(connection="x1"), now=0.0) is None
    assert limiter.check(call(connection="x2"), now=0.0) is None
    assert limiter.check(call(connection="x3"), now=0.0) is not None
    assert limiter.check(call(connection="x1"), now=0.0) is not None
    # Keys holding a bucket keep their own budget.
    assert limiter.check(call(connection="c0"), now=0.0) is None
    assert limiter.bucket_count(rule_id) == 4  # three buckets and the overflow
    # The next window starts empty: the first keys to come get their own buckets.
    assert limiter.check(call(connection="x3"), now=2.0) is None
    assert limiter.bucket_count(rule_id) == 1


# -- properties -------------------------------------------------------------------------------

NAMES = st.sampled_from(["login", "createUser", "x", "y"])
CONNECTIONS = st.sampled_from(["c1", "c2", "c3", "c4", "c5"])
EVENTS = st.builds(call, NAMES, connection=CONNECTIONS)


@PROPERTY
@given(
    events=st.lists(st.tuples(EVENTS, st.floats(0, 0.999)), max_size=80),
    limit=st.integers(0, 6),
    cap=st.integers(1, 6),
)
def test_within_one_window_no_bucket_passes_more_than_the_limit(
    events: list[tuple[Event, float]], limit: int, cap: int
) -> None:
    """All events inside one interval after the first: each bucket passes at most ``limit``
    events, exactly ``min(n, limit)`` while the rule holds fewer buckets than its cap."""
    limiter = RateLimiter(max_buckets_per_rule=cap)
    rule = Rule(name=lambda _: True, connection_id=lambda _: True, limit=limit)
    limiter.add_rule(rule)
    passed: Counter[tuple[str | None, ...]] = Counter()
    seen: Counter[tuple[str | None, ...]] = Counter()
    for event, offset in sorted(events, key=lambda pair: pair[1]):
        key = rule.bucket(event)
        seen[key] += 1
        if limiter.check(event, now=1000.0 + offset) is None:
            passed[key] += 1
    assert all(n <= limit for n in passed.values())
    if len(seen) <= cap:
        assert passed == Counter({k: min(n, limit) for k, n in seen.items() if limit})
    # Past the cap, every key beyond it shares one budget: the total stays bounded.
    assert sum(passed.values()) <= (cap + 1) * limit


@PROPERTY
@given(
    history=st.lists(st.tuples(EVENTS, st.floats(0, 30)), max_size=60),
    burst=EVENTS,
    limit=st.integers(1, 5),
    interval_ms=st.integers(1, 10_000),
)
def test_a_quiet_interval_gives_every_bucket_its_whole_budget_back(
    history: list[tuple[Event, float]], burst: Event, limit: int, interval_ms: int
) -> None:
    limiter = RateLimiter([DEFAULT_ACCOUNTS_RULE, Rule(name="x", limit=limit)])
    limiter.add_rule(Rule(connection_id=lambda _: True, limit=limit, interval_ms=interval_ms))
    now = 0.0
    for event, delta in history:
        now += delta
        limiter.check(event, now)
    now += max(interval_ms, 10_000) / 1000 + 0.001
    budget = min(limit, 5) if burst.name in ACCOUNTS_METHODS else limit
    for _ in range(budget):
        assert limiter.check(burst, now) is None
    rejection = limiter.check(burst, now)
    assert rejection is not None
    assert 0 <= rejection.time_to_reset_ms <= max(interval_ms, 10_000)


@PROPERTY
@given(
    events=st.lists(
        st.tuples(st.text(max_size=6), st.text(max_size=6), st.floats(0, 2)), max_size=200
    ),
    cap=st.integers(1, 10),
)
def test_a_rule_never_holds_more_buckets_than_its_cap(
    events: list[tuple[str, str, float]], cap: int
) -> None:
    limiter = RateLimiter(max_buckets_per_rule=cap)
    rule_id = limiter.add_rule(
        Rule(name=lambda _: True, connection_id=lambda _: True, limit=3, interval_ms=1000)
    )
    now = 0.0
    for name, connection, delta in events:
        now += delta
        rejection = limiter.check(call(name, connection=connection), now)
        assert rejection is None or 0 <= rejection.time_to_reset_ms <= 1000
        assert limiter.bucket_count(rule_id) <= cap + 1
