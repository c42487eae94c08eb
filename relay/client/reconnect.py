"""Meteor's client reconnect rules, as pure decisions (protocol reference 3.2-3.4).

- When and how long: :func:`should_reconnect`, then Meteor's ``Retry`` policy
  (:func:`retry_delay`, :func:`retry_delays`): 10 ms for the first two attempts, then
  ``min(max, base * 2.2**n)`` times a random factor in [0.75, 1.25).
- What to send on the new socket, all before ``connected`` arrives (:func:`plan_resume`,
  Meteor's ``onReset``): ``connect`` with the last session (and ``receivedCount`` when
  resuming), then every outstanding method with the same id, params and ``randomSeed``,
  then every active sub with the same id, name and params, then the ``unsub`` calls made
  while down. Only methods **without a result** are re-sent: one that has its result but
  not yet its ``updated`` must not run twice.
- What ``connected`` means (:func:`connected_outcome`): the same session id, resumed (the
  cache is kept); another one, a new session (quiescence, then a fresh cache). Methods that
  had a result before the drop complete at quiescence (:func:`calls_done_at_quiescence`):
  the new session will never send their ``updated``.

Must not: import websocket or threading, sleep, read the clock or do I/O; the connection
waits, sends and keeps the state these functions are given.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

#: Meteor's ``Retry`` defaults (``retry.js``), in seconds.
RETRY_BASE = 1.0
RETRY_EXPONENT = 2.2
RETRY_MAX = 300.0
RETRY_MIN_COUNT = 2
RETRY_MIN = 0.01
RETRY_FUZZ = 0.5


def retry_delay(
    count: int,
    *,
    base: float = RETRY_BASE,
    maximum: float = RETRY_MAX,
    minimum: float = RETRY_MIN,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before reconnect attempt number ``count`` (0-based), as Meteor's
    ``Retry._timeout``: ``minimum`` for the first two, then
    ``min(maximum, base * 2.2**count) * uniform[0.75, 1.25)``."""
    if count < RETRY_MIN_COUNT:
        return minimum
    fraction = (rng or random).random()
    try:
        growth = base * RETRY_EXPONENT**count
    except OverflowError:
        # Past ~900 attempts (days at the 300 s cap) 2.2**count no longer fits a float:
        # JavaScript's Infinity makes Meteor wait ``maximum``, Python would raise instead.
        growth = maximum if base > 0 else 0.0
    return min(maximum, growth) * (fraction * RETRY_FUZZ + (1 - RETRY_FUZZ / 2))


