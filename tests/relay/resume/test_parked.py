"""The parked-session format: round trip of every field (and of any state, by property),
which counts can be resumed, and which texts are not states this code resumes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import ejson
from relay.protocol.mergebox import MergeBox
from relay.resume import parked
from relay.resume.parked import ParkedSession, ParkedSubscription


def make(sent: int = 10, log: int = 4) -> ParkedSession:
    box = MergeBox()
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    box.add("s", "books", "b1", {"title": "T", "price": Decimal("1.10"), "at": when})
    box.add("t", "books", "b1", {"extra": [1, {"$date": 5}]})
    return ParkedSession(
        session_id="abc",
        user_id="7",
        version="1",
        sent_count=sent,
        log_start=sent - log + 1,
        log=[f"m{n}" for n in range(sent - log + 1, sent + 1)],
        subs=[ParkedSubscription("s", "books.all", (dt.date(2024, 1, 1), "x"), True)],
        mergebox=box.to_state(),
        results={"1": '{"msg":"result","id":"1"}'},
    )


def test_round_trip_keeps_the_mergebox_exact() -> None:
    state = make()
    back = parked.loads(parked.dumps(state))
    assert back is not None
    assert back.session_id == "abc" and back.user_id == "7" and back.results == state.results
    assert back.subs[0].name == "books.all" and back.subs[0].ready
    box = MergeBox.from_state(back.mergebox)
    assert box.documents("books") == MergeBox.from_state(state.mergebox).documents("books")
    assert box.subscriptions_of("books", "b1") == frozenset({"s", "t"})


def test_missed_messages_by_count() -> None:
    state = make(sent=10, log=4)  # log holds messages 7..10
    assert state.missed_since(10) == []
    assert state.missed_since(8) == ["m9", "m10"]
    assert state.missed_since(6) == ["m7", "m8", "m9", "m10"]
    assert state.missed_since(5) is None  # the log does not reach back
    assert state.missed_since(11) is None  # more than was ever sent
    assert state.missed_since(0) is None


def test_unknown_versions_and_garbage_are_not_resumed() -> None:
    assert parked.loads("not json") is None
    assert parked.loads('{"v": 99}') is None
    assert parked.loads('{"v": 1}') is None


def test_every_field_survives_the_round_trip() -> None:
    state = ParkedSession(
        session_id="S1",
        user_id=None,
        version="pre2",
        sent_count=42,
        log_start=40,
        log=['{"msg":"added"}', "\u00e9t\u00e9 \U0001f600", ""],
        subs=[
            ParkedSubscription("a", "books.all", (), True),
            ParkedSubscription("b", "books.by", ("le-guin", 3, None, {"$date": 1}), False),
        ],
        mergebox=MergeBox().to_state(),
        results={"1": "r1", "2": "r2"},
    )
    text = parked.dumps(state)
    assert parked.loads(text) == state
    # Text kept as text (no \\u escapes): what is stored is what was sent.
    assert "\u00e9t\u00e9 \U0001f600" in text


def test_the_results_default_to_none_completed() -> None:
    state = ParkedSession("S1", "7", "1", 1, 2, [], [], MergeBox().to_state())
    assert state.results == {}
    assert parked.loads(parked.dumps(state)) == state


def test_an_empty_log_serves_only_the_clients_exact_count() -> None:
    # RELAY_RESUME_LOG=0: nothing to replay, so only a client that missed nothing resumes.
    state = ParkedSession("S1", None, "1", 5, 6, [], [], MergeBox().to_state())
    assert state.missed_since(5) == []
    assert state.missed_since(4) is None
    assert state.missed_since(6) is None


def test_a_log_reaching_back_to_connected_serves_every_count() -> None:
    state = make(sent=3, log=3)  # m1 (connected), m2, m3
    assert state.missed_since(1) == ["m2", "m3"]
    assert state.missed_since(3) == []


@pytest.mark.parametrize(
    "mangle",
    [
        lambda o: o.pop("log"),
        lambda o: o.update(sent="many"),
        lambda o: o.update(results=["1"]),
        lambda o: o.update(subs=[{"id": "s"}]),
        lambda o: o.update(subs=None),
        lambda o: o.update(v="1"),
    ],
    ids=["missing-field", "bad-count", "results-not-a-map", "sub-incomplete", "subs-null", "v-str"],
)
def test_a_damaged_state_is_not_resumed(mangle: Callable[[dict[str, Any]], object]) -> None:
    obj = json.loads(parked.dumps(make()))
    mangle(obj)
    assert parked.loads(json.dumps(obj)) is None


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 1, 1)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=dt.UTC)
    ),
    st.decimals(allow_nan=False, places=3),
)
values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
ids = st.text(alphabet="abcdefghijkXYZ0123456789", min_size=1, max_size=17)


@st.composite
def parked_sessions(draw: st.DrawFn) -> ParkedSession:
    box = MergeBox()
    for sub, collection, doc_id, fields in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["s1", "s2", "s3"]),
                st.sampled_from(["books", "authors"]),
                ids,
                st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=3),
            ),
            max_size=6,
        )
    ):
        box.add(sub, collection, doc_id, fields)
    sent = draw(st.integers(min_value=1, max_value=10_000))
    log = draw(st.lists(st.text(max_size=20), max_size=min(sent, 6)))
    return ParkedSession(
        session_id=draw(ids),
        user_id=draw(st.none() | ids),
        version=draw(st.sampled_from(["1", "pre2", "pre1"])),
        sent_count=sent,
        log_start=sent - len(log) + 1,
        log=log,
        subs=draw(
            st.lists(
                st.builds(
                    ParkedSubscription,
                    ids,
                    st.text(max_size=10),
                    st.lists(values, max_size=3).map(tuple),
                    st.booleans(),
                ),
                max_size=3,
            )
        ),
        mergebox=box.to_state(),
        results=draw(st.dictionaries(ids, st.text(max_size=20), max_size=3)),
    )


@settings(max_examples=60, deadline=None)
@given(parked_sessions(), st.integers(min_value=-2, max_value=10_002))
def test_any_state_round_trips_and_replays_what_the_client_lacks(
    state: ParkedSession, received: int
) -> None:
    text = parked.dumps(state)
    back = parked.loads(text)
    assert back is not None
    assert parked.dumps(back) == text  # byte-identical: nothing drifts from park to park
    assert ejson.equals(back.mergebox, state.mergebox)
    assert (back.session_id, back.user_id, back.version, back.results) == (
        state.session_id,
        state.user_id,
        state.version,
        state.results,
    )
    assert (back.sent_count, back.log_start, back.log) == (
        state.sent_count,
        state.log_start,
        state.log,
    )
    assert len(back.subs) == len(state.subs)
    for b, s in zip(back.subs, state.subs, strict=True):
        assert (b.id, b.name, b.ready) == (s.id, s.name, s.ready)
        assert isinstance(b.params, tuple) and ejson.equals(list(b.params), list(s.params))
    MergeBox.from_state(back.mergebox)  # still a mergebox
    # The messages handed back are exactly those numbered after the client's count.
    missed = back.missed_since(received)
    numbered = dict(enumerate(state.log, start=state.log_start))
    if 1 <= received <= state.sent_count and received >= state.log_start - 1:
        assert missed == [numbered[n] for n in range(received + 1, state.sent_count + 1)]
    else:
        assert missed is None


def test_a_logged_message_with_a_lone_surrogate_packs_and_comes_back_as_it_was() -> None:
    # Found by the fuzz probe: "Method '\ud800' not found" echoed to a client, then the
    # session could not be parked ("surrogates not allowed").
    from relay.resume.parked import pack, unpack

    state = ParkedSession(
        "S1", None, "1", 2, 1, ["a", '{"reason":"\ud800"}'], [], MergeBox().to_state()
    )
    assert unpack(pack(state)) == state
