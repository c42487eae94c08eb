"""What a session needs from the worker around it: the ``SessionContext`` seam.

Layer: runtime. A ``Session`` is given one ``SessionContext`` instead of the node: the settings,
the metrics, the backend and a way to run its (blocking) calls, the channel streams as a
session sees them, the resumer when sessions can be resumed, and the hub's bookkeeping
callbacks. ``relay.server.node`` builds the real one (``NodeContext``); a test builds a
small fake and drives a session over a ``MemoryTransport``, without a node.

Must not: import ``relay.server.node`` or ``relay.server.session`` at run time (the
session is only named in types), start greenlets, or hold per-session state: one context
serves every session of a worker, which keeps a single reference to it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from relay.backend import Backend, Route
    from relay.config import Settings
    from relay.live.queries import LiveQueries
    from relay.metrics import Metrics
    from relay.resume.parked import ParkedSession
    from relay.resume.resumer import Resumed
    from relay.server.gate import Gate
    from relay.server.hub import Hub
    from relay.server.session import Session
    from relay.server.tracebook import TraceBook
    from relay.server.workpool import WorkPool
    from relay.stream.fanout import Attachment, StreamTarget
    from relay.stream.interning import Interner

T = TypeVar("T")


class SessionStreams(Protocol):
    """The worker's channel streams (``relay.stream.fanout.Streams``) as a session uses
    them: attach and detach its own targets (a credential watch, a custom publication's
    observer), wait for the write fence, share values."""

    @property
    def interner(self) -> Interner: ...

    def attach(
        self, target: StreamTarget, route: Route, position: tuple[int, str]
    ) -> Attachment: ...

    def detach(self, att: Attachment) -> None: ...

    def wait_for(self, channel: str, seq: int, timeout: float) -> bool: ...


class SessionResumer(Protocol):
    """The resumer (``relay.resume.resumer.Resumer``) as a session uses it: register,
    resume, park or drop its id in the coordinator."""

    def created(self, session_id: str) -> int | None: ...

    def resume(
        self, session_id: str, received_count: int, accept: Callable[[ParkedSession], bool]
    ) -> Resumed | None: ...

    def park(self, state: ParkedSession, epoch: int, owner: str = "") -> bool: ...

    def dropped(self, session_id: str, epoch: int | None) -> None: ...


class SessionContext(Protocol):
    """Everything a session may use of the worker. Read-only for the session."""

    @property
    def settings(self) -> Settings: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def backend(self) -> Backend:
        """Call its blocking methods through ``run`` only (``has_*`` may be called directly:
        they must not touch the database)."""
        ...

    @property
    def streams(self) -> SessionStreams: ...

    @property
    def queries(self) -> LiveQueries:
        """The worker's live queries (``relay.live.queries``): a subscription acquires
        the one of each of its specs, shared with every identical subscription."""
        ...

    @property
    def gate(self) -> Gate:
        """The worker's limits (``relay.server.gate``)."""
        ...

    @property
    def resumer(self) -> SessionResumer | None:
        """None when sessions cannot be parked or resumed (no database, or window 0)."""
        ...

    @property
    def traces(self) -> TraceBook | None:
        """The worker's support-trace orders (``relay.server.tracebook``); None when the
        backend cannot trace."""
        ...

    def run(
        self, fn: Callable[..., T], *args: Any, owner: Hashable | None = None, urgent: bool = False
    ) -> T:
        """Run a blocking backend call off the session's greenlet (the bounded work pool)
        and return its result or raise its exception; blocks the caller cooperatively.
        ``urgent``: what a new session needs to start (never queued behind methods);
        ``owner``: whose share of the pool a normal call counts against (the client's
        address; see ``relay.server.workpool``)."""
        ...

    def session_opened(self, session: Session) -> None:
        """A socket became a session (it may be closed at once when the worker drains)."""
        ...

    def session_connected(self, session: Session) -> None:
        """The session answered ``connected``: ``session.id`` is set."""
        ...

    def session_closed(self, session: Session) -> None:
        """The session is torn down (parked or dropped); called last, exactly once."""
        ...


class NodeContext:
    """The real ``SessionContext`` of a worker: what ``relay.server.node.Node`` composed.

    Plain attributes, read by every session call; the hub callbacks are the hub's own
    bound methods (no wrapper between a session and the hub)."""

    __slots__ = (
        "_pool",
        "backend",
        "gate",
        "metrics",
        "queries",
        "resumer",
        "session_closed",
        "session_connected",
        "session_opened",
        "settings",
        "streams",
        "traces",
    )

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        backend: Backend,
        pool: WorkPool,
        streams: SessionStreams,
        queries: LiveQueries,
        resumer: SessionResumer | None,
        hub: Hub,
        gate: Gate,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.metrics = metrics
        self.backend = backend
        self._pool = pool
        self.streams = streams
        self.queries = queries
        self.resumer = resumer
        #: Set by the node once this context exists (the book watches through it).
        self.traces: TraceBook | None = None
        self.session_opened: Callable[[Session], None] = hub.opened
        self.session_connected: Callable[[Session], None] = hub.connected
        self.session_closed: Callable[[Session], None] = hub.closed

    def run(
        self, fn: Callable[..., T], *args: Any, owner: Hashable | None = None, urgent: bool = False
    ) -> T:
        return self._pool.run(fn, *args, owner=owner, urgent=urgent)
