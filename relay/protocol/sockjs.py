"""SockJS framing and path classification, as Meteor's sockjs-node 0.3.24 speaks it.

Layer: pure core. It turns DDP message texts into SockJS frames (``o``, ``h``, ``a[...]``,
``c[code,"reason"]``), decodes what a client sends on the SockJS WebSocket transport, and
classifies a request path under the SockJS prefix (reference ``ddp-protocol.md`` 2.1).
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

from relay.protocol.errors import FramingError

__all__ = [
    "HEARTBEAT",
    "OPEN",
    "SockJSRoute",
    "decode_client_frame",
    "encode_close",
    "encode_message",
    "encode_messages",
    "info",
    "parse_path",
]

#: Sent once, first, when a SockJS session opens.
OPEN = "o"
#: Sent on an idle SockJS socket so that proxies and the client's 100 s timer see traffic.
HEARTBEAT = "h"

#: The only reason sockjs-node gives for a client frame it cannot parse.
BROKEN_FRAMING = "Broken framing."

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
    #: A polling/streaming transport: xhr*, eventsource, htmlfile, jsonp*, iframe, chunking_test.
    FALLBACK = "fallback"
    #: Anything else, including paths outside the prefix.
    NOT_FOUND = "not_found"


def encode_messages(texts: Sequence[str]) -> str:
    """Return one ``a[...]`` frame carrying every DDP message text in ``texts``, in order."""
    # ensure_ascii=False keeps non-ASCII text at its UTF-8 size instead of 6-byte escapes.
    return "a" + json.dumps(list(texts), separators=_SEPARATORS, ensure_ascii=False)


def encode_message(text: str) -> str:
    """Return the ``a[...]`` frame for a single DDP message text."""
    return "a[" + json.dumps(text, ensure_ascii=False) + "]"


def encode_close(code: int, reason: str) -> str:
    """Return a close frame, e.g. ``c[3000,"Go away!"]``."""
    return "c" + json.dumps([code, reason], separators=_SEPARATORS, ensure_ascii=False)


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
_FALLBACK_TRANSPORTS = "xhr|xhr_send|xhr_streaming|eventsource|htmlfile|jsonp|jsonp_send"


@functools.lru_cache(maxsize=8)
def _routes(prefix: str) -> tuple[tuple[re.Pattern[str], SockJSRoute], ...]:
    p = re.escape(prefix.rstrip("/"))
    session = r"/[^/.]+/[^/.]+"
    table = (
        (r"", SockJSRoute.WELCOME),
        (r"/info", SockJSRoute.INFO),
        (r"/websocket", SockJSRoute.RAW_WEBSOCKET),
        (session + r"/websocket", SockJSRoute.WEBSOCKET),
        (session + rf"/(?:{_FALLBACK_TRANSPORTS})", SockJSRoute.FALLBACK),
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
