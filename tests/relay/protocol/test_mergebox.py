"""Tests for relay.protocol.mergebox: Meteor's SERVER_MERGE rules, then a model-based run."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relay.protocol.errors import LocalProtocolError
from relay.protocol.mergebox import MergeBox, Message, UpdateMemo


def added(c: str, i: str, **fields: Any) -> Message:
    msg: Message = {"msg": "added", "collection": c, "id": i}
    if fields:
        msg["fields"] = fields
    return msg


def changed(c: str, i: str, fields: dict[str, Any] | None = None, cleared: Any = None) -> Message:
    msg: Message = {"msg": "changed", "collection": c, "id": i}
    if fields:
        msg["fields"] = fields
    if cleared:
        msg["cleared"] = cleared
    return msg


def removed(c: str, i: str) -> Message:
    return {"msg": "removed", "collection": c, "id": i}


def shared_box() -> MergeBox:
    """Doc c/1 published by A (a=1, b=2) then by B (b=20, c=30)."""
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    box.add("B", "c", "1", {"b": 20, "c": 30})
    return box


# -- add ---------------------------------------------------------------------------------


def test_add_new_document_sends_added_without_id() -> None:
    box = MergeBox()
    assert box.add("A", "c", "1", {"_id": "1", "a": 1}) == [added("c", "1", a=1)]
    assert box.get("c", "1") == {"a": 1}
    assert len(box) == 1


def test_add_with_no_fields_omits_fields_key() -> None:
    box = MergeBox()
    assert box.add("A", "c", "1", {}) == [{"msg": "added", "collection": "c", "id": "1"}]
    assert box.add("A", "c", "2", {"_id": "2"}) == [added("c", "2")]
    assert box.documents("c") == {"1": {}, "2": {}}


def test_second_sub_with_disjoint_fields_gives_union_in_one_changed() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    assert box.add("B", "c", "1", {"b": 2, "c": 3}) == [changed("c", "1", {"b": 2, "c": 3})]
    assert box.get("c", "1") == {"a": 1, "b": 2, "c": 3}
    assert box.subscriptions_of("c", "1") == {"A", "B"}


def test_second_sub_overlapping_fields_first_provider_wins() -> None:
    box = shared_box()
    # the second add emitted only c; b stayed A's value
    assert box.get("c", "1") == {"a": 1, "b": 2, "c": 30}


def test_second_add_messages() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    assert box.add("B", "c", "1", {"_id": "1", "b": 20, "c": 30}) == [changed("c", "1", {"c": 30})]


def test_second_sub_with_only_provided_fields_sends_nothing() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    assert box.add("B", "c", "1", {"a": 99}) == []
    assert box.add("U", "c", "1", {}) == []
    assert box.subscriptions_of("c", "1") == {"A", "B", "U"}
    assert len(box) == 1


def test_same_sub_adding_twice_is_a_change_of_its_values() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    assert box.add("A", "c", "1", {"a": 1, "b": 3, "d": 4}) == [changed("c", "1", {"b": 3, "d": 4})]
    assert box.get("c", "1") == {"a": 1, "b": 3, "d": 4}  # fields not mentioned are kept
    assert box.add("A", "c", "1", {"a": 1}) == []
    # once the doc is shared too
    box.add("B", "c", "1", {"e": 5})
    assert box.add("B", "c", "1", {"e": 6, "a": 7}) == [changed("c", "1", {"e": 6})]
    assert box.get("c", "1") == {"a": 1, "b": 3, "d": 4, "e": 6}


def test_same_id_in_different_collections_is_different_documents() -> None:
    box = MergeBox()
    assert box.add("A", "x", "1", {"a": 1}) == [added("x", "1", a=1)]
    assert box.add("A", "y", "1", {"a": 2}) == [added("y", "1", a=2)]
    assert len(box) == 2
    assert sorted(box.collections()) == ["x", "y"]


# -- change ------------------------------------------------------------------------------


def test_change_by_only_publisher() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    assert box.change("A", "c", "1", {"a": 5, "n": 0}, ["b"]) == [
        changed("c", "1", {"a": 5, "n": 0}, ["b"])
    ]
    assert box.get("c", "1") == {"a": 5, "n": 0}


def test_change_with_equal_values_or_absent_clears_sends_nothing() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": [1, {"x": 2}], "f": math.nan})
    assert box.change("A", "c", "1", {"a": 1, "b": [1, {"x": 2}], "f": math.nan}) == []
    assert box.change("A", "c", "1", {}, ["zzz", "_id"]) == []
    assert box.change("A", "c", "1", {"_id": "other"}) == []
    assert box.change("A", "c", "1", {}) == []


def test_change_equal_value_keeps_the_value_the_client_has() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    assert box.change("A", "c", "1", {"a": 1.0}) == []
    assert type(box.get("c", "1")["a"]) is int  # type: ignore[index]


def test_bool_and_int_are_not_equal() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    assert box.change("A", "c", "1", {"a": True}) == [changed("c", "1", {"a": True})]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (math.nan, math.nan),
        (1, 1.0),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        (b"xy", bytearray(b"xy")),
        (
            datetime(2024, 1, 1, tzinfo=UTC),
            datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_ejson_equal_values_are_not_sent(old: Any, new: Any) -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"v": old})
    box.add("B", "c", "1", {"v": new})
    assert box.change("A", "c", "1", {"v": new}) == []
    assert box.change("A", "c", "1", {}, ["v"]) == []  # B's equal value takes over silently
    assert box.get("c", "1") == {"v": old}


def test_change_by_first_provider_of_shared_doc() -> None:
    box = shared_box()
    assert box.change("A", "c", "1", {"b": 3}) == [changed("c", "1", {"b": 3})]
    assert box.change("A", "c", "1", {"b": 3}) == []
    assert box.get("c", "1") == {"a": 1, "b": 3, "c": 30}


def test_change_by_later_provider_is_silent_until_it_becomes_first() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {"b": 21}) == []
    assert box.get("c", "1") == {"a": 1, "b": 2, "c": 30}
    # A clears b: B's stored value becomes visible
    assert box.change("A", "c", "1", {}, ["b"]) == [changed("c", "1", {"b": 21})]
    # A sets b again: it now comes after B, so nothing is visible
    assert box.change("A", "c", "1", {"b": 2}) == []
    assert box.get("c", "1") == {"a": 1, "b": 21, "c": 30}


def test_clear_when_next_provider_has_an_equal_value_sends_nothing() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"b": 2})
    box.add("B", "c", "1", {"b": 2})
    assert box.change("A", "c", "1", {}, ["b"]) == []
    assert box.get("c", "1") == {"b": 2}


def test_clear_of_last_provider_goes_to_cleared() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {}, ["c"]) == [changed("c", "1", cleared=["c"])]
    assert box.change("A", "c", "1", {}, ["a", "b"]) == [changed("c", "1", {"b": 20}, ["a"])]
    assert box.get("c", "1") == {"b": 20}


def test_clear_by_non_first_provider_is_silent() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {}, ["b"]) == []
    assert box.change("A", "c", "1", {}, ["b"]) == [changed("c", "1", cleared=["b"])]


def test_clear_of_a_field_the_sub_does_not_provide_is_a_noop() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {}, ["a"]) == []
    assert box.get("c", "1") == {"a": 1, "b": 2, "c": 30}


def test_change_new_field_no_one_provides_is_sent() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {"z": 0}) == [changed("c", "1", {"z": 0})]


def test_change_new_field_someone_else_provides_is_appended_silently() -> None:
    box = shared_box()
    assert box.change("B", "c", "1", {"a": 100}) == []
    assert box.change("A", "c", "1", {}, ["a"]) == [changed("c", "1", {"a": 100})]


def test_change_sets_and_clears_in_one_message() -> None:
    box = shared_box()
    assert box.change("A", "c", "1", {"a": 2, "new": 1}, ["b"]) == [
        changed("c", "1", {"a": 2, "new": 1, "b": 20})
    ]
    assert box.change("A", "c", "1", {"a": 3}, ["new"]) == [changed("c", "1", {"a": 3}, ["new"])]


def test_change_accepts_any_iterable_for_cleared() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    assert box.change("A", "c", "1", {}, (k for k in ["a"])) == [changed("c", "1", cleared=["a"])]


# -- remove ------------------------------------------------------------------------------


def test_remove_last_publisher_sends_removed() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    assert box.remove("A", "c", "1") == [removed("c", "1")]
    assert not box.has("c", "1")
    assert len(box) == 0
    assert box.collections() == []
    assert box.subscriptions() == frozenset()


def test_remove_one_of_two_publishers_keeps_document() -> None:
    box = shared_box()
    assert box.remove("A", "c", "1") == [changed("c", "1", {"b": 20}, ["a"])]
    assert box.get("c", "1") == {"b": 20, "c": 30}
    assert box.subscriptions_of("c", "1") == {"B"}
    assert box.remove("B", "c", "1") == [removed("c", "1")]
    assert len(box) == 0


def test_remove_of_later_publisher_only_clears_its_own_fields() -> None:
    box = shared_box()
    assert box.remove("B", "c", "1") == [changed("c", "1", cleared=["c"])]
    assert box.get("c", "1") == {"a": 1, "b": 2}


def test_remove_that_changes_no_visible_value_sends_nothing() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    box.add("B", "c", "1", {"a": 1})
    assert box.remove("A", "c", "1") == []
    box.add("C", "c", "1", {})
    assert box.remove("C", "c", "1") == []
    assert box.get("c", "1") == {"a": 1}


def test_document_returns_to_single_form_after_overlap() -> None:
    box = shared_box()
    box.remove("A", "c", "1")
    state = box.to_state()
    assert state["collections"]["c"]["1"] == {"sub": "B", "fields": {"b": 20, "c": 30}}
    # and the single form keeps working
    assert box.change("B", "c", "1", {"b": 1}) == [changed("c", "1", {"b": 1})]
    assert box.add("A", "c", "1", {"a": 1}) == [changed("c", "1", {"a": 1})]


def test_readd_after_remove_goes_to_end_of_precedence() -> None:
    box = shared_box()
    box.remove("A", "c", "1")
    box.add("A", "c", "1", {"b": 2})
    assert box.get("c", "1") == {"b": 20, "c": 30}


# -- remove_subscription -----------------------------------------------------------------


def test_remove_subscription_removes_only_what_no_one_else_publishes() -> None:
    box = MergeBox()
    box.add("A", "x", "1", {"a": 1})
    box.add("A", "x", "2", {"a": 2})
    box.add("A", "y", "1", {"a": 3, "k": 0})
    box.add("B", "y", "1", {"k": 9, "m": 1})
    box.add("B", "x", "3", {"b": 1})
    messages = box.remove_subscription("A")
    assert sorted(messages, key=lambda m: (m["collection"], m["id"])) == [
        removed("x", "1"),
        removed("x", "2"),
        changed("y", "1", {"k": 9}, ["a"]),
    ]
    assert box.documents("x") == {"3": {"b": 1}}
    assert box.documents("y") == {"1": {"k": 9, "m": 1}}
    assert box.subscriptions() == {"B"}
    box.verify()
    assert box.remove_subscription("A") == []
    assert box.remove_subscription("never") == []


def test_remove_subscription_then_everything() -> None:
    box = shared_box()
    box.add("A", "c", "2", {})
    box.remove_subscription("B")
    box.remove_subscription("A")
    assert len(box) == 0
    assert box.to_state() == {"version": 1, "collections": {}}


def test_remove_subscription_uses_the_reverse_index() -> None:
    box = MergeBox()
    for i in range(1000):
        box.add("big", "c", str(i), {"v": i})
    box.add("small", "c", "x", {"v": 0})
    # the other sub's documents are never looked at: poison them and remove "small"
    coll = box._docs["c"]
    for i in range(1000):
        coll[str(i)] = None  # type: ignore[assignment]
    assert box.remove_subscription("small") == [removed("c", "x")]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.change("A", "c", "nope", {"a": 1}),
        lambda b: b.change("Z", "c", "1", {"a": 1}),
        lambda b: b.change("A", "other", "1", {"a": 1}),
        lambda b: b.change("C", "c", "2", {}, ["a"]),
        lambda b: b.change("A", "c", "1", {"a": 1}, ["a"]),
        lambda b: b.change("A", "c", "1", {}, "a"),
        lambda b: b.remove("A", "c", "nope"),
        lambda b: b.remove("Z", "c", "1"),
        lambda b: b.remove("C", "c", "1"),
    ],
)
def test_programming_errors_raise_and_change_nothing(call: Any) -> None:
    box = shared_box()
    box.add("C", "c", "3", {"q": 1})
    before = box.to_state()
    with pytest.raises(LocalProtocolError):
        call(box)
    assert box.to_state() == before
    box.verify()


# -- copying and aliasing ----------------------------------------------------------------


def view_of(box: MergeBox, c: str, i: str) -> Any:
    """The box's own view object (white box: which dict it keeps)."""
    return box._docs[c][i]


def test_messages_and_returned_dicts_are_fresh() -> None:
    box = MergeBox()
    fields = {"a": 1}
    [msg] = box.add("A", "c", "1", fields)
    assert msg["fields"] == fields and msg["fields"] is not fields
    msg["fields"]["a"] = 3
    assert box.get("c", "1") == {"a": 1} and fields == {"a": 1}
    [msg2] = box.change("A", "c", "1", {"a": 4})
    assert msg["fields"] == {"a": 3}
    got = box.get("c", "1")
    assert got is not None
    got["a"] = 5
    box.documents("c")["1"]["a"] = 6
    assert box.documents("c") == {"1": {"a": 4}}
    assert msg2["fields"] == {"a": 4}
    msg2["fields"]["a"] = 7
    [msg3] = box.update("A", "c", "1", {"a": 8, "b": 9})
    msg3["fields"].clear()
    assert box.get("c", "1") == {"a": 8, "b": 9}


def test_a_given_dict_is_kept_as_the_view_and_never_changed() -> None:
    box = MergeBox()
    fields = {"a": 1, "b": 2}
    box.add("A", "c", "1", fields)
    box.add("A", "c", "2", fields)  # two documents, one dict
    assert view_of(box, "c", "1") is fields and view_of(box, "c", "2") is fields
    # Every later write replaces the view; the given dict stays as it was.
    assert box.change("A", "c", "1", {"a": 10}) == [changed("c", "1", {"a": 10})]
    assert box.change("A", "c", "2", {}, ["b"]) == [changed("c", "2", cleared=["b"])]
    assert box.update("A", "c", "1", {"b": 20}) == [changed("c", "1", {"b": 20})]
    assert fields == {"a": 1, "b": 2}
    assert box.documents("c") == {"1": {"a": 10, "b": 20}, "2": {"a": 1}}
    # An equal value of the same type is adopted, in a new view.
    equal = {"a": 1, "l": [1]}
    box.add("A", "c", "3", equal)
    box.change("A", "c", "3", {"l": [1]})
    assert equal["l"] is not view_of(box, "c", "3")["l"] and equal == {"a": 1, "l": [1]}
    # A second publisher turns the view into per-field providers; the dict is left alone.
    box.add("B", "c", "2", {"a": 5, "z": 6})
    box.remove("A", "c", "2")
    assert fields == {"a": 1, "b": 2} and box.get("c", "2") == {"a": 5, "z": 6}


