"""relay.live.result: the published view of a shared query, and the effects that reach it.

Every subscriber of a query applies the same effects to its mergebox, so an effect missed
is a document a thousand clients keep forever, and one too many a duplicate ``added`` or a
``removed`` for a document they never had (invariant I4). The rules are checked one by one
(a window's edges: pushed out, shifted in from the buffer, moves within, the buffer's
trimming and the refetch it forces), then against a brute-force model that sorts and
slices everything after every delivery of random inserts, moves and deletes.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.backend import CountOf, Order, StreamOf, Window
from relay.live.result import (
    Change,
    CountResult,
    Entry,
    SetResult,
    StreamResult,
    WindowResult,
)
from tests.relay.live.helpers import Doc, Store, apply_effects

BY_N = (Order("n"), Order("pk"))


def f(**values: Any) -> dict[str, Any]:
    return dict(values)


def entry(doc_id: str, n: Any, fields: dict[str, Any] | None = None) -> Entry:
    """A row of a window ordered by ``n`` then the primary key (the id's number)."""
    return (doc_id, fields if fields is not None else f(n=n), (n, int(doc_id[1:])))


def member(doc_id: str, n: Any, fields: dict[str, Any] | None = None) -> Change:
    return entry(doc_id, n, fields)


def gone(doc_id: str) -> Change:
    return (doc_id, None, None)


def window(limit: int | None, skip: int = 0, order: tuple[Order, ...] = BY_N) -> WindowResult:
    return WindowResult(Window(order, limit=limit, skip=skip))


def ids(effects: list[Any]) -> list[tuple[str, bool]]:
    """Effects as (id, still in the view) for compact assertions."""
    return [(doc_id, fields is not None) for doc_id, fields in effects]


# -- SetResult -------------------------------------------------------------------------


def test_set_first_load_adds_everything_and_keeps_the_fields_objects() -> None:
    result = SetResult()
    assert result.needs_refetch and len(result) == 0
    a, b = f(x=1), f(x=2)
    effects = result.load([("a", a, None), ("b", b, None)], complete=True)
    assert effects == [("a", a), ("b", b)]
    assert effects[0][1] is a and result.view()["b"] is b
    assert not result.needs_refetch and len(result) == 2


def test_set_reload_sends_only_the_difference() -> None:
    result = SetResult()
    a, b, c = f(x=1), f(x=2), f(x=3)
    view = result.view()
    result.load([("a", a, None), ("b", b, None), ("c", c, None)], complete=True)
    b2, c_equal = f(x=20), f(x=3)
    effects = result.load([("a", a, None), ("b", b2, None), ("c", c_equal, None)], True)
    assert effects == [("b", b2)]  # the same object, or equal fields: nothing to send
    effects = result.load([("d", f(x=4), None), ("a", a, None)], True)
    assert ids(effects) == [("b", False), ("c", False), ("d", True)]
    assert dict(view) == {"d": f(x=4), "a": a}  # a view taken earlier stays live


def test_set_apply_enters_leaves_and_touches() -> None:
    result = SetResult()
    result.load([("a", f(x=1), None), ("b", f(x=2), None)], True)
    same_b = result.view()["b"]
    c = f(x=3)
    effects = result.apply([gone("a"), ("b", same_b, None), ("c", c, None), gone("zz")])
    # a left; b touched and unchanged still comes out (the mergebox diffs); zz was never in.
    assert effects == [("a", None), ("b", same_b), ("c", c)]
    assert set(result.view()) == {"b", "c"}


def test_set_one_effect_per_id_for_the_last_state_of_a_delivery() -> None:
    result = SetResult()
    result.load([("a", f(x=1), None)], True)
    a2 = f(x=2)
    assert result.apply([gone("a"), ("a", a2, None)]) == [("a", a2)]
    assert result.apply([("n", f(x=1), None), gone("n")]) == []  # in and out: never seen
    assert result.apply([("a", f(x=3), None), gone("a")]) == [("a", None)]


def test_set_refuses_an_incomplete_fetch_and_a_duplicate_id() -> None:
    result = SetResult()
    with pytest.raises(ValueError, match="incomplete"):
        result.load([], complete=False)
    with pytest.raises(ValueError, match="twice"):
        result.load([("a", f(), None), ("a", f(), None)], True)
    assert result.needs_refetch  # nothing was loaded


# -- WindowResult: the rules -------------------------------------------------------------


def loaded(limit: int | None, rows: list[tuple[str, Any]], complete: bool, skip: int = 0) -> Any:
    result = window(limit, skip)
    result.load([entry(i, n) for i, n in rows], complete)
    return result


def test_window_first_load_publishes_the_window_not_the_buffer() -> None:
    result = window(2)
    effects = result.load([entry("d1", 1), entry("d2", 2), entry("d3", 3)], complete=True)
    assert ids(effects) == [("d1", True), ("d2", True)]
    assert list(result.view()) == ["d1", "d2"] and len(result) == 2
    assert result.known_ids() == ["d1", "d2", "d3"] and result.complete


def test_a_new_document_pushes_the_last_one_out_of_the_window() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3)], complete=True)
    new = f(n=0)
    effects = result.apply([member("d9", 0, new)])
    assert effects == [("d9", new), ("d2", None)]
    assert list(result.view()) == ["d9", "d1"]
    assert result.known_ids() == ["d9", "d1", "d2", "d3"]  # d2 stays in the buffer


