"""Per-client-address limits, pure: who the client is (``client_address``), which addresses
count as one (``address_key``), open connections per address (``ConnectionsPerAddress``)
and a budget of events per address and window (``AddressBudget``: login attempts).

Layer: pure (no I/O, no gevent, no clock: ``now`` is a monotonic time in seconds passed in).

``client_address`` follows Meteor's ``_clientAddress`` (``ddp-server/livedata_server.js``,
``HTTP_FORWARDED_COUNT``): with no trusted proxy the socket's peer address; with N trusted
proxies the Nth address from the right of ``X-Forwarded-For``, the one our outermost
proxy saw (addresses further left are the client's to write, so never trusted); and no
address at all (None) when the header is missing or has fewer than N entries. Meteor
returns the entry verbatim; here an entry that is empty or longer than
``MAX_ADDRESS_CHARS`` is no address either, and only the rightmost
``MAX_FORWARDED_FOR_CHARS`` characters of the header are read.

The per-address tables count IPv6 clients by network prefix (``/64`` by default: one host
usually holds a whole /64 and can rotate through it at will) and IPv4-mapped IPv6
addresses as their IPv4 address. Clients without a known address share one entry, so they
are limited together rather than not at all. Memory stays bounded: an address with no
open connection has no entry, a budget's windows expire (``prune``, also done as events
arrive), and past ``max_addresses`` entries new addresses share one overflow entry,
which limits them together rather than letting a client rotating addresses grow memory or
slip past the budget.

Must not: read a clock, do I/O, import gevent or Django, or import anything of the project
but ``relay.protocol`` and ``relay.limits``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from relay.limits.ratelimit import Rejection, ms_until_reset

#: Characters of ``X-Forwarded-For`` read, from the right (gunicorn refuses header fields
#: past 8190 bytes anyway; this bounds the work wherever the header comes from).
MAX_FORWARDED_FOR_CHARS: Final = 8192

#: The longest string taken as an address (an IPv6 address with a zone id is under 64).
MAX_ADDRESS_CHARS: Final = 255

#: Addresses a budget tracks before new ones share the overflow entry (~100 bytes each).
DEFAULT_MAX_ADDRESSES: Final = 100_000

#: The key of clients whose address is unknown.
UNKNOWN: Final = ""


def client_address(
    remote_addr: str | None, x_forwarded_for: str | None, trusted_proxies: int
) -> str | None:
    """The client's address: the socket's with 0 trusted proxies, else the
    ``trusted_proxies``-th entry from the right of ``X-Forwarded-For``; None when there is
    no such entry (Meteor's ``null``) or it is empty or oversized."""
    if trusted_proxies < 0:
        raise ValueError(f"trusted_proxies must not be negative (got {trusted_proxies})")
    if trusted_proxies == 0:
        return _plausible(remote_addr)
    if x_forwarded_for is None:
        return None
    header = x_forwarded_for.strip()
    truncated = len(header) > MAX_FORWARDED_FOR_CHARS
    if truncated:
        header = header[-MAX_FORWARDED_FOR_CHARS:]
    # At most trusted_proxies splits, from the right: the work is bounded by the
    # entries we need, whatever the client wrote on the left.
    parts = header.rsplit(",", trusted_proxies)
    if len(parts) < trusted_proxies:
        return None  # fewer entries than proxies (Meteor: null)
    if len(parts) == trusted_proxies and truncated:
        return None  # the entry we need may have been cut by the truncation
    return _plausible(parts[-trusted_proxies].strip())


def _plausible(address: str | None) -> str | None:
    if not address or len(address) > MAX_ADDRESS_CHARS:
        return None
    return address


def address_key(address: str | None, ipv6_prefix: int = 64) -> str:
    """The key counting ``address`` in per-address tables: an IPv4 address as is, an IPv6
    address as its ``/ipv6_prefix`` network (IPv4-mapped ones as the IPv4 address),
    anything else verbatim (cut to ``MAX_ADDRESS_CHARS``), None as ``UNKNOWN``."""
    if not 1 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix must be within 1..128 (got {ipv6_prefix})")
    if address is None:
        return UNKNOWN
    address = address[:MAX_ADDRESS_CHARS]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    drop = 128 - ipv6_prefix
    network = ipaddress.IPv6Address(int(ip) >> drop << drop)
    return f"{network}/{ipv6_prefix}"


class ConnectionsPerAddress:
    """Open connections per client address, at most ``limit`` each (0: no limit).

    Every ``try_open`` that returned True is paired with one ``closed`` of the same
    address. An address's entry is removed when its count falls to zero, so the table is
    never larger than the open connections. Not thread-safe; gevent-safe (never yields).
    """

    def __init__(self, limit: int, *, ipv6_prefix: int = 64) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative (got {limit})")
        address_key(None, ipv6_prefix)  # validates the prefix now, not at the first client
        self.limit = limit
        self._prefix = ipv6_prefix
        self._open: dict[str, int] = {}

    def try_open(self, address: str | None) -> bool:
        """Count a new connection from ``address``: False (and not counted) when the
        address already holds ``limit`` connections."""
        if self.limit == 0:
            return True
        key = address_key(address, self._prefix)
        count = self._open.get(key, 0)
        if count >= self.limit:
            return False
        self._open[key] = count + 1
        return True

    def would_open(self, address: str | None) -> bool:
        """Whether ``try_open`` would count a connection from ``address`` now (counts
        nothing)."""
        if self.limit == 0:
            return True
        return self._open.get(address_key(address, self._prefix), 0) < self.limit

    def closed(self, address: str | None) -> None:
        """A connection counted by ``try_open`` ended. An unpaired call is ignored: it must
        not break the close path that makes it, nor drive a count negative."""
        if self.limit == 0:
            return
        key = address_key(address, self._prefix)
        count = self._open.get(key, 0)
        if count <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = count - 1

    def open_count(self, address: str | None) -> int:
        return self._open.get(address_key(address, self._prefix), 0)

    def __len__(self) -> int:
        """Addresses with at least one open connection."""
        return len(self._open)


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0


class AddressBudget:
    """At most ``limit`` events per client address per ``window`` seconds (0: no limit).

    A fixed window per address opens at its first event and ends ``window`` seconds later;
    every event is counted, refused ones too, and refused when the count exceeds
    ``limit`` (Meteor's rate-limit rule, per address). Used for login attempts; ``label``
    is put on the rejections (a metric label).
    """

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        ipv6_prefix: int = 64,
        label: str = "",
    ) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative (got {limit})")
        if not 0 < window < math.inf:
            raise ValueError(f"window must be positive and finite (got {window})")
        if max_addresses < 1:
            raise ValueError(f"max_addresses must be positive (got {max_addresses})")
        address_key(None, ipv6_prefix)
        self.limit = limit
        self.window = window
        self.label = label
        self._max = max_addresses
        self._prefix = ipv6_prefix
        # Ordered by window start: every window has the same length, so the oldest entry
        # is the first to expire and pruning stops at the first live one.
        self._windows: OrderedDict[str, _Window] = OrderedDict()
        self._overflow: _Window | None = None

    def check(self, address: str | None, now: float) -> Rejection | None:
        """Count one event from ``address``; the rejection when it is over the budget."""
        if self.limit == 0:
            return None
        self.prune(now)
        key = address_key(address, self._prefix)
        window = self._windows.get(key)
        if window is not None and now - window.start > self.window:
            # Expired but not pruned yet (a clock that went back, or an entry behind a
            # younger one): open a new window at the end of the order.
            del self._windows[key]
            window = None
        if window is None:
            if len(self._windows) < self._max:
                window = self._windows[key] = _Window(now)
            else:
                if self._overflow is None or now - self._overflow.start > self.window:
                    self._overflow = _Window(now)
                window = self._overflow
        window.count += 1
        if window.count <= self.limit:
            return None
        wait = ms_until_reset(self.window * 1000, window.start, now)
        return Rejection.after(wait, label=self.label)

    def prune(self, now: float) -> None:
        """Drop the windows that are over."""
        windows = self._windows
        while windows:
            key, window = next(iter(windows.items()))
            if now - window.start <= self.window:
                break
            del windows[key]
        if self._overflow is not None and now - self._overflow.start > self.window:
            self._overflow = None

    def __len__(self) -> int:
        """Addresses with a live window (the overflow entry not included)."""
        return len(self._windows)