def test_a_dict_with_id_or_another_mapping_is_copied() -> None:
    box = MergeBox()
    with_id = {"_id": "1", "a": 1}
    box.add("A", "c", "1", with_id)
    assert view_of(box, "c", "1") == {"a": 1} and with_id == {"_id": "1", "a": 1}
    proxy = MappingProxyType({"a": 1})
    box.add("A", "c", "2", proxy)
    assert type(view_of(box, "c", "2")) is dict
    ordered = OrderedDict(a=1)
    box.add("A", "c", "3", ordered)
    assert type(view_of(box, "c", "3")) is dict
    box.update("A", "c", "1", {"_id": "1", "a": 2})
    assert view_of(box, "c", "1") == {"a": 2}
    box.verify()


def test_update_shares_the_dict_of_a_complete_change() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": "x"})
    complete = {"a": 1, "b": "x"}
    assert box.update("A", "c", "1", complete) == []  # nothing visible, the dict is kept
    assert view_of(box, "c", "1") is complete
    newer = {"a": 2, "b": complete["b"], "n": None}
    assert box.update("A", "c", "1", newer) == [changed("c", "1", {"a": 2, "n": None})]
    assert view_of(box, "c", "1") is newer
    partial = {"a": 3}
    assert box.update("A", "c", "1", partial) == [changed("c", "1", {"a": 3})]
    assert view_of(box, "c", "1") == {"a": 3, "b": "x", "n": None} and partial == {"a": 3}
    same = view_of(box, "c", "1")
    assert box.update("A", "c", "1", {"a": 3}) == [] and view_of(box, "c", "1") is same
    # An equal value of another type: the view keeps the client's value, in a copy.
    other_type = {"a": 3.0, "b": "x", "n": None}
    assert box.update("A", "c", "1", other_type) == []
    assert view_of(box, "c", "1") is not other_type
    assert type(view_of(box, "c", "1")["a"]) is int and type(other_type["a"]) is float