def test_a_document_leaving_is_replaced_from_the_buffer() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3)], complete=True)
    effects = result.apply([gone("d1")])
    assert ids(effects) == [("d1", False), ("d3", True)]
    assert list(result.view()) == ["d2", "d3"]
    assert not result.needs_refetch


def test_a_move_within_the_window_is_one_change_of_the_moved_document() -> None:
    result = loaded(3, [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)], complete=True)
    moved = f(n=0)
    assert result.apply([member("d2", 0, moved)]) == [("d2", moved)]
    assert list(result.view()) == ["d2", "d1", "d3"]


def test_a_move_out_past_the_edge_swaps_it_with_the_buffer_first() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3)], complete=True)
    effects = result.apply([member("d1", 5)])
    assert ids(effects) == [("d1", False), ("d3", True)]
    assert result.known_ids() == ["d2", "d3", "d1"]


def test_changes_before_a_skipped_window_shift_it() -> None:
    rows = [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4), ("d5", 5)]
    result = loaded(2, rows, complete=True, skip=1)
    assert list(result.view()) == ["d2", "d3"]
    # Removing before the window: its first shifts out before it, the buffer's first in.
    assert ids(result.apply([gone("d1")])) == [("d2", False), ("d4", True)]
    assert list(result.view()) == ["d3", "d4"]
    # Inserting before it: the one before the window shifts in, the window's last out.
    assert ids(result.apply([member("d0", 0)])) == [("d2", True), ("d4", False)]
    assert list(result.view()) == ["d2", "d3"]


def test_an_id_out_and_back_in_within_one_delivery_is_not_sent() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3)], complete=True)
    # d2 is pushed out by d0, then shifted back in when d0 leaves again.
    assert result.apply([member("d0", 0), gone("d0")]) == []
    assert list(result.view()) == ["d1", "d2"]


def test_none_sorts_first_ascending_and_last_descending_in_a_window() -> None:
    up = window(2)
    up.load([entry("d1", 1), entry("d2", 2)], complete=True)
    assert ids(up.apply([member("d3", None)])) == [("d3", True), ("d2", False)]
    latest = window(2, order=(Order("n", descending=True), Order("pk")))
    latest.load([entry("d2", 2), entry("d1", 1)], complete=True)
    assert latest.apply([member("d3", None)]) == []  # last: below the window, in the buffer
    assert latest.known_ids() == ["d2", "d1", "d3"]
    assert ids(latest.apply([gone("d2")])) == [("d2", False), ("d3", True)]