class AddressRate:
    """Bytes per second per client address, a token bucket: ``rate`` bytes a second on
    average, bursts of up to ``burst`` (0 ``rate``: no limit).

    ``take(address, size, now)`` counts ``size`` bytes the address sent and returns how
    many seconds its sockets should not be read so that it stays within the rate (0 when
    it is within it). What it throttles is the reading, never the data: a client over the
    rate is slowed down by TCP back-pressure, not cut off or answered with errors. Memory
    is bounded: past ``max_addresses`` live entries, a full (idle) one is forgotten, and
    if none is, new addresses share one overflow bucket.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        ipv6_prefix: int = 64,
    ) -> None:
        if not 0 <= rate < math.inf or not 0 <= burst < math.inf:
            raise ValueError(f"rate and burst must be finite and not negative ({rate}, {burst})")
        self.rate = rate
        self.burst = max(burst, rate)
        self._max = max_addresses
        self._prefix = ipv6_prefix
        #: key -> [tokens, time of the last refill], least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._overflow: list[float] | None = None

    def take(self, address: str | None, size: int, now: float) -> float:
        if self.rate == 0:
            return 0.0
        key = address_key(address, self._prefix)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._new_bucket(key, now)
        else:
            self._buckets.move_to_end(key)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        tokens -= size
        bucket[0], bucket[1] = tokens, now
        return 0.0 if tokens >= 0 else -tokens / self.rate

    def _new_bucket(self, key: str, now: float) -> list[float]:
        if len(self._buckets) >= self._max:
            oldest_key, oldest = next(iter(self._buckets.items()))
            refilled = oldest[0] + (now - oldest[1]) * self.rate
            if refilled < self.burst:
                # Every tracked address is still paying for recent bytes: share one.
                if self._overflow is None:
                    self._overflow = [self.burst, now]
                return self._overflow
            del self._buckets[oldest_key]
        bucket = self._buckets[key] = [self.burst, now]
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)
