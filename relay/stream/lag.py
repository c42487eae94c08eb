"""How far behind the commits the listener is, per channel class, since it was last asked.

Layer: pure (no I/O, no clock, no gevent). The listener (``relay.stream.listener``) reports
two things as it goes: how many transactions (changelog sequences) a channel was behind
when it heard of it (``behind``: once per notification and per changelog batch), and how
old a commit was when it routed it (``late``: once per delivered run). The worker's sampler
(``relay.server.sampler``) takes the worst of each per class about once a second
(``take``) into the ``ddp_relay_listener_lag_*`` gauges, and the window starts again at 0:
a listener that keeps up reads near 0, one that fell behind reads how far, however short
the moment between two scrapes.

Channel classes (``relay.protocol.changestream.channel_class``) are a fixed table, so the
label values are too; the class of each channel is cached (bounded: the cache starts over
past ``CACHE_MAX`` channels).

Must not: read a clock (callers pass ages), do I/O, or allocate per report beyond the
first sight of a channel.
"""

from __future__ import annotations

from typing import Final

from relay.protocol.changestream import CHANNEL_CLASSES, channel_class

#: Channels whose class is remembered (event streams have a channel per key).
CACHE_MAX: Final = 10_000


class LagWindow:
    """The worst ``behind`` and ``late`` per channel class since the last ``take``."""

    __slots__ = ("_changes", "_classes", "_index", "_seconds")

    def __init__(self) -> None:
        self._classes = CHANNEL_CLASSES
        self._seconds = [0.0] * len(CHANNEL_CLASSES)
        self._changes = [0] * len(CHANNEL_CLASSES)
        self._index: dict[str, int] = {}

    def _slot(self, channel: str) -> int:
        slot = self._index.get(channel)
        if slot is None:
            if len(self._index) >= CACHE_MAX:
                self._index.clear()
            slot = self._index[channel] = self._classes.index(channel_class(channel))
        return slot

    def behind(self, channel: str, changes: int) -> None:
        """``channel`` was ``changes`` transactions behind (negative: ignored)."""
        slot = self._slot(channel)
        if changes > self._changes[slot]:
            self._changes[slot] = changes

    def late(self, channel: str, seconds: float) -> None:
        """A commit of ``channel`` was routed ``seconds`` after it was made."""
        slot = self._slot(channel)
        if seconds > self._seconds[slot]:
            self._seconds[slot] = seconds

    def take(self) -> list[tuple[str, float, int]]:
        """``(class, worst seconds, worst changes)`` for every class, then all back to 0."""
        out = list(zip(self._classes, self._seconds, self._changes, strict=True))
        self._seconds = [0.0] * len(self._classes)
        self._changes = [0] * len(self._classes)
        return out
