"""Replaying a recorded session trace against a relay, and judging the answers.

Job: a trace exported by ``django_app.tracing.export_trace`` (``ddp_trace export``) holds
one or more sessions' frames. ``steps_of`` turns one session's frames into steps: each
frame the client sent, with the frames the server sent after it until the client's next
frame (pings and pongs left out: they follow the clock, not the client). ``replay`` opens
a WebSocket to a relay, sends each step's client frame and waits for as many server
frames as were recorded (lockstep: the recorded order of requests and answers is kept),
answering the server's pings. ``compare`` judges each step's answers equivalent when they
are equal once what legitimately differs from run to run is masked (``normalize``): the
session id, ids the server draws at random (17-character Meteor ids, renamed
consistently, so the same id twice stays the same placeholder), EJSON dates; a frame
the recorder cut matches any frame. Usable as a test fixture: ``assert replay(...).ok``.

What cannot be replayed: a frame a client sent over the size limit (only its size was
kept: the step is skipped) and the secrets the recorder redacted (a redacted ``login``
fails on replay; the difference is reported, not hidden).

What must not live here: recording (``relay.server.trace``), storing or exporting
(``django_app.tracing``). ``websocket-client`` (the ``client`` extra) is imported only by
``replay``.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django_app.tracing import EXPORT_FORMAT

__all__ = ["Replay", "Step", "compare", "normalize", "replay", "steps_of"]

#: What masked values become.
SESSION, DATE, CUT = "<session>", "<date>", "<cut>"
#: A Meteor random id (``Random.id()``): 17 characters of its alphabet.
_METEOR_ID = re.compile(r"[23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz]{17}")
#: Messages the clock causes, not the client.
_HEARTBEAT = frozenset({"ping", "pong"})


@dataclass(frozen=True, slots=True)
class Step:
    """One client frame and the server frames recorded after it (``None``: a frame the
    recorder cut, which matches anything)."""

    sent: str
    expected: tuple[str | None, ...]
    #: Why it cannot be replayed (an oversized frame), else None.
    skip: str | None = None


@dataclass(slots=True)
class Replay:
    """What a replay found: per step, the answers and the differences."""

    steps: list[Step] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        if self.ok:
            return f"equivalent: {len(self.steps)} step(s)"
        return "\n".join([f"{len(self.differences)} difference(s):", *self.differences])


def _message(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _is_heartbeat(text: str) -> bool:
    msg = _message(text)
    return isinstance(msg, dict) and msg.get("msg") in _HEARTBEAT


def steps_of(export: Mapping[str, Any], session: str | None = None) -> list[Step]:
    """The steps of ``session``'s frames (the first session of the trace by default)."""
    if export.get("format") != EXPORT_FORMAT:
        raise ValueError(f"not a trace export (format {export.get('format')!r})")
    sessions = export.get("sessions") or []
    chosen = next(
        (entry for entry in sessions if session is None or entry.get("session") == session),
        None,
    )
    if chosen is None:
        raise ValueError(f"no session {session!r} in the trace" if session else "empty trace")
    steps: list[Step] = []
    sent: str | None = None
    skip: str | None = None
    expected: list[str | None] = []
    for frame in sorted(chosen["frames"], key=lambda f: (f.get("t", 0), f.get("i", 0))):
        text = str(frame.get("m", ""))
        if _is_heartbeat(text):
            continue
        if frame.get("d") == "in":
            if sent is not None:
                steps.append(Step(sent, tuple(expected), skip))
            sent, expected = text, []
            oversized = _message(text)
            oversize = isinstance(oversized, dict) and "oversized" in oversized
            skip = "an oversized frame: only its size was recorded" if oversize else None
        elif sent is not None:
            expected.append(None if "n" in frame else text)
    if sent is not None:
        steps.append(Step(sent, tuple(expected), skip))
    return steps


