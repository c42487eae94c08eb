"""Shared fakes for the server tests: a backend, a session context without a node, a peer.

``FakeContext`` is what ``relay.server.context.SessionContext`` asks for and nothing more:
backend calls run inline (no work pool), the channel streams are the real in-memory ones
without a listener, and the hub callbacks only record. A ``Peer`` drives one session over
a ``MemoryTransport``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent

from relay import disconnect
from relay.backend import (
    ANONYMOUS,
    CallContext,
    ClientError,
    Condition,
    DecodedChange,
    Document,
    Handshake,
    Identity,
    MethodOutcome,
    PublicationSink,
    QueryData,
    QuerySpec,
    Route,
    SubscriptionPlan,
    WritePosition,
)
from relay.config import Settings
from relay.limits import DEFAULT_ACCOUNTS_RULE, Rule
from relay.live.queries import LiveQueries
from relay.live.query import QueryHost
from relay.metrics import Metrics, get_metrics
from relay.protocol.changestream import Change
from relay.resume.parked import ParkedSession
from relay.resume.resumer import Resumed
from relay.server.context import SessionContext
from relay.server.gate import Gate
from relay.server.session import Session
from relay.server.tracebook import make_book
from relay.stream.fanout import Streams
from relay.transport import MemoryTransport

T = TypeVar("T")

HANDSHAKE = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")

#: The live route of the "live" publication: every document of ``things``.
THINGS = Route("ddp_things", "things", ())
#: The route of the "opaque" publication: membership not decidable from a change.
OPAQUE = Route("ddp_things", "things", None)
#: The channel of the fake backend's login tokens (a token is a row; deleting it revokes).
TOKENS = "ddp_tokens"
#: The route of the fake publications that are not live (nothing is ever published on it).
STATIC = Route("ddp_static", "things", ())


def token_identity(user_id: str, token: str) -> Identity:
    """The identity the fake ``login`` gives: user ``user_id``, credential ``token``,
    watched on ``TOKENS`` by primary key."""
    route = Route(TOKENS, "tokens", (Condition("id", "exact", token),), fields=(), doc_id=token)
    return Identity(
        user=f"user-{user_id}",
        user_id=user_id,
        credential=token,
        revocation=route,
        position=(3, "E"),
    )


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.subscribed: list[str] = []
        self.housekept = 0
        self.kept_alive = 0
        self.closed = 0
        self.docs = {
            "all": [
                Document("things", "a", {"n": 1, "tag": "x"}),
                Document("things", "b", {"n": 2}),
            ],
            "some": [Document("things", "a", {"n": 1, "extra": True})],
            "live": [Document("things", "a", {"n": 1})],
        }
        #: Connection hooks: whether there are any, what they saw, and a refusal reason.
        self.hooks = False
        self.connections: list[tuple[str, str, bool]] = []
        self.refuse: str | None = None
        #: The DDPRateLimiter rules the relay applies (Meteor's accounts default).
        self.rules: list[Rule] = [DEFAULT_ACCOUNTS_RULE]
        #: Names run as universal publications (Meteor's null publications).
        self.universal: list[str] = []
        #: Live credentials (login tokens) -> user id; ``verify`` reads them.
        self.tokens: dict[str, str] = {}
        self.identity = Identity(user="u", user_id="42")
        #: Keys of the queries ``fetch`` read, in order.
        self.fetched: list[str] = []
        #: What a fetch of a key reads instead of the subscribed documents (the data
        #: changed since: what a refetch sees).
        self.refetch_docs: dict[str, list[Document]] = {}
        #: Channel positions a fetch reads now (the database moved on), over the spec's own.
        self.positions: dict[str, tuple[int, str]] = {}

    def universal_publications(self) -> Sequence[str]:
        return self.universal

    def rate_limit_rules(self) -> Sequence[Rule]:
        return self.rules

    def connection_hooks(self) -> bool:
        return self.hooks

    def connection_opened(self, ctx: CallContext, resumed: bool) -> None:
        self.connections.append(("opened", ctx.session_id, resumed))
        if self.refuse is not None:
            raise ClientError(403, self.refuse)

    def connection_closed(self, ctx: CallContext, parked: bool) -> None:
        self.connections.append(("closed", ctx.session_id, parked))

    def verify(self, identity: Identity) -> Identity | None:
        if identity.credential is None:
            return identity if identity.user_id is None else None
        user_id = self.tokens.get(identity.credential)
        return None if user_id is None else token_identity(user_id, identity.credential)

    def authenticate(self, handshake: Handshake) -> Identity:
        return self.identity

    def has_publication(self, name: str) -> bool:
        return name in self.docs or name in ("boom", "denied", "slow", "opaque", "mine", "public")

    def has_method(self, name: str) -> bool:
        return name in (
            "echo",
            "boom",
            "denied",
            "sleep",
            "seed",
            "write",
            "login",
            "logout",
            "bye",
        )

    def subscribe(
        self, ctx: CallContext, name: str, params: Sequence[Any], sink: PublicationSink
    ) -> SubscriptionPlan:
        self.subscribed.append(name)
        if name == "boom":
            raise RuntimeError("publication bug")
        if name == "denied":
            raise ClientError(403, "Access denied")
        if name == "slow":
            gevent.sleep(0.2)
        if name == "mine":
            # The caller's own document: what a user-dependent publication looks like.
            user_id = ctx.identity.user_id
            docs = [] if user_id is None else [Document("users", user_id, {"name": user_id})]
            return self.plan(f"mine:{user_id}", Route("ddp_static", "users", ()), docs)
        if name == "public":
            return self.plan("public", STATIC, [Document("things", "p", {"n": 0})])
        if name in ("live", "opaque"):
            route = THINGS if name == "live" else OPAQUE
            return self.plan(name, route, self.docs["live"], {"ddp_things": (5, "E")})
        return self.plan(name, STATIC, self.docs.get(name, []))

    def plan(
        self,
        key: str,
        route: Route,
        docs: Sequence[Document],
        positions: dict[str, tuple[int, str]] | None = None,
    ) -> SubscriptionPlan:
        """One query keyed ``key``; ``fetch`` reads ``docs`` back at ``positions``."""
        source = (list(docs), positions or {})
        return SubscriptionPlan([QuerySpec(key, route, source=source)])

    def fetch(self, specs: Sequence[QuerySpec]) -> Sequence[QueryData]:
        self.fetched.extend(spec.key for spec in specs)
        out = []
        for spec in specs:
            docs, positions = spec.source
            if spec.key in self.refetch_docs:
                docs = self.refetch_docs[spec.key]
            out.append(QueryData(documents=docs, positions={**positions, **self.positions}))
        return out

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        self.calls.append((name, tuple(params)))
        if name == "boom":
            raise ValueError("secret internals")
        if name == "denied":
            raise ClientError("not-allowed", "No", {"why": 1})
        if name == "sleep":
            gevent.sleep(params[0])
        if name == "seed":
            return MethodOutcome(result=[ctx.random_seed, ctx.identity.user_id])
        if name == "login":
            # {"user": id} logs in with a new token; {"resume": token} with a known one.
            opts = params[0]
            if "resume" in opts:
                token = opts["resume"]
                if token not in self.tokens:
                    raise ClientError(403, "You've been logged out by the server.")
                user_id = self.tokens[token]
            else:
                user_id, token = opts["user"], f"t{len(self.tokens) + 1}"
                self.tokens[token] = user_id
            return MethodOutcome(
                result={"id": user_id, "token": token}, identity=token_identity(user_id, token)
            )
        if name == "bye":
            return MethodOutcome(result="bye", close=True)
        if name == "logout":
            if ctx.identity.credential is not None:
                self.tokens.pop(ctx.identity.credential, None)
            return MethodOutcome(result=None, identity=ANONYMOUS)
        if name == "write":
            # As if the method's transaction published change ``params[0]`` on ddp_things.
            return MethodOutcome(result="ok", writes=[WritePosition("ddp_things", params[0])])
        return MethodOutcome(result=params[0] if params else None)

    def decode_change(self, channel: str, change: Change) -> DecodedChange | None:
        if channel == TOKENS:
            return DecodedChange("tokens", str(change.pk), change.op, {}, {"id": change.pk})
        if channel != "ddp_things":
            return None
        fields = dict(change.values) if change.op != "d" else {}
        return DecodedChange("things", str(change.pk), change.op, fields, dict(change.values))

    def housekeeping(self) -> None:
        self.housekept += 1

    def keepalive(self) -> None:
        self.kept_alive += 1

    def close(self) -> None:
        self.closed += 1


class FakeResumer:
    """``SessionResumer``: epochs from a counter, parked states kept in a list."""

    def __init__(self, resumed: Resumed | None = None) -> None:
        self.resumed = resumed
        self.created_ids: list[str] = []
        self.parked: list[tuple[ParkedSession, int]] = []
        self.dropped_ids: list[tuple[str, int | None]] = []
        self.asked: list[tuple[str, int]] = []
        #: What the session's binding judge said of ``resumed``'s state.
        self.accepted: list[bool] = []

    def created(self, session_id: str) -> int | None:
        self.created_ids.append(session_id)
        return len(self.created_ids)

    def resume(
        self, session_id: str, received_count: int, accept: Callable[[ParkedSession], bool]
    ) -> Resumed | None:
        self.asked.append((session_id, received_count))
        if self.resumed is None:
            return None
        self.accepted.append(accept(self.resumed.state))
        return self.resumed if self.accepted[-1] else None

    def park(self, state: ParkedSession, epoch: int, owner: str = "") -> bool:
        self.parked.append((state, epoch))
        return True

    def dropped(self, session_id: str, epoch: int | None) -> None:
        self.dropped_ids.append((session_id, epoch))


class FakeMember:
    """``relay.server.hub.Member``: records what the hub and the ticker did to it."""

    def __init__(self, session_id: str | None = None) -> None:
        self.id = session_id
        self.closed_with: list[disconnect.Disconnect] = []
        self.ticks: list[float] = []
        #: Due at every tick unless a test sets it later.
        self.tick_due = 0.0

    def close(self, reason: disconnect.Disconnect) -> None:
        self.closed_with.append(reason)

    def tick(self, now: float) -> None:
        self.ticks.append(now)


class FakeContext:
    """A ``SessionContext`` without a node (see the module docstring)."""

    def __init__(
        self,
        settings: Settings | None = None,
        backend: Any = None,
        resumer: FakeResumer | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.metrics: Metrics = get_metrics()
        self.backend: Any = backend if backend is not None else FakeBackend()
        self.listened: list[str] = []
        self.unlistened: list[str] = []
        self.streams = Streams(
            self.backend, self.listened.append, self.unlistened.append, self.metrics
        )
        self.queries = LiveQueries(QueryHost(self.backend.fetch, self.streams, self.metrics))
        self.resumer = resumer
        self.gate = Gate(self.settings, self.metrics, self.backend.rate_limit_rules())
        self.opened: list[Session] = []
        self.closed: list[Session] = []
        self.by_id: dict[str, Session] = {}
        # As the node makes it: a book only for a backend that can trace.
        self.traces = make_book(self)

    def run(self, fn: Callable[..., T], *args: Any, **_scheduling: Any) -> T:
        return fn(*args)

    def session_opened(self, session: Session) -> None:
        self.opened.append(session)

    def session_connected(self, session: Session) -> None:
        assert session.id is not None
        self.by_id[session.id] = session

    def session_closed(self, session: Session) -> None:
        self.closed.append(session)
        if session.id is not None:
            self.by_id.pop(session.id, None)


class Peer:
    """Drives one session over a MemoryTransport."""

    def __init__(self, ctx: SessionContext) -> None:
        self.transport = MemoryTransport()
        self.session = Session(ctx, self.transport, HANDSHAKE)
        self.greenlet = gevent.spawn(self.session.serve)
        self.seen = 0

    def send(self, *msgs: Any) -> None:
        self.transport.feed(*(m if isinstance(m, str) else json.dumps(m) for m in msgs))

    def connect(self, **extra: Any) -> dict[str, Any]:
        self.send({"msg": "connect", "version": "1", "support": ["1", "pre2", "pre1"], **extra})
        return self.expect("connected")

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(t) for t in self.transport.sent]

    def expect(self, kind: str, timeout: float = 2.0) -> dict[str, Any]:
        with gevent.Timeout(timeout):
            while True:
                msgs = self.messages()
                for i in range(self.seen, len(msgs)):
                    if msgs[i]["msg"] == kind:
                        self.seen = i + 1
                        return msgs[i]
                gevent.sleep(0.005)

    def new(self) -> list[dict[str, Any]]:
        msgs = self.messages()[self.seen :]
        self.seen += len(msgs)
        return msgs

    def lose(self) -> None:
        """The network drops the socket (no close frame, no ``disconnect``); wait until
        the session is torn down (parked or dropped)."""
        self.transport.disconnect()
        self.greenlet.join(timeout=1)

    def tick_until_over(self, timeout: float, every: float = 0.05) -> None:
        """Play the worker's ticker for this session until it is over."""
        with gevent.Timeout(timeout):
            while not self.session.ended.is_set():
                self.session.tick(time.monotonic())
                gevent.sleep(every)
