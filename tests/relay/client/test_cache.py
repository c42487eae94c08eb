"""Tests for relay.client.cache: Meteor's strict merge rules, then a model-based run, then
the quiescence buffer (no socket, no thread)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.client.cache import BUFFERED, DocumentCache, QuiescenceBuffer


def added(c: str, i: str, **fields: Any) -> dict[str, Any]:
    return {"msg": "added", "collection": c, "id": i, "fields": fields}


def changed(
    c: str, i: str, fields: dict[str, Any] | None = None, cleared: list[str] | None = None
) -> dict[str, Any]:
    msg: dict[str, Any] = {"msg": "changed", "collection": c, "id": i}
    if fields is not None:
        msg["fields"] = fields
    if cleared is not None:
        msg["cleared"] = cleared
    return msg


def removed(c: str, i: str) -> dict[str, Any]:
    return {"msg": "removed", "collection": c, "id": i}


def ready(subs: list[str]) -> dict[str, Any]:
    return {"msg": "ready", "subs": subs}


# -- DocumentCache: the rules ------------------------------------------------------------


def test_added_changed_cleared_removed() -> None:
    cache = DocumentCache()
    cache.apply(added("books", "1", title="A", year=1990))
    cache.apply(changed("books", "1", {"title": "B", "isbn": "x"}, ["year"]))
    assert cache.docs("books") == {"1": {"title": "B", "isbn": "x"}}
    cache.apply(removed("books", "1"))
    assert cache.docs("books") == {}
    assert cache.violations == []


def test_added_without_fields_is_an_empty_document() -> None:
    cache = DocumentCache()
    cache.apply({"msg": "added", "collection": "c", "id": "1"})
    cache.apply({"msg": "changed", "collection": "c", "id": "1"})
    assert cache.docs("c") == {"1": {}}


def test_fields_are_ejson_decoded() -> None:
    cache = DocumentCache()
    cache.apply(added("c", "1", at={"$date": 0}))
    cache.apply(changed("c", "1", {"then": {"$date": 1000}}))
    assert cache.docs("c")["1"] == {
        "at": datetime(1970, 1, 1, tzinfo=UTC),
        "then": datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
    }


def test_duplicate_added_is_a_violation_and_the_new_fields_win() -> None:
    cache = DocumentCache()
    cache.apply(added("books", "1", t=1))
    cache.apply(added("books", "1", u=2))
    assert cache.violations == ["duplicate added books/1"]
    assert cache.docs("books") == {"1": {"u": 2}}


def test_changed_for_missing_is_a_violation_and_creates_nothing() -> None:
    cache = DocumentCache()
    cache.apply(changed("books", "9", {"t": 1}))
    assert cache.violations == ["changed for missing books/9"]
    assert cache.docs("books") == {}


def test_removed_for_missing_is_a_violation() -> None:
    cache = DocumentCache()
    cache.apply(added("books", "1"))
    cache.apply(removed("books", "1"))
    cache.apply(removed("books", "1"))
    assert cache.violations == ["removed for missing books/1"]


def test_collections_are_separate() -> None:
    cache = DocumentCache()
    cache.apply(added("a", "1", t=1))
    cache.apply(added("b", "1", t=2))
    cache.apply(removed("a", "1"))
    assert cache.docs("a") == {} and cache.docs("b") == {"1": {"t": 2}}
    assert cache.violations == []


def test_docs_is_a_copy() -> None:
    cache = DocumentCache()
    cache.apply(added("c", "1", t=1))
    docs = cache.docs("c")
    docs["1"]["t"] = 99
    docs["2"] = {}
    assert cache.docs("c") == {"1": {"t": 1}}
    assert cache.docs("never") == {}


def test_reset_empties_in_place() -> None:
    cache = DocumentCache()
    live = cache.collections
    cache.apply(added("c", "1"))
    cache.reset()
    assert live == {} and cache.collections is live
    cache.apply(added("c", "1"))  # no longer a duplicate
    assert cache.violations == []


def test_other_messages_are_refused() -> None:
    with pytest.raises(ValueError, match="ready"):
        DocumentCache().apply({"msg": "ready", "subs": []})


# -- DocumentCache: against a reference model ------------------------------------------------

COLLECTIONS = st.sampled_from(["books", "authors"])
IDS = st.sampled_from(["1", "2", "3", "x"])
NAMES = st.sampled_from(["title", "year", "tags", "_x"])
# Plain JSON values (nothing EJSON decodes differently): the model stores them as given.
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=5,
)
FIELDS = st.dictionaries(NAMES, VALUES, max_size=3)


class WellFormedStream(RuleBasedStateMachine):
    """Only well-formed messages: the cache must equal a dict model and see no violation."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = DocumentCache()
        self.model: dict[str, dict[str, dict[str, Any]]] = {"books": {}, "authors": {}}

    @rule(coll=COLLECTIONS, doc_id=IDS, fields=FIELDS)
    def add(self, coll: str, doc_id: str, fields: dict[str, Any]) -> None:
        if doc_id in self.model[coll]:
            return  # not well-formed: that is the other test's business
        self.cache.apply(added(coll, doc_id, **fields))
        self.model[coll][doc_id] = dict(fields)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), fields=FIELDS)
    def change(self, data: st.DataObject, fields: dict[str, Any]) -> None:
        coll = data.draw(st.sampled_from([c for c, docs in self.model.items() if docs]))
        doc_id = data.draw(st.sampled_from(sorted(self.model[coll])))
        doc = self.model[coll][doc_id]
        # A field is either set or cleared in one message, never both.
        names = st.lists(st.sampled_from(sorted(doc)), unique=True) if doc else st.just([])
        cleared = [name for name in data.draw(names) if name not in fields]
        self.cache.apply(changed(coll, doc_id, fields or None, cleared or None))
        doc.update(fields)
        for name in cleared:
            doc.pop(name, None)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        coll = data.draw(st.sampled_from([c for c, docs in self.model.items() if docs]))
        doc_id = data.draw(st.sampled_from(sorted(self.model[coll])))
        self.cache.apply(removed(coll, doc_id))
        del self.model[coll][doc_id]

    @invariant()
    def same_docs_no_violation(self) -> None:
        for coll, docs in self.model.items():
            assert self.cache.docs(coll) == docs
        assert self.cache.violations == []


