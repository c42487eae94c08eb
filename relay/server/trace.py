"""A session's trace for a support case: the frames it received and sent, bounded.

Layer: runtime, but pure: no gevent, no sockets, no clock of its own (time is an
argument), no Django. A ``Recorder`` is what a traced session holds (``Session.trace``;
None for every other session, so tracing costs one attribute test per frame when off):
each frame it is given becomes ``{"i": number, "t": unix time, "d": "in" | "out", "m":
text}``, with ``"n"`` (the text's full length) when the text was cut. The bounds, from the
``TraceOrder``: a time (``until``: nothing is recorded after it), a number of frames and
of characters per session (past either, recording stops for good), and a cut per frame;
frames wait in a bounded ring until they are taken (``take``) to be stored, and when the
store falls behind the oldest are dropped and counted, never the session slowed.

Secrets never enter a frame: the parameters of the accounts methods that carry
passwords or tokens (``login``, ``createUser``...) are replaced leaf by leaf, and any value
under a secret key (``password``, ``resume``, ``token``, ``hashedToken``...) anywhere in a
frame, in either direction (a login's ``result`` carries the resume token), is replaced
by ``REDACTED``. A text that is not JSON and mentions one of those keys is replaced whole.

Must not: block, import gevent, sockets or Django (it is on the pure modules' contract),
or keep a frame's text uncut or unredacted.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from relay.backend import TraceOrder

if TYPE_CHECKING:
    from relay.transport.websocket import Oversized

__all__ = [
    "REDACTED",
    "RING_FRAMES",
    "SECRET_KEYS",
    "SECRET_METHODS",
    "Chunk",
    "Recorder",
    "redact",
]

#: What a secret is replaced with.
REDACTED = "<redacted>"
#: Keys whose values are secrets wherever they appear in a frame.
SECRET_KEYS = frozenset(
    {
        "password",
        "newPassword",
        "oldPassword",
        "resume",
        "token",
        "hashedToken",
        "stampedToken",
        "secret",
    }
)
#: Methods whose every parameter is treated as secret (positional passwords and tokens).
SECRET_METHODS = frozenset(
    {"login", "createUser", "changePassword", "resetPassword", "verifyEmail", "setPassword"}
)
#: Frames waiting to be stored, per session, before the oldest are dropped.
RING_FRAMES = 2000
#: Frames stored together in one batch (``Recorder.due``).
BATCH_FRAMES = 200
#: Seconds a non-empty ring waits at most before it is stored.
BATCH_SECONDS = 2.0
#: Nesting a frame may have before the rest of it is replaced (hostile input).
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Chunk:
    """Frames taken from a recorder to be stored: ``first`` is the number of the first
    one in the session's recording; ``stats`` the recorder's counters at the time."""

    first: int
    frames: list[dict[str, Any]]
    stats: dict[str, int]


def _scrub(value: Any, depth: int, every: bool) -> Any:
    """``value`` with secrets replaced: every leaf when ``every``, else the values of
    ``SECRET_KEYS`` only; nesting beyond ``MAX_DEPTH`` is replaced whole."""
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, dict):
        return {
            key: REDACTED if key in SECRET_KEYS else _scrub(item, depth + 1, every)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_scrub(item, depth + 1, every) for item in value]
    if every and value is not None:
        return REDACTED
    return value


def redact(text: str) -> str:
    """``text`` with its secrets replaced (see the module); the same text when it has none."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        if any(key in text for key in SECRET_KEYS):
            return json.dumps({"unparsed": REDACTED, "length": len(text)})
        return text
    if not isinstance(msg, dict):
        return text
    scrubbed = _scrub(msg, 0, every=False)
    if msg.get("msg") == "method" and msg.get("method") in SECRET_METHODS:
        scrubbed["params"] = _scrub(msg.get("params"), 1, every=True)
    if scrubbed == msg:
        return text
    return json.dumps(scrubbed, separators=(",", ":"))


