"""relay.protocol.messages at the boundary: whatever a client sends gets an answer that can
be sent back, and an echo never larger than the limit.

Hostile input is normal input: a number that overflows a double, a huge offending message,
deep nesting or garbage must each end in a valid message or a reply ``encode`` accepts,
never in an exception the session would have to log instead of answering.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import messages
from relay.protocol.connection import ServerConnection
from relay.protocol.errors import RemoteProtocolError

CONNECT = '{"msg":"connect","version":"1","support":["1"]}'
#: The most an ``error`` reply may weigh beyond its echo (reason and keys).
REPLY_OVERHEAD = 512

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
message_like = st.fixed_dictionaries(
    {"msg": st.sampled_from(["connect", "sub", "unsub", "method", "ping", "pong", "x"])},
    optional={
        "id": json_values,
        "name": json_values,
        "method": json_values,
        "params": json_values,
        "version": json_values,
        "support": json_values,
        "randomSeed": json_values,
    },
)
overflowing = st.sampled_from(["1e400", "-1e400", "1.5e308", "9" * 400 + ".0"])


def _answer(conn: ServerConnection, text: str) -> dict[str, Any] | None:
    """The reply the session would send for ``text`` (None: accepted, or nothing to say)."""
    try:
        conn.receive(text)
    except RemoteProtocolError as exc:
        return exc.reply
    return None


def _check_sendable(reply: dict[str, Any] | None, text: str) -> None:
    if reply is None:
        return
    encoded = messages.encode(reply)  # must not raise
    assert len(encoded) <= messages._ECHO_LIMIT * 6 + REPLY_OVERHEAD, (text[:80], len(encoded))


@given(message_like, st.booleans())
def test_any_message_shaped_frame_gets_a_sendable_answer(
    obj: dict[str, Any], connect_first: bool
) -> None:
    conn = ServerConnection()
    if connect_first:
        conn.receive(CONNECT)
    text = json.dumps(obj)
    _check_sendable(_answer(conn, text), text)


@given(message_like, overflowing, st.sampled_from(["id", "params", "name", "extra"]))
def test_a_number_that_overflows_a_double_is_a_bad_request_with_an_answer(
    obj: dict[str, Any], number: str, key: str
) -> None:
    conn = ServerConnection()
    conn.receive(CONNECT)
    text = json.dumps(obj)[:-1] + (", " if len(obj) else "") + f'"{key}": {number}' + "}"
    reply = _answer(conn, text)
    if number.startswith(("1e4", "-1e4")):
        assert reply is not None and reply["reason"] == "Bad request"
    _check_sendable(reply, text)


@given(st.text(max_size=200))
def test_garbage_gets_a_sendable_answer(text: str) -> None:
    conn = ServerConnection()
    conn.receive(CONNECT)
    _check_sendable(_answer(conn, text), text)


def test_a_huge_offending_message_is_echoed_truncated() -> None:
    conn = ServerConnection()
    conn.receive(CONNECT)
    big = {"msg": "method", "method": 5, "id": "1", "params": ["x" * 100_000]}
    reply = _answer(conn, json.dumps(big))
    assert reply is not None and reply["reason"] == "Malformed method invocation"
    echo = reply["offendingMessage"]
    assert isinstance(echo, str) and len(echo) == messages._ECHO_LIMIT
    assert echo.startswith('{"msg":"method"')


def test_a_small_offending_message_is_echoed_whole_as_meteor_does() -> None:
    conn = ServerConnection()
    conn.receive(CONNECT)
    small = {"msg": "method", "method": 5, "id": "1"}
    reply = _answer(conn, json.dumps(small))
    assert reply is not None and reply["offendingMessage"] == small


def test_deep_nesting_is_a_bad_request() -> None:
    conn = ServerConnection()
    conn.receive(CONNECT)
    text = "[" * 100_000 + "]" * 100_000
    reply = _answer(conn, text)
    assert reply is not None and reply["reason"] == "Bad request"
    _check_sendable(reply, text)
