"""relay.protocol.changestream: the commit time a payload carries (``t``), compatible both
ways, and the channel classes the listener's lag is reported by."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.changestream import (
    EVENT_CHANNEL_PREFIX,
    PRESENCE_CHANNEL,
    PayloadError,
    channel_class,
    commit_time,
    encode_notification,
    parse_notification,
)

CHANGE = {"o": "u", "id": 7, "f": {"title": "x"}}


@given(
    st.integers(1, 2**40),
    st.text(max_size=16),
    st.integers(1, 2**40),
    st.one_of(st.none(), st.floats(0, 4e9, allow_nan=False)),
    st.booleans(),
)
def test_the_commit_time_survives_encoding_inline_or_spilled(
    seq: int, epoch: str, txid: int, committed: float | None, big: bool
) -> None:
    changes = [{**CHANGE, "f": {"title": "y" * (9000 if big else 3)}}]
    note = parse_notification("ddp_x", encode_notification(seq, epoch, txid, changes, committed))
    assert (note.seq, note.epoch, note.txid) == (seq, epoch, txid)
    assert (note.changes is None) is big
    if committed is None:
        assert note.committed is None
    else:
        assert note.committed is not None
        assert abs(note.committed - committed) <= 1e-6 + abs(committed) * 1e-15


def test_a_payload_of_an_old_writer_still_decodes() -> None:
    note = parse_notification("ddp_x", '{"s":3,"e":"E","x":9,"c":[]}')
    assert note.committed is None and note.changes == ()


@pytest.mark.parametrize("bad", ['"1700000000000000"', "1.5e15", "true", "null", "[1]"])
def test_a_commit_time_of_another_type_is_ignored_not_refused(bad: str) -> None:
    note = parse_notification("ddp_x", f'{{"s":3,"e":"E","x":9,"t":{bad},"c":[]}}')
    assert note.committed is None


def test_the_commit_time_does_not_excuse_a_broken_payload() -> None:
    with pytest.raises(PayloadError):
        parse_notification("ddp_x", json.dumps({"s": "3", "e": "E", "x": 9, "t": 1}))


def test_commit_time_is_microseconds() -> None:
    assert commit_time(1_700_000_000_123_456) == 1_700_000_000.123456
    assert commit_time(True) is None  # a bool is not an integer here


@pytest.mark.parametrize(
    ("channel", "cls"),
    [
        ("ddp_bookstore_book", "model"),
        ("ddp_bookstore_book_p17", "model"),
        (EVENT_CHANNEL_PREFIX + "chat_0a1b2c3d", "event"),
        (PRESENCE_CHANNEL, "presence"),
        (PRESENCE_CHANNEL + "_p3", "presence"),
        (PRESENCE_CHANNEL + "_hold", "model"),
        (PRESENCE_CHANNEL + "_p", "model"),
        ("", "model"),
    ],
)
def test_channel_classes(channel: str, cls: str) -> None:
    assert channel_class(channel) == cls
