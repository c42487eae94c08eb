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
        ("/sockjs/928/zql405yy/xhr", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/xhr_send", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/xhr_streaming", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/eventsource", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/htmlfile", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/jsonp", SockJSRoute.HTTP),
        ("/sockjs/928/zql405yy/jsonp_send", SockJSRoute.HTTP),
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


# -- the HTTP transports ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(sockjs.HttpKind))
def test_session_path_names_the_session_and_transport(kind: sockjs.HttpKind) -> None:
    found = sockjs.session_path(f"/sockjs/928/zql405yy/{kind.value}")
    assert found == sockjs.SessionPath("zql405yy", kind)
    assert sockjs.session_path(f"/other/1/s-1_x/{kind.value}/", "/other") == sockjs.SessionPath(
        "s-1_x", kind
    )


@pytest.mark.parametrize(
    "path",
    ["/sockjs/928/zql405yy/websocket", "/sockjs/info", "/sockjs/a./a/xhr", "/sockjs//a/xhr", "/x"],
)
def test_session_path_of_anything_else_is_none(path: str) -> None:
    assert sockjs.session_path(path) is None


@given(st.text())
def test_session_path_total(path: str) -> None:
    found = sockjs.session_path(path)
    if found is not None:
        assert found.session and "/" not in found.session and "." not in found.session


def test_receiving_and_streaming_kinds() -> None:
    receiving = {k for k in sockjs.HttpKind if k.receiving}
    assert receiving == {
        sockjs.HttpKind.XHR,
        sockjs.HttpKind.XHR_STREAMING,
        sockjs.HttpKind.EVENTSOURCE,
        sockjs.HttpKind.HTMLFILE,
        sockjs.HttpKind.JSONP,
    }
    assert {k for k in sockjs.HttpKind if k.streaming} == {
        sockjs.HttpKind.XHR_STREAMING,
        sockjs.HttpKind.EVENTSOURCE,
        sockjs.HttpKind.HTMLFILE,
    }


def test_frames_as_each_transport_carries_them() -> None:
    """The test vectors of sockjs-protocol's transport tests."""
    frame = 'a["x"]'
    assert sockjs.encode_for(sockjs.HttpKind.XHR, "o") == "o\n"
    assert sockjs.encode_for(sockjs.HttpKind.XHR_STREAMING, frame) == 'a["x"]\n'
    assert sockjs.encode_for(sockjs.HttpKind.EVENTSOURCE, frame) == 'data: a["x"]\r\n\r\n'
    assert (
        sockjs.encode_for(sockjs.HttpKind.HTMLFILE, frame, "callback")
        == '<script>\np("a[\\"x\\"]");\n</script>\r\n'
    )
    assert sockjs.encode_for(sockjs.HttpKind.JSONP, "o", "x") == '/**/x("o");\r\n'
    with pytest.raises(ValueError):
        sockjs.encode_for(sockjs.HttpKind.XHR_SEND, frame)


def test_preludes() -> None:
    assert sockjs.prelude(sockjs.HttpKind.XHR_STREAMING) == "h" * 2048 + "\n"
    assert sockjs.prelude(sockjs.HttpKind.EVENTSOURCE) == "\r\n"
    assert sockjs.prelude(sockjs.HttpKind.XHR) == ""
    page = sockjs.prelude(sockjs.HttpKind.HTMLFILE, "cb")
    assert len(page) > 1024 and "var c = parent.cb;" in page and page.endswith("\r\n\r\n")


@pytest.mark.parametrize(
    ("callback", "error"),
    [
        ("", '"callback" parameter required'),
        (None, '"callback" parameter required'),
        (" ", 'invalid "callback" parameter'),
        ("*", 'invalid "callback" parameter'),
        ("abc(", 'invalid "callback" parameter'),
        ("a.b-c_9", None),
    ],
)
def test_callback_names(callback: str | None, error: str | None) -> None:
    assert sockjs.callback_error(callback) == error


@given(st.text())
def test_a_callback_that_passes_is_a_safe_javascript_name(callback: str) -> None:
    if sockjs.callback_error(callback) is None:
        assert callback and all(c.isascii() and (c.isalnum() or c in "-_.") for c in callback)


def test_send_bodies() -> None:
    assert sockjs.decode_send_body('["a","b"]') == ["a", "b"]
    assert sockjs.decode_send_body("[]") == []
    with pytest.raises(FramingError) as empty:
        sockjs.decode_send_body("")
    assert empty.value.reason == "Payload expected."
    for body in ('["x', "{}", "[1]", '["\\ud800"]'):
        with pytest.raises(FramingError) as broken:
            sockjs.decode_send_body(body)
        assert broken.value.reason == "Broken JSON encoding."


@given(st.lists(st.text()), st.sampled_from([sockjs.HttpKind.JSONP, sockjs.HttpKind.HTMLFILE]))
def test_script_frames_carry_any_text_back(texts: list[str], kind: sockjs.HttpKind) -> None:
    """What htmlfile and jsonp wrap is one JSON string literal of the frame, which the
    client's function gets back exactly (and no ``</script>`` can end the tag early)."""
    frame = sockjs.encode_messages(texts)
    carried = sockjs.encode_for(kind, frame, "cb")
    start = carried.index("(") + 1
    literal = carried[start : carried.rindex(");")]
    assert json.loads(literal) == frame
    if kind is sockjs.HttpKind.HTMLFILE:
        assert "</script>" not in literal and "<" not in literal


def test_a_message_cannot_end_the_htmlfile_script_tag() -> None:
    frame = sockjs.encode_messages(["</script><script>alert(1)</script>"])
    carried = sockjs.encode_for(sockjs.HttpKind.HTMLFILE, frame, "cb")
    assert carried.count("</script>") == 1 and carried.endswith("</script>\r\n")
