"""relay.limits.budget: bytes of queued input, per session within the worker's budget.

A reservation is taken from a session's budget and the worker's together or not at all,
so under any interleaving of sessions reserving and releasing, no session holds more than
its limit, the worker never more than its own, and the worker's count is the sum of its
sessions'.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.limits.budget import ByteBudget

PROPERTY = settings(max_examples=300, deadline=None)


def test_reservations_within_both_limits_are_taken_from_both() -> None:
    worker = ByteBudget(100, name="worker")
    session = ByteBudget(60, worker, name="session")
    assert session.reserve(40) is None
    assert (session.used, worker.used) == (40, 40)
    session.release(15)
    assert (session.used, worker.used) == (25, 25)


def test_a_refusal_names_the_full_budget_and_takes_nothing() -> None:
    worker = ByteBudget(100, name="worker")
    first = ByteBudget(60, worker, name="session")
    second = ByteBudget(60, worker, name="session")
    assert first.reserve(60) is None
    assert first.reserve(1) is first  # the session's own limit
    assert second.reserve(50) is worker  # the worker's: 60 + 50 > 100
    assert (first.used, second.used, worker.used) == (60, 0, 60)
    assert second.reserve(40) is None  # exactly at both limits is allowed
    assert worker.used == 100
    assert second.reserve(0) is None  # nothing to take is always room


def test_a_closing_session_gives_back_everything_it_holds() -> None:
    worker = ByteBudget(100)
    session = ByteBudget(60, worker)
    other = ByteBudget(60, worker)
    session.reserve(30)
    other.reserve(20)
    session.release_all()
    assert (session.used, other.used, worker.used) == (0, 20, 20)


def test_giving_back_more_than_held_is_clamped_never_negative() -> None:
    worker = ByteBudget(80)
    session = ByteBudget(60, worker)
    other = ByteBudget(60, worker)
    other.reserve(30)
    session.reserve(10)
    session.release(25)  # a caller's bug: only its own 10 go back
    assert (session.used, other.used, worker.used) == (0, 30, 30)
    assert session.reserve(60) is worker  # the worker still counts the other session's 30


def test_a_zero_limit_has_no_limit_of_its_own() -> None:
    worker = ByteBudget(100)
    session = ByteBudget(0, worker)
    assert session.reserve(100) is None
    assert session.reserve(1) is worker
    assert ByteBudget(0).reserve(10**12) is None


def test_negative_sizes_and_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        ByteBudget(-1)
    budget = ByteBudget(10)
    with pytest.raises(ValueError, match="size"):
        budget.reserve(-1)
    with pytest.raises(ValueError, match="size"):
        budget.release(-1)


@PROPERTY
@given(
    ops=st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 70)), max_size=200),
    worker_limit=st.integers(1, 200),
    session_limit=st.integers(1, 80),
)
def test_no_budget_is_ever_over_its_limit_and_the_worker_sums_its_sessions(
    ops: list[tuple[int, bool, int]], worker_limit: int, session_limit: int
) -> None:
    worker = ByteBudget(worker_limit, name="worker")
    sessions = [ByteBudget(session_limit, worker, name="session") for _ in range(4)]
    held: list[list[int]] = [[] for _ in sessions]  # sizes each session reserved
    for which, reserving, size in ops:
        session = sessions[which]
        if reserving:
            fits_session = session.used + size <= session_limit
            fits_worker = worker.used + size <= worker_limit
            refused = session.reserve(size)
            expected = (
                None if fits_session and fits_worker else (session if not fits_session else worker)
            )
            assert refused is expected
            if refused is None:
                held[which].append(size)
        elif held[which]:
            session.release(held[which].pop(0))
        assert all(s.used <= session_limit for s in sessions)
        assert worker.used <= worker_limit
        assert worker.used == sum(s.used for s in sessions)
        assert [s.used for s in sessions] == [sum(h) for h in held]
    for session in sessions:
        session.release_all()
    assert worker.used == 0


def test_a_full_worker_evicts_its_largest_holder_not_the_asker() -> None:
    worker = ByteBudget(100, name="worker")
    evicted: list[str] = []
    sessions: dict[str, ByteBudget] = {}
    for name in ("hog", "small", "honest"):
        sessions[name] = ByteBudget(
            80,
            worker,
            name=name,
            on_evict=lambda n=name: (evicted.append(n), sessions[n].release_all()),
        )
    assert sessions["hog"].reserve(70) is None and sessions["small"].reserve(20) is None
    assert sessions["honest"].reserve(30) is worker  # full
    assert worker.evict_largest(spare=sessions["honest"])
    assert evicted == ["hog"] and worker.used == 20
    assert sessions["honest"].reserve(30) is None
    # The asker itself is never chosen; nothing to evict: False.
    assert not ByteBudget(10).evict_largest()
    # When the asker holds the most, nobody else is evicted: it gives way itself.
    assert sessions["honest"].reserve(40) is None  # honest 70, small 20
    assert not worker.evict_largest(spare=sessions["honest"])
