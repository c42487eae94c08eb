"""Recorded DDP conversations replayed against the real relay, over raw WebSocket and SockJS.

Each ``transcripts/*.jsonl`` line is one step:

- ``{"c": <message or raw text>}``: the client sends it (a string is sent verbatim);
- ``{"s": <message>}``: the next server message must match;
- ``{"s_any_order": [<message>, ...]}``: the next messages must match these, in any order;
- ``{"closed": true}``: the server closes the socket next;
- ``{"note": "..."}``: what the transcript shows.

In expected messages ``"<any>"`` matches any value, ``"<id>"`` a 17-character Meteor id,
and ``"<seeded:SEED:STREAM>"`` the first id of Meteor's random stream STREAM seeded SEED
(the same text in a client message is replaced by that id). Server pings are skipped.
"""

from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path
from typing import Any

import pytest
import websocket

from relay.protocol import sockjs
from relay.protocol.alea import RandomStream

pytestmark = pytest.mark.e2e

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.jsonl"))
SEEDED = re.compile(r"<seeded:([^:>]+):([^>]+)>")


def seeded(text: str) -> str:
    return SEEDED.sub(lambda m: RandomStream(m.group(1)).sequence(m.group(2)).id(), text)


def matches(expected: Any, actual: Any) -> bool:
    if expected == "<any>":
        return True
    if expected == "<id>":
        return isinstance(actual, str) and len(actual) == 17
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual) and type(expected) is type(actual)


class Wire:
    """One socket, raw or SockJS, yielding server DDP messages one at a time."""

    def __init__(self, base_url: str, transport: str) -> None:
        self.sockjs = transport == "sockjs"
        if self.sockjs:
            session = "".join(random.choices(string.ascii_lowercase, k=8))
            url = base_url.replace("http://", "ws://") + f"/sockjs/123/{session}/websocket"
        else:
            url = base_url.replace("http://", "ws://") + "/websocket"
        self.ws = websocket.create_connection(url, timeout=10)
        self.pending: list[str] = []
        if self.sockjs:
            assert self.ws.recv() == sockjs.OPEN

    def send(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        text = seeded(text)
        self.ws.send(json.dumps([text]) if self.sockjs else text)

    def next(self) -> dict[str, Any] | None:
        while not self.pending:
            try:
                frame = self.ws.recv()
            except websocket.WebSocketConnectionClosedException:
                return None
            if not frame:
                return None
            if not self.sockjs:
                self.pending.append(frame)
            elif frame.startswith("a"):
                self.pending.extend(json.loads(frame[1:]))
            elif frame.startswith("c"):
                return None
        msg: dict[str, Any] = json.loads(self.pending.pop(0))
        if msg.get("msg") == "ping":
            return self.next()
        return msg


@pytest.mark.parametrize("transport", ["websocket", "sockjs"])
@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript(path: Path, transport: str, relay_server: Any) -> None:
    wire = Wire(relay_server.url, transport)
    try:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            step = json.loads(line)
            where = f"{path.name}:{number}"
            if "c" in step:
                wire.send(step["c"])
            elif "s" in step:
                expected = json.loads(seeded(json.dumps(step["s"])))
                actual = wire.next()
                assert matches(expected, actual), f"{where}: expected {expected}, got {actual}"
            elif "s_any_order" in step:
                wanted = [json.loads(seeded(json.dumps(m))) for m in step["s_any_order"]]
                got = [wire.next() for _ in wanted]
                for msg in got:
                    hit = next((w for w in wanted if matches(w, msg)), None)
                    assert hit is not None, f"{where}: unexpected {msg}; still wanted {wanted}"
                    wanted.remove(hit)
            elif step.get("closed"):
                assert wire.next() is None, f"{where}: expected the server to close"
    finally:
        wire.ws.close()
        wire.ws.shutdown()  # close() skips the socket once the server has closed it
