"""The trace recorder (``relay.server.trace``): bounds, ring, redaction, against models."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.backend import TraceOrder
from relay.server.trace import BATCH_FRAMES, BATCH_SECONDS, REDACTED, Recorder, redact
from relay.transport import Oversized

ORDER = TraceOrder("t1", session_id="s1", until=1000.0, max_frames=50, max_chars=500)

texts = st.text(max_size=80)
events = st.lists(st.tuples(st.sampled_from(["in", "out"]), texts, st.floats(0, 30)), max_size=120)


def _feed(recorder: Recorder, evts: list[tuple[str, str, float]]) -> None:
    for direction, text, now in evts:
        if direction == "in":
            recorder.received(text, now)
        else:
            recorder.sent([text], now)


def _drain(recorder: Recorder, now: float, limit: int = 7) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while (chunk := recorder.take(now, limit)) is not None:
        assert chunk.first == chunk.frames[0]["i"]
        assert len(chunk.frames) <= limit
        frames.extend(chunk.frames)
    return frames


@settings(max_examples=200, deadline=None)
@given(
    evts=events,
    until=st.floats(0, 40),
    max_frames=st.integers(0, 60),
    max_chars=st.integers(0, 800),
    frame_chars=st.integers(0, 50),
    ring=st.integers(1, 200),
)
def test_bounds_against_a_brute_force_model(
    evts: list[tuple[str, str, float]],
    until: float,
    max_frames: int,
    max_chars: int,
    frame_chars: int,
    ring: int,
) -> None:
    evts = sorted(evts, key=lambda e: e[2])  # a clock runs forward
    order = TraceOrder("t", "s", None, until, max_frames, max_chars, frame_chars)
    recorder = Recorder(order, "relay-1", "s", 0.0, ring_size=ring)
    _feed(recorder, evts)

    # The model: the longest prefix of events each of which starts before ``until``,
    # with fewer than max_frames frames and max_chars characters recorded before it.
    kept: list[tuple[str, str, float]] = []
    chars = 0
    for direction, text, now in evts:
        if now >= until or len(kept) >= max_frames or chars >= max_chars:
            break
        cut = redact(text)[: min(frame_chars, max_chars - chars)]
        kept.append((direction, cut, now))
        chars += len(cut)

    assert recorder.recorded == len(kept)
    assert recorder.refused == len(evts) - len(kept)
    assert recorder.chars == chars <= max(max_chars, 0)
    assert recorder.waiting == min(len(kept), ring)
    assert recorder.dropped == len(kept) - recorder.waiting
    frames = _drain(recorder, 50.0)
    # Whatever the ring dropped, it dropped the oldest: what is left is the newest run.
    expected = kept[len(kept) - len(frames) :]
    assert [(f["d"], f["m"], f["t"]) for f in frames] == [
        (d, m, round(t, 6)) for d, m, t in expected
    ]
    assert [f["i"] for f in frames] == list(range(len(kept) - len(frames), len(kept)))
    for frame, (_, text, _) in zip(frames, evts[len(kept) - len(frames) :], strict=False):
        assert len(frame["m"]) <= frame_chars
        assert ("n" in frame) == (len(frame["m"]) < len(redact(text)))
    if len(kept) < len(evts):
        assert recorder.stopped in {"until", "frames", "chars"}


@settings(max_examples=100, deadline=None)
@given(
    # "zq" appears nowhere else in the frames: finding the secret means it leaked.
    secret=st.from_regex(r"zq[0-9A-Za-z]{4,28}", fullmatch=True),
    key=st.sampled_from(["password", "resume", "token", "hashedToken", "newPassword"]),
    depth=st.integers(0, 5),
)
def test_secrets_never_enter_a_frame(secret: str, key: str, depth: int) -> None:
    nested: Any = {key: secret}
    for _ in range(depth):
        nested = {"a": [nested]}
    recorder = Recorder(ORDER, "r", "s1", 0.0)
    recorder.received(
        json.dumps({"msg": "method", "id": "1", "method": "x", "params": [nested]}), 1
    )
    recorder.received(
        json.dumps({"msg": "method", "id": "2", "method": "login", "params": [secret]}), 1
    )
    recorder.sent([json.dumps({"msg": "result", "id": "2", "result": nested})], 1)
    recorder.received('{"msg": "method", "password": "' + secret + '" broken', 1)
    frames = _drain(recorder, 2.0)
    assert len(frames) == 4
    for frame in frames:
        assert secret not in frame["m"]


def test_redaction_keeps_the_shape_and_what_is_not_secret() -> None:
    login = {
        "msg": "method",
        "id": "7",
        "method": "login",
        "params": [{"user": {"username": "ann"}, "password": {"digest": "abc", "algorithm": "x"}}],
    }
    shown = json.loads(redact(json.dumps(login)))
    assert shown["params"] == [{"user": {"username": REDACTED}, "password": REDACTED}]
    assert shown["id"] == "7" and shown["method"] == "login"
    result = {"msg": "result", "id": "7", "result": {"id": "u1", "token": "T", "tokenExpires": 1}}
    assert json.loads(redact(json.dumps(result)))["result"] == {
        "id": "u1",
        "token": REDACTED,
        "tokenExpires": 1,
    }
    plain = '{"msg":"sub","id":"1","name":"books.all","params":[]}'
    assert redact(plain) is plain  # untouched text is not re-encoded
    assert redact("not json") == "not json"


def test_hostile_frames_are_bounded_not_fatal() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert redact(deep) == deep  # too deep to parse, no secret key: kept, then cut
    deep_secret = '{"password":' + "[" * 200 + "1" + "]" * 200 + "}"
    assert "1" not in json.loads(redact(deep_secret))["password"]
    nested = json.dumps({"msg": "x", "a": json.loads("[" * 100 + "]" * 100)})
    assert REDACTED in redact(nested)  # beyond MAX_DEPTH the rest is replaced
    roomy = TraceOrder("t2", "s1", None, 1000.0, 50, 100_000, 4096)
    recorder = Recorder(roomy, "r", "s1", 0.0)
    recorder.received(deep, 1.0)
    recorder.received(Oversized(5_000_000, 1_000_000, "x" * 10), 1.0)
    frames = _drain(recorder, 2.0)
    assert frames[0]["n"] == len(deep) and len(frames[0]["m"]) == roomy.frame_chars
    assert json.loads(frames[1]["m"]) == {"oversized": 5_000_000, "limit": 1_000_000}


def test_begin_records_a_synthetic_connect_and_stop_refuses_the_rest() -> None:
    recorder = Recorder(ORDER, "r", "s1", 0.0)
    recorder.begin("1", 1.0)
    recorder.sent(['{"msg":"ready","subs":["a"]}'], 2.0)
    recorder.stop()
    recorder.received('{"msg":"sub"}', 3.0)
    frames = _drain(recorder, 4.0)
    assert [(f["d"], f.get("s")) for f in frames] == [("in", 1), ("out", 1), ("out", None)]
    assert json.loads(frames[1]["m"]) == {"msg": "connected", "session": "s1"}
    assert recorder.refused == 1 and recorder.stopped == "off"


def test_due_batches_by_size_time_and_end() -> None:
    recorder = Recorder(TraceOrder("t", "s", None, 1e9, 10_000, 10**9, 100), "r", "s", 0.0)
    assert not recorder.due(100.0)  # nothing waits
    recorder.sent(["x"], 0.5)
    assert not recorder.due(0.5)
    assert recorder.due(BATCH_SECONDS + 0.1)
    recorder.take(1.0)
    recorder.sent(["y"] * (BATCH_FRAMES - 1), 1.0)
    assert not recorder.due(1.0)
    recorder.sent(["y"], 1.0)
    assert recorder.due(1.0)
    _drain(recorder, 1.0)
    recorder.sent(["z"], 1.1)
    recorder.stop("ended")
    assert recorder.due(1.1)
