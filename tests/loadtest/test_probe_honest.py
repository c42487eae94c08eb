"""``loadtest.probe.honest``: which messages count as the watched live update, and how
arrivals become latency samples (a write that never arrived is an infinite sample, not a
missing one). The monitor itself runs against a real relay in
tests/e2e/test_probe_smoke.py; its client's socket in tests/loadtest/test_probe_wire.py.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from loadtest.probe.honest import COLLECTION, HonestMonitor, Sample, live_samples


def monitor() -> HonestMonitor:
    m = HonestMonitor("ws://127.0.0.1:1/websocket", "", port=1, workers=list)
    m.book_id = "dispossessed"
    return m


def changed(
    title: object, *, book: str = "dispossessed", kind: str = "changed"
) -> dict[str, object]:
    return {"msg": kind, "collection": COLLECTION, "id": book, "fields": {"title": title}}


def test_only_the_watched_books_titles_match() -> None:
    m = monitor()
    assert m._match(changed(m.prefix + "12")) == 12
    assert m._match(changed(m.prefix + "3", kind="added")) == 3  # a fresh subscriber's
    assert m._match(changed(m.prefix + "12", book="lathe")) is None
    assert m._match(changed("probe orm 1.2")) is None  # the attacker's renames
    assert m._match(changed(m.prefix + "x")) is None
    assert m._match(changed(None)) is None
    assert m._match({"msg": "changed", "collection": "other", "id": "dispossessed"}) is None
    assert m._match({"msg": "removed", "collection": COLLECTION, "id": "dispossessed"}) is None


def test_each_monitor_has_its_own_prefix() -> None:
    assert monitor().prefix != monitor().prefix


def test_live_samples_cover_the_subscribed_window_only() -> None:
    commits = [10.0, 11.0, 12.0, 13.0]
    arrivals = {1: 11.05, 3: 13.2}
    out = live_samples(commits, arrivals, ready_at=10.5, end=12.5, worker=4)
    assert out == [Sample(11.0, out[0].ms, 4), Sample(12.0, math.inf, 4)]
    assert math.isclose(out[0].ms, 50.0)


@given(
    st.lists(st.floats(min_value=0, max_value=1e4), max_size=30),
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=0, max_value=1e4),
)
def test_live_samples_one_per_write_in_the_window(
    commits: list[float], ready_at: float, end: float
) -> None:
    out = live_samples(commits, {}, ready_at, end, None)
    assert len(out) == sum(1 for c in commits if ready_at < c < end)
    assert all(math.isinf(s.ms) for s in out)  # nothing arrived: every one is lost