class Recorder:
    """The frames of one traced session (see the module). ``received``/``sent`` add
    frames; ``take`` hands over what waits; ``stopped`` says why recording ended."""

    __slots__ = (
        "_last_take",
        "_ring",
        "_ring_size",
        "chars",
        "dropped",
        "order",
        "recorded",
        "refused",
        "relay",
        "session_id",
        "stopped",
        "taken",
        "truncated",
    )

    def __init__(
        self,
        order: TraceOrder,
        relay: str,
        session_id: str,
        now: float,
        ring_size: int = RING_FRAMES,
    ) -> None:
        self.order = order
        self.relay = relay
        self.session_id = session_id
        self._ring: deque[dict[str, Any]] = deque()
        self._ring_size = max(1, ring_size)
        self._last_take = now
        #: Frames accepted (numbered 0..recorded-1), their characters after the cut.
        self.recorded = 0
        self.chars = 0
        #: Frames lost from a full ring, cut to ``frame_chars``, refused after a bound.
        self.dropped = 0
        self.truncated = 0
        self.refused = 0
        #: Frames handed over by ``take``.
        self.taken = 0
        #: Why recording ended: "until", "frames", "chars", "off"; None while it goes on.
        self.stopped: str | None = None

    def received(self, text: str | Oversized, now: float) -> None:
        """A frame from the client (an oversized one is noted by its size only)."""
        if isinstance(text, str):
            self._add("in", text, now)
        else:
            note = {"oversized": text.size, "limit": text.limit}
            self._add("in", json.dumps(note), now)

    def sent(self, texts: Sequence[str], now: float) -> None:
        """Frames to the client, in order."""
        for text in texts:
            self._add("out", text, now)

    def begin(self, version: str, now: float) -> None:
        """Record, marked ``"s": 1`` (synthetic), the ``connect`` and ``connected`` that
        opened the session before its trace started, so a replay can open one too."""
        connect = {"msg": "connect", "version": version, "support": [version]}
        self._add("in", json.dumps(connect, separators=(",", ":")), now, synthetic=True)
        connected = {"msg": "connected", "session": self.session_id}
        self._add("out", json.dumps(connected, separators=(",", ":")), now, synthetic=True)

    def stop(self, reason: str = "off") -> None:
        """Record nothing more (what waits can still be taken)."""
        if self.stopped is None:
            self.stopped = reason

    def _add(self, direction: str, text: str, now: float, *, synthetic: bool = False) -> None:
        if self.stopped is None:
            order = self.order
            if now >= order.until:
                self.stopped = "until"
            elif self.recorded >= order.max_frames:
                self.stopped = "frames"
            elif self.chars >= order.max_chars:
                self.stopped = "chars"
        if self.stopped is not None:
            self.refused += 1
            return
        text = redact(text)
        frame: dict[str, Any] = {"i": self.recorded, "t": round(now, 6), "d": direction}
        if synthetic:
            frame["s"] = 1
        cut = max(0, min(self.order.frame_chars, self.order.max_chars - self.chars))
        if len(text) > cut:
            frame["n"] = len(text)
            text = text[:cut]
            self.truncated += 1
        frame["m"] = text
        self.recorded += 1
        self.chars += len(text)
        ring = self._ring
        if len(ring) >= self._ring_size:
            ring.popleft()
            self.dropped += 1
        ring.append(frame)

    @property
    def waiting(self) -> int:
        """Frames in the ring, not yet taken."""
        return len(self._ring)

    def due(self, now: float) -> bool:
        """Whether the ring should be stored now: a full batch, or frames waiting for
        ``BATCH_SECONDS``, or recording over with frames left."""
        ring = self._ring
        if not ring:
            return False
        return (
            len(ring) >= BATCH_FRAMES
            or now - self._last_take >= BATCH_SECONDS
            or self.stopped is not None
        )

    def stats(self) -> dict[str, int]:
        return {
            "recorded": self.recorded,
            "chars": self.chars,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "refused": self.refused,
        }

    def take(self, now: float, limit: int = BATCH_FRAMES) -> Chunk | None:
        """Hand over at most ``limit`` waiting frames, oldest first (None: none wait)."""
        self._last_take = now
        ring = self._ring
        if not ring:
            return None
        frames = [ring.popleft() for _ in range(min(limit, len(ring)))]
        self.taken += len(frames)
        return Chunk(frames[0]["i"], frames, self.stats())
