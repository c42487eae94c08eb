"""Fakes shared by the stream tests: a subscriber, a decoder for a 'books' channel, and a
``Streams`` wired to record LISTEN/UNLISTEN.

Must not: hold tests (pytest collects ``test_*`` modules only).
"""

from __future__ import annotations

import json
from typing import Any

from relay.backend import Condition, DecodedChange, Route
from relay.protocol.changestream import Change
from relay.protocol.mergebox import MergeBox
from relay.stream.fanout import Streams


class FakeSession:
    def __init__(self) -> None:
        self.mergebox = MergeBox()
        self.closed = False
        self.sent: list[dict[str, Any]] = []
        self.resyncs: list[str] = []
        #: Messages per write, to see coalesced deliveries.
        self.writes: list[int] = []

    def send(self, msgs: list[dict[str, Any]]) -> None:
        self.sent.extend(msgs)

    def send_texts(self, texts: list[str], shared: Any = None, *, metered: bool = False) -> bool:
        self.sent.extend(json.loads(t) for t in texts)
        self.writes.append(len(texts))
        return True

    def request_resync(self, sub_id: str) -> None:
        self.resyncs.append(sub_id)


class Decoder:
    """decode_change for a 'books' channel: values carry title and author."""

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        if channel != "ddp_books":
            return None
        fields = {"title": change.values.get("title")} if change.op != "d" else {}
        return DecodedChange("books", str(change.pk), change.op, fields, dict(change.values))


BOOKS = Route("ddp_books", "books", ())
BY_ANN = Route("ddp_books", "books", (Condition("author", "exact", "ann"),))


def make() -> tuple[Streams, list[str], list[str]]:
    listened: list[str] = []
    unlistened: list[str] = []
    streams = Streams(Decoder(), listened.append, unlistened.append)  # type: ignore[arg-type]
    streams.on_resync = lambda channel, atts: [
        a.session.request_resync(a.sub_id)  # type: ignore[attr-defined]
        for a in atts
    ]
    return streams, listened, unlistened