def retry_delays(
    *,
    base: float = RETRY_BASE,
    maximum: float = RETRY_MAX,
    minimum: float = RETRY_MIN,
    max_attempts: int | None = None,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """The wait before each reconnect attempt of one outage, in turn; after
    ``max_attempts`` failed attempts in a row it ends (``None``: never)."""
    attempts = itertools.count() if max_attempts is None else range(max_attempts)
    for attempt in attempts:
        yield retry_delay(attempt, base=base, maximum=maximum, minimum=minimum, rng=rng)


def should_reconnect(*, auto_reconnect: bool, closing: bool, session: str | None) -> bool:
    """Whether a lost socket is retried. Without a session ``connect()`` never succeeded:
    its caller gets the error, there is nothing to resume."""
    return auto_reconnect and not closing and session is not None


def connect_message(
    version: str, session: str | None, received_count: int | None
) -> dict[str, Any]:
    """The ``connect`` message: one supported version, the session to resume if any, and
    ``receivedCount`` (Meteor 3.5's resumption) if given."""
    msg: dict[str, Any] = {"msg": "connect", "version": version}
    msg["support"] = [version]
    if session is not None:
        msg["session"] = session
    if received_count is not None:
        msg["receivedCount"] = received_count
    return msg


class OutstandingCall(Protocol):
    """What the resume decisions read of a method call the connection still tracks."""

    @property
    def msg(self) -> dict[str, Any]: ...  # the ``method`` message as first sent

    @property
    def has_result(self) -> bool: ...

    @property
    def updated(self) -> bool: ...


@dataclass(frozen=True)
class ResumePlan:
    """What to send on a new socket, in this order, before ``connected`` arrives."""

    connect: dict[str, Any]
    methods: list[dict[str, Any]]
    subs: list[dict[str, Any]]
    unsubs: list[dict[str, Any]]
    #: ``login`` with the client's resume token, first of all (Meteor's accounts
    #: ``onReconnect`` hook); None when logged out.
    login: dict[str, Any] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        first = [self.login] if self.login is not None else []
        return [self.connect, *first, *self.methods, *self.subs, *self.unsubs]

    @property
    def method_ids(self) -> frozenset[str]:
        """The re-sent methods: a new session's quiescence waits for their ``updated``."""
        return frozenset(str(m["id"]) for m in self.methods)

    @property
    def sub_ids(self) -> frozenset[str]:
        """The re-sent subs: a new session's quiescence waits for their ``ready``."""
        return frozenset(str(s["id"]) for s in self.subs)


def plan_resume(
    *,
    version: str,
    session: str | None,
    received_count: int,
    resume: bool,
    calls: Mapping[str, OutstandingCall],
    subs: Iterable[dict[str, Any]],
    unsubs: Iterable[str],
    login_token: str | None = None,
    login_id: str = "",
) -> ResumePlan:
    """Meteor's ``onReset``: ``calls`` are the tracked methods (by id), ``subs`` the active
    ``sub`` messages, ``unsubs`` the sub ids unsubscribed while the socket was down. With a
    ``login_token``, ``login {resume: token}`` (method id ``login_id``) goes right behind
    ``connect``: it logs a new session in again, and it is what a relay asks of a client
    to resume a logged-in session (the id alone is not enough)."""
    login = None
    if login_token is not None:
        login = {
            "msg": "method",
            "method": "login",
            "params": [{"resume": login_token}],
            "id": login_id,
        }
    return ResumePlan(
        connect=connect_message(version, session, received_count if resume else None),
        methods=[c.msg for c in calls.values() if not c.has_result],
        subs=list(subs),
        unsubs=[{"msg": "unsub", "id": sub_id} for sub_id in unsubs],
        login=login,
    )


#: Methods whose result carries a login token (Meteor's accounts).
TOKEN_METHODS = frozenset({"login", "createUser", "resetPassword", "verifyEmail", "getNewToken"})


def login_token_after(
    token: str | None, method: str, params: Any, result: Any, error: Any
) -> str | None:
    """The client's resume token after a call of ``method`` answered with ``result`` or
    ``error``: a new token from a login-like result, none after ``logout``, none when
    the token itself was refused (a resume login that failed), else unchanged."""
    if error is not None:
        resumed = (
            method == "login"
            and isinstance(params, list)
            and len(params) == 1
            and isinstance(params[0], dict)
            and params[0].get("resume") == token
        )
        return None if resumed else token
    if method == "logout":
        return None
    if method in TOKEN_METHODS and isinstance(result, dict):
        fresh = result.get("token")
        if isinstance(fresh, str):
            return fresh
    return token


def connected_outcome(
    *, reconnecting: bool, previous: str | None, session: object
) -> Literal["first", "resumed", "new"]:
    """What a ``connected`` message means: the first of this client, the ``previous``
    session resumed, or a new session (anything but the same id string, after a drop)."""
    if not reconnecting:
        return "first"
    if isinstance(session, str) and session == previous:
        return "resumed"
    return "new"


def calls_done_at_quiescence(
    calls: Mapping[str, OutstandingCall], resent: Iterable[str]
) -> list[str]:
    """Ids of the calls a new session's quiescence completes: they had their result before
    the drop (so were not re-sent) but not their ``updated``, which will never come now."""
    skip = set(resent)
    return [
        call_id
        for call_id, call in calls.items()
        if call.has_result and not call.updated and call_id not in skip
    ]