def test_change_shares_the_dict_when_the_view_becomes_exactly_it() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1, "b": 2})
    fresh = {"a": 1}
    assert box.change("A", "c", "1", fresh, ["b"]) == [changed("c", "1", cleared=["b"])]
    assert view_of(box, "c", "1") is fresh
    reordered = {"b": 2, "a": fresh["a"]}
    box.change("A", "c", "1", reordered)
    assert view_of(box, "c", "1") == {"a": 1, "b": 2}
    assert list(view_of(box, "c", "1")) == ["a", "b"]  # the view keeps its order


# -- read access -------------------------------------------------------------------------


def test_read_access() -> None:
    box = shared_box()
    box.add(("U", "x"), "d", "9", {"z": 1})
    assert box.has("c", "1") and box.has("d", "9")
    assert not box.has("c", "9") and not box.has("nope", "1")
    assert box.get("nope", "1") is None
    assert box.documents("nope") == {}
    assert box.documents("c") == {"1": {"a": 1, "b": 2, "c": 30}}
    assert box.subscriptions_of("d", "9") == {("U", "x")}
    assert box.subscriptions_of("d", "0") == frozenset()
    assert box.subscriptions() == {"A", "B", ("U", "x")}
    assert len(box) == 2


# -- snapshot ----------------------------------------------------------------------------


