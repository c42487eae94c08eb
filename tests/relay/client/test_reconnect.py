"""Tests for relay.client.reconnect: Meteor's Retry policy and the resume decisions, as
pure functions (no socket, no clock)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.client.reconnect import (
    RETRY_BASE,
    RETRY_EXPONENT,
    RETRY_MAX,
    RETRY_MIN,
    ResumePlan,
    calls_done_at_quiescence,
    connect_message,
    connected_outcome,
    login_token_after,
    plan_resume,
    retry_delay,
    retry_delays,
    should_reconnect,
)


class Fixed(random.Random):
    """A jitter source that always draws ``fraction``."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def random(self) -> float:
        return self.fraction


FRACTIONS = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
#: Way past the point where 2.2**count overflows a float (about 900).
COUNTS = st.integers(min_value=0, max_value=100_000)
BASES = st.floats(min_value=0.001, max_value=10.0)
MAXIMA = st.floats(min_value=0.01, max_value=1000.0)


# -- the Retry policy ------------------------------------------------------------------------


def test_meteor_defaults() -> None:
    assert (RETRY_BASE, RETRY_EXPONENT, RETRY_MAX, RETRY_MIN) == (1.0, 2.2, 300.0, 0.01)
    assert retry_delay(0) == retry_delay(1) == RETRY_MIN
    # Attempt 2: 2.2**2 = 4.84 s, jittered by [0.75, 1.25).
    assert retry_delay(2, rng=Fixed(0.0)) == pytest.approx(4.84 * 0.75)
    assert retry_delay(2, rng=Fixed(0.5)) == pytest.approx(4.84)
    assert retry_delay(8, rng=Fixed(0.5)) == pytest.approx(300.0)  # 2.2**8 = 548: capped


def test_huge_attempt_counts_wait_the_maximum() -> None:
    # 2.2**1000 raises OverflowError in Python; Meteor's JavaScript gets Infinity -> maximum.
    assert retry_delay(1000, rng=Fixed(0.5)) == pytest.approx(RETRY_MAX)
    assert retry_delay(10**9, maximum=5.0, rng=Fixed(0.0)) == pytest.approx(3.75)
    assert retry_delay(10**9, base=0.0, rng=Fixed(0.5)) == 0.0


@given(count=COUNTS, base=BASES, maximum=MAXIMA, rng=st.randoms(use_true_random=False))
def test_every_delay_is_within_meteors_bounds(
    count: int, base: float, maximum: float, rng: random.Random
) -> None:
    delay = retry_delay(count, base=base, maximum=maximum, minimum=0.01, rng=rng)
    if count < 2:
        assert delay == 0.01
        return
    cap = min(maximum, base * 2.2**count) if count < 800 else maximum
    assert 0.75 * cap <= delay <= 1.25 * cap
    assert delay <= 1.25 * maximum


@given(count=st.integers(min_value=2, max_value=2_000), base=BASES, maximum=MAXIMA, f=FRACTIONS)
def test_delays_never_shrink_for_the_same_jitter(
    count: int, base: float, maximum: float, f: float
) -> None:
    this = retry_delay(count, base=base, maximum=maximum, rng=Fixed(f))
    after = retry_delay(count + 1, base=base, maximum=maximum, rng=Fixed(f))
    assert this <= after


@given(max_attempts=st.integers(min_value=-2, max_value=50), rng=st.randoms())
def test_retry_delays_ends_after_max_attempts(max_attempts: int, rng: random.Random) -> None:
    delays = list(retry_delays(max_attempts=max_attempts, rng=rng))
    assert len(delays) == max(0, max_attempts)
    assert delays[:2] == [RETRY_MIN, RETRY_MIN][: len(delays)]
    assert all(d <= 1.25 * RETRY_MAX for d in delays)


def test_retry_delays_without_limit_never_ends() -> None:
    delays = retry_delays(base=0.02, maximum=0.2, minimum=0.001, rng=random.Random(1))
    first = list(itertools.islice(delays, 2_000))
    assert len(first) == 2_000
    assert first[:2] == [0.001, 0.001]
    assert all(0.15 <= d <= 0.25 for d in first[10:])


def test_retry_delays_follows_retry_delay_with_the_same_rng() -> None:
    got = list(retry_delays(base=0.5, maximum=9.0, max_attempts=12, rng=random.Random(3)))
    rng = random.Random(3)
    assert got == [retry_delay(n, base=0.5, maximum=9.0, rng=rng) for n in range(12)]


@pytest.mark.parametrize(
    ("auto", "closing", "session", "expected"),
    [
        (True, False, "s1", True),
        (False, False, "s1", False),  # reconnect is opt-in
        (True, True, "s1", False),  # close() was called
        (True, False, None, False),  # connect() never succeeded: nothing to resume
    ],
)
def test_should_reconnect(auto: bool, closing: bool, session: str | None, expected: bool) -> None:
    assert should_reconnect(auto_reconnect=auto, closing=closing, session=session) is expected


# -- what is sent on the new socket ---------------------------------------------------------


def test_connect_message() -> None:
    assert connect_message("1", None, None) == {"msg": "connect", "version": "1", "support": ["1"]}
    assert connect_message("pre2", "s1", 0) == {
        "msg": "connect",
        "version": "pre2",
        "support": ["pre2"],
        "session": "s1",
        "receivedCount": 0,
    }


@dataclass
class Call:
    msg: dict[str, Any] = field(default_factory=dict)
    has_result: bool = False
    updated: bool = False


def method(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"msg": "method", "id": call_id, "method": "m", "params": [], **extra}