def test_the_known_prefix_never_grows_beyond_the_capacity() -> None:
    # limit 2 -> capacity 4: a complete state at capacity trims and becomes incomplete.
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)], complete=True)
    result.apply([member("d9", 9)])
    assert result.known_ids() == ["d1", "d2", "d3", "d4"] and not result.complete
    result.apply([member("d0", 0)])
    assert result.known_ids() == ["d0", "d1", "d2", "d3"]
    # Now only keys before the last known one are kept: d8 is somewhere in the unknown tail.
    assert result.apply([member("d8", 8)]) == [] and "d8" not in result.known_ids()
    result.apply([member("d5", 2.5)])
    assert result.known_ids() == ["d0", "d1", "d2", "d5"]


def test_a_fetch_longer_than_the_capacity_is_trimmed() -> None:
    result = window(1)
    result.load([entry(f"d{i}", i) for i in range(5)], complete=True)
    assert result.known_ids() == ["d0", "d1"] and not result.complete


def test_a_shrunk_incomplete_window_asks_for_a_refetch_and_shows_what_it_knows() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)], complete=False)
    assert not result.needs_refetch
    result.apply([gone("d1"), gone("d2")])
    assert list(result.view()) == ["d3", "d4"] and not result.needs_refetch
    effects = result.apply([gone("d3")])
    assert ids(effects) == [("d3", False)] and list(result.view()) == ["d4"]
    assert result.needs_refetch
    # A member moving past the last known key is forgotten, not guessed at.
    assert result.apply([member("d4", 7)]) == [("d4", None)] and result.known_ids() == []
    # The refetch brings the rows beyond the buffer; the subscribers get the difference.
    d5 = f(n=5)
    effects = result.load([entry("d5", 5, d5), entry("d4", 7)], complete=True)
    assert effects[0] == ("d5", d5) and ids(effects) == [("d5", True), ("d4", True)]
    assert not result.needs_refetch


def test_an_incomplete_prefix_forgets_members_past_its_last_known_key() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2), ("d3", 3), ("d4", 4)], complete=False)
    result.apply([gone("d1")])
    # Room in the buffer, but rows the fetch did not read may lie between d4 and d9.
    assert result.apply([member("d9", 9)]) == []
    assert result.known_ids() == ["d2", "d3", "d4"]
    assert ids(result.apply([member("d4", 5)])) == []  # d4 itself moving past: forgotten
    assert result.known_ids() == ["d2", "d3"] and not result.needs_refetch


def test_a_complete_window_keeps_members_past_its_last_known_key() -> None:
    result = loaded(2, [("d1", 1)], complete=True)
    assert ids(result.apply([member("d5", 5), member("d7", 7)])) == [("d5", True)]
    assert result.known_ids() == ["d1", "d5", "d7"] and not result.needs_refetch


def test_window_reload_sends_only_the_difference() -> None:
    result = window(2)
    one = f(n=1)
    result.load([entry("d1", 1, one), entry("d2", 2), entry("d3", 3)], True)
    effects = result.load([entry("d1", 1, one), entry("d3", 3), entry("d4", 4)], True)
    assert ids(effects) == [("d2", False), ("d3", True)]


def test_an_unlimited_window_skips_and_never_refetches() -> None:
    result = window(None, skip=1)
    result.load([entry("d1", 1), entry("d2", 2)], complete=True)
    assert list(result.view()) == ["d2"]
    assert ids(result.apply([member("d0", 0)])) == [("d1", True)]
    # d1 leaves; d2 shifts to the skipped place when d1, before it, goes.
    assert ids(result.apply([gone("d0"), gone("d1")])) == [("d1", False), ("d2", False)]
    assert result.view() == {} and result.known_ids() == ["d2"]
    assert result.apply([gone("d2")]) == [] and not result.needs_refetch
    with pytest.raises(ValueError, match="incomplete"):
        result.load([], complete=False)


def test_an_empty_window_publishes_nothing_and_never_refetches() -> None:
    result = window(0, skip=1)
    assert result.load([entry("d1", 1)], complete=False) == []
    assert result.apply([gone("d1"), member("d2", 0)]) == []
    assert not result.needs_refetch and result.view() == {}


