"""Abuse limits, pure: what a client may do, decided without I/O so it can be tested by hand.

- ``ratelimit``: Meteor's DDPRateLimiter (``Rule``, ``Event``, ``RateLimiter``,
  ``Rejection`` with Meteor's ``too-many-requests`` error, ``DEFAULT_ACCOUNTS_RULE``).
- ``address``: the client address behind trusted proxies (``client_address``, Meteor's
  ``HTTP_FORWARDED_COUNT``), open connections per address (``ConnectionsPerAddress``) and
  an event budget per address and window (``AddressBudget``: login attempts), and a byte
  rate per address (``AddressRate``: how fast a client's input is read).
- ``budget``: bytes of queued inbound messages per session within the worker's
  (``ByteBudget``).

Every limit is per relay process: nothing here is shared between workers or relays.

Must not: read a clock (every call takes ``now``, seconds of ``time.monotonic()``), do
I/O, import gevent or Django, or import anything of the project but ``relay.protocol``
(an import-linter contract and ``tests/relay/limits/test_purity.py`` hold it to that).
"""

from relay.limits.address import (
    AddressBudget,
    AddressRate,
    ConnectionsPerAddress,
    address_key,
    client_address,
)
from relay.limits.budget import ByteBudget
from relay.limits.ratelimit import (
    ACCOUNTS_METHODS,
    CHANGE_PASSWORD_RULE,
    DEFAULT_ACCOUNTS_RULE,
    Event,
    RateLimiter,
    Rejection,
    Rule,
    RuleId,
    too_many_requests_reason,
)

__all__ = [
    "ACCOUNTS_METHODS",
    "CHANGE_PASSWORD_RULE",
    "DEFAULT_ACCOUNTS_RULE",
    "AddressBudget",
    "AddressRate",
    "ByteBudget",
    "ConnectionsPerAddress",
    "Event",
    "RateLimiter",
    "Rejection",
    "Rule",
    "RuleId",
    "address_key",
    "client_address",
    "too_many_requests_reason",
]
