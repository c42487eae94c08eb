"""SockJS framing and path classification (relay.protocol.sockjs): pure, no sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol import sockjs
from relay.protocol.errors import FramingError
from relay.protocol.sockjs import SockJSRoute


def test_constants() -> None:
    assert sockjs.OPEN == "o"
    assert sockjs.HEARTBEAT == "h"


def test_encode_messages_double_encodes_ddp() -> None:
    frame = sockjs.encode_messages(['{"msg":"connected","session":"X"}'])
    assert frame == 'a["{\\"msg\\":\\"connected\\",\\"session\\":\\"X\\"}"]'


def test_encode_messages_several_and_none() -> None:
    assert sockjs.encode_messages(["a", "b"]) == 'a["a","b"]'
    assert sockjs.encode_messages([]) == "a[]"
    assert sockjs.encode_messages(("x",)) == 'a["x"]'


def test_encode_keeps_non_ascii_as_utf8() -> None:
    assert sockjs.encode_messages(["é☃"]) == 'a["é☃"]'
    assert sockjs.encode_message("é☃") == 'a["é☃"]'


def test_encode_message_equals_single_batch() -> None:
    text = '{"msg":"added","fields":{"a":"\\n\\u2028"}}'
    assert sockjs.encode_message(text) == sockjs.encode_messages([text])


def test_encode_close() -> None:
    assert sockjs.encode_close(3000, "Go away!") == 'c[3000,"Go away!"]'
    assert sockjs.encode_close(3000, "Broken framing.") == 'c[3000,"Broken framing."]'
    assert sockjs.encode_close(1000, 'say "hi"') == 'c[1000,"say \\"hi\\""]'


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ("", []),
        ("[]", []),
        ('["a"]', ["a"]),
        ('["a","b"]', ["a", "b"]),
        ('"bare"', ["bare"]),
        (' [ "a" ] ', ["a"]),
        ('["{\\"msg\\":\\"connect\\"}"]', ['{"msg":"connect"}']),
        ('["\\u00e9"]', ["é"]),
    ],
)
def test_decode_client_frame(payload: str, expected: list[str]) -> None:
    assert sockjs.decode_client_frame(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        "x",
        "[",
        "[1]",
        '["a", 1]',
        "1",
        "3.5",
        "NaN",
        "null",
        "true",
        "{}",
        '{"a":"b"}',
        '[["a"]]',
        " ",
        '["\\ud800"]',  # a lone surrogate can never be encoded back to UTF-8
        "[" * 100_000,
    ],
)
def test_decode_client_frame_broken(payload: str) -> None:
    with pytest.raises(FramingError) as info:
        sockjs.decode_client_frame(payload)
    assert info.value.reason == "Broken framing."
    assert info.value.close is True


@given(st.lists(st.text()))
def test_round_trip(texts: list[str]) -> None:
    frame = sockjs.encode_messages(texts)
    assert frame[0] == "a"
    # What the server sends is exactly what a client would send, minus the "a".
    assert sockjs.decode_client_frame(frame[1:]) == texts


@given(st.text())
def test_round_trip_single(text: str) -> None:
    assert sockjs.decode_client_frame(sockjs.encode_message(text)[1:]) == [text]


@given(st.text())
def test_decode_never_raises_anything_else(payload: str) -> None:
    try:
        result = sockjs.decode_client_frame(payload)
    except FramingError:
        return
    assert isinstance(result, list)
    assert all(isinstance(item, str) for item in result)


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.text(), st.lists))
def test_decode_of_any_json_value(value: object) -> None:
    payload = json.dumps(value)
    try:
        result = sockjs.decode_client_frame(payload)
    except FramingError:
        assert not isinstance(value, str)
        return
    assert result == (value if isinstance(value, list) else [value])


def test_info() -> None:
    assert sockjs.info(42) == {
        "websocket": True,
        "origins": ["*:*"],
        "cookie_needed": False,
        "entropy": 42,
    }
    assert sockjs.info(7, websocket=False)["websocket"] is False
    assert json.dumps(sockjs.info(1), separators=(",", ":")) == (
        '{"websocket":true,"origins":["*:*"],"cookie_needed":false,"entropy":1}'
    )


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/sockjs", SockJSRoute.WELCOME),
        ("/sockjs/", SockJSRoute.WELCOME),
        ("/sockjs/info", SockJSRoute.INFO),
        ("/sockjs/info/", SockJSRoute.INFO),
        ("/sockjs/websocket", SockJSRoute.RAW_WEBSOCKET),
        ("/sockjs/websocket/", SockJSRoute.RAW_WEBSOCKET),
        ("/sockjs/928/zql405yy/websocket", SockJSRoute.WEBSOCKET),
        ("/sockjs/928/zql405yy/websocket/", SockJSRoute.WEBSOCKET),
        ("/sockjs/a/b/websocket", SockJSRoute.WEBSOCKET),
        ("/sockjs/928/zql405yy/xhr", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/xhr_send", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/xhr_streaming", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/eventsource", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/htmlfile", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/jsonp", SockJSRoute.FALLBACK),
        ("/sockjs/928/zql405yy/jsonp_send", SockJSRoute.FALLBACK),
        ("/sockjs/iframe.html", SockJSRoute.FALLBACK),
        ("/sockjs/iframe-1.2.3.html", SockJSRoute.FALLBACK),
        ("/sockjs/chunking_test", SockJSRoute.FALLBACK),
        ("/sockjs/9.2/abc/websocket", SockJSRoute.NOT_FOUND),  # "." not allowed in server
        ("/sockjs/928/a.b/websocket", SockJSRoute.NOT_FOUND),  # nor in session
        ("/sockjs/928//websocket", SockJSRoute.NOT_FOUND),
        ("/sockjs/928/abc/websocketx", SockJSRoute.NOT_FOUND),
        ("/sockjs/928/abc/unknown", SockJSRoute.NOT_FOUND),
        ("/sockjs/info\n", SockJSRoute.NOT_FOUND),
        ("/sockjs/infox", SockJSRoute.NOT_FOUND),
        ("/sockjsx", SockJSRoute.NOT_FOUND),
        ("/sockjs//", SockJSRoute.NOT_FOUND),
        ("/websocket", SockJSRoute.NOT_FOUND),
        ("/", SockJSRoute.NOT_FOUND),
        ("", SockJSRoute.NOT_FOUND),
    ],
)
def test_parse_path(path: str, route: SockJSRoute) -> None:
    assert sockjs.parse_path(path) == route


def test_parse_path_other_prefix() -> None:
    assert sockjs.parse_path("/app/sockjs/info", "/app/sockjs") == SockJSRoute.INFO
    assert sockjs.parse_path("/app/sockjs/1/2/websocket", "/app/sockjs/") == SockJSRoute.WEBSOCKET
    assert sockjs.parse_path("/sockjs/info", "/app/sockjs") == SockJSRoute.NOT_FOUND


@given(st.text())
def test_parse_path_total(path: str) -> None:
    assert isinstance(sockjs.parse_path(path), SockJSRoute)
