"""In-process helpers shared by the WebSocket tests (test_websocket.py, test_handshake.py).

Sockets come from gevent's socketpair: gevent's own sockets cooperate without
monkey-patching, so the test process is never patched. A module that calls
``socketpair`` calls ``close_sockets`` after each test (an autouse fixture).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import gevent.socket

_OPEN: list[Any] = []


def socketpair() -> tuple[Any, Any]:
    """A gevent socketpair closed after the test (warnings are errors here)."""
    pair: tuple[Any, Any] = gevent.socket.socketpair()
    _OPEN.extend(pair)
    return pair


def close_sockets() -> None:
    """Close every socket ``socketpair`` made."""
    while _OPEN:
        _OPEN.pop().close()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame built by hand, for inputs a well-behaved client library refuses."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n <= 125:
        header = bytes((first, 0x80 | n))
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
