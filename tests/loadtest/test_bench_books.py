"""``loadtest.bench.books.plan_writes`` against a brute-force model of the windows.

The model keeps the whole book list in window order and applies each planned write to
it (an insert goes first: it is dated after every book; a removal deletes the book at
position ``n_min``). The plan must be what the model does, and every planned event must
be one each session is bound to see, even from a relay that re-runs its publication
late: a removed book sat in every window from the start to its removal and was never
inserted by the run; an inserted book stays in every window until the end.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench.books import ID_ALPHABET, PlannedWrite, max_writes, meteor_id, plan_writes


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], int, int, list[str]]:
    n_min = draw(st.integers(min_value=1, max_value=30))
    extra = draw(st.integers(min_value=0, max_value=40))
    order = [f"old{i}" for i in range(max(0, n_min - 1) + extra)]
    writes = draw(st.integers(min_value=0, max_value=max_writes(n_min)))
    new_ids = [f"new{i}" for i in range((writes + 1) // 2)]
    return order, n_min, writes, new_ids


def _model(order: list[str], n_min: int, writes: int, new_ids: list[str]) -> list[PlannedWrite]:
    books = list(order)
    plan = []
    for i in range(writes):
        if i % 2 == 0:
            books.insert(0, new_ids[i // 2])
            plan.append(PlannedWrite(i, "added", new_ids[i // 2]))
        else:
            plan.append(PlannedWrite(i, "removed", books.pop(n_min - 1)))
    return plan


@given(scenarios())
def test_plan_is_what_the_windows_do(scenario: tuple[list[str], int, int, list[str]]) -> None:
    order, n_min, writes, new_ids = scenario
    assert plan_writes(order, n_min, writes, new_ids) == _model(order, n_min, writes, new_ids)


@given(scenarios(), st.integers(min_value=0, max_value=20))
def test_every_planned_event_reaches_every_window(
    scenario: tuple[list[str], int, int, list[str]], wider: int
) -> None:
    order, n_min, writes, new_ids = scenario
    plan = plan_writes(order, n_min, writes, new_ids)
    books = list(order)
    n = n_min + wider  # any window at least n_min long
    start = set(books[:n])
    for write in plan:
        if write.kind == "added":
            books.insert(0, write.book_id)
        else:
            # In this window from the start to now, and never one the run inserted.
            assert write.book_id in start and write.book_id in books[:n]
            assert write.book_id not in new_ids
            books.remove(write.book_id)
    for book in new_ids[: (writes + 1) // 2]:
        assert book in books[:n]  # inserted books never leave


@given(st.integers(min_value=2, max_value=30))
def test_max_writes_is_the_bound(n_min: int) -> None:
    """One write more and the model would remove a book the run inserted."""
    order = [f"old{i}" for i in range(n_min + 5)]
    writes = max_writes(n_min) + 1
    new_ids = [f"new{i}" for i in range((writes + 1) // 2 + 1)]
    model = _model(order, n_min, writes + 1, new_ids)
    assert any(w.kind == "removed" and w.book_id.startswith("new") for w in model)
    with pytest.raises(ValueError, match="at most"):
        plan_writes(order, n_min, writes, new_ids)


def test_short_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="ids"):
        plan_writes([f"old{i}" for i in range(30)], 20, 6, ["a", "b"])
    with pytest.raises(ValueError, match="need at least 19"):
        plan_writes(["old0"], 20, 2, ["a"])
    assert plan_writes([], 20, 1, ["a"]) == [PlannedWrite(0, "added", "a")]


def test_meteor_ids() -> None:
    ids = {meteor_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 17 and set(i) <= set(ID_ALPHABET) for i in ids)
