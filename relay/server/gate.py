"""The worker's admission checks: who may open a socket, queue a message, call or subscribe.

Layer: runtime. One ``Gate`` per worker process holds the pure limits of ``relay.limits``
with the worker's settings and the application's rules, and counts every refusal in
``ddp_relay_limited_total{limit}``:

* open connections per client address (``RELAY_MAX_CONNECTIONS_PER_ADDRESS``): a socket
  over it is refused at the upgrade (HTTP 429);
* the bytes per second a client address sends (``RELAY_INBOUND_BYTES_PER_ADDRESS``, bursts
  of four seconds' worth): over it, its sockets are not read for a while (TCP slows it
  down), so a flood costs no parsing CPU that other clients' pings and updates wait for;
* bytes of inbound messages queued per session (``RELAY_MAX_PENDING_BYTES``) within the
  worker's total (``RELAY_MAX_WORKER_PENDING_BYTES``): a session over either is closed
  (its client reconnects and may resume), so one client cannot grow the worker's memory;
  when the worker's total is what is full, the session holding the most gives way;
  and the outbound bytes queued on all the worker's sockets (``RELAY_MAX_WORKER_SEND_BYTES``,
  the sockets count it themselves): the socket that would pass it is closed as too slow;
* Meteor's DDPRateLimiter rules (the backend's ``rate_limit_rules()``, by default the
  accounts rule: 5 ``login``/``createUser``/``resetPassword``/``forgotPassword`` per 10 s
  per connection) on every method and subscription;
* login attempts per client address (``RELAY_LOGIN_ATTEMPTS_PER_ADDRESS`` per
  ``RELAY_LOGIN_WINDOW``), on top, for brute force spread over many connections.

Every limit is per relay process (not cluster-wide): N processes allow N times as much,
which docs/security.md states with each default.

Must not: read the clock in the pure limits' place (it passes ``time.monotonic()`` in),
send anything (sessions and the app answer), or keep per-session state beyond a session's
``ByteBudget``, which the session owns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Literal

from relay.config import Settings
from relay.limits import (
    ACCOUNTS_METHODS,
    AddressBudget,
    AddressRate,
    ByteBudget,
    ConnectionsPerAddress,
    Event,
    RateLimiter,
    Rejection,
    Rule,
)
from relay.metrics import Metrics

__all__ = ["Gate"]

#: Seconds between sweeps of the limits' expired windows (done on the way of a check).
PRUNE_EVERY = 10.0


class Gate:
    """Per-worker limits; see the module docstring."""

    def __init__(self, settings: Settings, metrics: Metrics, rules: Iterable[Rule] = ()) -> None:
        self._metrics = metrics
        self._connections = ConnectionsPerAddress(
            settings.max_connections_per_address, ipv6_prefix=settings.address_ipv6_prefix
        )
        self._logins = AddressBudget(
            settings.login_attempts_per_address,
            settings.login_window,
            ipv6_prefix=settings.address_ipv6_prefix,
            label="login_address",
        )
        self.limiter = RateLimiter()
        for rule in rules:
            self.limiter.add_rule(rule)
        self._inbound = AddressRate(
            settings.inbound_bytes_per_address,
            4 * settings.inbound_bytes_per_address,
            ipv6_prefix=settings.address_ipv6_prefix,
        )
        self._pending = ByteBudget(settings.max_worker_pending_bytes, name="worker")
        #: Outbound bytes queued on all the worker's sockets (``relay.transport.websocket``).
        self.send_budget = ByteBudget(settings.max_worker_send_bytes, name="worker_send")
        self._session_pending = settings.max_pending_bytes
        self._pruned = time.monotonic()

    # -- sockets ------------------------------------------------------------------------------

    def open_socket(self, address: str) -> bool:
        """Count a socket from ``address``; False (counted as refused) when over its limit."""
        if self._connections.try_open(address or None):
            return True
        self._metrics.limited.labels(limit="connections_per_address").inc()
        return False

    def may_open(self, address: str) -> bool:
        """Whether ``open_socket`` would accept a socket from ``address`` now; counted as
        refused when not (it counts no socket)."""
        if self._connections.would_open(address or None):
            return True
        self._metrics.limited.labels(limit="connections_per_address").inc()
        return False

    def socket_closed(self, address: str) -> None:
        self._connections.closed(address or None)

    # -- inbound bytes ------------------------------------------------------------------------

    def read_throttle(self, address: str) -> Callable[[int], float] | None:
        """For a socket from ``address``: told of each read, the seconds to stop reading
        (its address is over ``RELAY_INBOUND_BYTES_PER_ADDRESS``); None: no limit."""
        if not self._inbound.rate:
            return None
        key = address or None
        metrics = self._metrics

        def throttle(size: int) -> float:
            wait = self._inbound.take(key, size, time.monotonic())
            if wait > 0:
                metrics.limited.labels(limit="inbound_rate").inc()
            return wait

        return throttle

    def session_budget(self, on_evict: Callable[[], None] | None = None) -> ByteBudget:
        """A new session's budget of queued inbound bytes, inside the worker's;
        ``on_evict`` closes the session when the worker's budget is full and it holds the
        most (``reserve_pending``)."""
        return ByteBudget(self._session_pending, self._pending, name="session", on_evict=on_evict)

    def reserve_pending(self, budget: ByteBudget, size: int) -> bool:
        """Take ``size`` bytes for a session's queued message. When the worker's budget is
        full, the session holding the most gives way (evicted, counted) if it is not this
        one; False (counted) when this session must be closed instead."""
        full = budget.reserve(size)
        if full is self._pending and self._pending.evict_largest(spare=budget):
            self._metrics.limited.labels(limit="pending_bytes_worker").inc()
            full = budget.reserve(size)
        if full is None:
            return True
        label = "pending_bytes_worker" if full is self._pending else "pending_bytes_session"
        self._metrics.limited.labels(limit=label).inc()
        return False

    # -- calls --------------------------------------------------------------------------------

    def check(
        self,
        kind: Literal["method", "subscription"],
        name: str,
        user_id: str | None,
        connection_id: str,
        address: str,
    ) -> Rejection | None:
        """Run the rate-limit rules (and, for the accounts methods, the per-address login
        budget) on one call; the rejection to answer with, counted, or None."""
        now = time.monotonic()
        if now - self._pruned > PRUNE_EVERY:
            self.prune(now)
        event = Event(kind, name, user_id, connection_id, address or None)
        rejection = self.limiter.check(event, now)
        if rejection is None and kind == "method" and name in ACCOUNTS_METHODS:
            rejection = self._logins.check(address or None, now)
        if rejection is not None:
            self._metrics.limited.labels(limit=rejection.label or "rule").inc()
        return rejection

    def prune(self, now: float) -> None:
        """Forget windows that are over (keeps memory flat between bursts)."""
        self._pruned = now
        self.limiter.prune(now)
        self._logins.prune(now)
