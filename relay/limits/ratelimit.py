"""Meteor's DDPRateLimiter, pure: rules that count method calls and subscriptions, and the
``too-many-requests`` answer when a rule's budget is spent.

Layer: pure (no I/O, no gevent, no clock). The session builds an ``Event`` for every
``method`` and ``sub`` it is about to run and asks ``RateLimiter.check(event, now)``; a
``Rejection`` carries Meteor's exact error (``reference/ddp-protocol.md`` 2.10), which the
session sends as the method's ``result`` error or the sub's ``nosub`` error. ``now`` is a
monotonic time in seconds (``time.monotonic()``), passed in so tests drive time by hand.

Semantics kept from Meteor's ``rate-limit.js`` and ``ddp-rate-limiter.js``:

- a ``Rule`` matches an event when every matcher it sets matches the event's value (an
  unset matcher, None, matches anything, as Meteor's ``null``);
- the bucket of a matching event is the tuple of the event's values for the matchers the
  rule sets (Meteor concatenates ``key + value``; a tuple cannot collide);
- windows are fixed, ``interval_ms`` long;
- the bucket's counter is incremented before the check, and the event is rejected when the
  counter exceeds ``limit`` (so ``limit`` events pass per window; rejected ones count too);
- several rejecting rules: the longest time to reset is reported.

Where this differs from Meteor, on purpose: each bucket has its own window, opened by its
first event (Meteor shares one window per rule between all its buckets, so another
client's calls decide when yours reset, and the sixth login of a connection within 10 s
could pass); a
``limit`` of 0 rejects everything (Meteor's ``|| 10`` turns 0 into 10); a rule's custom
``message`` is taken from the rejecting rule with the longest time to reset (Meteor takes
the last rule it looked at, rejecting or not); and memory is bounded: a rule holds at most
``max_buckets_per_rule`` buckets per window, and events with new bucket keys past that
share one overflow bucket, so a client rotating names or ids can neither grow memory nor
slip past a limit. Events that match no rule never create a bucket.

Exceptions raised by an application's callable matcher or message propagate out of
``check`` (the caller answers them as a server error); counters of the rules already
visited keep their increment.

Must not: read a clock, do I/O, import gevent or Django, or import anything of the project
but ``relay.protocol`` (``tests/relay/limits/test_purity.py`` holds it to that).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, NewType

from relay.protocol import messages

#: The keys of an event a rule can match, in the order bucket keys are built.
MATCH_KEYS: Final = ("type", "name", "user_id", "connection_id", "client_address")

#: The event types Meteor's server reports (``livedata_server.js``).
EVENT_TYPES: Final = frozenset({"method", "subscription"})

#: Meteor's ``addRule`` defaults: 10 events per 1000 ms.
DEFAULT_LIMIT: Final = 10
DEFAULT_INTERVAL_MS: Final = 1000

#: Buckets one rule keeps per window before new keys share the overflow bucket. A bucket
#: costs about 200 bytes, so a rule holds at most ~10 MB; 50,000 covers the default
#: accounts rule (4 names per connection) for the 10,000 connections a worker holds.
DEFAULT_MAX_BUCKETS_PER_RULE: Final = 50_000

#: The error code Meteor sends with a rejection.
TOO_MANY_REQUESTS: Final = "too-many-requests"

RuleId = NewType("RuleId", int)

#: The value of an event's key: strings, or None (an anonymous session's ``user_id``, an
#: unknown ``client_address``).
Value = str | None

#: A matcher: one value (equality), a collection of values (membership: ``{None}``
#: matches anonymous sessions), or a callable returning whether the value matches.
Matcher = str | Collection[Value] | Callable[[Value], object]

#: A custom reason: a fixed string, or a callable given the time to reset in ms.
Message = str | Callable[[int], str]


def too_many_requests_reason(time_to_reset_ms: int) -> str:
    """Meteor's default reason (``ddp-rate-limiter.js`` ``errorMessage``)."""
    seconds = math.ceil(time_to_reset_ms / 1000)
    return (
        "Error, too many requests. Please slow down. "
        f"You must wait {seconds} seconds before trying again."
    )