def test_state_round_trip_through_json() -> None:
    box = shared_box()
    box.change("B", "c", "1", {"b": 21})
    box.add(("U", "r1"), "c", "2", {"_id": "2", "v": [1, 2]})
    box.add(("U", "r1"), "e", "", {})
    state = box.to_state()
    restored = MergeBox.from_state(json.loads(json.dumps(state)))
    assert restored.to_state() == state
    assert restored.documents("c") == box.documents("c")
    assert restored.subscriptions_of("c", "2") == {("U", "r1")}
    assert restored.subscriptions_of("e", "") == {("U", "r1")}
    # precedence survives: A is still first for b, B's silent value is kept
    assert restored.change("A", "c", "1", {}, ["b"]) == [changed("c", "1", {"b": 21})]
    messages = restored.remove_subscription(("U", "r1"))
    assert sorted(messages, key=lambda m: m["collection"]) == [removed("c", "2"), removed("e", "")]
    assert len(restored) == 1


def test_state_is_not_aliased() -> None:
    box = MergeBox()
    box.add("A", "c", "1", {"a": 1})
    state = box.to_state()
    restored = MergeBox.from_state(state)
    state["collections"]["c"]["1"]["fields"]["a"] = 2
    assert box.get("c", "1") == {"a": 1}
    assert restored.get("c", "1") == {"a": 1}


def test_state_with_several_collections_and_forms() -> None:
    state = {
        "version": 1,
        "collections": {
            "c": {"1": {"sub": "A", "fields": {}}, "2": {"subs": ["A", "B"], "data": {}}},
            "d": {"1": {"sub": "A", "fields": {"x": 1}}},
            "empty": {},
        },
    }
    box = MergeBox.from_state(state)
    assert len(box) == 3
    assert box.subscriptions_of("c", "2") == {"A", "B"}
    assert box.collections() == ["c", "d"]


def test_state_of_shared_doc_with_one_sub_is_normalised() -> None:
    state = {
        "version": 1,
        "collections": {"c": {"1": {"subs": ["A"], "data": {"a": [["A", 1]]}}}},
    }
    box = MergeBox.from_state(state)
    assert box.to_state()["collections"]["c"]["1"] == {"sub": "A", "fields": {"a": 1}}


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 2, "collections": {}},
        {"version": 1, "collections": {"c": {"1": {"fields": {}}}}},
        {"version": 1, "collections": {"c": {"1": {"sub": {"x": 1}, "fields": {}}}}},
        {"version": 1, "collections": {"c": {"1": {"sub": "A", "fields": {1: 2}}}}},
        {"version": 1, "collections": {"c": {"1": {"sub": "A", "fields": {"_id": 2}}}}},
        {"version": 1, "collections": {"c": {"1": {"subs": [], "data": {}}}}},
        {"version": 1, "collections": {"c": {"1": {"subs": ["A"], "data": {"a": [["B", 1]]}}}}},
        {"version": 1, "collections": {"c": {"1": {"subs": ["A", "B"], "data": {"a": []}}}}},
        {"version": 1, "collections": {"c": {"1": {"subs": ["A"], "data": {"a": []}}}}},
        {
            "version": 1,
            "collections": {"c": {"1": {"subs": ["A", "B"], "data": {"a": [["A", 1], ["A", 2]]}}}},
        },
        {
            "version": 1,
            "collections": {"c": {"1": {"subs": ["A", "B"], "data": {"a": [["C", 1]]}}}},
        },
        {"version": 1, "collections": {"c": {"1": {"subs": ["A", "A"], "data": {}}}}},
        {
            "version": 1,
            "collections": {"c": {"1": {"subs": ["A"], "data": {"a": [["A", 1], ["A", 2]]}}}},
        },
    ],
)
def test_malformed_state_raises(state: dict[str, Any]) -> None:
    try:
        MergeBox.from_state(state)
    except LocalProtocolError:
        return
    pytest.fail(f"accepted {state!r}")


