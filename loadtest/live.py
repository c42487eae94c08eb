"""Commit-to-client latency as clients feel it: a writer stamps its write, every subscriber
that receives the change reports how long it took.

The relay measures commit-to-socket itself (``ddp_relay_commit_to_client_seconds``), from
the commit time the write side carries in the change; that time is not in the DDP
messages clients get. So the load test carries its own: a writer renames a book to
``<title> [locust <token>@<sent_ms>]`` where ``sent_ms`` is its wall clock (ms since the
epoch) just before it sends ``books.rename``; a subscriber that receives the ``changed``
for that title reports ``now - sent_ms``. The figure is therefore an upper bound of
commit-to-client: it also holds the method's run up to its COMMIT (the writer's own
``books.rename`` round trip shows how much that is), and it needs the writers' and the
subscribers' clocks to agree (one machine, or NTP-synchronised locust workers).

Reported through the scenario's ``report`` (locust: ``events.request.fire``) with request
type ``LIVE`` and name ``commit-to-client``, response length the message's size.

Must not: import locust or gevent (unit-tested without them), or send anything.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

#: locust's request type and name for the latency of one delivered change.
LIVE = "LIVE"
COMMIT_TO_CLIENT = "commit-to-client"
#: Stamped titles end in ``RENAME_MARK + token + "@" + sent_ms + "]"`` (the mark is the
#: scenario's, so ``scenario.base_title`` cuts stamps off like any load-test rename).
RENAME_MARK = " [locust "
_STAMP = re.compile(r" \[locust [0-9a-f]{1,32}@([0-9]{1,15})\]\Z")
#: ``Book.title`` max_length in the example app.
TITLE_MAX = 300
BOOKS = "bookstore.book"

#: ``report(request_type, name, response_time_ms, response_length, exception)``.
LiveReport = Callable[[str, str, float, int, BaseException | None], None]


def stamp(base: str, token: str, sent_ms: int) -> str:
    """``base`` renamed with the writer's token and send time, within ``TITLE_MAX``."""
    if not re.fullmatch(r"[0-9a-f]{1,32}", token) or not 0 <= sent_ms < 10**15:
        raise ValueError(f"bad stamp {token!r}@{sent_ms!r}")
    suffix = f"{RENAME_MARK}{token}@{sent_ms}]"
    return base[: TITLE_MAX - len(suffix)] + suffix


def sent_at(title: object) -> int | None:
    """The send time (ms) stamped in ``title``, or None when it carries no stamp."""
    if not isinstance(title, str):
        return None
    found = _STAMP.search(title)
    return int(found.group(1)) if found else None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LiveObserver:
    """A ``DDPClient(on_message=...)`` hook: reports each stamped ``changed`` it sees.

    ``clock`` gives wall-clock milliseconds (injectable for tests). A stamp from the
    future (clock skew between machines) is reported as 0 ms, not dropped, and counted
    in ``skewed`` so a run can say how many there were.
    """

    def __init__(self, report: LiveReport, clock: Callable[[], int] = now_ms) -> None:
        self.report = report
        self.clock = clock
        self.seen = 0
        self.skewed = 0

    def __call__(self, msg: dict[str, Any]) -> None:
        if msg.get("msg") != "changed" or msg.get("collection") != BOOKS:
            return
        fields = msg.get("fields")
        if not isinstance(fields, dict):
            return
        sent = sent_at(fields.get("title"))
        if sent is None:
            return
        elapsed = self.clock() - sent
        if elapsed < 0:
            self.skewed += 1
            elapsed = 0
        self.seen += 1
        size = len(json.dumps(msg, separators=(",", ":")))
        self.report(LIVE, COMMIT_TO_CLIENT, float(elapsed), size, None)