def normalize(text: str, ids: dict[str, str] | None) -> Any:
    """``text``'s message with what legitimately differs masked; ``ids`` maps each random
    id seen so far to its placeholder (shared by one side's frames of one replay; None:
    every random id becomes ``<id>``, for comparisons where order does not count)."""
    msg = _message(text)
    if msg is None:
        return text

    def mask(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$date"}:
                return {"$date": DATE}
            return {key: mask(item) for key, item in value.items()}
        if isinstance(value, list):
            return [mask(item) for item in value]
        if isinstance(value, str) and _METEOR_ID.fullmatch(value):
            return "<id>" if ids is None else ids.setdefault(value, f"<id{len(ids) + 1}>")
        return value

    if isinstance(msg, dict) and msg.get("msg") == "connected":
        msg = {**msg, "session": SESSION}
    return mask(msg)


def compare(
    expected: Sequence[str | None],
    actual: Sequence[str],
    ids: tuple[dict[str, str], dict[str, str]],
    *,
    ordered: bool = True,
) -> list[str]:
    """The differences between one step's recorded and replayed answers (none: they are
    equivalent). ``ids`` are the two sides' placeholders; ``ordered=False`` compares
    them as multisets."""
    if len(expected) != len(actual):
        return [f"{len(expected)} answer(s) recorded, {len(actual)} received"]
    want_ids, got_ids = ids if ordered else (None, None)
    want = [CUT if text is None else normalize(text, want_ids) for text in expected]
    got = [normalize(text, got_ids) for text in actual]
    if not ordered:
        # As many answers on both sides: once every recorded (uncut) answer is matched,
        # what is left received is what the cut ones stand for.
        want_counts = Counter(json.dumps(w, sort_keys=True) for w in want if w != CUT)
        got_counts = Counter(json.dumps(g, sort_keys=True) for g in got)
        missing = want_counts - got_counts
        if missing:
            extra = got_counts - want_counts
            return [f"missing {sorted(missing)}, unexpected {sorted(extra)}"]
        return []
    return [
        f"answer {index}: recorded {w!r}, received {g!r}"
        for index, (w, g) in enumerate(zip(want, got, strict=True))
        if w != CUT and w != g
    ]


def replay(
    export: Mapping[str, Any],
    url: str,
    *,
    session: str | None = None,
    timeout: float = 5.0,
    ordered: bool = True,
    headers: Sequence[str] = (),
) -> Replay:
    """Play ``session``'s client frames against the relay at ``url`` (``ws://.../websocket``)
    and compare its answers step by step. Each wait is bounded by ``timeout`` seconds."""
    import websocket  # the ``client`` extra; only a replay needs it

    report = Replay(steps=steps_of(export, session))
    ids: tuple[dict[str, str], dict[str, str]] = ({}, {})
    try:
        ws = websocket.create_connection(url, timeout=timeout, header=list(headers))
    except websocket.WebSocketException as exc:
        raise ConnectionError(f"cannot open {url}: {exc}") from exc
    try:
        for number, step in enumerate(report.steps):
            if step.skip is not None:
                report.answers.append([])
                continue
            ws.send(step.sent)
            answers = _receive(ws, len(step.expected), timeout)
            report.answers.append(answers)
            report.differences.extend(
                f"step {number} ({step.sent[:80]}): {difference}"
                for difference in compare(step.expected, answers, ids, ordered=ordered)
            )
    except websocket.WebSocketException as exc:
        raise ConnectionError(f"the relay closed the replay: {exc}") from exc
    finally:
        ws.close()
    return report


def _receive(ws: Any, count: int, timeout: float) -> list[str]:
    """Up to ``count`` server frames (heartbeats answered and left out), within
    ``timeout`` seconds in all."""
    import websocket

    answers: list[str] = []
    deadline = time.monotonic() + timeout
    while len(answers) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ws.settimeout(remaining)
        try:
            text = ws.recv()
        except websocket.WebSocketTimeoutException:
            break
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        msg = _message(text)
        if isinstance(msg, dict) and msg.get("msg") == "ping":
            pong: dict[str, Any] = {"msg": "pong"}
            if "id" in msg:
                pong["id"] = msg["id"]
            ws.send(json.dumps(pong))
            continue
        if _is_heartbeat(text):
            continue
        answers.append(text)
    return answers
