"""Login throttling for the example's Django admin: failed logins counted in Django's cache.

Job: ``client_address`` (who is logging in: the socket peer, or the ``X-Forwarded-For``
entry added by the last of ``HTTP_FORWARDED_COUNT`` trusted proxies, as Meteor reads it)
and ``LoginThrottle`` (per client address and per username, at most N failed logins per
window). An attempt is *reserved* before the password is checked, by an atomic
increment, so a burst of parallel guesses cannot all pass a check made before any of
them failed; a successful login gives its reservation back. A refused attempt is not
counted, so an attacker who is already throttled does not extend anyone's lock.

The counters live in the cache alias ``ADMIN_LOGIN_THROTTLE_CACHE``: the example's is
Django's default local-memory cache, so the limits hold per worker process (each of the
W workers of R relays counts alone: at most limit x W x R guesses per window). Pointing
the alias at a shared cache with an atomic ``incr`` that keeps the expiry (Redis,
Memcached) makes them cluster-wide; the database cache's ``incr`` is neither.

What it must not do: know about forms, views or templates (``example.admin_site`` does),
store usernames or addresses in clear in the cache (keys are hashes), or check passwords.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches

__all__ = ["Attempt", "LoginThrottle", "client_address", "normalize_username"]

_PREFIX = "example.admin-login"


def client_address(meta: Mapping[str, Any], forwarded_count: int) -> str:
    """The client's address for a request's WSGI ``meta``.

    With ``forwarded_count`` = 0 (no proxy in front) it is ``REMOTE_ADDR``. With N
    trusted proxies it is the N-th ``X-Forwarded-For`` entry from the right: the one the
    outermost trusted proxy wrote, whatever the client put to its left. A header that is
    missing or shorter than N (a request that did not come through the proxies) gives
    ``REMOTE_ADDR``, the peer that really connected.
    """
    remote = str(meta.get("REMOTE_ADDR") or "")
    if forwarded_count <= 0:
        return remote
    header = meta.get("HTTP_X_FORWARDED_FOR")
    if not isinstance(header, str):
        return remote
    hops = [hop.strip() for hop in header.split(",")]
    if forwarded_count > len(hops):
        return remote
    return hops[len(hops) - forwarded_count] or remote


def normalize_username(username: str) -> str:
    """What a username is counted under: case and surrounding blanks do not make a new
    counter (``Admin``, `` admin`` and ``admin`` share one)."""
    return username.strip().casefold()


def _digest(kind: str, value: str) -> str:
    # Hashed: keys stay short and valid for every cache backend (memcached refuses
    # spaces and control characters), and the cache never holds usernames in clear.
    return f"{_PREFIX}:{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


@dataclass(slots=True)
class Attempt:
    """One reserved (or refused) login attempt.

    ``allowed`` False means a counter was at its limit: nothing stays counted and
    ``retry_after`` says in how many seconds the fullest counter's window ends. The keys
    are the counters this attempt holds a reservation on (None: that counter is off).
    """

    throttle: LoginThrottle
    allowed: bool
    retry_after: int = 0
    address_key: str | None = None
    username_key: str | None = None

    def succeeded(self) -> None:
        """The password was right: give the reservation back. The username's counter is
        cleared (its owner just proved who they are); the address keeps its earlier
        failures, so interleaving a login of one's own does not reset guessing."""
        if not self.allowed:
            return
        if self.username_key is not None:
            self.throttle.cache.delete_many([self.username_key, f"{self.username_key}:start"])
        if self.address_key is not None:
            self.throttle.give_back(self.address_key)


class LoginThrottle:
    """At most ``per_address`` failed logins per client address and ``per_username`` per
    username in any fixed ``window`` (seconds) that starts at the first failure. A limit
    of 0 or less turns that counter off."""

    def __init__(
        self,
        cache: BaseCache,
        *,
        window: int,
        per_username: int,
        per_address: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window <= 0:
            raise ValueError("the throttle window must be a positive number of seconds")
        self.cache = cache
        self.window = window
        self.per_username = per_username
        self.per_address = per_address
        self.clock = clock

    @classmethod
    def from_settings(cls) -> LoginThrottle:
        """The throttle the ``ADMIN_LOGIN_THROTTLE_*`` settings describe."""
        return cls(
            caches[settings.ADMIN_LOGIN_THROTTLE_CACHE],
            window=int(settings.ADMIN_LOGIN_THROTTLE_WINDOW),
            per_username=int(settings.ADMIN_LOGIN_THROTTLE_PER_USERNAME),
            per_address=int(settings.ADMIN_LOGIN_THROTTLE_PER_ADDRESS),
        )

    def attempt(self, address: str, username: str) -> Attempt:
        """Reserve one attempt for ``username`` from ``address``, or refuse it."""
        counters = (
            (_digest("address", address), self.per_address),
            (_digest("username", normalize_username(username)), self.per_username),
        )
        reserved: list[str | None] = []
        wait = 0
        for key, limit in counters:
            if limit <= 0:
                reserved.append(None)
                continue
            reserved.append(key)
            if self._reserve(key) > limit:
                wait = max(wait, self._retry_after(key))
        if wait:
            for key in filter(None, reserved):
                self.give_back(key)
            return Attempt(self, allowed=False, retry_after=wait)
        return Attempt(self, allowed=True, address_key=reserved[0], username_key=reserved[1])

    def give_back(self, key: str) -> None:
        """Undo one reservation of ``key`` (gone already, by expiry: nothing to undo)."""
        with contextlib.suppress(ValueError):
            self.cache.decr(key)

    def _reserve(self, key: str) -> int:
        """Atomically count one more attempt on ``key``; the count after it."""
        for _ in range(3):
            # add() starts a window only when none runs; incr() keeps its expiry.
            if self.cache.add(key, 0, timeout=self.window):
                self.cache.set(f"{key}:start", self.clock(), timeout=self.window)
            try:
                return int(self.cache.incr(key))
            except ValueError:  # expired between add() and incr(): start again
                continue
        raise RuntimeError(f"the login throttle cache keeps losing {key}")

    def _retry_after(self, key: str) -> int:
        """Whole seconds until the window of ``key`` ends (at least 1)."""
        start = self.cache.get(f"{key}:start")
        if not isinstance(start, int | float):
            return self.window
        return max(1, math.ceil(start + self.window - self.clock()))