TestWellFormedStream = WellFormedStream.TestCase


MESSAGES = st.one_of(
    st.builds(lambda c, i, f: added(c, i, **f), COLLECTIONS, IDS, FIELDS),
    st.builds(lambda c, i, f: changed(c, i, f), COLLECTIONS, IDS, FIELDS),
    st.builds(removed, COLLECTIONS, IDS),
)


@given(st.lists(MESSAGES, max_size=40))
def test_any_stream_one_violation_per_ill_formed_message(msgs: list[dict[str, Any]]) -> None:
    cache = DocumentCache()
    model: dict[str, dict[str, dict[str, Any]]] = {"books": {}, "authors": {}}
    ill_formed = 0
    for msg in msgs:
        docs = model[msg["collection"]]
        present = msg["id"] in docs
        if msg["msg"] == "added":
            ill_formed += present
            docs[msg["id"]] = dict(msg["fields"])
        elif not present:
            ill_formed += 1  # changed/removed for a missing document: nothing changes
        elif msg["msg"] == "changed":
            docs[msg["id"]].update(msg["fields"])
        else:
            del docs[msg["id"]]
        cache.apply(msg)
    assert len(cache.violations) == ill_formed
    for coll, docs in model.items():
        assert cache.docs(coll) == docs


# -- QuiescenceBuffer --------------------------------------------------------------------


