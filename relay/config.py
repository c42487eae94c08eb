"""One frozen settings object for a relay process, read once at start from ``RELAY_*`` env.

Layer: core. Every field names its environment variable and default; helm values map onto
these one to one (``helm/ddp-relay/values.yaml``). Nothing reads settings at import time:
``Settings.from_env()`` is called by the composition root (``relay.server.app``) and the result is
passed down explicitly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields


class ConfigError(ValueError):
    """A setting is missing or has a value the relay cannot run with."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"not an integer: {raw!r}") from None


def _parse_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"not a number: {raw!r}") from None
    # float() takes "nan" and "inf"; no timeout or window of the relay means either.
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {raw!r}")
    return value


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _check_zookeeper_security(settings: Settings) -> None:
    """ConfigError for RELAY_ZOOKEEPER_DIGEST / _TLS* values the coordinator cannot use.

    The digest's value never appears in a message: it is a password.
    """
    s = settings
    tls_options = {
        "RELAY_ZOOKEEPER_TLS_CA": s.zookeeper_tls_ca,
        "RELAY_ZOOKEEPER_TLS_CERT": s.zookeeper_tls_cert,
        "RELAY_ZOOKEEPER_TLS_KEY": s.zookeeper_tls_key,
    }
    if not s.zookeeper:
        given = [name for name, value in tls_options.items() if value]
        given += ["RELAY_ZOOKEEPER_DIGEST"] * bool(s.zookeeper_digest)
        given += ["RELAY_ZOOKEEPER_TLS"] * s.zookeeper_tls
        given += ["RELAY_ZOOKEEPER_TLS_VERIFY"] * (not s.zookeeper_tls_verify)
        if given:
            raise ConfigError(f"{', '.join(sorted(given))} set but RELAY_ZOOKEEPER is empty")
        return
    if s.zookeeper_digest:
        user, sep, password = s.zookeeper_digest.partition(":")
        if not (user and sep and password):
            raise ConfigError("RELAY_ZOOKEEPER_DIGEST must look like 'user:password'")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in s.zookeeper_digest):
            raise ConfigError(
                "RELAY_ZOOKEEPER_DIGEST contains a control character "
                "(a trailing newline from a secret file?)"
            )
    if not s.zookeeper_tls:
        # Refused rather than ignored: whoever sets a CA expects an encrypted connection.
        given = [name for name, value in tls_options.items() if value]
        given += ["RELAY_ZOOKEEPER_TLS_VERIFY"] * (not s.zookeeper_tls_verify)
        if given:
            raise ConfigError(f"{', '.join(given)} set but RELAY_ZOOKEEPER_TLS is off")
        return
    if bool(s.zookeeper_tls_cert) != bool(s.zookeeper_tls_key):
        raise ConfigError(
            "RELAY_ZOOKEEPER_TLS_CERT and RELAY_ZOOKEEPER_TLS_KEY must be set together"
        )
    for name, path in tls_options.items():
        if path and not os.path.isfile(path):
            raise ConfigError(f"{name}: no such file: {path!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Relay settings. Each field's metadata gives its env var; the default is the value."""

    #: RELAY_BACKEND: dotted path ``module:attribute`` of the Backend factory (no Django in relay).
    backend: str = field(
        default="django_app.backend:DjangoBackend", metadata={"env": "RELAY_BACKEND"}
    )
    #: RELAY_WSGI_APP: dotted path of the WSGI app serving every non-DDP path ("" = 404s).
    wsgi_app: str = field(default="", metadata={"env": "RELAY_WSGI_APP"})
    #: RELAY_ALLOWED_ORIGINS: comma list of origins allowed to open a DDP socket from a browser
    #: ("*" allows any). A request whose Origin matches its own Host is always allowed; a request
    #: without an Origin header (non-browser clients) is allowed.
    allowed_origins: tuple[str, ...] = field(default=(), metadata={"env": "RELAY_ALLOWED_ORIGINS"})
    #: RELAY_MAX_MESSAGE_BYTES: largest inbound DDP message; a larger one is dropped and
    #: answered with a DDP error (a compressed one that inflates past it closes with 1009).
    max_message_bytes: int = field(default=1_048_576, metadata={"env": "RELAY_MAX_MESSAGE_BYTES"})
    #: RELAY_PERMESSAGE_DEFLATE: accept permessage-deflate when the client offers it.
    permessage_deflate: bool = field(default=True, metadata={"env": "RELAY_PERMESSAGE_DEFLATE"})
    #: RELAY_DEFLATE_THRESHOLD: with permessage-deflate, messages of at least this many bytes
    #: are compressed; smaller ones go out plain (they do not shrink, and compressing costs
    #: both ends CPU on every socket). 0 compresses everything.
    deflate_threshold: int = field(default=1024, metadata={"env": "RELAY_DEFLATE_THRESHOLD"})
    #: RELAY_SEND_BUFFER_BYTES: outbound bytes queued for one socket before the session is
    #: disconnected as too slow (it can resume later).
    send_buffer_bytes: int = field(default=8_388_608, metadata={"env": "RELAY_SEND_BUFFER_BYTES"})
    #: RELAY_WORKER_CONNECTIONS: DDP sockets one worker process holds at most; an upgrade
    #: past it is refused with 503 (a load balancer retries elsewhere). gunicorn's
    #: ``worker_connections`` reads the same variable for the requests in flight.
    worker_connections: int = field(default=10_000, metadata={"env": "RELAY_WORKER_CONNECTIONS"})
    #: RELAY_HEARTBEAT_INTERVAL: seconds of inbound silence before the server pings (Meteor: 15).
    heartbeat_interval: float = field(default=15.0, metadata={"env": "RELAY_HEARTBEAT_INTERVAL"})
    #: RELAY_HEARTBEAT_TIMEOUT: seconds to wait for any message after a ping (Meteor: 15).
    heartbeat_timeout: float = field(default=15.0, metadata={"env": "RELAY_HEARTBEAT_TIMEOUT"})
    #: RELAY_SOCKJS_HEARTBEAT: seconds between SockJS ``h`` frames on an idle SockJS socket.
    sockjs_heartbeat: float = field(default=25.0, metadata={"env": "RELAY_SOCKJS_HEARTBEAT"})
    #: RELAY_SOCKJS_HTTP: serve SockJS's HTTP transports (xhr-streaming, xhr-polling,
    #: eventsource, htmlfile, jsonp) for clients that cannot open a WebSocket; false answers
    #: them 404 and ``/sockjs/info`` offers the WebSocket only.
    sockjs_http: bool = field(default=True, metadata={"env": "RELAY_SOCKJS_HTTP"})
    #: RELAY_SOCKJS_RESPONSE_LIMIT: bytes a streaming response carries before it ends and the
    #: client opens the next (the browser keeps a response's text until it ends).
    sockjs_response_limit: int = field(
        default=131_072, metadata={"env": "RELAY_SOCKJS_RESPONSE_LIMIT"}
    )
    #: RELAY_SOCKJS_DISCONNECT_DELAY: seconds a SockJS HTTP session waits for its client's
    #: next request before it ends (then it is parked, resumable, as a WebSocket's).
    sockjs_disconnect_delay: float = field(
        default=10.0, metadata={"env": "RELAY_SOCKJS_DISCONNECT_DELAY"}
    )
    #: RELAY_HANDSHAKE_TIMEOUT: seconds a new socket may take to send ``connect``.
    handshake_timeout: float = field(default=45.0, metadata={"env": "RELAY_HANDSHAKE_TIMEOUT"})
    #: RELAY_MAX_SUBS_PER_SESSION: active subscriptions one session may hold.
    max_subs_per_session: int = field(default=500, metadata={"env": "RELAY_MAX_SUBS_PER_SESSION"})
    #: RELAY_MAX_PENDING_MESSAGES: inbound DDP messages queued per session before it is closed.
    max_pending_messages: int = field(default=1000, metadata={"env": "RELAY_MAX_PENDING_MESSAGES"})
    #: RELAY_MAX_PENDING_BYTES: bytes of inbound DDP messages queued per session before it is
    #: closed. Four maximum-size messages: a client pipelining its resume burst fits, a flood
    #: behind one slow method does not.
    max_pending_bytes: int = field(default=4_194_304, metadata={"env": "RELAY_MAX_PENDING_BYTES"})
    #: RELAY_MAX_WORKER_PENDING_BYTES: the same, for all the sessions of a worker process
    #: together; a session whose message would pass it is closed. 64 MiB keeps a worker's
    #: queued input far below the 256 MiB it may use in all, whoever sends it.
    max_worker_pending_bytes: int = field(
        default=67_108_864, metadata={"env": "RELAY_MAX_WORKER_PENDING_BYTES"}
    )
    #: RELAY_MAX_WORKER_SEND_BYTES: outbound bytes queued on all of a worker's sockets
    #: together (each socket's own cap is RELAY_SEND_BUFFER_BYTES); the socket whose queue
    #: would pass it is closed as too slow (1008). 128 MiB: thousands of briefly lagging
    #: clients fit, a crowd of stalled readers cannot hold the worker's memory.
    max_worker_send_bytes: int = field(
        default=134_217_728, metadata={"env": "RELAY_MAX_WORKER_SEND_BYTES"}
    )
    #: RELAY_INBOUND_BYTES_PER_ADDRESS: bytes per second one client address may send to a
    #: worker (bursts of four seconds' worth); over it, its sockets are read no faster (TCP
    #: back-pressure slows the sender; nothing is refused). 4 MiB/s is far above what DDP
    #: clients send, even hundreds behind one NAT, and low enough that a flood of large
    #: messages cannot take the CPU other clients' pings and updates need. 0: no limit.
    inbound_bytes_per_address: int = field(
        default=4_194_304, metadata={"env": "RELAY_INBOUND_BYTES_PER_ADDRESS"}
    )
    #: RELAY_BACKEND_CONCURRENCY: greenlets running backend (ORM) calls per worker process; this
    #: bounds the database connections one worker opens.
    backend_concurrency: int = field(default=8, metadata={"env": "RELAY_BACKEND_CONCURRENCY"})
    #: RELAY_DATABASE_URL: PostgreSQL for the change stream (LISTEN + changelog reads); when
    #: unset, ``DATABASE_URL`` is used; when both are unset the relay sends no live updates.
    database_url: str = field(default="", metadata={"env": "RELAY_DATABASE_URL"})
    #: RELAY_MAX_UNBLOCKED_METHODS: methods of one session that may run on after calling
    #: ``unblock()`` (Meteor's ``this.unblock()``) at once; one more that unblocks keeps
    #: its session's later messages waiting, as if it had not, until one of them ends. 4:
    #: a client's parallel calls overlap, one client cannot take the work pool (the pool's
    #: per-address share bounds it too). 0: ``unblock()`` has no effect.
    max_unblocked_methods: int = field(default=4, metadata={"env": "RELAY_MAX_UNBLOCKED_METHODS"})
    #: RELAY_WRITE_FENCE_TIMEOUT: seconds a method's ``updated`` waits for its writes to be
    #: routed to the session before it is sent anyway (and a warning is logged).
    write_fence_timeout: float = field(default=10.0, metadata={"env": "RELAY_WRITE_FENCE_TIMEOUT"})
    #: RELAY_RESUME_WINDOW: seconds a parked session can be resumed (0 turns resuming off).
    resume_window: float = field(default=300.0, metadata={"env": "RELAY_RESUME_WINDOW"})
    #: RELAY_RESUME_LOG: messages kept per session for replaying what was lost in flight;
    #: a client further behind than this gets a new session (and resyncs).
    resume_log: int = field(default=500, metadata={"env": "RELAY_RESUME_LOG"})
    #: RELAY_RESUME_LOG_BYTES: the most of that log a parked session keeps (its newest
    #: messages): a client that missed more resyncs; 256 KiB holds far more than a socket
    #: loses in flight, and keeps a parked row small.
    resume_log_bytes: int = field(default=262_144, metadata={"env": "RELAY_RESUME_LOG_BYTES"})
    #: RELAY_RESUME_BYTES_PER_ADDRESS: compressed bytes of parked sessions one client
    #: address may hold at once (0 = no limit); past it a lost session is dropped, not
    #: parked. 32 MiB is a few hundred typical sessions behind one NAT.
    resume_bytes_per_address: int = field(
        default=33_554_432, metadata={"env": "RELAY_RESUME_BYTES_PER_ADDRESS"}
    )
    #: RELAY_FORWARDED_COUNT: proxies in front of the relay that append to X-Forwarded-For
    #: (Meteor's HTTP_FORWARDED_COUNT, read when this is unset). 0, the default, takes the
    #: socket's peer address: trusting the header without a proxy would let any client
    #: choose the address its limits are counted under.
    forwarded_count: int = field(default=0, metadata={"env": "RELAY_FORWARDED_COUNT"})
    #: RELAY_ADDRESS_IPV6_PREFIX: IPv6 clients are counted per network of this prefix in the
    #: per-address limits. 64: one host usually holds a whole /64 and can rotate through it.
    address_ipv6_prefix: int = field(default=64, metadata={"env": "RELAY_ADDRESS_IPV6_PREFIX"})
    #: RELAY_MAX_CONNECTIONS_PER_ADDRESS: open DDP sockets one client address may hold on
    #: one worker process (0 = no limit); past it the upgrade is refused. 1000: hundreds of
    #: honest sessions come from one office NAT or carrier-grade NAT address.
    max_connections_per_address: int = field(
        default=1000, metadata={"env": "RELAY_MAX_CONNECTIONS_PER_ADDRESS"}
    )
    #: RELAY_LOGIN_ATTEMPTS_PER_ADDRESS: login attempts one client address may make per
    #: RELAY_LOGIN_WINDOW on one worker process (0 = no limit); more get too-many-requests.
    #: 120: a hundred logins a minute from one NAT are normal; each costs a password hash
    #: (a quarter of a CPU second with Django's PBKDF2), so this also bounds the CPU one
    #: address can make a worker spend hashing to half a core.
    login_attempts_per_address: int = field(
        default=120, metadata={"env": "RELAY_LOGIN_ATTEMPTS_PER_ADDRESS"}
    )
    #: RELAY_LOGIN_WINDOW: seconds of the window RELAY_LOGIN_ATTEMPTS_PER_ADDRESS counts in.
    #: 60: long enough to slow guessing, short enough that a locked-out office waits a minute.
    login_window: float = field(default=60.0, metadata={"env": "RELAY_LOGIN_WINDOW"})
    #: RELAY_ZOOKEEPER: ZooKeeper connect string (host:port,...) for cluster coordination.
    zookeeper: str = field(default="", metadata={"env": "RELAY_ZOOKEEPER"})
    #: RELAY_ZOOKEEPER_DIGEST: "user:password" (a secret, never in repr or logs): the
    #: coordinator authenticates with it and every znode it creates is that identity's only.
    zookeeper_digest: str = field(
        default="", repr=False, metadata={"env": "RELAY_ZOOKEEPER_DIGEST"}
    )
    #: RELAY_ZOOKEEPER_TLS: connect to ZooKeeper with TLS (its secureClientPort).
    zookeeper_tls: bool = field(default=False, metadata={"env": "RELAY_ZOOKEEPER_TLS"})
    #: RELAY_ZOOKEEPER_TLS_CA: PEM bundle of the CAs to trust for ZooKeeper's certificate
    #: (besides the system ones).
    zookeeper_tls_ca: str = field(default="", metadata={"env": "RELAY_ZOOKEEPER_TLS_CA"})
    #: RELAY_ZOOKEEPER_TLS_CERT / _KEY: PEM client certificate and its key, both or neither.
    zookeeper_tls_cert: str = field(default="", metadata={"env": "RELAY_ZOOKEEPER_TLS_CERT"})
    zookeeper_tls_key: str = field(default="", metadata={"env": "RELAY_ZOOKEEPER_TLS_KEY"})
    #: RELAY_ZOOKEEPER_TLS_VERIFY: verify ZooKeeper's certificate and that it names the host.
    zookeeper_tls_verify: bool = field(default=True, metadata={"env": "RELAY_ZOOKEEPER_TLS_VERIFY"})
    #: RELAY_COORDINATOR_PATH: without ZooKeeper, a SQLite file shared by the workers of one
    #: node ("" = in-process only: resuming then works within one worker process).
    coordinator_path: str = field(default="", metadata={"env": "RELAY_COORDINATOR_PATH"})
    #: RELAY_METRICS: serve Prometheus metrics on /metrics.
    metrics: bool = field(default=True, metadata={"env": "RELAY_METRICS"})
    #: RELAY_INTERNAL_PORT: a second listener for /metrics, /livez, /readyz (detailed) and
    #: /startupz, which the load balancer never exposes; 0 serves everything on PORT.
    internal_port: int = field(default=0, metadata={"env": "RELAY_INTERNAL_PORT"})
    #: RELAY_INTERNAL_HOST: address of that listener ("" = the same as HOST).
    internal_host: str = field(default="", metadata={"env": "RELAY_INTERNAL_HOST"})
    #: RELAY_COORDINATOR_REQUIRED: a relay whose coordinator is disconnected is not ready
    #: (503); when false it is "degraded" (200, the reason in /readyz's body).
    coordinator_required: bool = field(default=True, metadata={"env": "RELAY_COORDINATOR_REQUIRED"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); ConfigError if invalid."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            if name not in env:
                continue
            raw = env[name]
            try:
                if isinstance(f.default, bool):
                    values[f.name] = _parse_bool(raw)
                elif isinstance(f.default, int):
                    values[f.name] = _parse_int(raw)
                elif isinstance(f.default, float):
                    values[f.name] = _parse_float(raw)
                elif isinstance(f.default, tuple):
                    values[f.name] = _parse_list(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from exc
        if not values.get("database_url") and env.get("DATABASE_URL"):
            values["database_url"] = env["DATABASE_URL"]
        if "forwarded_count" not in values and env.get("HTTP_FORWARDED_COUNT", "").strip():
            # Meteor's variable, so that an app moved from Meteor keeps its proxy setting.
            try:
                count = _parse_int(env["HTTP_FORWARDED_COUNT"])
            except ValueError as exc:
                raise ConfigError(f"HTTP_FORWARDED_COUNT: {exc}") from exc
            if count < 0:
                raise ConfigError(f"HTTP_FORWARDED_COUNT must not be negative (got {count})")
            values["forwarded_count"] = count
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError for values the relay cannot run with. The message names the
        environment variable, which is what an operator sets."""
        env = {f.name: f.metadata["env"] for f in fields(self)}
        _check_zookeeper_security(self)
        positive = (
            "max_message_bytes",
            "send_buffer_bytes",
            "worker_connections",
            "max_subs_per_session",
            "max_pending_messages",
            "max_pending_bytes",
            "max_worker_pending_bytes",
            "max_worker_send_bytes",
            "login_window",
            "backend_concurrency",
            "handshake_timeout",
            "sockjs_heartbeat",
            "sockjs_response_limit",
            "sockjs_disconnect_delay",
            "write_fence_timeout",
        )
        for name in positive:
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN, which compares false with everything
                raise ConfigError(f"{env[name]} must be positive (got {value!r})")
        not_negative = (
            ("deflate_threshold", ""),
            ("resume_window", " (0 turns resuming off)"),
            ("resume_log", ""),
            ("heartbeat_interval", " (0 disables heartbeats)"),
            ("heartbeat_timeout", " (0 disables heartbeats)"),
            ("forwarded_count", " (0 trusts no proxy)"),
            ("max_connections_per_address", " (0 = no limit)"),
            ("login_attempts_per_address", " (0 = no limit)"),
            ("resume_log_bytes", ""),
            ("resume_bytes_per_address", " (0 = no limit)"),
            ("inbound_bytes_per_address", " (0 = no limit)"),
            ("max_unblocked_methods", " (0: unblock() has no effect)"),
        )
        for name, hint in not_negative:
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{env[name]} must not be negative{hint} (got {value!r})")
        if not 1 <= self.address_ipv6_prefix <= 128:
            raise ConfigError(
                "RELAY_ADDRESS_IPV6_PREFIX must be within 1..128 "
                f"(got {self.address_ipv6_prefix!r})"
            )
        # A budget smaller than one message would refuse messages the size limit allows.
        if self.max_pending_bytes < self.max_message_bytes:
            raise ConfigError(
                "RELAY_MAX_PENDING_BYTES must be at least RELAY_MAX_MESSAGE_BYTES "
                f"({self.max_pending_bytes} < {self.max_message_bytes})"
            )
        if self.max_worker_send_bytes < self.send_buffer_bytes:
            raise ConfigError(
                "RELAY_MAX_WORKER_SEND_BYTES must be at least RELAY_SEND_BUFFER_BYTES "
                f"({self.max_worker_send_bytes} < {self.send_buffer_bytes})"
            )
        if self.max_worker_pending_bytes < self.max_pending_bytes:
            raise ConfigError(
                "RELAY_MAX_WORKER_PENDING_BYTES must be at least RELAY_MAX_PENDING_BYTES "
                f"({self.max_worker_pending_bytes} < {self.max_pending_bytes})"
            )
        if not 0 <= self.internal_port <= 65535:
            raise ConfigError(
                f"RELAY_INTERNAL_PORT must be within 0..65535 (got {self.internal_port!r})"
            )
        if ":" not in self.backend:
            raise ConfigError(
                f"RELAY_BACKEND must look like 'module:attribute' (got {self.backend!r})"
            )
