"""Session traces for support cases, the write side: start, stop, store, export.

Job: a trace is a ``SessionTrace`` row (``django_app.models``): one session id or one
user, until a time, with its bounds. The table is on the change stream (collection
``TRACE_COLLECTION``, keys only, registered in ``django_app.ddp``), so starting,
extending or stopping a trace reaches every relay at once: each reads the orders again
(``trace_orders``, called by ``DjangoBackend.trace_orders``) and starts or stops
recording the matching sessions (``relay.server.tracebook``). Relays store what they
recorded in batches (``save_trace``: ``TraceChunk`` rows), within the trace's total
bound; ``export_trace`` gives a trace as one JSON document (the admin's download and
``ddp_trace export``), what ``django_app.trace_replay`` plays back.

What must not live here: recording or redacting frames (the relay does it, before a
frame leaves the session), or the replay.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from django_app import changes
from django_app.accounts.users import user_id_of
from django_app.channel import model_channel
from django_app.models import SessionTrace, TraceChunk
from relay.backend import Route, TraceOrder, TraceOrders

__all__ = [
    "EXPORT_FORMAT",
    "MAX_MINUTES",
    "TRACE_COLLECTION",
    "export_trace",
    "save_trace",
    "start_trace",
    "stop_trace",
    "trace_channel",
    "trace_orders",
]

#: The collection name of the trace table on the change stream (never published).
TRACE_COLLECTION: Final = "ddp.sessiontrace"
#: ``export_trace``'s ``format``: what ``django_app.trace_replay`` reads.
EXPORT_FORMAT: Final = "ddp-relay-trace/1"
#: The longest a trace may run: a forgotten trace must not record for days.
MAX_MINUTES: Final = 24 * 60
#: Frames one stored batch may hold (the relay sends at most 200).
MAX_BATCH_FRAMES: Final = 1000


def trace_channel() -> str:
    """The change-stream channel of the trace table."""
    return model_channel(SessionTrace)


def trace_orders() -> TraceOrders:
    """The traces running now, and the trace channel's position read BEFORE them (a
    trace started after the read has a later sequence, which the relay applies)."""
    channel = trace_channel()
    position = changes.positions([channel])[channel]
    rows = SessionTrace.objects.filter(until__gt=timezone.now())
    orders = tuple(
        TraceOrder(
            id=row.pk,
            session_id=row.session_id or None,
            user_id=row.user_id or None,
            until=row.until.timestamp(),
            max_frames=row.max_frames,
            max_chars=row.max_chars,
            frame_chars=row.frame_chars,
        )
        for row in rows
    )
    return TraceOrders(orders, Route(channel, TRACE_COLLECTION, (), fields=()), position)


def start_trace(
    *,
    session_id: str | None = None,
    user: Any = None,
    user_id: str | None = None,
    minutes: float = 15,
    max_frames: int | None = None,
    max_chars: int | None = None,
    frame_chars: int | None = None,
    created_by: str = "",
    note: str = "",
) -> SessionTrace:
    """Switch a trace on for one session id, or every session of one user (``user`` or
    its wire id ``user_id``), for ``minutes`` (at most ``MAX_MINUTES``); relays start
    recording once the commit reaches them (no restart)."""
    if user is not None:
        user_id = user_id_of(user)
    if (session_id is None) == (user_id is None):
        raise ValueError("trace exactly one target: a session id or a user")
    if not 0 < minutes <= MAX_MINUTES:
        raise ValueError(f"minutes must be in (0, {MAX_MINUTES}]")
    trace = SessionTrace(
        session_id=session_id,
        user_id=user_id,
        until=timezone.now() + dt.timedelta(minutes=minutes),
        created_by=created_by[:150],
        note=note,
    )
    for name, value in (
        ("max_frames", max_frames),
        ("max_chars", max_chars),
        ("frame_chars", frame_chars),
    ):
        if value is not None:
            if value <= 0:
                raise ValueError(f"{name} must be positive")
            setattr(trace, name, value)
    trace.save()
    return trace


def stop_trace(trace: SessionTrace) -> None:
    """End a trace now (its frames stay): relays stop recording once the commit reaches
    them."""
    now = timezone.now()
    if trace.until > now:
        trace.until = now
        trace.save(update_fields=["until"])


def save_trace(
    trace_id: str,
    relay: str,
    session_id: str,
    first: int,
    frames: Sequence[Mapping[str, Any]],
    stats: Mapping[str, int],
) -> bool:
    """Store one batch a relay recorded; False (dropped) when the trace is gone or its
    total bound (``max_total_chars``) is reached, or the batch is malformed."""
    if not frames or len(frames) > MAX_BATCH_FRAMES or first < 0:
        return False
    chars = sum(len(str(frame.get("m", ""))) for frame in frames)
    with transaction.atomic():
        # The row lock serialises the relays storing for one trace, so the total holds.
        trace = SessionTrace.objects.select_for_update().filter(pk=trace_id).first()
        if trace is None:
            return False
        stored = trace.chunks.aggregate(total=Sum("chars"))["total"] or 0
        if stored + chars > trace.max_total_chars:
            return False
        TraceChunk.objects.create(
            trace=trace,
            relay=relay[:255],
            session_id=session_id[:64],
            first=first,
            frames=list(frames),
            chars=chars,
            stats=dict(stats),
        )
    return True


def export_trace(trace: SessionTrace) -> dict[str, Any]:
    """The trace as one JSON document: its order, then per session (in the order they
    were first stored) the relays it ran on, its frames in order and its last counters."""
    sessions: dict[str, dict[str, Any]] = {}
    for chunk in trace.chunks.order_by("id"):
        entry = sessions.setdefault(
            chunk.session_id,
            {"session": chunk.session_id, "relays": [], "frames": [], "stats": {}},
        )
        if chunk.relay not in entry["relays"]:
            entry["relays"].append(chunk.relay)
        for frame in chunk.frames:
            entry["frames"].append({**frame, "relay": chunk.relay})
        entry["stats"] = chunk.stats
    for entry in sessions.values():
        entry["frames"].sort(key=lambda frame: (frame.get("t", 0), frame.get("i", 0)))
    return {
        "format": EXPORT_FORMAT,
        "trace": {
            "id": trace.pk,
            "session_id": trace.session_id,
            "user_id": trace.user_id,
            "until": trace.until.isoformat(),
            "created": trace.created.isoformat() if trace.created else None,
            "created_by": trace.created_by,
            "note": trace.note,
            "max_frames": trace.max_frames,
            "max_chars": trace.max_chars,
            "frame_chars": trace.frame_chars,
            "max_total_chars": trace.max_total_chars,
        },
        "sessions": list(sessions.values()),
    }