def test_not_waiting_passes_everything_through() -> None:
    q = QuiescenceBuffer()
    assert not q.waiting and q.subs_reviving is None
    for kind in [*BUFFERED, "nosub", "result", "error", "pong"]:
        assert q.receive({"msg": kind, "subs": [], "methods": [], "id": "1"}) == (False, None)


def test_nothing_to_wait_for_releases_at_once() -> None:
    q = QuiescenceBuffer()
    assert q.begin(subs=[], methods=[]) == []
    assert not q.waiting


def test_holds_data_until_subs_ready_and_methods_updated() -> None:
    q = QuiescenceBuffer()
    assert q.begin(subs=["a", "b"], methods=["m1"]) is None
    assert q.waiting and q.subs_reviving == {"a", "b"}
    add = added("books", "1", t=1)
    result = {"msg": "result", "id": "m1", "result": 1}
    ready_a = ready(["a", "zz"])  # an unknown id does not matter
    ready_b = ready(["b"])
    updated = {"msg": "updated", "methods": ["m1"]}
    assert q.receive(add) == (True, None)
    assert q.receive(result) == (False, None)  # results go through at once
    assert q.receive(ready_a) == (True, None)
    assert q.receive(ready_b) == (True, None)
    assert q.subs_reviving == set() and q.waiting  # the method still blocks
    assert q.receive(updated) == (True, [add, ready_a, ready_b, updated])
    assert not q.waiting
    assert q.receive(removed("books", "1")) == (False, None)


def test_nosub_ends_a_subs_wait_and_passes_through() -> None:
    q = QuiescenceBuffer()
    q.begin(subs=["a", "b"], methods=[])
    add = added("c", "1")
    assert q.receive(add) == (True, None)
    assert q.receive({"msg": "nosub", "id": "a"}) == (False, None)
    # The batch comes with the nosub that completed it; the caller then dispatches the nosub.
    assert q.receive({"msg": "nosub", "id": "b", "error": {"error": 404}}) == (False, [add])
    assert not q.waiting


def test_begin_again_drops_the_previous_buffer() -> None:
    q = QuiescenceBuffer()
    q.begin(subs=["a"], methods=[])
    q.receive(added("c", "old"))
    q.begin(subs=["b"], methods=[])
    new = added("c", "new")
    q.receive(new)
    assert q.receive(ready(["a", "b"]))[1] == [new, ready(["a", "b"])]


@given(
    subs=st.sets(st.sampled_from("abcdef"), max_size=4),
    methods=st.sets(st.sampled_from(["1", "2", "3"]), max_size=3),
    data=st.data(),
)
def test_released_exactly_when_the_last_wait_ends(
    subs: set[str], methods: set[str], data: st.DataObject
) -> None:
    # The completions (one ready/nosub per sub, one updated per method) in any order,
    # with data messages and results in between.
    ends: list[dict[str, Any]] = [
        data.draw(st.sampled_from([ready([s]), {"msg": "nosub", "id": s}])) for s in subs
    ]
    ends += [{"msg": "updated", "methods": [m]} for m in methods]
    ends = data.draw(st.permutations(ends))
    noise = st.sampled_from(
        [added("c", "1"), removed("c", "1"), {"msg": "result", "id": "9"}, {"msg": "error"}]
    )
    q = QuiescenceBuffer()
    if not ends:
        assert q.begin(subs, methods) == []
        return
    assert q.begin(subs, methods) is None
    held: list[dict[str, Any]] = []
    for n, end in enumerate(ends):
        for msg in data.draw(st.lists(noise, max_size=3)):
            was_held, batch = q.receive(msg)
            assert batch is None and was_held == (msg["msg"] in BUFFERED)
            held += [msg] if was_held else []
        was_held, batch = q.receive(end)
        assert was_held == (end["msg"] != "nosub")
        held += [end] if was_held else []
        if n < len(ends) - 1:
            assert batch is None and q.waiting
        else:
            assert batch == held and not q.waiting