def ms_until_reset(interval_ms: float, window_start: float, now: float) -> int:
    """Whole milliseconds until a window of ``interval_ms`` opened at ``window_start``
    (seconds) ends, seen at ``now``: within ``[0, ceil(interval_ms)]``."""
    # A clock read earlier than the window's start (not monotonic) counts as the start:
    # the wait reported never exceeds the interval.
    elapsed_ms = max(0.0, now - window_start) * 1000
    # Rounded to the microsecond first, so that float noise (10.6 - 10.0 is 0.59999...)
    # does not add a millisecond; then up to whole milliseconds, as Meteor's integer clock
    # gives, so a client that waits as told is never refused by the same window again.
    return math.ceil(round(max(0.0, interval_ms - elapsed_ms), 6))


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event over a limit, and Meteor's error for it.

    ``error``, ``reason`` and ``details`` are Meteor's ``Meteor.Error`` fields; the session
    sends ``meteor_error()`` as a method's ``result`` error (after ``updated``, as Meteor's
    ``finish()`` does) or as a sub's ``nosub`` error. ``rule_id`` and ``label`` say which
    limit refused (for a metric label: ``label`` is chosen by whoever made the limit, so
    its values are few).
    """

    error: ClassVar[str] = TOO_MANY_REQUESTS

    #: Milliseconds until the window that refused resets (Meteor's ``timeToReset``).
    time_to_reset_ms: int
    reason: str
    rule_id: RuleId | None = None
    label: str = ""

    @classmethod
    def after(
        cls, time_to_reset_ms: int, *, rule_id: RuleId | None = None, label: str = ""
    ) -> Rejection:
        """A rejection with Meteor's default reason."""
        return cls(time_to_reset_ms, too_many_requests_reason(time_to_reset_ms), rule_id, label)

    @property
    def details(self) -> dict[str, int]:
        return {"timeToReset": self.time_to_reset_ms}

    def meteor_error(self) -> dict[str, Any]:
        """The error object as Meteor serializes it on the wire."""
        return messages.meteor_error(self.error, self.reason, self.details)


@dataclass(frozen=True, slots=True)
class Event:
    """One method call or subscription about to run (Meteor's rate limiter input)."""

    type: Literal["method", "subscription"]
    name: str
    user_id: str | None
    connection_id: str
    client_address: str | None


def _normalize(key: str, matcher: Matcher) -> Matcher:
    """The matcher as kept: strings and callables as given, collections as a frozenset
    (hashable, and immune to later changes of the caller's list or set)."""
    if isinstance(matcher, str) or callable(matcher):
        return matcher
    if isinstance(matcher, bytes | bytearray | Mapping) or not isinstance(matcher, Collection):
        raise TypeError(
            f"rule matcher {key!r} must be a string, a collection of strings or a callable "
            f"(got {type(matcher).__name__})"
        )
    return frozenset(matcher)


def _compile(matcher: Matcher) -> Callable[[Value], bool]:
    if isinstance(matcher, str):
        return lambda value: value == matcher
    if callable(matcher):
        test = matcher
        return lambda value: bool(test(value))
    return lambda value: value in matcher


@dataclass(frozen=True, slots=True)
class Rule:
    """What a rule counts (its matchers) and how much it allows (``limit`` per
    ``interval_ms`` milliseconds, Meteor's ``numRequests`` and ``timeInterval``).

    A matcher left None matches any value and does not split buckets. ``label`` names the
    rule in metrics and logs; ``message`` replaces Meteor's default reason.
    """

    type: Matcher | None = None
    name: Matcher | None = None
    user_id: Matcher | None = None
    connection_id: Matcher | None = None
    client_address: Matcher | None = None
    limit: int = DEFAULT_LIMIT
    interval_ms: float = DEFAULT_INTERVAL_MS
    label: str = ""
    message: Message | None = None
    _tests: tuple[tuple[str, Callable[[Value], bool]], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"rule limit must be an integer >= 0 (got {self.limit!r})")
        if not (isinstance(self.interval_ms, int | float) and 0 < self.interval_ms < math.inf):
            raise ValueError(f"rule interval_ms must be positive and finite ({self.interval_ms!r})")
        tests: list[tuple[str, Callable[[Value], bool]]] = []
        for key in MATCH_KEYS:
            matcher = getattr(self, key)
            if matcher is None:
                continue
            matcher = _normalize(key, matcher)
            object.__setattr__(self, key, matcher)
            if key == "type" and not callable(matcher):
                wanted = {matcher} if isinstance(matcher, str) else set(matcher)
                if not wanted <= EVENT_TYPES:
                    # A misspelt type would make the rule silently match nothing.
                    raise ValueError(f"rule type must be among {sorted(EVENT_TYPES)}: {matcher!r}")
            tests.append((key, _compile(matcher)))
        object.__setattr__(self, "_tests", tuple(tests))

    def matches(self, event: Event) -> bool:
        """Whether every matcher the rule sets matches the event (Meteor's ``match``)."""
        return all(test(getattr(event, key)) for key, test in self._tests)

    def bucket(self, event: Event) -> tuple[Value, ...]:
        """The bucket of a matching event: its values for the matchers the rule sets."""
        return tuple(getattr(event, key) for key, _ in self._tests)

    def reason(self, time_to_reset_ms: int) -> str:
        if self.message is None:
            return too_many_requests_reason(time_to_reset_ms)
        if isinstance(self.message, str):
            return self.message
        return self.message(time_to_reset_ms)


#: The accounts methods Meteor's ``Accounts.addDefaultRateLimit`` limits.
ACCOUNTS_METHODS: Final = frozenset({"login", "createUser", "resetPassword", "forgotPassword"})


