"""Bounded waiting for the coordinator tests (nothing here sleeps unboundedly)."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

DEFAULT_TIMEOUT = 10.0


def wait_until(
    condition: Callable[[], object], what: str, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Poll ``condition`` every 20 ms until truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class LeaderEvents:
    """A leadership callback that only enqueues, as the coordinator requires."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bool] = queue.Queue()

    def __call__(self, leading: bool) -> None:
        self.queue.put(leading)

    def seen(self, value: bool, within: float) -> bool:
        """True if ``value`` arrives within ``within`` s (earlier other values are dropped)."""
        deadline = time.monotonic() + within
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.queue.get(timeout=left) is value:
                    return True
            except queue.Empty:
                return False
        return False

    def wait_for(self, value: bool, timeout: float = DEFAULT_TIMEOUT) -> bool:
        return self.seen(value, within=timeout)


class StateEvents:
    """A state listener that only enqueues; ``wait_for`` a given state value."""

    def __init__(self) -> None:
        self.queue: queue.Queue[object] = queue.Queue()

    def __call__(self, state: object) -> None:
        self.queue.put(state)

    def wait_for(self, state: object, timeout: float = DEFAULT_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.queue.get(timeout=left) is state:
                    return True
            except queue.Empty:
                return False
        return False

    def drain(self) -> list[object]:
        items = []
        while True:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                return items
