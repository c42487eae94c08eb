"""Server WebSocket TEXT frames, built once and written as the same bytes to many sockets.

Layer: pure (bytes in, bytes out; no sockets, no gevent). Server frames are never
masked, so one frame serves every socket that shares its ``Compression`` (None: no
permessage-deflate). That is what makes fan-out cheap: a ``changed`` going to 5,000
sessions is encoded, and if need be compressed, once (``relay.stream.fanout.BatchCache``).

Compression is permessage-deflate (RFC 7692) without context takeover, which the relay
always negotiates (``relay.transport.handshake``): every compressed message stands alone, so the
compressed bytes depend only on the text and the window size, never on what the socket
sent before. RFC 7692 lets the sender choose per message whether to compress (the RSV1
bit), so messages under ``threshold`` bytes go out uncompressed: DDP's short ``changed``,
``ready`` and ``ping`` do not shrink, and deflating them would cost CPU on both ends of
every socket (``ws`` and Socket.IO default to the same 1 KiB threshold).

Must not: keep per-socket state, or compress with a context (the frames must be shareable).
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_THRESHOLD", "Compression", "encode_text_frame", "shared_compression"]

#: Messages smaller than this (UTF-8 bytes) are sent uncompressed by default.
DEFAULT_THRESHOLD: Final = 1024

_FIN_TEXT: Final = 0x81
_FIN_RSV1_TEXT: Final = 0xC1
#: Every deflate block flushed with Z_SYNC_FLUSH ends so; RFC 7692 7.2.1 drops it.
_SYNC_TAIL: Final = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Compression:
    """How a socket's outbound messages are compressed: its negotiated LZ77 window
    (``server_max_window_bits``, 9-15) and the size from which a message is compressed."""

    window_bits: int = 15
    threshold: int = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        # zlib cannot produce raw deflate with an 8-bit window; the handshake declines
        # offers that ask for it, so this is a programming error.
        if not 9 <= self.window_bits <= 15:
            raise ValueError(f"window_bits must be 9-15, not {self.window_bits}")
        if self.threshold < 0:
            raise ValueError("threshold must be >= 0")


@functools.lru_cache(maxsize=64)
def shared_compression(window_bits: int, threshold: int = DEFAULT_THRESHOLD) -> Compression:
    """The one shared ``Compression`` for these parameters: fan-out keys its frame cache
    on it, and one object for all sockets makes that lookup an identity hit."""
    return Compression(window_bits, threshold)


def utf8(text: str) -> bytes:
    """``text`` as UTF-8; a lone surrogate becomes "?" instead of raising into fan-out,
    which would hurt every other session it serves."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def encode_text_frame(text: str, compression: Compression | None = None) -> bytes:
    """An unmasked, unfragmented server TEXT frame carrying ``text``: compressed when
    ``compression`` is given and the text reaches its threshold, plain otherwise."""
    payload = utf8(text)
    first = _FIN_TEXT
    if compression is not None and len(payload) >= compression.threshold:
        bits = -compression.window_bits  # negative: raw deflate, no zlib header
        deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, bits)
        data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
        payload = data[: -len(_SYNC_TAIL)]
        first = _FIN_RSV1_TEXT
    n = len(payload)
    if n <= 125:
        header = bytes((first, n))
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload
