"""Every Prometheus metric of a relay process, in one place (prefix ``ddp_relay_``).

Layer: core. Metrics are created once per process by ``get_metrics()`` (not at import), on
prometheus-client's default registry, which under gunicorn runs in multiprocess mode: the
start script sets ``PROMETHEUS_MULTIPROC_DIR`` and ``relay.server.gunicorn_conf`` marks dead
workers. ``render()`` produces the text exposition for ``/metrics``, aggregated across the
workers of the node when multiprocess mode is on.

Label values are bounded: reasons and outcomes come from fixed tables, never from
client-supplied strings; a method's name only once the backend registered it, and at most
``METHOD_LABEL_CAP`` names per process (then ``"other"``). The label values alerts and the
dashboard use are created at start with the value 0 (``precreate``), so a rule or a panel
sees the series before the first event. docs/operations.md lists every metric and the
question it answers.

Hot paths stay cheap: bytes written to sockets are added to ``TALLY`` (a plain integer,
no lock, no file write) and moved into the counter by the worker's sampler
(``relay.server.sampler``), which also sets the gauges that describe a state (pool,
listener lag, process) once a second instead of at every change.

Process metrics: prometheus-client's ``ProcessCollector`` reads the scraping process only
and is absent in multiprocess mode, so each worker reads its own ``/proc/self``
(``read_process``) on the sampler's round into ``ddp_relay_process_*`` gauges of mode
``liveall``: one series per live worker, labelled ``pid``.

Must not: import the runtime (sessions, sockets); they import this.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

#: Distinct method names one process labels ``ddp_relay_method_seconds`` with; the rest
#: are ``"other"``.
METHOD_LABEL_CAP: Final = 200
#: ...and the longest name labelled as itself (a registered name, but labels stay short).
METHOD_LABEL_CHARS: Final = 100
OTHER: Final = "other"

#: Why a stream target read its data again (``ddp_relay_resyncs_total{reason}``): the
#: channel's counter is in another epoch (database restored), its changelog was pruned
#: past the gap, a changelog row broke the payload contract, a target attached behind
#: what the ring holds, a target failed on a delivery.
RESYNC_REASONS: Final = ("epoch", "pruned", "unreadable", "attach", "target_error")
#: Why the listener read the changelog (``ddp_relay_backfills_total{reason}``): a channel
#: newly LISTENed, every channel after the listener (re)connected, a gap in the
#: notifications' sequence, a spilled payload's row already gone.
BACKFILL_REASONS: Final = ("listen", "reconnect", "gap", "spill_gone")
#: The classes of channels the listener's lag is reported by
#: (``relay.protocol.changestream.channel_class``).
CHANNEL_CLASSES: Final = ("model", "event", "presence")
#: What refused something (``ddp_relay_limited_total{limit}``, ``relay.server.gate`` and the
#: session): sockets per address, inbound bytes per address, queued inbound bytes per
#: session and per worker, queued messages, subscriptions per session, login attempts per
#: address, Meteor's accounts rule, an application's rule (``rule``, or its own label).
LIMITS: Final = (
    "connections_per_address",
    "inbound_rate",
    "pending_bytes_session",
    "pending_bytes_worker",
    "pending_messages",
    "subs_per_session",
    "login_address",
    "accounts",
    "rule",
)
#: The usual reasons of the DDP errors a client's malformed input gets
#: (``ddp_relay_protocol_errors_total{reason}``, ``relay.protocol``), there before any
#: happened; the rarer ones (an EJSON value's own error) appear when they first happen.
PROTOCOL_ERROR_REASONS: Final = (
    "Bad request",
    "Parse error",
    "Must connect first",
    "Already connected",
    "Malformed subscription",
    "Malformed method invocation",
    "Message too large",
    "Version negotiation failed",
)
_COMMIT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS: Final = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MethodLabels:
    """The ``method`` label of a registered method: its name while the process has seen
    fewer than ``cap`` distinct names, else ``"other"``. Pass registered names only (the
    backend's ``has_method``): a client's unknown name must never become a label."""

    __slots__ = ("_cap", "_known")

    def __init__(self, cap: int = METHOD_LABEL_CAP) -> None:
        self._cap = cap
        self._known: set[str] = set()

    def __call__(self, name: str) -> str:
        known = self._known
        if name in known:
            return name
        if len(known) >= self._cap or len(name) > METHOD_LABEL_CHARS or name == OTHER:
            return OTHER
        known.add(name)
        return name


class Tally:
    """Counts too hot for a Prometheus call each (a socket write): plain integers the
    sampler moves into their counters (``flush``)."""

    __slots__ = ("bytes_sent",)

    def __init__(self) -> None:
        self.bytes_sent = 0

    def flush(self, metrics: Metrics) -> None:
        sent, self.bytes_sent = self.bytes_sent, 0
        if sent:
            metrics.bytes_sent.inc(sent)


#: The process's tally (one per process: gunicorn forks workers before any write).
TALLY: Final = Tally()

#: The ``method`` label of ``ddp_relay_method_seconds`` (bounded: see ``MethodLabels``).
method_label: Final = MethodLabels()


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
    transport_requests: Counter
    sockjs_moves: Counter
    backfill_seconds: Histogram
    resyncs: Counter
    fence_timeouts: Counter
    revocations: Counter
    limited: Counter
    live_queries: Gauge
    query_fetches: Counter
    query_joins: Counter
    ready: Gauge
    commit_to_client_seconds: Histogram
    listener_connected: Gauge
    listener_lag_seconds: Gauge
    listener_lag_changes: Gauge
    notification_backlog: Gauge
    backfills: Counter
    coordinator_connected: Gauge
    subscriptions_open: Gauge
    workpool_busy: Gauge
    workpool_size: Gauge
    workpool_wait_seconds: Histogram
    resume_seconds: Histogram
    parked_sessions: Gauge
    bytes_sent: Counter
    process_resident_memory_bytes: Gauge
    process_cpu_seconds: Gauge
    process_open_fds: Gauge
    process_max_fds: Gauge
    build_info: Gauge


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
            "Method run time (work pool wait included), by registered method name (at most"
            f" {METHOD_LABEL_CAP} per worker, then other).",
            ["method"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ),
        disconnects=Counter("ddp_relay_disconnects", "Sessions closed, by reason.", ["reason"]),
        changes_delivered=Counter(
            "ddp_relay_change_batches", "Change-stream transactions routed to sessions."
        ),
        transport_requests=Counter(
            "ddp_relay_transport_requests",
            "DDP transport requests, by transport: WebSocket upgrades (websocket: raw,"
            " sockjs-websocket) and each SockJS HTTP request (xhr, xhr_send, xhr_streaming,"
            " eventsource, htmlfile, jsonp, jsonp_send).",
            ["transport"],
        ),
        sockjs_moves=Counter(
            "ddp_relay_sockjs_moves",
            "SockJS HTTP sessions reached through another relay, by outcome: relayed (a send"
            " through the inbox), handed_over, taken_over, refused (the holder did not hand"
            " it over in time), closed (it closed instead), lost (its holder died).",
            ["outcome"],
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
            " themselves again), by reason.",
            ["reason"],
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
        commit_to_client_seconds=Histogram(
            "ddp_relay_commit_to_client_seconds",
            "From a transaction's commit (database clock, carried in the change) to its"
            " messages written to the sockets of this worker's subscribers; once per"
            " transaction that reached a session.",
            buckets=_COMMIT_BUCKETS,
        ),
        listener_connected=Gauge(
            "ddp_relay_listener_connected",
            "1 while the worker's LISTEN connection is up and caught up, else 0. Across"
            " workers: the worst one.",
            multiprocess_mode="livemin",
        ),
        listener_lag_seconds=Gauge(
            "ddp_relay_listener_lag_seconds",
            "Worst age of a commit when the listener routed it, over the last second, by"
            " channel class (0: nothing routed late). Across workers: the worst one.",
            ["channel_class"],
            multiprocess_mode="livemax",
        ),
        listener_lag_changes=Gauge(
            "ddp_relay_listener_lag_changes",
            "Worst number of committed transactions (changelog sequences) a channel was"
            " behind when the listener heard of it, over the last second, by channel class.",
            ["channel_class"],
            multiprocess_mode="livemax",
        ),
        notification_backlog=Gauge(
            "ddp_relay_notification_backlog",
            "NOTIFYs the listener received and has not routed yet.",
            multiprocess_mode="livesum",
        ),
        backfills=Counter(
            "ddp_relay_backfills",
            "Changelog reads by the listener, by reason.",
            ["reason"],
        ),
        coordinator_connected=Gauge(
            "ddp_relay_coordinator_connected",
            "1 while the coordinator (ZooKeeper) session is connected (or no coordinator"
            " is configured), else 0. Across workers: the worst one.",
            multiprocess_mode="livemin",
        ),
        subscriptions_open=Gauge(
            "ddp_relay_subscriptions_open",
            "Subscriptions of the open sessions.",
            multiprocess_mode="livesum",
        ),
        workpool_busy=Gauge(
            "ddp_relay_workpool_busy",
            "Backend work pool slots running a call.",
            multiprocess_mode="livesum",
        ),
        workpool_size=Gauge(
            "ddp_relay_workpool_size",
            "Backend work pool slots (RELAY_BACKEND_CONCURRENCY per worker).",
            multiprocess_mode="livesum",
        ),
        workpool_wait_seconds=Histogram(
            "ddp_relay_workpool_wait_seconds",
            "Time a backend call waited for a work pool slot.",
            buckets=_WAIT_BUCKETS,
        ),
        resume_seconds=Histogram(
            "ddp_relay_resume_seconds",
            "Time to take a parked session back (coordinator and store), for resumes that"
            " succeeded.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ),
        parked_sessions=Gauge(
            "ddp_relay_parked_sessions",
            "Sessions parked and not yet resumed or expired, cluster-wide; reported by the"
            " coordinator's leader only (every other worker reports 0).",
            multiprocess_mode="livesum",
        ),
        bytes_sent=Counter(
            "ddp_relay_bytes_sent", "Bytes written to client sockets (WebSocket frames)."
        ),
        process_resident_memory_bytes=Gauge(
            "ddp_relay_process_resident_memory_bytes",
            "Resident memory of the worker process.",
            multiprocess_mode="liveall",
        ),
        process_cpu_seconds=Gauge(
            "ddp_relay_process_cpu_seconds_total",
            "User and system CPU time of the worker process (a gauge per worker: use rate()).",
            multiprocess_mode="liveall",
        ),
        process_open_fds=Gauge(
            "ddp_relay_process_open_fds",
            "Open file descriptors of the worker process.",
            multiprocess_mode="liveall",
        ),
        process_max_fds=Gauge(
            "ddp_relay_process_max_fds",
            "The worker process's descriptor limit (soft RLIMIT_NOFILE).",
            multiprocess_mode="liveall",
        ),
        build_info=Gauge(
            "ddp_relay_build_info",
            "1, labelled with the relay's, Python's and Django's versions.",
            ["version", "python", "django"],
            multiprocess_mode="livemax",
        ),
    )


#: The label values of ``ddp_relay_transport_requests_total{transport}``.
TRANSPORTS: Final = (
    "websocket",
    "sockjs-websocket",
    "xhr",
    "xhr_send",
    "xhr_streaming",
    "eventsource",
    "htmlfile",
    "jsonp",
    "jsonp_send",
)


def precreate(
    metrics: Metrics,
    *,
    disconnects: Iterable[str] = (),
    resumes: Iterable[str] = (),
    moves: Iterable[str] = (),
) -> None:
    """Create (at 0) the label values alerts and dashboards use, so their series exist
    before the first event. ``disconnects`` and ``resumes`` are the runtime's tables
    (``relay.disconnect``, ``relay.resume.resumer.OUTCOMES``): the core does not import
    them."""
    for reason in disconnects:
        metrics.disconnects.labels(reason=reason)
    for outcome in resumes:
        metrics.resumes.labels(outcome=outcome)
    for transport in TRANSPORTS:
        metrics.transport_requests.labels(transport=transport)
    for outcome in moves:
        metrics.sockjs_moves.labels(outcome=outcome)
    for reason in RESYNC_REASONS:
        metrics.resyncs.labels(reason=reason)
    for reason in BACKFILL_REASONS:
        metrics.backfills.labels(reason=reason)
    for channel_class in CHANNEL_CLASSES:
        metrics.listener_lag_seconds.labels(channel_class=channel_class).set(0)
        metrics.listener_lag_changes.labels(channel_class=channel_class).set(0)
    for limit in LIMITS:
        metrics.limited.labels(limit=limit)
    for reason in PROTOCOL_ERROR_REASONS:
        metrics.protocol_errors.labels(reason=reason)
    metrics.method_seconds.labels(method=OTHER)


def set_build_info(metrics: Metrics, version: str, python: str, django: str) -> None:
    metrics.build_info.labels(version=version, python=python, django=django).set(1)


# -- process metrics -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessStats:
    resident_bytes: int
    cpu_seconds: float
    open_fds: int
    max_fds: int


def parse_stat(text: str, ticks_per_second: int, page_size: int) -> tuple[float, int]:
    """CPU seconds (user + system) and resident bytes from ``/proc/<pid>/stat``.

    The second field (the command) is in parentheses and may hold spaces and parentheses
    itself: the fields are counted after its LAST ``)``. Raises ValueError on anything
    else."""
    end = text.rfind(")")
    if end < 0:
        raise ValueError("not a /proc stat line")
    fields = text[end + 1 :].split()
    # After the command: state is field 3, utime 14, stime 15, rss 24 (1-based, man 5 proc).
    if len(fields) < 22:
        raise ValueError("a /proc stat line too short")
    utime, stime, rss = int(fields[11]), int(fields[12]), int(fields[21])
    return (utime + stime) / ticks_per_second, rss * page_size


def read_process(proc: str = "/proc/self") -> ProcessStats:
    """This process's memory, CPU, and descriptors (Linux ``/proc``); OSError or
    ValueError when they cannot be read."""
    with open(f"{proc}/stat", encoding="ascii", errors="replace") as f:
        cpu, rss = parse_stat(f.read(), os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE"))
    open_fds = len(os.listdir(f"{proc}/fd"))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ProcessStats(rss, cpu, open_fds, soft)


def record_process(metrics: Metrics, stats: ProcessStats) -> None:
    metrics.process_resident_memory_bytes.set(stats.resident_bytes)
    metrics.process_cpu_seconds.set(stats.cpu_seconds)
    metrics.process_open_fds.set(stats.open_fds)
    metrics.process_max_fds.set(stats.max_fds)


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