def test_window_needs_a_refetch_before_its_first_load() -> None:
    result = window(2)
    assert result.needs_refetch and result.apply([member("d1", 1)]) == []
    assert result.view() == {}


def test_a_bad_delivery_is_refused_whole() -> None:
    result = loaded(2, [("d1", 1), ("d2", 2)], complete=True)
    with pytest.raises(ValueError, match="without sort values"):
        result.apply([gone("d1"), ("d3", f(), None)])
    with pytest.raises(ValueError, match="sort values for an order"):
        result.apply([gone("d1"), ("d3", f(), (1,))])
    assert result.known_ids() == ["d1", "d2"]  # the removal before it was not applied


def test_a_bad_fetch_is_refused_and_leaves_the_state_alone() -> None:
    result = loaded(2, [("d1", 1)], complete=True)
    with pytest.raises(ValueError, match="out of the window's order"):
        result.load([entry("d2", 2), entry("d1", 1)], True)
    with pytest.raises(ValueError, match="twice"):
        result.load([entry("d1", 1), entry("d1", 2)], True)
    with pytest.raises(ValueError, match="without sort values"):
        result.load([("d1", f(), None)], True)
    assert result.known_ids() == ["d1"]


def test_a_window_needs_an_order_and_sane_bounds() -> None:
    with pytest.raises(ValueError):
        WindowResult(Window((), limit=1))
    with pytest.raises(ValueError):
        window(-1)
    with pytest.raises(ValueError):
        window(1, skip=-1)


# -- CountResult -------------------------------------------------------------------------

COUNT = CountOf("counts", "author-7", field="count")


def test_count_publishes_one_document_first_even_at_zero() -> None:
    result = CountResult(COUNT)
    assert result.needs_refetch and result.view() == {} and len(result) == 0
    assert result.apply([member("d1", 1)]) == []  # nothing published before the load
    assert result.load([], complete=True) == [("author-7", {"count": 0})]
    assert result.view() == {"author-7": {"count": 0}} and len(result) == 1
    assert not result.needs_refetch


def test_count_changes_only_when_the_number_does() -> None:
    result = CountResult(COUNT)
    result.load([("d1", {}, None), ("d2", {}, None)], True)
    assert result.apply([member("d1", 5)]) == []  # an update of a member
    assert result.apply([gone("d9")]) == []  # a non-member leaving
    assert result.apply([gone("d1"), member("d3", 1)]) == []  # one out, one in
    effects = result.apply([member("d4", 1)])
    assert effects == [("author-7", {"count": 3})] and result.value == 3
    assert result.view()["author-7"] is effects[0][1]
    assert result.load([("d1", {}, None), ("d2", {}, None), ("d3", {}, None)], True) == []
    assert result.load([], True) == [("author-7", {"count": 0})]


def test_count_refuses_an_incomplete_fetch_and_a_duplicate_id() -> None:
    result = CountResult(COUNT)
    with pytest.raises(ValueError, match="incomplete"):
        result.load([], complete=False)
    with pytest.raises(ValueError, match="twice"):
        result.load([("d1", {}, None), ("d1", {}, None)], True)
    assert result.needs_refetch


# -- against the brute-force model --------------------------------------------------------

#: Values of one sort position: small ints (many ties) or short non-ASCII strings, or None.
SORT_TYPES = {
    "int": st.none() | st.integers(-3, 3),
    "str": st.none() | st.text(alphabet="aZé中\U0001f600", max_size=2),
}


@st.composite
def windows(draw: st.DrawFn) -> tuple[Window, list[str]]:
    kinds = draw(st.lists(st.sampled_from(sorted(SORT_TYPES)), max_size=2))
    order = tuple(Order(f"c{i}", descending=draw(st.booleans())) for i in range(len(kinds)))
    limit = draw(st.integers(1, 8))
    skip = draw(st.integers(0, 3))
    return Window((*order, Order("pk")), limit=limit, skip=skip), kinds


