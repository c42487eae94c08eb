"""SockJS framing and path classification, as Meteor's sockjs-node 0.3.24 speaks it.

Layer: pure core. It turns DDP message texts into SockJS frames (``o``, ``h``, ``a[...]``,
``c[code,"reason"]``), decodes what a client sends on the SockJS WebSocket transport and in
an HTTP send, classifies a request path under the SockJS prefix (reference
``ddp-protocol.md`` 2.1), and carries frames as each HTTP transport does (``encode_for``:
a line for xhr, ``data:`` for eventsource, a script call for htmlfile and jsonp, with
their preludes and callback names).
It must not touch HTTP, sockets, greenlets or the clock: the HTTP side lives in
``relay.transport.endpoints`` and the socket side in ``relay.transport``.

DDP is double-encoded on SockJS: every DDP message is a JSON *text*, and a SockJS data
frame is a JSON array of those texts as JSON strings.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from relay.protocol.errors import FramingError

__all__ = [
    "ANOTHER_CONNECTION",
    "GO_AWAY",
    "HEARTBEAT",
    "INTERRUPTED",
    "OPEN",
    "HttpKind",
    "SessionPath",
    "SockJSRoute",
    "callback_error",
    "decode_client_frame",
    "decode_send_body",
    "encode_close",
    "encode_for",
    "encode_message",
    "encode_messages",
    "info",
    "parse_path",
    "prelude",
    "session_path",
]

#: Sent once, first, when a SockJS session opens.
OPEN = "o"
#: Sent on an idle SockJS socket so that proxies and the client's 100 s timer see traffic.
HEARTBEAT = "h"

#: The only reason sockjs-node gives for a client frame it cannot parse.
BROKEN_FRAMING = "Broken framing."
#: The close a second receiving request of one session gets (the first keeps the session).
ANOTHER_CONNECTION = (2010, "Another connection still open")
#: sockjs-node's close for a session the server ended.
GO_AWAY = (3000, "Go away!")
#: The close a session gets when its client dropped a receiving request mid-response.
INTERRUPTED = (1002, "Connection interrupted")
#: What ``xhr_send``/``jsonp_send`` answer (500) for a body that is not a JSON array of
#: strings, and for no body at all.
BROKEN_JSON = "Broken JSON encoding."
PAYLOAD_EXPECTED = "Payload expected."

_SEPARATORS = (",", ":")


class SockJSRoute(enum.Enum):
    """What a path under the SockJS prefix names (sockjs-node's dispatcher table)."""

    #: ``/sockjs`` or ``/sockjs/``: the "Welcome to SockJS!" page.
    WELCOME = "welcome"
    #: ``/sockjs/info``: the JSON the client fetches before picking a transport.
    INFO = "info"
    #: ``/sockjs/<server>/<session>/websocket``: SockJS framing over a WebSocket.
    WEBSOCKET = "websocket"
    #: ``/sockjs/websocket``: a raw WebSocket, one DDP message per text message.
    RAW_WEBSOCKET = "raw_websocket"
    #: A session's HTTP transport: ``/sockjs/<server>/<session>/<xhr, xhr_send, ...>``.
    HTTP = "http"
    #: Not served: the iframe pages (they load the client from a CDN) and chunking_test.
    FALLBACK = "fallback"
    #: Anything else, including paths outside the prefix.
    NOT_FOUND = "not_found"


#: What a frame never carries raw, as sockjs-node's ``quote`` and sockjs-protocol's
#: ``escapable_by_server``: JavaScript's line terminators (they would end a jsonp or
#: htmlfile string literal), invisible formatting characters and the specials block,
#: which browsers mangle. JSON's own escapes already cover U+0000-U+001F.
_ESCAPABLE = re.compile("[\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")


def _escaped(json_text: str) -> str:
    if json_text.isascii():
        return json_text
    return _ESCAPABLE.sub(lambda found: f"\\u{ord(found.group()):04x}", json_text)


def encode_messages(texts: Sequence[str]) -> str:
    """Return one ``a[...]`` frame carrying every DDP message text in ``texts``, in order."""
    # ensure_ascii=False keeps non-ASCII text at its UTF-8 size instead of 6-byte escapes.
    return "a" + _escaped(json.dumps(list(texts), separators=_SEPARATORS, ensure_ascii=False))


def encode_message(text: str) -> str:
    """Return the ``a[...]`` frame for a single DDP message text."""
    return "a[" + _escaped(json.dumps(text, ensure_ascii=False)) + "]"


def encode_close(code: int, reason: str) -> str:
    """Return a close frame, e.g. ``c[3000,"Go away!"]``."""
    frame = json.dumps([code, reason], separators=_SEPARATORS, ensure_ascii=False)
    return "c" + _escaped(frame)


def _is_utf8_safe(text: str) -> bool:
    # A JSON escape can smuggle a lone surrogate ("\ud800") into a Python str; such a
    # text can never be encoded back to UTF-8, so it would fail later, far from here.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_client_frame(payload: str) -> list[str]:
    """Decode one client WebSocket message on the SockJS transport into DDP message texts.

    The client sends a JSON array of JSON strings; sockjs-node also takes a bare JSON
    string. An empty payload is ignored (``[]``). Anything else raises
    ``FramingError("Broken framing.")``, after which the transport must close with
    ``c[3000,"Broken framing."]``.
    """
    if not payload:
        return []
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        # RecursionError: "[[[[..." nested deeper than the interpreter's limit.
        raise FramingError(BROKEN_FRAMING) from exc
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        texts = value
    else:
        raise FramingError(BROKEN_FRAMING)
    if not all(_is_utf8_safe(text) for text in texts):
        raise FramingError(BROKEN_FRAMING)
    return texts


def info(entropy: int, websocket: bool = True) -> dict[str, object]:
    """Return the ``/sockjs/info`` document; ``entropy`` is a random uint32 chosen by the caller."""
    return {"websocket": websocket, "origins": ["*:*"], "cookie_needed": False, "entropy": entropy}


# sockjs-node builds every route as "^" + prefix + route + "[/]?$", and names the server
# and session segments "[^/.]+". The same table here, minus the HTTP methods.
_HTTP_TRANSPORTS = "xhr|xhr_send|xhr_streaming|eventsource|htmlfile|jsonp|jsonp_send"


@functools.lru_cache(maxsize=8)
def _routes(prefix: str) -> tuple[tuple[re.Pattern[str], SockJSRoute], ...]:
    p = re.escape(prefix.rstrip("/"))
    session = r"/[^/.]+/[^/.]+"
    table = (
        (r"", SockJSRoute.WELCOME),
        (r"/info", SockJSRoute.INFO),
        (r"/websocket", SockJSRoute.RAW_WEBSOCKET),
        (session + r"/websocket", SockJSRoute.WEBSOCKET),
        (session + rf"/(?:{_HTTP_TRANSPORTS})", SockJSRoute.HTTP),
        (r"/iframe[0-9\-.a-z_]*\.html", SockJSRoute.FALLBACK),
        (r"/chunking_test", SockJSRoute.FALLBACK),
    )
    return tuple((re.compile(f"{p}{route}/?"), kind) for route, kind in table)


def parse_path(path: str, prefix: str = "/sockjs") -> SockJSRoute:
    """Classify ``path`` (a WSGI ``PATH_INFO``, without the query string) under ``prefix``."""
    if not path.startswith(prefix):
        return SockJSRoute.NOT_FOUND
    for pattern, kind in _routes(prefix):
        # fullmatch, not match + "$": "$" would also accept a trailing newline.
        if pattern.fullmatch(path):
            return kind
    return SockJSRoute.NOT_FOUND


# -- the HTTP transports -------------------------------------------------------------------


class HttpKind(enum.Enum):
    """A SockJS HTTP transport, by its path segment. The receiving ones hold a request
    that the server answers with frames; the sending ones carry the client's messages."""

    XHR = "xhr"  # receiving, polling: one response, one frame
    XHR_STREAMING = "xhr_streaming"  # receiving, streaming
    EVENTSOURCE = "eventsource"  # receiving, streaming
    HTMLFILE = "htmlfile"  # receiving, streaming (a script tag per frame)
    JSONP = "jsonp"  # receiving, polling (a JavaScript call)
    XHR_SEND = "xhr_send"  # sending: a JSON array of strings
    JSONP_SEND = "jsonp_send"  # sending: the same, or a form field ``d`` holding it

    @property
    def receiving(self) -> bool:
        return self not in (HttpKind.XHR_SEND, HttpKind.JSONP_SEND)

    @property
    def streaming(self) -> bool:
        """Frames keep coming on one response (until the response limit)."""
        return self in (HttpKind.XHR_STREAMING, HttpKind.EVENTSOURCE, HttpKind.HTMLFILE)

    @property
    def needs_callback(self) -> bool:
        return self in (HttpKind.HTMLFILE, HttpKind.JSONP)


@dataclass(frozen=True, slots=True)
class SessionPath:
    """What ``/sockjs/<server>/<session>/<transport>`` names (the server part is for load
    balancers and ignored)."""

    session: str
    kind: HttpKind


def session_path(path: str, prefix: str = "/sockjs") -> SessionPath | None:
    """The session and transport of an HTTP transport path, or None for any other path."""
    if parse_path(path, prefix) is not SockJSRoute.HTTP:
        return None
    parts = path[len(prefix.rstrip("/")) :].strip("/").split("/")
    return SessionPath(parts[1], HttpKind(parts[2]))


#: The opening of a streaming xhr response: browsers deliver nothing of a response until
#: it has sent enough bytes (sockjs: 2 KiB of ``h``).
_XHR_STREAMING_PRELUDE = "h" * 2048 + "\n"
#: sockjs-node's htmlfile page: the frames follow as script tags calling ``p``.
_HTMLFILE_HEAD = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {{c.message(d);}};
    window.onload = function() {{c.stop();}};
  </script>"""
_CALLBACK_INVALID = re.compile(r"[^a-zA-Z0-9\-_.]")


def callback_error(callback: str | None) -> str | None:
    """Why ``callback`` cannot name the JavaScript function of htmlfile/jsonp, or None."""
    if not callback:
        return '"callback" parameter required'
    if _CALLBACK_INVALID.search(callback):
        return 'invalid "callback" parameter'
    return None


def prelude(kind: HttpKind, callback: str = "") -> str:
    """What a receiving response starts with, before the first frame."""
    if kind is HttpKind.XHR_STREAMING:
        return _XHR_STREAMING_PRELUDE
    if kind is HttpKind.EVENTSOURCE:
        return "\r\n"
    if kind is HttpKind.HTMLFILE:
        head = _HTMLFILE_HEAD.format(callback=callback)
        # Padded past 1 KiB, as sockjs-node does: some browsers render nothing before.
        return head + " " * max(0, 1024 - len(head) + 14) + "\r\n\r\n"
    return ""


def encode_for(kind: HttpKind, frame: str, callback: str = "") -> str:
    """One frame (``o``, ``h``, ``a[...]``, ``c[...]``) as ``kind`` carries it."""
    if kind is HttpKind.XHR or kind is HttpKind.XHR_STREAMING:
        return frame + "\n"
    if kind is HttpKind.EVENTSOURCE:
        # A frame is JSON or one letter: it never holds a raw CR or LF to escape.
        return "data: " + frame + "\r\n\r\n"
    if kind is HttpKind.HTMLFILE:
        # "<" escaped: a message holding "</script>" must not end the tag (and run what
        # follows as the relay's page); the string the client's ``p`` gets is the same.
        literal = json.dumps(frame, ensure_ascii=False).replace("<", "\\u003c")
        return "<script>\np(" + literal + ");\n</script>\r\n"
    if kind is HttpKind.JSONP:
        return "/**/" + callback + "(" + json.dumps(frame, ensure_ascii=False) + ");\r\n"
    raise ValueError(f"{kind.value} does not carry frames to the client")


def decode_send_body(body: str) -> list[str]:
    """The messages of an ``xhr_send`` or ``jsonp_send`` body (after any form decoding):
    a JSON array of strings (or one string). ``FramingError`` with ``PAYLOAD_EXPECTED``
    for nothing, ``BROKEN_JSON`` for anything else; sockjs-node answers both with 500."""
    if not body:
        raise FramingError(PAYLOAD_EXPECTED)
    try:
        return decode_client_frame(body)
    except FramingError as exc:
        raise FramingError(BROKEN_JSON) from exc
