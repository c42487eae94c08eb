"""Log lines a client can cause are rate-limited: a flood of bad frames is not a flood of logs.

Layer: core (standard library only). Every log line a relay writes comes from a fixed
format string in our code (``log.warning("method %r failed", name)``); a hostile client
can make one of them repeat as fast as it can send frames (issue 9's probe: 3,000 frames,
95,000 lines). ``LogThrottle`` is a ``logging.Filter`` for handlers: per logger and
format string it lets ``burst`` records through per ``interval`` seconds, drops the rest,
and notes on the next record let through how many were dropped. Critical records always
pass. Memory is bounded by the number of format strings in the code (capped anyway).

Must not: format messages it drops (that is the cost being avoided), or keep records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogThrottle", "install"]

#: Distinct (logger, format) keys tracked; past it the oldest window is forgotten.
MAX_KEYS = 4096


class LogThrottle(logging.Filter):
    """At most ``burst`` records per ``interval`` seconds per (logger name, format string)."""

    def __init__(
        self,
        burst: int = 20,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self._clock = clock
        #: key -> [window start, records let through in it, records dropped in it]
        self._windows: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval:
            dropped = 0 if window is None else int(window[2])
            if window is None and len(self._windows) >= MAX_KEYS:
                self._windows.pop(next(iter(self._windows)))
            self._windows[key] = [now, 1, 0]
            if dropped:
                record.msg = f"{record.msg} [{dropped} similar lines suppressed]"
            return True
        if window[1] < self.burst:
            window[1] += 1
            return True
        window[2] += 1
        return False


def install(throttle: LogThrottle | None = None, logger: logging.Logger | None = None) -> None:
    """Add one throttle to every handler of ``logger`` (default: the root logger) that
    has none yet: records of every logger below it pass through those handlers."""
    target = logger if logger is not None else logging.getLogger()
    shared = throttle if throttle is not None else LogThrottle()
    for handler in target.handlers:
        if not any(isinstance(f, LogThrottle) for f in handler.filters):
            handler.addFilter(shared)