def test_unserialisable_handle_raises() -> None:
    box = MergeBox()
    box.add(object(), "c", "1", {})
    with pytest.raises(LocalProtocolError):
        box.to_state()


# -- model-based -------------------------------------------------------------------------

SUBS: list[Hashable] = ["A", "B", ("U", "u1")]
COLLECTIONS = ["x", "y"]
IDS = ["1", "2"]
FIELD_NAMES = ["f", "g", "h"]
# 1.0 equals 1 but is of another type: the view keeps the value the client has.
VALUES = st.sampled_from([0, 1, 1.0, None, [1, 2], {"k": 1}])
FIELDS = st.dictionaries(st.sampled_from([*FIELD_NAMES, "_id"]), VALUES, max_size=3)
CLEARED = st.lists(st.sampled_from([*FIELD_NAMES, "_id"]), max_size=3)


class ClientCache:
    """A strict DDP client store: the pre-2.4 / server-side DDP.connect behaviour."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}

    def apply(self, msg: Message) -> None:
        coll = self.docs.setdefault(msg["collection"], {})
        doc_id = msg["id"]
        if msg["msg"] == "added":
            assert set(msg) <= {"msg", "collection", "id", "fields"}
            assert doc_id not in coll, "Expected not to find a document already present for an add"
            assert msg.get("fields", True), "empty fields should be omitted"
            coll[doc_id] = dict(msg.get("fields", {}))
        elif msg["msg"] == "changed":
            assert set(msg) <= {"msg", "collection", "id", "fields", "cleared"}
            assert doc_id in coll, "Expected to find a document to change"
            fields, cleared = msg.get("fields", {}), msg.get("cleared", [])
            assert fields or cleared, "empty changed"
            assert "fields" not in msg or fields, "empty fields should be omitted"
            assert "cleared" not in msg or cleared, "empty cleared should be omitted"
            assert not set(fields) & set(cleared)
            doc = coll[doc_id]
            for key, value in fields.items():
                assert key != "_id"
                assert key not in doc or doc[key] != value, f"redundant change of {key}"
                doc[key] = value
            for key in cleared:
                assert key in doc, f"clear of a field the client does not have: {key}"
                del doc[key]
        else:
            assert msg == {"msg": "removed", "collection": msg["collection"], "id": doc_id}
            assert doc_id in coll, "Expected not to find a document already present for removed"
            del coll[doc_id]
        if not coll:
            del self.docs[msg["collection"]]


class Reference:
    """What each sub provides, plus per-field order of arrival; the first provider wins."""

    def __init__(self) -> None:
        self.provides: dict[tuple[Hashable, str, str], dict[str, Any]] = {}
        self.order: dict[tuple[str, str, str], list[Hashable]] = {}

    def publishes(self, sub: Hashable, c: str, i: str) -> bool:
        return (sub, c, i) in self.provides

    def add(self, sub: Hashable, c: str, i: str, fields: dict[str, Any]) -> None:
        if self.publishes(sub, c, i):
            self.change(sub, c, i, fields, [])
            return
        self.provides[sub, c, i] = {}
        self.change(sub, c, i, fields, [])

    def change(
        self, sub: Hashable, c: str, i: str, fields: dict[str, Any], cleared: list[str]
    ) -> None:
        mine = self.provides[sub, c, i]
        for key, value in fields.items():
            if key == "_id":
                continue
            if key not in mine:
                self.order.setdefault((c, i, key), []).append(sub)
            mine[key] = value
        for key in cleared:
            if key in mine:
                del mine[key]
                self.order[c, i, key].remove(sub)

    def remove(self, sub: Hashable, c: str, i: str) -> None:
        self.change(sub, c, i, {}, list(self.provides[sub, c, i]))
        del self.provides[sub, c, i]

    def view(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for _sub, c, i in self.provides:
            out.setdefault(c, {})[i] = {}
        for (c, i, key), subs in self.order.items():
            if subs:
                out[c][i][key] = self.provides[subs[0], c, i][key]
        return out

    def subs_of(self, c: str, i: str) -> set[Hashable]:
        return {s for (s, c2, i2) in self.provides if (c2, i2) == (c, i)}


class MergeBoxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.box = MergeBox()
        #: One memo for the whole run: an outcome must hold for as long as its dicts live.
        self.memo: UpdateMemo = {}
        self.client = ClientCache()
        self.ref = Reference()
        #: Every dict given to the box, with a copy taken then: the box may keep a given
        #: dict as its view, but must never change it.
        self.given: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def give(self, fields: dict[str, Any]) -> dict[str, Any]:
        self.given.append((fields, dict(fields)))
        return fields

    def deliver(self, messages: list[Message]) -> None:
        for msg in messages:
            self.client.apply(msg)
            # Messages are the caller's to change (a session may): scribble on them.
            if "fields" in msg:
                msg["fields"].clear()
                msg["fields"]["scribbled"] = object()
            if "cleared" in msg:
                msg["cleared"].append("scribbled")

    @rule(
        sub=st.sampled_from(SUBS),
        c=st.sampled_from(COLLECTIONS),
        i=st.sampled_from(IDS),
        fields=FIELDS,
    )
    def add(self, sub: Hashable, c: str, i: str, fields: dict[str, Any]) -> None:
        self.deliver(self.box.add(sub, c, i, self.give(fields)))
        self.ref.add(sub, c, i, fields)

    @rule(
        sub=st.sampled_from(SUBS),
        c=st.sampled_from(COLLECTIONS),
        i=st.sampled_from(IDS),
        fields=FIELDS,
        cleared=CLEARED,
    )
    def change(
        self, sub: Hashable, c: str, i: str, fields: dict[str, Any], cleared: list[str]
    ) -> None:
        cleared = [k for k in cleared if k not in fields]
        if not self.ref.publishes(sub, c, i):
            with pytest.raises(LocalProtocolError):
                self.box.change(sub, c, i, fields, cleared)
            return
        self.deliver(self.box.change(sub, c, i, self.give(fields), cleared))
        self.ref.change(sub, c, i, fields, cleared)

    @rule(data=st.data(), fields=FIELDS, cleared=CLEARED)
    def change_published(
        self, data: st.DataObject, fields: dict[str, Any], cleared: list[str]
    ) -> None:
        if self.ref.provides:
            sub, c, i = data.draw(st.sampled_from(sorted(self.ref.provides, key=repr)))
            self.change(sub, c, i, fields, cleared)

    @rule(sub=st.sampled_from(SUBS), c=st.sampled_from(COLLECTIONS), i=st.sampled_from(IDS))
    def remove(self, sub: Hashable, c: str, i: str) -> None:
        if not self.ref.publishes(sub, c, i):
            with pytest.raises(LocalProtocolError):
                self.box.remove(sub, c, i)
            return
        self.deliver(self.box.remove(sub, c, i))
        self.ref.remove(sub, c, i)

    @rule(
        sub=st.sampled_from(SUBS),
        c=st.sampled_from(COLLECTIONS),
        i=st.sampled_from(IDS),
        fields=FIELDS,
        member=st.booleans(),
    )
    def update(self, sub: Hashable, c: str, i: str, fields: dict[str, Any], member: bool) -> None:
        """Fan-out's one-call routing gives what the separate calls give."""
        twin = MergeBox.from_state(json.loads(json.dumps(self.box.to_state())))
        held = self.ref.publishes(sub, c, i)
        got = self.box.update(sub, c, i, self.give(fields) if member else None, memo=self.memo)
        if member:
            expected = twin.change(sub, c, i, fields) if held else twin.add(sub, c, i, fields)
        else:
            expected = twin.remove(sub, c, i) if held else []
        assert got == expected
        self.deliver(got)
        if member and held:
            self.ref.change(sub, c, i, fields, [])
        elif member:
            self.ref.add(sub, c, i, fields)
        elif held:
            self.ref.remove(sub, c, i)

    @rule(
        data=st.data(),
        sub=st.sampled_from(SUBS),
        c=st.sampled_from(COLLECTIONS),
        i=st.sampled_from(IDS),
        call=st.sampled_from(["add", "change", "update"]),
    )
    def give_again(self, data: st.DataObject, sub: Hashable, c: str, i: str, call: str) -> None:
        """A dict already given (maybe a view now, here or of another document) is given
        again, as fan-out gives one change's dict to every session."""
        if not self.given:
            return
        fields = data.draw(st.sampled_from([f for f, _copy in self.given]))
        if call == "add":
            self.add(sub, c, i, fields)
        elif call == "update":
            self.update(sub, c, i, fields, True)
        elif self.ref.provides:
            sub, c, i = data.draw(st.sampled_from(sorted(self.ref.provides, key=repr)))
            self.change(sub, c, i, fields, [])

    @rule(sub=st.sampled_from(SUBS))
    def remove_subscription(self, sub: Hashable) -> None:
        self.deliver(self.box.remove_subscription(sub))
        for s, c, i in list(self.ref.provides):
            if s == sub:
                self.ref.remove(s, c, i)

    @rule(through_json=st.booleans())
    def park_and_resume(self, through_json: bool) -> None:
        state = self.box.to_state()
        if through_json:
            self.box = MergeBox.from_state(json.loads(json.dumps(state)))
            return
        self.box = MergeBox.from_state(state)
        for docs in state["collections"].values():  # the state is the caller's
            for doc in docs.values():
                for part in doc.values():
                    if isinstance(part, dict | list):
                        part.clear()

    @invariant()
    def client_sees_the_reference_view(self) -> None:
        self.box.verify()
        expected = self.ref.view()
        assert self.client.docs == expected
        assert {c: self.box.documents(c) for c in self.box.collections()} == expected
        # What the box returns is the caller's: changing it changes nothing in the box.
        for c in self.box.collections():
            for doc in self.box.documents(c).values():
                doc["scribbled"] = 1
            for i in IDS:
                got = self.box.get(c, i)
                if got is not None:
                    got.clear()
        assert {c: self.box.documents(c) for c in self.box.collections()} == expected
        # The box never changes a dict it was given.
        for fields, copy in self.given:
            assert list(fields.items()) == list(copy.items())
            assert all(fields[k] is v for k, v in copy.items())
        assert len(self.box) == sum(len(docs) for docs in expected.values())
        for c in COLLECTIONS:
            for i in IDS:
                assert self.box.subscriptions_of(c, i) == self.ref.subs_of(c, i)


MergeBoxMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_mergebox_model = MergeBoxMachine.TestCase


def test_update_routes_in_one_call() -> None:
    box = MergeBox()
    assert box.update("s", "books", "1", None) == []  # not a member, not held: nothing
    assert box.update("s", "books", "1", {"title": "A", "n": 1}) == [
        {"msg": "added", "collection": "books", "id": "1", "fields": {"title": "A", "n": 1}}
    ]
    assert box.update("s", "books", "1", {"title": "A", "n": 1}) == []
    assert box.update("s", "books", "1", {"title": "B", "n": 1}) == [
        {"msg": "changed", "collection": "books", "id": "1", "fields": {"title": "B"}}
    ]
    box.add("t", "books", "1", {"title": "C", "x": 2})  # shared now: the general path
    assert box.update("t", "books", "1", {"title": "C", "x": 3}) == [
        {"msg": "changed", "collection": "books", "id": "1", "fields": {"x": 3}}
    ]
    assert box.update("s", "books", "1", None) == [
        {
            "msg": "changed",
            "collection": "books",
            "id": "1",
            "fields": {"title": "C"},
            "cleared": ["n"],
        }
    ]
    assert box.update("t", "books", "1", None) == [
        {"msg": "removed", "collection": "books", "id": "1"}
    ]


def test_update_memo_shares_one_outcome_between_boxes_holding_the_same_view() -> None:
    shared = {"title": "A", "n": 1}
    boxes = [MergeBox() for _ in range(3)]
    for box in boxes:
        box.add("s", "books", "1", shared)
    alone = MergeBox()
    alone.add("s", "books", "1", {"title": "A", "n": 1})  # equal, but its own dict
    memo: UpdateMemo = {}
    change = {"title": "B", "n": 1}
    results = [box.update("s", "books", "1", change, memo=memo) for box in boxes]
    expected = [{"msg": "changed", "collection": "books", "id": "1", "fields": {"title": "B"}}]
    assert results[0] == expected
    assert results[1] is results[0] and results[2] is results[0]  # computed once
    assert all(box._docs["books"]["1"] is change for box in boxes)
    assert alone.update("s", "books", "1", change, memo=memo) == expected
    assert alone.update("s", "books", "1", change, memo=memo) == []  # now holds `change`
    assert shared == {"title": "A", "n": 1}  # never mutated