def _any(_value: Value) -> bool:
    return True


#: Meteor's default accounts rule: 5 calls per 10 s per connection and method name, for
#: ``login``, ``createUser``, ``resetPassword`` and ``forgotPassword``. Not added by the
#: limiter itself: the composition root adds it (``Accounts.removeDefaultRateLimit`` is
#: ``remove_rule`` with its id).
DEFAULT_ACCOUNTS_RULE: Final = Rule(
    type="method",
    name=ACCOUNTS_METHODS,
    connection_id=_any,
    limit=5,
    interval_ms=10_000,
    label="accounts",
)

#: Not in Meteor's defaults, and worth having: ``changePassword`` checks the old password,
#: so a stolen token could otherwise guess it at full speed. Same budget, per connection.
CHANGE_PASSWORD_RULE: Final = Rule(
    type="method",
    name="changePassword",
    connection_id=_any,
    limit=5,
    interval_ms=10_000,
    label="accounts",
)


@dataclass(slots=True)
class _Bucket:
    #: When this bucket's window opened (its first event).
    start: float
    count: int = 0


@dataclass(slots=True)
class _RuleState:
    rule: Rule
    #: Live buckets, oldest window first (a new or renewed window goes to the end).
    buckets: OrderedDict[tuple[Value, ...], _Bucket] = field(default_factory=OrderedDict)
    #: Where events with new keys go once ``max_buckets_per_rule`` are live.
    overflow: _Bucket | None = None


class RateLimiter:
    """Rules, their windows and buckets (Meteor's ``RateLimiter``), for one relay process.

    Not thread-safe; under gevent a call never yields, so greenlets may share it.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        *,
        max_buckets_per_rule: int = DEFAULT_MAX_BUCKETS_PER_RULE,
    ) -> None:
        if max_buckets_per_rule < 1:
            raise ValueError(f"max_buckets_per_rule must be positive ({max_buckets_per_rule})")
        self._max_buckets = max_buckets_per_rule
        self._states: dict[RuleId, _RuleState] = {}
        self._next_id = 1
        for rule in rules:
            self.add_rule(rule)

    def add_rule(self, rule: Rule) -> RuleId:
        """Add ``rule`` (Meteor's ``addRule``); the id is for ``remove_rule``."""
        rule_id = RuleId(self._next_id)
        self._next_id += 1
        self._states[rule_id] = _RuleState(rule)
        return rule_id

    def remove_rule(self, rule_id: RuleId) -> bool:
        """Remove a rule and its buckets; whether it was there (Meteor's ``removeRule``)."""
        return self._states.pop(rule_id, None) is not None

    @property
    def rules(self) -> Mapping[RuleId, Rule]:
        return {rule_id: state.rule for rule_id, state in self._states.items()}

    def bucket_count(self, rule_id: RuleId) -> int:
        """Buckets the rule holds (the overflow bucket included), expired ones until pruned."""
        state = self._states[rule_id]
        return len(state.buckets) + (1 if state.overflow is not None else 0)

    def check(self, event: Event, now: float) -> Rejection | None:
        """Count ``event`` in every rule it matches; the rejection when one of them is over
        its limit, else None (Meteor's ``_increment`` then ``_check``)."""
        worst: tuple[int, RuleId, _RuleState] | None = None
        for rule_id, state in self._states.items():
            rule = state.rule
            if not rule.matches(event):
                continue
            interval_s = rule.interval_ms / 1000
            key = rule.bucket(event)
            bucket = state.buckets.get(key)
            if bucket is not None and now - bucket.start > interval_s:
                del state.buckets[key]  # its window is over: a new one opens now
                bucket = None
            if bucket is None:
                self._prune_rule(state, now)
                if len(state.buckets) < self._max_buckets:
                    bucket = state.buckets[key] = _Bucket(now)
                else:
                    if state.overflow is None or now - state.overflow.start > interval_s:
                        state.overflow = _Bucket(now)
                    bucket = state.overflow
            bucket.count += 1
            if bucket.count > rule.limit:
                wait = ms_until_reset(rule.interval_ms, bucket.start, now)
                if worst is None or wait > worst[0]:
                    worst = (wait, rule_id, state)
        if worst is None:
            return None
        wait, rule_id, state = worst
        return Rejection(wait, state.rule.reason(wait), rule_id, state.rule.label)

    @staticmethod
    def _prune_rule(state: _RuleState, now: float) -> None:
        interval_s = state.rule.interval_ms / 1000
        buckets = state.buckets
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if now - bucket.start <= interval_s:
                break
            del buckets[key]
        if state.overflow is not None and now - state.overflow.start > interval_s:
            state.overflow = None

    def prune(self, now: float) -> None:
        """Drop every bucket whose window is over (each rule drops them on its way anyway;
        this frees rules that see no more events)."""
        for state in self._states.values():
            self._prune_rule(state, now)
