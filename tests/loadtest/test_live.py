"""``loadtest/live.py``: the stamp a writer puts in a title, and the observer that turns a
received stamped change into a commit-to-client sample.

Property tests: a stamp round-trips for any base title and time, stays within the title
limit, and is cut off by the scenario's ``base_title``; arbitrary text (and non-strings)
never parses as a stamp unless it ends like one, and never raises. The observer reports
exactly the stamped ``changed`` messages of the books collection, clamps clock skew to
0 ms and counts it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.live import (
    BOOKS,
    COMMIT_TO_CLIENT,
    LIVE,
    TITLE_MAX,
    LiveObserver,
    sent_at,
    stamp,
)
from loadtest.scenario import base_title

tokens = st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True)
times = st.integers(min_value=0, max_value=10**15 - 1)
titles = st.text(max_size=400)


@given(titles, tokens, times)
def test_a_stamp_round_trips_within_the_title_limit(base: str, token: str, ms: int) -> None:
    title = stamp(base, token, ms)
    assert sent_at(title) == ms
    assert len(title) <= TITLE_MAX
    assert title.endswith(f"@{ms}]")


@given(titles.filter(lambda t: " [locust " not in t), tokens, times)
def test_base_title_cuts_a_stamp_off(base: str, token: str, ms: int) -> None:
    title = stamp(base, token, ms)
    suffix = f" [locust {token}@{ms}]"
    assert base_title(title) == base[: TITLE_MAX - len(suffix)]
    assert title == base_title(title) + suffix


@given(st.one_of(titles, st.integers(), st.none(), st.lists(st.text())))
def test_anything_else_is_no_stamp_or_a_well_formed_one(value: Any) -> None:
    """Model: a stamp is exactly the regex at the end of a string."""
    model = (
        int(m.group(1))
        if isinstance(value, str)
        and (m := re.search(r" \[locust [0-9a-f]{1,32}@([0-9]{1,15})\]\Z", value))
        else None
    )
    assert sent_at(value) == model


@pytest.mark.parametrize(
    ("token", "ms"), [("", 1), ("XYZ", 1), ("a" * 33, 1), ("ab", -1), ("ab", 10**15)]
)
def test_a_bad_stamp_is_refused(token: str, ms: int) -> None:
    with pytest.raises(ValueError, match="bad stamp"):
        stamp("t", token, ms)


def changed(title: Any, collection: str = BOOKS) -> dict[str, Any]:
    return {"msg": "changed", "collection": collection, "id": "b1", "fields": {"title": title}}


def test_the_observer_reports_stamped_book_changes_only() -> None:
    out: list[tuple[str, str, float, int, BaseException | None]] = []
    observer = LiveObserver(lambda *a: out.append(a), clock=lambda: 10_250)
    observer(changed(stamp("Mort", "ab", 10_000)))
    observer(changed("Mort"))  # the rename back
    observer(changed(stamp("Mort", "ab", 10_000), collection="bookstore.author"))
    observer(
        {"msg": "added", "collection": BOOKS, "id": "x", "fields": {"title": stamp("M", "a", 1)}}
    )
    observer({"msg": "changed", "collection": BOOKS, "id": "b1"})  # only cleared fields
    observer({"msg": "changed", "collection": BOOKS, "id": "b1", "fields": ["not", "a", "dict"]})
    observer({"msg": "ping"})
    assert [(kind, name, ms, exc) for kind, name, ms, _, exc in out] == [
        (LIVE, COMMIT_TO_CLIENT, 250.0, None)
    ]
    assert out[0][3] > 0 and observer.seen == 1 and observer.skewed == 0


def test_a_stamp_from_the_future_is_zero_and_counted() -> None:
    out: list[float] = []
    observer = LiveObserver(lambda _t, _n, ms, _l, _e: out.append(ms), clock=lambda: 5)
    observer(changed(stamp("Mort", "ab", 9)))
    assert out == [0.0] and observer.skewed == 1
