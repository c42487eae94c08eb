"""The listener's handling of what one drain of the LISTEN connection brings: coalesced runs
per channel, gaps, duplicates and epoch changes (no database: the backfill is recorded).

The same code against a real PostgreSQL, with the listener's backend killed and the server
restarted mid-storm, is in ``tests/e2e/test_live.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from relay.protocol.changestream import encode_notification
from relay.stream.listener import COALESCE_MAX, Listener
from tests.relay.stream.test_fanout import BOOKS, FakeSession, make


@dataclass
class Note:
    channel: str
    payload: str


def note(seq: int, title: str, epoch: str = "E", channel: str = "ddp_books") -> Note:
    change = {"o": "u" if seq > 1 else "i", "id": "b1", "f": {"title": title, "author": "ann"}}
    return Note(channel, encode_notification(seq, epoch, seq, [change]))


@pytest.fixture
def setup() -> tuple[Listener, FakeSession, list[str], list[tuple[str, int, str]]]:
    streams, _, _ = make()
    session = FakeSession()
    streams.attach(session, "s", BOOKS, (0, "E"))  # type: ignore[arg-type]
    listener = Listener("", streams)
    backfills: list[str] = []
    lost: list[tuple[str, int, str]] = []
    listener._backfill = backfills.append  # type: ignore[method-assign]
    real_lost = streams.lost_history

    def lost_history(channel: str, seq: int, epoch: str) -> None:
        lost.append((channel, seq, epoch))
        real_lost(channel, seq, epoch)

    streams.lost_history = lost_history  # type: ignore[method-assign]
    return listener, session, backfills, lost


Setup = tuple[Listener, FakeSession, list[str], list[tuple[str, int, str]]]


def titles(session: FakeSession) -> list[Any]:
    return [m.get("fields", {}).get("title") for m in session.sent]


def test_a_drained_burst_is_one_write_per_session(setup: Setup) -> None:
    listener, session, backfills, _ = setup
    listener._on_notifies([note(i, f"t{i}") for i in range(1, 6)])
    assert session.writes == [5]
    assert titles(session) == ["t1", "t2", "t3", "t4", "t5"]
    assert backfills == []


def test_runs_are_bounded(setup: Setup) -> None:
    listener, session, _, _ = setup
    listener._on_notifies([note(i, f"t{i}") for i in range(1, COALESCE_MAX + 3)])
    assert session.writes == [COALESCE_MAX, 2]


def test_duplicates_are_dropped_and_a_gap_backfills_after_the_run(setup: Setup) -> None:
    listener, session, backfills, _ = setup
    listener._on_notifies([note(1, "a"), note(1, "a"), note(2, "b"), note(4, "d"), note(3, "c")])
    # 1 and 2 went out together; 4 is past a gap: backfill (recorded here, so 3 then
    # arrives as the next one and is delivered).
    assert session.writes == [2, 1]
    assert titles(session) == ["a", "b", "c"]
    assert backfills == ["ddp_books"]


def test_an_epoch_change_delivers_the_run_then_resyncs(setup: Setup) -> None:
    listener, session, _, lost = setup
    listener._on_notifies([note(1, "a"), note(2, "b"), note(1, "x", epoch="F")])
    assert session.writes == [2]
    assert lost == [("ddp_books", 1, "F")]


def test_channels_nobody_needs_and_malformed_payloads_are_skipped(setup: Setup) -> None:
    listener, session, backfills, _ = setup
    listener._on_notifies(
        [Note("ddp_books", "not json"), note(1, "x", channel="ddp_authors"), note(1, "a")]
    )
    assert titles(session) == ["a"] and backfills == []