class Scenario:
    """Draws random changes against a model store, one delivery at a time."""

    def __init__(self, data: st.DataObject, store: Store, kinds: list[str]) -> None:
        self.data, self.store, self.kinds = data, store, kinds
        self.next_pk = 1
        self.version = 0

    def fields(self) -> dict[str, Any]:
        self.version += 1  # distinct contents: equality then means the same object
        return {"v": self.version}

    def values(self) -> tuple[Any, ...]:
        return tuple(self.data.draw(SORT_TYPES[kind]) for kind in self.kinds)

    def insert_new(self, member: bool | None = None) -> int:
        pk = self.next_pk
        self.next_pk += 1
        is_member = self.data.draw(st.booleans()) if member is None else member
        self.store.docs[pk] = Doc(self.fields(), self.values(), is_member)
        return pk

    def change(self) -> Change:
        """One committed change, applied to the model, as routing would decide it."""
        docs = self.store.docs
        op = self.data.draw(st.sampled_from(["insert", "update", "update", "delete"]))
        if op == "insert" or not docs:
            pk = self.insert_new()
        elif op == "update":
            pk = self.data.draw(st.sampled_from(sorted(docs)))
            doc = docs[pk]
            if self.data.draw(st.booleans()):
                doc.values = self.values()
            doc.member = self.data.draw(st.booleans())
            if self.data.draw(st.booleans()):
                doc.fields = self.fields()
        else:
            pk = self.data.draw(st.sampled_from(sorted(docs)))
            del docs[pk]
            return (Store.wire(pk), None, None)
        doc = docs[pk]
        sort_values = self.store.values(pk) if self.store.window else None
        if not doc.member:
            # Routing may or may not pass sort values for a non-member: both must work.
            return (Store.wire(pk), None, sort_values if self.data.draw(st.booleans()) else None)
        return (Store.wire(pk), doc.fields, sort_values)


def check_view(result: Any, store: Store, copy: dict[str, Any]) -> None:
    view = result.view()
    expected = store.expected_view()
    assert list(view) == expected or (store.window is None and set(view) == set(expected))
    for doc_id in expected:
        assert view[doc_id] is store.fields(doc_id)
    assert copy == dict(view) and len(result) == len(expected)


@settings(max_examples=300, deadline=None)
@given(windows(), st.data())
def test_a_window_matches_the_model_through_random_deliveries(
    drawn: tuple[Window, list[str]], data: st.DataObject
) -> None:
    win, kinds = drawn
    store = Store(window=win)
    scenario = Scenario(data, store, kinds)
    for _ in range(data.draw(st.integers(0, 20))):
        scenario.insert_new()
    result = WindowResult(win)
    copy: dict[str, Any] = {}
    entries, complete = store.fetch()
    apply_effects(copy, result.load(entries, complete))
    check_view(result, store, copy)
    capacity = win.capacity
    assert capacity is not None
    for _ in range(data.draw(st.integers(1, 25))):
        changes = [scenario.change() for _ in range(data.draw(st.integers(1, 3)))]
        effects = result.apply(changes)
        touched_in_view = {c[0] for c in changes} & set(result.view())
        assert touched_in_view <= {doc_id for doc_id, _fields in effects}
        apply_effects(copy, effects)
        full = store.full()
        known = result.known_ids()
        assert known == full[: len(known)], "the known entries are not a prefix of the result"
        assert len(known) <= capacity
        if result.complete:
            assert known == full
        if result.needs_refetch:
            entries, complete = store.fetch()
            apply_effects(copy, result.load(entries, complete))
            assert not result.needs_refetch
        check_view(result, store, copy)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_set_matches_the_model_through_random_deliveries(data: st.DataObject) -> None:
    store = Store()
    scenario = Scenario(data, store, [])
    for _ in range(data.draw(st.integers(0, 8))):
        scenario.insert_new()
    result = SetResult()
    copy: dict[str, Any] = {}
    apply_effects(copy, result.load(*store.fetch()))
    check_view(result, store, copy)
    for _ in range(data.draw(st.integers(1, 20))):
        changes = [scenario.change() for _ in range(data.draw(st.integers(1, 3)))]
        effects = result.apply(changes)
        touched_members = {c[0] for c in changes} & set(store.expected_view())
        assert touched_members <= {doc_id for doc_id, _fields in effects}
        apply_effects(copy, effects)
        assert not result.needs_refetch
        check_view(result, store, copy)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_count_matches_the_model_through_random_deliveries(data: st.DataObject) -> None:
    store = Store()
    scenario = Scenario(data, store, [])
    for _ in range(data.draw(st.integers(0, 8))):
        scenario.insert_new()
    result = CountResult(COUNT)
    copy: dict[str, Any] = {}
    published = len(store.full())
    apply_effects(copy, result.load(*store.fetch()))
    assert copy == {"author-7": {"count": published}}
    for _ in range(data.draw(st.integers(1, 20))):
        changes = [scenario.change() for _ in range(data.draw(st.integers(1, 3)))]
        effects = result.apply(changes)
        n = len(store.full())
        assert effects == ([] if n == published else [("author-7", {"count": n})])
        published = n
        apply_effects(copy, effects)
        assert copy == {"author-7": {"count": n}} == result.view()


