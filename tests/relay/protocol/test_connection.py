"""The DDP server state machine and messages: Meteor's validation rules and error strings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import messages
from relay.protocol.connection import (
    Heartbeat,
    HeartbeatAction,
    ServerConnection,
    State,
)
from relay.protocol.errors import RemoteProtocolError
from relay.protocol.messages import Connect, Disconnect, Method, Ping, Pong, Sub, Unsub

CONNECT = json.dumps({"msg": "connect", "version": "1", "support": ["1", "pre2", "pre1"]})


def connected(version: str = "1") -> ServerConnection:
    conn = ServerConnection()
    conn.receive(json.dumps({"msg": "connect", "version": version, "support": [version]}))
    return conn


def reply_of(conn: ServerConnection, frame: Any) -> RemoteProtocolError:
    text = frame if isinstance(frame, str) else json.dumps(frame)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(text)
    return info.value


def test_connect_negotiates_version_one() -> None:
    conn = ServerConnection()
    msg = conn.receive(CONNECT)
    assert msg == Connect("1", ("1", "pre2", "pre1"))
    assert conn.state is State.CONNECTED and conn.version == "1"
    assert conn.heartbeats


def test_connect_carries_resume_fields() -> None:
    msg = ServerConnection().receive(
        json.dumps(
            {
                "msg": "connect",
                "version": "1",
                "support": ["1"],
                "session": "abc",
                "receivedCount": 7,
            }
        )
    )
    assert isinstance(msg, Connect)
    assert (msg.session, msg.received_count) == ("abc", 7)


def test_unsupported_proposal_gets_failed_with_our_choice() -> None:
    err = reply_of(ServerConnection(), {"msg": "connect", "version": "2", "support": ["2", "1"]})
    assert err.reply == {"msg": "failed", "version": "1"} and err.close


def test_version_not_in_support_fails() -> None:
    err = reply_of(ServerConnection(), {"msg": "connect", "version": "1", "support": ["pre1"]})
    assert err.reply == {"msg": "failed", "version": "1"} and err.close


def test_pre1_accepted_and_gets_no_heartbeats() -> None:
    conn = connected("pre1")
    assert conn.version == "pre1" and not conn.heartbeats
    err = reply_of(conn, {"msg": "ping"})
    assert err.reply == {
        "msg": "error",
        "reason": "Bad request",
        "offendingMessage": {"msg": "ping"},
    }


def test_must_connect_first() -> None:
    err = reply_of(ServerConnection(), {"msg": "sub", "id": "a", "name": "x"})
    assert err.reply is not None and err.reply["reason"] == "Must connect first"
    assert not err.close


def test_already_connected() -> None:
    err = reply_of(connected(), CONNECT)
    assert err.reply is not None and err.reply["reason"] == "Already connected"


@pytest.mark.parametrize("frame", ["not json", "[1,2", "NaN", '"a string"', "42", "null"])
def test_not_an_object_is_bad_request(frame: str) -> None:
    err = reply_of(connected(), frame)
    assert err.reply is not None and err.reply["reason"] == "Bad request"
    assert "offendingMessage" in err.reply


def test_array_is_bad_request_with_offending_message() -> None:
    err = reply_of(connected(), [1, 2])
    assert err.reply == {"msg": "error", "reason": "Bad request", "offendingMessage": [1, 2]}


@pytest.mark.parametrize("frame", [{"id": "1"}, {"msg": 5}, {"msg": "what"}])
def test_missing_or_unknown_msg(frame: dict[str, Any]) -> None:
    err = reply_of(connected(), frame)
    assert err.reply == {"msg": "error", "reason": "Bad request", "offendingMessage": frame}


@pytest.mark.parametrize(
    "frame",
    [
        {"msg": "sub", "id": 1, "name": "x"},
        {"msg": "sub", "id": "1"},
        {"msg": "sub", "id": "1", "name": "x", "params": {}},
    ],
)
def test_malformed_subscription(frame: dict[str, Any]) -> None:
    err = reply_of(connected(), frame)
    assert err.reply == {
        "msg": "error",
        "reason": "Malformed subscription",
        "offendingMessage": frame,
    }


@pytest.mark.parametrize(
    "frame",
    [
        {"msg": "method", "id": 1, "method": "x"},
        {"msg": "method", "id": "1"},
        {"msg": "method", "id": "1", "method": "x", "params": "a"},
        {"msg": "method", "id": "1", "method": "x", "randomSeed": 5},
    ],
)
def test_malformed_method(frame: dict[str, Any]) -> None:
    err = reply_of(connected(), frame)
    assert err.reply is not None
    assert err.reply["reason"] == "Malformed method invocation"
    assert err.reply["offendingMessage"] == frame


def test_unknown_ejson_type_in_params_is_an_error_not_a_crash() -> None:
    frame = {"msg": "method", "id": "1", "method": "x", "params": [{"$type": "nope", "$value": 1}]}
    err = reply_of(connected(), frame)
    assert err.reply is not None and err.reply["reason"].startswith("Parse error")
    assert err.reply["offendingMessage"] == frame


def test_client_messages_parse() -> None:
    conn = connected()
    assert conn.receive('{"msg":"ping","id":"x"}') == Ping("x")
    assert conn.receive('{"msg":"pong"}') == Pong(None)
    assert conn.receive('{"msg":"sub","id":"s","name":"n","params":[1]}') == Sub("s", "n", (1,))
    assert conn.receive('{"msg":"unsub"}') == Unsub(None)
    date = {"$date": 0}
    msg = conn.receive(
        json.dumps({"msg": "method", "id": "1", "method": "m", "params": [date], "randomSeed": "s"})
    )
    assert isinstance(msg, Method) and msg.random_seed == "s"
    assert msg.params[0].timestamp() == 0
    assert conn.receive('{"msg":"disconnect"}') == Disconnect()
    assert conn.state is State.CLOSED


def test_unknown_fields_are_ignored() -> None:
    conn = connected()
    assert conn.receive('{"msg":"ping","extra":{"a":1}}') == Ping(None)


def test_meteor_error_shape_for_unknown_method() -> None:
    # reference 1.8, byte for byte
    err = messages.meteor_error(404, "Method 'foo' not found")
    text = messages.encode(messages.result("1", err=err))
    assert text == (
        '{"msg":"result","id":"1","error":{"isClientSafe":true,"error":404,'
        '"reason":"Method \'foo\' not found","message":"Method \'foo\' not found [404]",'
        '"errorType":"Meteor.Error"}}'
    )


def test_result_omits_undefined_and_encodes_ejson() -> None:
    assert messages.encode(messages.result("1")) == '{"msg":"result","id":"1"}'
    assert messages.encode(messages.result("2", float("nan"))) == (
        '{"msg":"result","id":"2","result":{"$InfNaN":0}}'
    )


def test_heartbeat_pings_then_times_out() -> None:
    hb = Heartbeat(interval=15, timeout=15)
    hb.received(0)
    assert hb.poll(10) is HeartbeatAction.NONE
    assert hb.poll(15) is HeartbeatAction.PING
    assert hb.poll(20) is HeartbeatAction.NONE
    assert hb.poll(30) is HeartbeatAction.TIMEOUT


def test_any_message_counts_as_liveness() -> None:
    hb = Heartbeat(interval=15, timeout=15)
    hb.received(0)
    assert hb.poll(15) is HeartbeatAction.PING
    hb.received(16)
    assert hb.poll(29) is HeartbeatAction.NONE
    assert hb.poll(31) is HeartbeatAction.PING


def test_heartbeat_disabled_by_zero() -> None:
    hb = Heartbeat(interval=0, timeout=0)
    assert hb.poll(1e9) is HeartbeatAction.NONE
    assert hb.due() == float("inf")


@given(
    interval=st.sampled_from([0.0, 1.0, 15.0]),
    timeout=st.sampled_from([0.0, 1.0, 15.0]),
    steps=st.lists(st.tuples(st.booleans(), st.floats(0, 20)), max_size=30),
)
def test_heartbeat_due_is_when_poll_can_next_act(
    interval: float, timeout: float, steps: list[tuple[bool, float]]
) -> None:
    """The ticker skips a session until ``due()``: no poll before it may act, and the
    first poll at it does (a ping, or the timeout)."""
    hb = Heartbeat(interval=interval, timeout=timeout)
    now = 0.0
    hb.received(now)
    for is_message, gap in steps:
        due = hb.due()
        if now + gap < due:
            now += gap
            if is_message:
                hb.received(now)
            else:
                assert hb.poll(now) is HeartbeatAction.NONE
        elif due != float("inf"):
            now = due + 1e-9  # (a sum's rounding; the ticker comes a second later)
            assert hb.poll(now) is not HeartbeatAction.NONE


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["msg", "id", "name", "params", "method", "x"]), children)
    ),
    max_leaves=12,
)

message_like = st.fixed_dictionaries(
    {"msg": st.sampled_from(["connect", "sub", "unsub", "method", "ping", "pong", "x", 3])},
    optional={
        "id": json_values,
        "name": json_values,
        "method": json_values,
        "params": json_values,
        "randomSeed": json_values,
        "version": st.sampled_from(["1", "pre1", "pre2", "2", 1]),
        "support": st.lists(st.sampled_from(["1", "pre1", "pre2", "2"]), max_size=3) | json_values,
    },
)


@settings(max_examples=300)
@given(st.lists(message_like | json_values | st.text(max_size=20), max_size=8))
def test_no_input_escapes_as_anything_but_a_protocol_error(frames: list[Any]) -> None:
    conn = ServerConnection()
    for frame in frames:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        if conn.state is State.CLOSED:
            break
        try:
            conn.receive(text)
        except RemoteProtocolError as exc:
            # every rejection carries its reply: an error or a failed
            assert exc.reply is not None
            assert exc.reply["msg"] in ("error", "failed")
            json.dumps(exc.reply)
            if exc.reply["msg"] == "error":
                assert isinstance(exc.reply["reason"], str)


@pytest.mark.parametrize(
    "second",
    [
        '{"msg":"connect","version":"1","support":["1"]}',
        '{"msg":"connect","version":1}',
        '{"msg":"connect","support":"nope"}',
    ],
    ids=["well-formed", "bad-version-type", "bad-support"],
)
def test_a_second_connect_is_already_connected_and_closes_nothing(second: str) -> None:
    # Found by the fuzz probe: a malformed second connect closed the session (1002).
    conn = ServerConnection()
    conn.receive('{"msg":"connect","version":"1","support":["1"]}')
    with pytest.raises(RemoteProtocolError) as refused:
        conn.receive(second)
    assert refused.value.reason == "Already connected" and not refused.value.close
    assert conn.state is not State.CLOSED
