"""What a parked DDP session is: the state a relay writes when a socket goes away, and
another relay reads to resume it exactly (DESIGN.md 5).

Layer: pure. A parked session holds what the client has and what it may not have
received yet: its id and user, the sent count, the log of recently sent messages (so the
ones lost in flight are replayed verbatim), its subscriptions (so re-sent ``sub``s are
recognised and live routing restarts), the mergebox (exactly the client's view once the
log is replayed) and the results of completed methods (so a re-sent ``method`` is answered
again, never run twice). ``dumps`` and ``loads`` give its JSON text, the form a park store
keeps (``relay.resume.store``); values inside go through EJSON.

Must not: do I/O, know where states are kept (``relay.resume.store``), or decide whether a
resume is allowed (``relay.resume.resumer`` does).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from relay.protocol import ejson

#: Bumped when the stored shape changes; an unknown version is never resumed (2: the
#: session's credential, which a resuming client must present again).
VERSION = 2


@dataclass(slots=True)
class ParkedSubscription:
    id: str
    name: str
    params: tuple[Any, ...]
    ready: bool


@dataclass(slots=True)
class ParkedSession:
    session_id: str
    user_id: str | None
    version: str
    #: Messages sent so far (ping/pong excluded; ``connected`` counts).
    sent_count: int
    #: The last messages sent, as sent; ``log[i]`` was message number ``log_start + i``.
    log_start: int
    log: list[str]
    subs: list[ParkedSubscription]
    mergebox: dict[str, Any]
    #: Completed methods: id -> the ``result`` message text.
    results: dict[str, str] = field(default_factory=dict)
    #: The backend's key of what authenticated the session (``Identity.credential``): a
    #: resume must present it again (``relay.server.session``), never the id alone.
    credential: str | None = None

    def missed_since(self, received_count: int, floor: int = 1) -> list[str] | None:
        """The messages after ``received_count``, or None when the log does not reach back.

        A client that knows the session id received ``connected`` (message 1), so a count
        below 1 is not one it can have; a session taken over between two requests of the
        same client (SockJS over HTTP) may not have given it ``connected`` yet (``floor``
        0).
        """
        if (
            received_count < floor
            or received_count > self.sent_count
            or received_count < self.log_start - 1
        ):
            return None
        return self.log[received_count - self.log_start + 1 :]


def dumps(state: ParkedSession) -> str:
    return json.dumps(
        {
            "v": VERSION,
            "session": state.session_id,
            "user": state.user_id,
            "credential": state.credential,
            "version": state.version,
            "sent": state.sent_count,
            "log_start": state.log_start,
            "log": state.log,
            "subs": [
                {
                    "id": s.id,
                    "name": s.name,
                    "params": ejson.to_json_value(list(s.params)),
                    "ready": s.ready,
                }
                for s in state.subs
            ],
            "mergebox": ejson.to_json_value(state.mergebox),
            "results": state.results,
        },
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


#: The most a stored state may inflate to; larger is not a state this code wrote.
MAX_UNPACKED = 256 * 1024 * 1024


def pack(state: ParkedSession) -> bytes:
    """The stored form of ``state``: its JSON text, compressed."""
    # surrogatepass: a message the session sent may hold a lone surrogate (a client's
    # string echoed back; the transport writes it as "?"): kept as it is, to replay as sent.
    return zlib.compress(dumps(state).encode("utf-8", "surrogatepass"), 6)


def unpack(data: bytes) -> ParkedSession | None:
    """The parked session in ``data`` (from ``pack``), or None if it is not one."""
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data, MAX_UNPACKED)
        if inflater.unconsumed_tail or not inflater.eof:
            return None
        return loads(raw.decode("utf-8", "surrogatepass"))
    except (zlib.error, UnicodeDecodeError):
        return None


def loads(text: str) -> ParkedSession | None:
    """The parked session, or None if the text is not a state this code can resume."""
    try:
        obj = json.loads(text)
        if obj.get("v") != VERSION:
            return None
        return ParkedSession(
            session_id=str(obj["session"]),
            user_id=obj["user"],
            credential=obj["credential"],
            version=str(obj["version"]),
            sent_count=int(obj["sent"]),
            log_start=int(obj["log_start"]),
            log=[str(t) for t in obj["log"]],
            subs=[
                ParkedSubscription(
                    str(s["id"]),
                    str(s["name"]),
                    tuple(ejson.from_json_value(s["params"])),
                    bool(s["ready"]),
                )
                for s in obj["subs"]
            ],
            mergebox=ejson.from_json_value(obj["mergebox"]),
            results={str(k): str(v) for k, v in obj["results"].items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