# -- StreamResult ------------------------------------------------------------------------


def event(doc_id: str) -> Change:
    return (doc_id, f(text=doc_id), None)


def test_a_stream_load_keeps_the_newest_cap_events_in_order() -> None:
    result = StreamResult(StreamOf(3))
    assert result.needs_refetch
    effects = result.load([event(f"e{i}") for i in range(5)], complete=True)
    assert ids(effects) == [("e2", True), ("e3", True), ("e4", True)]
    assert list(result.view()) == ["e2", "e3", "e4"] and not result.needs_refetch


def test_a_new_event_pushes_the_oldest_out_after_it_is_added() -> None:
    result = StreamResult(StreamOf(2))
    result.load([event("a"), event("b")], complete=True)
    assert ids(result.apply([event("c")])) == [("a", False), ("c", True)]
    assert list(result.view()) == ["b", "c"]


def test_an_event_in_and_out_within_one_delivery_is_never_sent() -> None:
    result = StreamResult(StreamOf(2))
    result.load([], complete=True)
    effects = result.apply([event("a"), event("b"), event("c"), event("d")])
    assert ids(effects) == [("c", True), ("d", True)]


def test_a_stream_reload_sends_only_the_difference() -> None:
    result = StreamResult(StreamOf(3))
    result.load([event("a"), event("b"), event("c")], complete=True)
    effects = result.load([event("b"), event("c"), event("d")], complete=True)
    assert ids(effects) == [("a", False), ("d", True)]


def test_a_stream_needs_a_cap_and_a_complete_fetch() -> None:
    with pytest.raises(ValueError):
        StreamResult(StreamOf(0))
    with pytest.raises(ValueError):
        StreamResult(StreamOf(2)).load([], complete=False)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6), st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=5)))
def test_a_stream_matches_the_model_through_random_deliveries(
    cap: int, deliveries: list[list[int]]
) -> None:
    """The model: the held ids in arrival order; an id already held keeps its place, a
    new one (never seen, or pushed out before) joins at the end, and only the last
    ``cap`` stay. The effects must take a subscriber's copy to the same view."""
    result = StreamResult(StreamOf(cap))
    copy: dict[str, Any] = {}
    apply_effects(copy, result.load([], complete=True))
    model: list[str] = []
    for delivery in deliveries:
        changes = [event(f"e{n}") for n in delivery]
        for doc_id, _fields, _key in changes:
            if doc_id not in model:
                model.append(doc_id)
        model = model[-cap:]
        effects = result.apply(changes)
        removals = [e for e in effects if e[1] is None]
        assert effects[: len(removals)] == removals  # never more than cap held
        apply_effects(copy, effects)
        assert list(result.view()) == model
        assert copy == dict(result.view())
