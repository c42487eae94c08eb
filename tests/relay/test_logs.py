"""The log throttle: a client repeating a bad frame cannot flood the log."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from relay.logs import MAX_KEYS, LogThrottle, install


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(
    msg: str, name: str = "relay.server.session", level: int = logging.WARNING
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, ("arg",), None)


def test_a_burst_passes_then_the_rest_is_dropped_and_counted_on_the_next_window() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=3, interval=10, clock=clock)
    passed = [throttle.filter(_record("method %r failed")) for _ in range(100)]
    assert passed.count(True) == 3
    other = _record("publication %r failed")
    assert throttle.filter(other)  # another line of the code has its own budget
    clock.now = 10.0
    first = _record("method %r failed")
    assert throttle.filter(first)
    assert first.getMessage() == "method 'arg' failed [97 similar lines suppressed]"


def test_critical_lines_always_pass() -> None:
    throttle = LogThrottle(burst=1, interval=10, clock=Clock())
    assert all(throttle.filter(_record("x", level=logging.CRITICAL)) for _ in range(10))


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 5)), max_size=300))
def test_never_more_than_two_bursts_in_any_interval_per_line(
    events: list[tuple[int, float]],
) -> None:
    # Fixed windows: at most ``burst`` per window, so at most twice that in any span of
    # ``interval`` seconds (the end of one window and the start of the next).
    clock = Clock()
    throttle = LogThrottle(burst=2, interval=1.0, clock=clock)
    passed: dict[int, list[float]] = {}
    for line, step in events:
        clock.now += step / 10
        if throttle.filter(_record(f"line {line}")):
            passed.setdefault(line, []).append(clock.now)
    for times in passed.values():
        for i, t in enumerate(times):
            assert len([u for u in times[i:] if u - t < 1.0]) <= 4


def test_keys_are_bounded() -> None:
    throttle = LogThrottle(burst=1, interval=10, clock=Clock())
    for n in range(MAX_KEYS + 50):
        throttle.filter(_record(f"distinct {n}"))
    assert len(throttle._windows) == MAX_KEYS


def test_install_adds_one_throttle_per_handler_once() -> None:
    logger = logging.getLogger("tests.relay.logs.install")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        install(logger=logger)
        install(logger=logger)
        assert sum(isinstance(f, LogThrottle) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)
