"""The worker's shared field values: equal values become one object, nothing else changes."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import messages
from relay.stream.interning import Interner


def test_equal_values_of_the_same_type_are_shared() -> None:
    interner = Interner()
    first = interner.fields("books", "1", {"title": "A" * 3, "when": datetime.date(2020, 1, 1)})
    second = interner.fields(
        "books", "1", {"title": "".join("AAA"), "when": datetime.date(2020, 1, 1)}
    )
    assert second == first
    assert second["title"] is first["title"] and second["when"] is first["when"]


def test_different_or_differently_typed_values_are_not_substituted() -> None:
    interner = Interner()
    interner.fields("books", "1", {"n": 1, "flag": True, "price": Decimal("1.0"), "t": "a"})
    interner.fields("books", "1", {"z": 0.0})
    new = {"n": True, "flag": 1, "price": Decimal("1.00"), "t": "b", "z": -0.0}
    again = interner.fields("books", "1", new)
    # True is not 1; Decimal 1.00 is not 1.0 and -0.0 is not 0.0 on the wire; "b" is new.
    assert again["n"] is True and again["flag"] == 1 and type(again["flag"]) is int
    assert str(again["price"]) == "1.00" and again["t"] == "b" and str(again["z"]) == "-0.0"
    # The newest values are what later loads share.
    assert interner.fields("books", "1", {"t": "".join(["b"])})["t"] is again["t"]


def test_the_input_mapping_is_left_alone_and_documents_are_separate() -> None:
    interner = Interner()
    given_fields = {"title": "x"}
    interner.fields("books", "1", given_fields)
    out = interner.fields("books", "2", {"title": "".join("x")})
    assert out["title"] is not given_fields["title"] or out["title"] == "x"
    assert given_fields == {"title": "x"}


def test_the_same_version_gives_the_same_dict() -> None:
    interner = Interner()
    first = interner.fields("books", "1", {"title": "".join("AB"), "n": 1})
    again = interner.fields("books", "1", {"title": "".join("AB"), "n": 1})
    assert again is first
    assert interner.fields("books", "1", first) is first
    assert interner.fields("books", "2", {"title": "AB", "n": 1}) is not first


def test_a_handed_out_dict_is_never_changed() -> None:
    interner = Interner()
    first = interner.fields("books", "1", {"title": "A", "n": 1})
    newer = interner.fields("books", "1", {"title": "B", "n": 1})
    assert first == {"title": "A", "n": 1} and newer == {"title": "B", "n": 1}
    assert newer is not first and newer["n"] is first["n"]
    assert interner.fields("books", "1", {"title": "B", "n": 1}) is newer  # the new canonical
    # Other names, or the same names in another order: a new dict, in the incoming order.
    fewer = interner.fields("books", "1", {"title": "B"})
    assert fewer == {"title": "B"} and newer == {"title": "B", "n": 1}
    reordered = interner.fields("books", "1", {"n": 1, "title": "B"})
    assert list(reordered) == ["n", "title"] and reordered is not newer
    assert list(newer) == ["title", "n"]


def test_values_of_fields_the_latest_version_lacks_are_still_shared() -> None:
    interner = Interner()
    full = interner.fields("books", "1", {"title": "T", "isbn": "".join("978")})
    interner.fields("books", "1", {"title": "T"})  # a projection
    again = interner.fields("books", "1", {"title": "T", "isbn": "".join("978")})
    assert again["isbn"] is full["isbn"] and again["title"] is full["title"]
    assert interner.fields("books", "1", {"title": "T", "isbn": "978"}) is again


def test_the_table_is_bounded_and_forgets_deleted_documents() -> None:
    interner = Interner(max_documents=3)
    for i in range(10):
        interner.fields("books", str(i), {"title": str(i)})
    assert len(interner) == 3
    interner.forget("books", "9")
    assert len(interner) == 2
    with pytest.raises(ValueError):
        Interner(max_documents=0)


def test_recently_seen_documents_stay() -> None:
    interner = Interner(max_documents=2)
    interner.fields("books", "a", {"t": 1})
    interner.fields("books", "b", {"t": 2})
    interner.fields("books", "a", {"t": 1})  # seen again: now the most recent
    interner.fields("books", "c", {"t": 3})  # evicts b, not a
    shared = interner.fields("books", "a", {"t": 1})
    assert interner.hits >= 2 and len(interner) == 2 and shared == {"t": 1}


def test_added_texts_are_encoded_once_for_shared_values() -> None:
    interner = Interner()
    texts = []
    for _ in range(3):
        fields = interner.fields("books", "1", {"title": "".join(["T", "x"]), "n": 5})
        msg = {"msg": "added", "collection": "books", "id": "1", "fields": dict(fields)}
        texts.append(interner.encode(msg))
    assert texts[0] == messages.encode(
        {"msg": "added", "collection": "books", "id": "1", "fields": {"title": "Tx", "n": 5}}
    )
    assert texts[1] is texts[0] and texts[2] is texts[0]
    # A changed value gives a new text; other messages are encoded as usual.
    fields = interner.fields("books", "1", {"title": "Ty", "n": 5})
    changed = interner.encode({"msg": "added", "collection": "books", "id": "1", "fields": fields})
    assert json.loads(changed)["fields"]["title"] == "Ty"
    removed = {"msg": "removed", "collection": "books", "id": "1"}
    assert interner.encode(removed) == messages.encode(removed)


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(st.lists(st.dictionaries(st.sampled_from("abc"), VALUES, max_size=3), max_size=6))
def test_interning_never_changes_what_a_client_would_see(loads: list[dict[str, Any]]) -> None:
    interner = Interner(max_documents=2)
    handed_out: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for fields in loads:
        given = dict(fields)
        out = interner.fields("c", "1", fields)
        assert list(fields.items()) == list(given.items())  # the input is left alone
        assert list(out) == list(fields)
        # The same version (names, order, value objects) gives the canonical dict itself.
        assert interner.fields("c", "1", dict(out)) is out
        handed_out.append((out, dict(out)))
        # A dict handed out is never changed afterwards.
        for dict_out, copy in handed_out:
            assert list(dict_out.items()) == list(copy.items())
            assert all(dict_out[k] is v for k, v in copy.items())
        # What a client receives is exactly what it would have without interning.
        assert messages.encode({"msg": "added", "collection": "c", "id": "1", "fields": out}) == (
            messages.encode({"msg": "added", "collection": "c", "id": "1", "fields": fields})
        )


def test_document_ids_are_shared_too() -> None:
    interner = Interner()
    first = "".join(["book", "-1"])
    again = "".join(["book", "-", "1"])
    assert first is not again
    assert interner.canonical_id("books", again) is again  # unknown: as given
    interner.fields("books", first, {"t": 1})
    assert interner.canonical_id("books", again) is first
