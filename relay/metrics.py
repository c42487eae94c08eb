"""Every Prometheus metric of a relay process, in one place (prefix ``ddp_relay_``).

Layer: core. Metrics are created once per process by ``get_metrics()`` (not at import), on
prometheus-client's default registry, which under gunicorn runs in multiprocess mode: the
start script sets ``PROMETHEUS_MULTIPROC_DIR`` and ``relay.server.gunicorn_conf`` marks dead
workers. ``render()`` produces the text exposition for ``/metrics``, aggregated across the
workers of the node when multiprocess mode is on.

Label values are bounded: reasons and outcomes come from fixed tables, never from
client-supplied strings.

Must not: import the runtime (sessions, sockets); they import this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess


@dataclass(frozen=True)
class Metrics:
    sessions: Gauge
    sessions_opened: Counter
    messages_received: Counter
    messages_sent: Counter
    protocol_errors: Counter
    subscriptions: Counter
    method_calls: Counter
    method_seconds: Histogram
    disconnects: Counter
    changes_delivered: Counter
    notifications: Counter
    resumes: Counter
    backfill_seconds: Histogram
    resyncs: Counter
    fence_timeouts: Counter
    revocations: Counter
    limited: Counter
    live_queries: Gauge
    query_fetches: Counter
    query_joins: Counter
    ready: Gauge


@cache
def get_metrics() -> Metrics:
    """The process's metrics, created on first use."""
    return Metrics(
        sessions=Gauge("ddp_relay_sessions", "Open DDP sessions.", multiprocess_mode="livesum"),
        sessions_opened=Counter("ddp_relay_sessions_opened", "DDP sessions connected."),
        messages_received=Counter(
            "ddp_relay_messages_received", "Valid DDP messages received, by type.", ["msg"]
        ),
        messages_sent=Counter("ddp_relay_messages_sent", "DDP messages sent (ping/pong excluded)."),
        protocol_errors=Counter(
            "ddp_relay_protocol_errors",
            "Inbound messages answered with a DDP error, by reason.",
            ["reason"],
        ),
        subscriptions=Counter(
            "ddp_relay_subscriptions", "Subscriptions started, by outcome.", ["outcome"]
        ),
        method_calls=Counter("ddp_relay_method_calls", "Method calls, by outcome.", ["outcome"]),
        method_seconds=Histogram(
            "ddp_relay_method_seconds",
            "Method run time (work pool wait included).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
        disconnects=Counter("ddp_relay_disconnects", "Sessions closed, by reason.", ["reason"]),
        changes_delivered=Counter(
            "ddp_relay_change_batches", "Change-stream transactions routed to sessions."
        ),
        resumes=Counter(
            "ddp_relay_resumes",
            "Session resumption events: resumed, parked, or why a resume was refused.",
            ["outcome"],
        ),
        notifications=Counter(
            "ddp_relay_notifications",
            "NOTIFYs received by the worker's listener, by channel (one per published model).",
            ["channel"],
        ),
        backfill_seconds=Histogram(
            "ddp_relay_backfill_seconds",
            "Time spent reading missed changes from the changelog.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        ),
        resyncs=Counter(
            "ddp_relay_resyncs",
            "Stream targets told their channel lost history (live queries then read"
            " themselves again).",
        ),
        fence_timeouts=Counter(
            "ddp_relay_write_fence_timeouts",
            "Methods whose updated was sent before their writes were seen on the stream.",
        ),
        revocations=Counter(
            "ddp_relay_revocations",
            "Sessions closed because their credential was revoked (logout elsewhere, a"
            " password change, a deactivation).",
        ),
        limited=Counter(
            "ddp_relay_limited",
            "Calls, subscriptions, sockets and sessions refused by a limit (relay.server.gate).",
            ["limit"],
        ),
        live_queries=Gauge(
            "ddp_relay_live_queries",
            "Distinct live queries maintained (each shared by all its subscribers).",
            multiprocess_mode="livesum",
        ),
        query_fetches=Counter(
            "ddp_relay_query_fetches",
            "Live query fetches: a first load, or a refetch (unroutable change, a window"
            " that ran out of buffer, lost history).",
            ["reason"],
        ),
        query_joins=Counter(
            "ddp_relay_query_joins",
            "Subscription queries: fetched for them, or shared with a live one.",
            ["outcome"],
        ),
        # livemin: the node's value is its worst live worker's, as /readyz aggregates.
        ready=Gauge(
            "ddp_relay_ready",
            "Readiness checks (relay.server.health), 1 passing or 0 failing: draining,"
            " postgres, listener, coordinator. Across workers: the worst one.",
            ["check"],
            multiprocess_mode="livemin",
        ),
    )


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
