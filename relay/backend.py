"""The seam between the relay and the application that owns the data (Django, in practice).

Layer: core. The relay never imports Django: the composition root loads a ``Backend`` by
dotted path (``RELAY_BACKEND``, the channels BACKEND pattern) and calls it through this
protocol. Every method here may block on the database; the relay only calls them from its
bounded backend work pool (``relay.server.workpool``), never from a socket reader or the listener.

What must not live here: sockets, gevent, DDP framing. Errors cross this seam in two kinds
only: ``ClientError`` (safe to show the client, sent as a Meteor error object) and anything
else (logged with its traceback, sent as ``500 Internal server error``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from relay.limits.ratelimit import Rule
from relay.protocol.changestream import Change


class ClientError(Exception):
    """An error the client may see: becomes ``{"error", "reason", "details"}`` on the wire.

    ``error`` is a string code (``"not-allowed"``) or a number (Meteor's 403, 404, 400).
    """

    def __init__(self, error: str | int, reason: str | None = None, details: Any = None) -> None:
        super().__init__(reason if reason is not None else str(error))
        self.error = error
        self.reason = reason
        self.details = details


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the relay knows about the HTTP request that opened the DDP socket."""

    #: Request headers, names lower-cased.
    headers: Mapping[str, str]
    #: Cookies parsed from the Cookie header.
    cookies: Mapping[str, str]
    #: The peer address (or the forwarded client address, when the relay trusts proxies).
    remote_addr: str
    #: The request path (``/websocket``, ``/sockjs/123/abcdefgh/websocket``...).
    path: str


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a session acts for: decided at the handshake (``authenticate``), changed by a
    method that logs the session in or out (``MethodOutcome.identity``).

    ``credential`` is what proved it, opaque to the relay: the backend's key of a login
    token or of the Django session behind the cookie. The relay keeps it with the
    session, hands it back in every ``CallContext`` (so ``logout`` knows which token to
    destroy), parks it, and asks the backend to ``verify`` it again before a parked
    session is resumed. ``revocation`` is the change-stream route of the credential's
    row: when that row leaves the route (deleted: a logout elsewhere, a password change,
    a deactivation), the relay closes every session holding it, on every relay, with no
    polling. ``position`` is where that channel stood when the credential was read.
    """

    #: Opaque user object handed back to publications and methods (a Django user).
    user: Any = None
    #: The user's id as a string, or None for anonymous sessions.
    user_id: str | None = None
    #: The backend's key of what authenticated the session; None when nothing did.
    credential: str | None = None
    #: The route of the credential's row, whose wire id is ``credential`` itself (None:
    #: it cannot be revoked live). A change that removes that id from it revokes.
    revocation: Route | None = None
    #: The change-stream position of ``revocation``'s channel when it was read.
    position: tuple[int, str] = (0, "")


ANONYMOUS = Identity()


@dataclass(frozen=True, slots=True)
class CallContext:
    """Context of one ``subscribe`` or ``call`` made on behalf of a session."""

    session_id: str
    identity: Identity
    handshake: Handshake
    #: The method's ``randomSeed`` (None for subscriptions and seedless calls).
    random_seed: str | None = None
    #: Lets the session's later messages run while this method goes on (Meteor's
    #: ``this.unblock()``); None outside a method. Idempotent; a no-op once it returned.
    unblock: Callable[[], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Document:
    """One published document: collection name, wire id (Mongo-style string), fields."""

    collection: str
    id: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Condition:
    """One membership test a relay can decide in memory: ``doc[path] <op> value``.

    ``path`` names a value the write side resolves once per change (a model field or a
    related path such as ``author__email``); ``op`` is one of ``exact``, ``in``, ``isnull``,
    ``gt``, ``gte``, ``lt``, ``lte``.
    """

    path: str
    op: str
    value: Any
    #: The path crosses a multi-valued relation (a reverse foreign key, a many-to-many):
    #: changes carry a tuple of values under it and the condition holds when ANY of them
    #: passes the test (Django's ``filter(tags__name="x")``).
    many: bool = False


@dataclass(frozen=True, slots=True)
class Order:
    """One component of a live query's sort: a routing path, ascending or descending.

    Values compare like Meteor sorts them (minimongo): None (SQL NULL) is lower than any
    value, so it comes first ascending and last descending; strings compare by code
    point (the backend sorts them with ``COLLATE "C"`` so the database agrees).
    """

    path: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    """A sorted, limited live query (``order_by(...)[skip:skip + limit]``).

    ``order`` ends with the primary key ascending (the backend appends it when the
    publication's sort does not already), so the order is total and the database and the
    relay agree on every tie. ``limit`` None: no limit (only ``skip``).
    """

    order: tuple[Order, ...]
    limit: int | None = None
    skip: int = 0

    @property
    def capacity(self) -> int | None:
        """Rows a fetch reads: the window plus as many again kept as a buffer, so a
        document leaving the window is replaced from memory, not by a query (Meteor's
        oplog driver keeps the same buffer). None: every matching row."""
        if self.limit is None:
            return None
        return self.skip + 2 * self.limit


@dataclass(frozen=True, slots=True)
class CountOf:
    """A live query published as ONE document ``{count: n}`` (the ``publish-counts`` use):
    ``collection``/``id`` name that document; ``n`` is how many rows match the route."""

    collection: str
    id: str
    #: The field holding the count.
    field: str = "count"


@dataclass(frozen=True, slots=True)
class StreamOf:
    """A live query over an event stream's channel (``publish_event``): every change on
    the route is one event, published as a document added in commit order; the oldest
    leaves (``removed``) once more than ``cap`` are held, so the client-side collection
    is capped. A fetch reads the channel's recent history (at most ``cap`` events)."""

    #: The most events a subscriber holds at once.
    cap: int


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """One query of a subscription, as the relay shares it between subscribers.

    ``key`` is the backend's promise: two specs with the same key always have the same
    result, whoever subscribes (the backend derives it from the query itself, the
    visibility rule of the user included). A relay runs one fetch per key however many
    sessions subscribe at once, and maintains one result per key from the change stream.
    ``source`` is opaque to the relay: the backend's handle to run the query again
    (``Backend.fetch``), kept only in memory.
    """

    key: str
    route: Route
    window: Window | None = None
    count: CountOf | None = None
    stream: StreamOf | None = None
    source: Any = field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class QueryData:
    """What ``Backend.fetch`` read for one ``QuerySpec``, in one database snapshot.

    ``documents`` are in the window's order for a windowed query (``keys`` then holds
    each one's sort values, the values of ``Window.order``'s paths in the types
    ``DecodedChange.routing`` uses); ``complete`` is False when a windowed fetch read its
    whole capacity, so more rows may follow. For a count, documents carry ids only.
    ``positions`` are the change-stream positions those rows reflect, per channel.
    """

    documents: Sequence[Document] = ()
    keys: Sequence[tuple[Any, ...]] | None = None
    complete: bool = True
    positions: Mapping[str, tuple[int, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriptionPlan:
    """What running a publication function gave: its queries, shared by key.

    ``auto_ready``: the relay sends ``ready`` once the queries' documents are sent (a
    publication that returned cursors, or that returned nothing without using the
    low-level API). False: the publication was written with the low-level API and marks
    itself ready (``PublicationSink.ready``), as in Meteor.
    """

    queries: Sequence[QuerySpec] = ()
    auto_ready: bool = True


class PublicationSink(Protocol):
    """What a publication written as code calls (Meteor's ``this.added``...): the relay
    gives one to ``Backend.subscribe`` per subscription. Each call may come from the
    publish function itself or later, from an ``observe`` or ``on_stop`` callback; all
    of them are ignored once the subscription has stopped.

    Documents it publishes are the subscription's own (merged with its queries' in the
    session's mergebox, as Meteor merges them): ``changed`` takes the fields that
    changed and ``cleared``, the names of fields removed.
    """

    def added(self, collection: str, doc_id: str, fields: Mapping[str, Any]) -> None: ...

    def changed(
        self,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any],
        cleared: Sequence[str] = (),
    ) -> None: ...

    def removed(self, collection: str, doc_id: str) -> None: ...

    def ready(self) -> None: ...

    def error(self, error: ClientError) -> None:
        """Stop the subscription: the client gets ``nosub`` with this error."""
        ...

    def stop(self) -> None:
        """Stop the subscription: the client gets ``nosub`` without an error."""
        ...

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (in the work pool: it may use the database) when the
        subscription stops, for whatever reason; at once if it already has."""
        ...

    def observe(
        self,
        channel: str,
        collection: str,
        callback: Callable[[Sequence[DecodedChange]], None],
        position: tuple[int, str] = (0, ""),
    ) -> None:
        """Call ``callback`` with the decoded changes of ``collection`` of every commit on
        ``channel`` after ``position`` (read in the publication's snapshot), in commit
        order, one call at a time, in the work pool (it may query), until the
        subscription stops. When the channel lost history the publication is re-run."""
        ...

    @property
    def stopped(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Route:
    """How live changes on a change-stream channel reach one subscription.

    ``conditions`` all hold for a member document (AND). ``conditions is None`` means
    membership cannot be decided from the change payload; the relay must re-evaluate the
    publication for such a route (slower, documented in docs/django-api.md).
    """

    channel: str
    collection: str
    conditions: tuple[Condition, ...] | None = ()
    #: Published field names (None = all fields the collection publishes).
    fields: tuple[str, ...] | None = None
    #: The wire id of the one document the route can hold, when its conditions say so
    #: (a primary-key lookup: a user's own document, a login token's row): fan-out then
    #: hands it that document's changes only, instead of testing it against every change.
    doc_id: str | None = None


@dataclass(frozen=True, slots=True)
class DecodedChange:
    """A change-stream change translated for the relay, once per change and worker.

    ``fields`` are the published fields by wire name, as the initial load would send them
    (deletes: empty). ``routing`` holds the values route conditions test, keyed by lookup
    path (``author_id``, ``author__email``), as Python values comparable with
    ``Condition.value``.
    """

    collection: str
    #: The Mongo-style wire id.
    id: str
    #: "i" insert, "u" update, "d" delete.
    op: str
    fields: dict[str, Any]
    routing: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WritePosition:
    """A change-stream position a method's transaction published (channel, sequence)."""

    channel: str
    seq: int


@dataclass(frozen=True, slots=True)
class MethodOutcome:
    """What a method returned and which change-stream positions its writes produced.

    The relay sends ``updated`` only after every listed position has been delivered to
    the session (the write fence, invariant I5). ``identity`` is the session's new
    identity when the method logged it in or out (Meteor's ``this.setUserId``; logged out
    is ``ANONYMOUS``), None when it did not: the relay then re-runs every subscription of
    the session as the new user and sends the difference before ``result``.
    """

    result: Any = None
    writes: Sequence[WritePosition] = field(default_factory=tuple)
    identity: Identity | None = None
    #: Close the session once ``result`` and ``updated`` are sent (Meteor's
    #: ``this.connection.close()``): not resumable, its client starts afresh.
    close: bool = False


@dataclass(frozen=True, slots=True)
class TraceOrder:
    """One session trace switched on (a support case): record the frames of the sessions
    whose id is ``session_id`` or whose user is ``user_id``, until ``until`` (Unix
    time), at most ``max_frames`` frames and ``max_chars`` characters per session, each
    frame cut at ``frame_chars`` characters (``relay.server.trace``)."""

    id: str
    session_id: str | None = None
    user_id: str | None = None
    until: float = 0.0
    max_frames: int = 2000
    max_chars: int = 1_000_000
    frame_chars: int = 4096


@dataclass(frozen=True, slots=True)
class TraceOrders:
    """The traces switched on now, read in one snapshot with the position of ``route``:
    the trace table on the change stream, whose every change makes relays read the
    orders again (None: traces can only be read at start)."""

    orders: tuple[TraceOrder, ...] = ()
    route: Route | None = None
    position: tuple[int, str] = (0, "")


@runtime_checkable
class TraceBackend(Protocol):
    """What a backend adds to let sessions be traced at run time (optional: a backend
    without these methods never traces). Both may block; the relay calls them from its
    work pool only."""

    def trace_orders(self) -> TraceOrders:
        """The traces switched on now (``until`` still ahead)."""
        ...

    def save_trace(
        self,
        trace_id: str,
        relay: str,
        session_id: str,
        first: int,
        frames: Sequence[Mapping[str, Any]],
        stats: Mapping[str, int],
    ) -> None:
        """Keep one batch of a session's recorded frames (``first`` is the number of
        its first frame in the session's recording); a trace already full or gone
        drops it silently."""
        ...


class Backend(Protocol):
    """What the relay needs from the application. Implementations may block (ORM)."""

    def authenticate(self, handshake: Handshake) -> Identity:
        """Identify the user of a new session from its handshake (session cookie, or a
        bearer token when the application configures an authenticator)."""
        ...

    def verify(self, identity: Identity) -> Identity | None:
        """Check ``identity``'s credential again (a parked session about to be resumed, or
        a session whose revocation channel lost history): the identity read afresh (user,
        route, position), or None when the credential is gone or expired."""
        ...

    def rate_limit_rules(self) -> Sequence[Rule]:
        """The DDPRateLimiter rules to apply to every method and subscription (Meteor's
        default accounts rule among them unless the application removed it), read once
        when a worker starts. Must not touch the database."""
        ...

    def connection_hooks(self) -> bool:
        """Whether ``connection_opened``/``connection_closed`` do anything (when not, the
        relay does not call them). Must not touch the database."""
        ...

    def connection_opened(self, ctx: CallContext, resumed: bool) -> None:
        """A session is about to answer ``connected`` (new, or ``resumed`` on this relay);
        raise ClientError to refuse it: the client gets a DDP ``error`` with its reason and
        the socket is closed (4500)."""
        ...

    def connection_closed(self, ctx: CallContext, parked: bool) -> None:
        """A session's socket is gone: ``parked`` when it may still be resumed (then a
        later ``connection_opened(resumed=True)`` may follow, on any relay)."""
        ...

    def universal_publications(self) -> Sequence[str]:
        """Publications every session runs at connect without a ``sub`` and re-runs when
        its user changes (Meteor's ``Meteor.publish(null, ...)``: the ``users`` document).
        Must not touch the database."""
        ...

    def has_publication(self, name: str) -> bool:
        """Whether ``name`` is a registered publication. Must not touch the database."""
        ...

    def has_method(self, name: str) -> bool:
        """Whether ``name`` is a registered method. Must not touch the database."""
        ...

    def subscribe(
        self, ctx: CallContext, name: str, params: Sequence[Any], sink: PublicationSink
    ) -> SubscriptionPlan:
        """Run publication ``name``'s function: its queries (not yet run: the relay
        fetches each distinct one once, ``fetch``) and whatever it published through
        ``sink``. Raise ClientError for client-visible failures."""
        ...

    def fetch(self, specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        """Run these queries (specs some ``subscribe`` returned) in ONE database snapshot,
        with the change-stream positions of their channels read in it: one ``QueryData``
        per spec, in order."""
        ...

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        """Run method ``name`` (seeded by ``ctx.random_seed``); raise ClientError to refuse."""
        ...

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        """Translate one change-stream change (no database access: it runs per change in
        the listener). None when the channel or change is not one this backend publishes."""
        ...

    def housekeeping(self) -> None:
        """Periodic chores (changelog pruning); idempotent, may run on several relays."""
        ...

    def keepalive(self) -> None:
        """Every few seconds on EVERY worker, in the work pool: renew what this worker
        holds on a lease (presence) and sweep what workers that died held. Idempotent."""
        ...

    def close(self) -> None:
        """Release resources (database connections) when the worker stops."""
        ...
