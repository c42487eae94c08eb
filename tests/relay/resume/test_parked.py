"""The parked-session format: round trip, and which counts can be resumed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

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
