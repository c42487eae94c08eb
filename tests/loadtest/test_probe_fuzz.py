"""``loadtest.probe.fuzz``: the frames say truthfully what the protocol owes them, and the
accounting finds exactly the frames left unanswered.

Pure code: hypothesis over seeds (every frame of a generator must be sendable in a text
frame and classified as its text parses) and over reply sets (drop any subset of a
correct set of answers: ``unanswered`` and ``Tally`` must name exactly that many).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.probe.fuzz import (
    Frame,
    FrameGenerator,
    Raw,
    Tally,
    answers_in,
    render,
    reply_keys,
    unanswered,
)


def _reject(name: str) -> Any:
    raise ValueError(name)


def strict_loads(text: str) -> Any:
    """RFC 8259 JSON as Python reads it (NaN and Infinity refused, integers of any
    length: Python's 4,300-digit limit is its own, not JSON's)."""
    return json.loads(text, parse_constant=_reject, parse_int=_any_int)


def _any_int(text: str) -> int:
    return len(text)  # the value does not matter here, only that it is an integer


def frames(seed: int, n: int = 150, handshake: bool = False) -> list[Frame]:
    gen = FrameGenerator(seed, "t.", ["lathe", "small-gods"], ["leguin"])
    return [gen.frame(handshake=handshake) for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_every_frame_travels_in_a_text_frame(seed: int) -> None:
    for frame in frames(seed):
        frame.text.encode("utf-8")  # no lone surrogate in the text itself
        assert frame.text.strip(), "an empty frame is ignored by SockJS: never generated"


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_well_formed_means_a_json_object_with_a_string_msg(seed: int) -> None:
    for frame in frames(seed):
        try:
            value = strict_loads(frame.text)
        except RecursionError:
            # Deeper than Python's parser goes; JSON all the same (the generator knows).
            assert any("deep" in m for m in frame.mutations)
            continue
        except ValueError:
            assert not frame.well_formed, frame
            continue
        is_object = isinstance(value, dict) and isinstance(value.get("msg"), str)
        assert frame.well_formed == is_object, frame


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.booleans())
def test_answers_owed_follow_the_protocol(seed: int, handshake: bool) -> None:
    for frame in frames(seed, handshake=handshake):
        if frame.binary:
            assert frame.answers == 0 and handshake
            continue
        try:
            pong = frame.well_formed and strict_loads(frame.text).get("msg") == "pong"
        except RecursionError:
            pong = '"msg":"pong"' in frame.text
        # After connect a pong is owed nothing; before it, everything is answered.
        assert frame.answers == (0 if pong and not handshake else 1)
        assert frame.required == (frame.answers if frame.well_formed else 0)


def test_a_seed_reproduces_its_frames() -> None:
    assert [f.text for f in frames(7)] == [f.text for f in frames(7)]
    assert [f.text for f in frames(7)] != [f.text for f in frames(8)]


def test_ids_are_unique_so_answers_pair() -> None:
    keys = [key for f in frames(3, 3000) for key in f.keys if key[1] not in ("null",)]
    string_ids = [k for k in keys if k[1].startswith('"')]
    assert len(string_ids) == len(set(string_ids))


def test_the_mutations_the_issue_names_all_occur() -> None:
    seen = " ".join(m for f in frames(11, 6000) for m in f.mutations)
    texts = "".join(f.text for f in frames(11, 6000))
    for needed in ("1e400", "nul", "surrogate", "deep-list-5000", "drop:id", "msg:unknown", "long"):
        assert needed in seen, needed
    assert "\\ud800" in texts  # the unpaired surrogate, escaped
    assert "\\u0000" in texts  # the NUL, escaped
    kinds = {f.kind for f in frames(11, 6000)}
    assert {"bytes", "json", "ddp:method", "ddp:sub", "ddp:unsub", "ddp:ping"} <= kinds
    assert {"ddp:connect", "ddp:pong", "ddp:unknown"} <= kinds


def test_slow_rename_is_never_called() -> None:
    assert not any("slowRename" in f.text for f in frames(5, 5000))


def test_render_marks_invalid_tokens() -> None:
    assert render({"a": [1, Raw("1e400")]}) == ('{"a":[1,1e400]}', True)
    assert render([Raw("NaN", valid=False)]) == ("[NaN]", False)
    text, valid = render({"s": "\ud800\x00"})
    assert valid and text == '{"s":"\\ud800\\u0000"}'


def test_a_batch_respects_its_bounds_and_ends_at_a_connect() -> None:
    gen = FrameGenerator(2)
    for _ in range(200):
        batch = gen.batch(16, 64 * 1024)
        assert 1 <= len(batch) <= 16
        assert sum(len(f.text) for f in batch[:-1]) <= 64 * 1024
        assert all(f.kind != "ddp:connect" for f in batch[:-1])
        assert all(not f.binary for f in batch)


# -- accounting ------------------------------------------------------------------------------


def correct_replies(frame: Frame) -> list[dict[str, Any]]:
    """What a server keeping the protocol answers ``frame`` with (after connect)."""
    if frame.answers == 0:
        return []
    if frame.keys:
        kind, key = frame.keys[0]
        ident = json.loads(key)
        if kind == "result":
            return [{"msg": "result", "id": ident}, {"msg": "updated", "methods": [ident]}]
        if kind == "sub":
            return [
                {"msg": "added", "collection": "c", "id": "x"},
                {"msg": "ready", "subs": [ident]},
            ]
        if kind == "nosub":
            return [{"msg": "nosub", "id": ident}]
        return [{"msg": "pong", "id": ident}]
    return [{"msg": "error", "reason": "Bad request"}]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_dropped_answers_are_found(seed: int, data: st.DataObject) -> None:
    batch = [f for f in frames(seed, 40) if not any("deep" in m for m in f.mutations)]
    drop = data.draw(st.sets(st.integers(min_value=0, max_value=len(batch) - 1)))
    replies: list[dict[str, Any]] = []
    for i, frame in enumerate(batch):
        if i not in drop:
            replies += correct_replies(frame)
    owed = sum(f.answers for f in batch)
    lost_answers = sum(batch[i].answers for i in drop)
    assert answers_in(replies) == owed - lost_answers
    lost = unanswered(batch, replies)
    assert len(lost) == lost_answers
    # Frames with an id no other frame of the batch has are named exactly; errors may
    # pair with any id-less frame, and frames sharing an id (two pings without one) are
    # told apart by count only.
    counts = Counter(key for f in batch for key in f.keys)
    named = {
        id(batch[i])
        for i in drop
        if batch[i].keys and batch[i].answers and all(counts[k] == 1 for k in batch[i].keys)
    }
    assert named <= {id(f) for f in lost}
    tally = Tally()
    tally.add(batch, replies, complete=True)
    assert tally.missing == lost_answers
    assert tally.missing_required == min(lost_answers, sum(f.required for f in lost))
    assert tally.missing_required_cut == 0


def test_a_batch_cut_short_counts_apart() -> None:
    batch = frames(4, 10)
    tally = Tally()
    lost = tally.add(batch, [], complete=False)
    assert tally.broken_batches == 1
    assert tally.missing_required == tally.missing_required_cut == sum(f.required for f in lost)
    assert tally.missing == sum(f.answers for f in batch)


def test_extra_answers_are_counted_not_hidden() -> None:
    frame = Frame('{"msg":"pong"}', "ddp:pong", well_formed=True, answers=0)
    tally = Tally()
    assert tally.add([frame], [{"msg": "error", "reason": "Bad request"}], complete=True) == []
    assert (tally.extra, tally.missing) == (1, 0)


def test_ready_answers_each_sub_it_lists() -> None:
    assert answers_in([{"msg": "ready", "subs": ["a", "b"]}, {"msg": "updated"}]) == 2
    assert reply_keys({"msg": "nosub", "id": "a"}) == [("nosub", '"a"'), ("sub", '"a"')]
    assert reply_keys({"msg": "pong"}) == [("pong", "null")]


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_python_cannot_even_write_what_1e400_parses_to(value: float) -> None:
    # Why the frames carry ``1e400`` as a raw token: json.dumps would write Infinity.
    with pytest.raises(ValueError):
        json.dumps(value, allow_nan=False)