def sub(sub_id: str) -> dict[str, Any]:
    return {"msg": "sub", "id": sub_id, "name": "books", "params": []}


def test_plan_resume_order_and_what_is_resent() -> None:
    calls = {
        "1": Call(method("1", randomSeed="seed"), has_result=False),
        "2": Call(method("2"), has_result=True),  # result, no updated: must not run twice
        "3": Call(method("3"), has_result=False, updated=True),  # updated first: re-sent
    }
    plan = plan_resume(
        version="1",
        session="s1",
        received_count=7,
        resume=True,
        calls=calls,
        subs=[sub("a"), sub("b")],
        unsubs=["c"],
    )
    assert plan.messages == [
        {"msg": "connect", "version": "1", "support": ["1"], "session": "s1", "receivedCount": 7},
        method("1", randomSeed="seed"),
        method("3"),
        sub("a"),
        sub("b"),
        {"msg": "unsub", "id": "c"},
    ]
    assert plan.messages[1] is calls["1"].msg  # the same message, id and seed included
    assert plan.method_ids == {"1", "3"}
    assert plan.sub_ids == {"a", "b"}


def test_plan_resume_without_resume_sends_no_received_count() -> None:
    plan = plan_resume(
        version="1", session="s1", received_count=7, resume=False, calls={}, subs=[], unsubs=[]
    )
    assert plan == ResumePlan(
        connect={"msg": "connect", "version": "1", "support": ["1"], "session": "s1"},
        methods=[],
        subs=[],
        unsubs=[],
    )
    assert plan.messages == [plan.connect]


@given(
    results=st.lists(st.booleans(), max_size=10),
    subs=st.lists(st.text("abc", min_size=1, max_size=3), unique=True, max_size=5),
    count=st.integers(min_value=0, max_value=10**6),
)
def test_plan_resume_resends_exactly_the_methods_without_result(
    results: list[bool], subs: list[str], count: int
) -> None:
    calls = {str(n): Call(method(str(n)), has_result=r) for n, r in enumerate(results)}
    plan = plan_resume(
        version="1",
        session="s",
        received_count=count,
        resume=True,
        calls=calls,
        subs=[sub(s) for s in subs],
        unsubs=[],
    )
    expected = [str(n) for n, r in enumerate(results) if not r]
    assert [m["id"] for m in plan.methods] == expected  # in call order
    assert plan.method_ids == set(expected)
    assert [s["id"] for s in plan.subs] == subs
    assert plan.messages[0]["receivedCount"] == count
    kinds = [m["msg"] for m in plan.messages]
    assert kinds == ["connect", *["method"] * len(expected), *["sub"] * len(subs)]


# -- what connected means -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reconnecting", "previous", "session", "outcome"),
    [
        (False, None, "s1", "first"),
        (False, "s1", "s2", "first"),  # connect(session=...) by hand: not a reconnect
        (True, "s1", "s1", "resumed"),
        (True, "s1", "s2", "new"),
        (True, "s1", None, "new"),  # no id at all: nothing was resumed
        (True, None, None, "new"),
    ],
)
def test_connected_outcome(
    reconnecting: bool, previous: str | None, session: object, outcome: str
) -> None:
    got = connected_outcome(reconnecting=reconnecting, previous=previous, session=session)
    assert got == outcome


def test_calls_done_at_quiescence() -> None:
    calls = {
        "pending": Call(method("pending")),  # re-sent: its new result and updated will come
        "half": Call(method("half"), has_result=True),  # the old session owed its updated
        "resent-half": Call(method("resent-half"), has_result=True),
        "updated-only": Call(method("updated-only"), updated=True),
    }
    assert calls_done_at_quiescence(calls, resent=["pending", "resent-half"]) == ["half"]
    assert calls_done_at_quiescence({}, resent=[]) == []


# -- the login token across reconnects ---------------------------------------------------------


def test_a_logged_in_client_sends_its_resume_login_right_behind_connect() -> None:
    sub = {"msg": "sub", "id": "s1", "name": "books.all", "params": []}
    plan = plan_resume(
        version="1",
        session="S",
        received_count=4,
        resume=True,
        calls={},
        subs=[sub],
        unsubs=[],
        login_token="tok",
        login_id="9",
    )
    kinds = [(m["msg"], m.get("method")) for m in plan.messages]
    assert kinds == [("connect", None), ("method", "login"), ("sub", None)]
    assert plan.messages[1] == {
        "msg": "method",
        "method": "login",
        "params": [{"resume": "tok"}],
        "id": "9",
    }


@pytest.mark.parametrize(
    ("method", "params", "result", "error", "after"),
    [
        ("login", [{"user": {"username": "a"}, "password": "p"}], {"token": "new"}, None, "new"),
        ("createUser", [{"username": "a"}], {"token": "new", "id": "1"}, None, "new"),
        ("getNewToken", [], {"token": "new"}, None, "new"),
        ("logout", [], None, None, None),
        ("login", [{"resume": "old"}], None, {"error": 403}, None),  # the token is dead
        ("login", [{"user": {"username": "a"}, "password": "x"}], None, {"error": 403}, "old"),
        ("books.rename", ["b", "t"], None, None, "old"),
        ("login", [{}], "not a dict", None, "old"),
    ],
    ids=[
        "login",
        "createUser",
        "getNewToken",
        "logout",
        "resume-refused",
        "password-refused",
        "other-method",
        "odd-result",
    ],
)
def test_the_token_follows_the_accounts_methods(
    method: str, params: Any, result: Any, error: Any, after: str | None
) -> None:
    assert login_token_after("old", method, params, result, error) == after
