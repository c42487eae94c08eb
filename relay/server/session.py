"""One DDP session: a socket's protocol state, its subscriptions, mergebox and methods.

Layer: runtime. The transport hands over inbound messages (``start``: from a reader
greenlet that exists only while input is handled); ``ping`` is answered at once (any
inbound message counts as liveness); every other message goes into a FIFO that one
on-demand processor greenlet drains in arrival order, as Meteor does (a slow method delays
later messages of the same session, never other sessions), unless the method calls
``unblock()`` (Meteor's ``this.unblock()``): its greenlet then goes on with the method alone
and a new processor takes the queue, at most ``RELAY_MAX_UNBLOCKED_METHODS`` such methods per
session at once (one more waits as if it had not unblocked). Backend calls (publications,
methods, authentication) run through the context's ``run`` (the worker's bounded work
pool). A session knows the worker only through its ``SessionContext``
(``relay.server.context``): settings, metrics, backend, streams, resumer and the hub's
callbacks; so it can be served, and tested, without a node.

Failure isolation (invariant I6): a malformed message gets a DDP ``error`` and the session
goes on; an exception in a publication or method becomes a Meteor error object, with the
traceback only in the log; nothing a client sends can raise out of ``serve``.

Must not: parse frames itself (``relay.protocol``), touch sockets (``relay.transport``),
import Django (``relay.backend`` is the seam) or import ``relay.server.node``.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import gevent
import gevent.event

from relay import disconnect
from relay.backend import ANONYMOUS, CallContext, ClientError, Handshake, Identity, MethodOutcome
from relay.limits import address_key
from relay.metrics import method_label
from relay.protocol import messages
from relay.protocol.alea import random_id
from relay.protocol.connection import Heartbeat, HeartbeatAction, ServerConnection, State
from relay.protocol.errors import LocalProtocolError, RemoteProtocolError
from relay.protocol.ids import session_tag
from relay.protocol.mergebox import MergeBox
from relay.protocol.messages import (
    ClientMessage,
    Connect,
    Disconnect,
    Method,
    Ping,
    Pong,
    Sub,
    Unsub,
)
from relay.resume.parked import ParkedSession, ParkedSubscription
from relay.server import tracebook
from relay.server.revocation import Watcher
from relay.server.subscriptions import (
    UNIVERSAL_PREFIX,
    StopSub,
    Subscription,
    Subscriptions,
    client_error,
)
from relay.transport import Inbound, Oversized, SharedFrames

if TYPE_CHECKING:
    from relay.resume.resumer import Resumed
    from relay.server.context import SessionContext
    from relay.server.tracebook import Tracer
    from relay.transport import Transport

log = logging.getLogger(__name__)

#: A session is ticked at least this often (the socket-closed backstop), however far its
#: heartbeat is: a tick of every session every second cost 2% of a core per 5,000 idle
#: sessions, most of a worker's idle CPU.
BACKSTOP_SECONDS = 5.0

#: The heartbeat ping, encoded once (every idle session sends one each interval).
_PING = (messages.encode(messages.ping()),)

#: Completed method results kept per session for re-sent methods after a resume.
MAX_RESULTS = 100
#: ...and at most this many characters of them (a method may return a large result).
MAX_RESULT_CHARS = 262_144
#: Characters of a client's method or publication name quoted in an error's reason.
NAME_IN_REASON = 100
#: Seconds a closing session waits for its in-flight message (and its unblocked methods)
#: before parking.
PARK_DRAIN_SECONDS = 60.0
#: Seconds a resume of a logged-in session waits for the client's pipelined ``login``
#: (Meteor clients send it right behind ``connect``, usually in the same read).
RESUME_LOGIN_WAIT = 0.5
__all__ = ["UNIVERSAL_PREFIX", "Session"]


@dataclass(frozen=True, slots=True)
class Resync:
    """Internal message: re-run a subscription whose change history was lost (a custom
    publication's observed channel)."""

    sub_id: str


@dataclass(frozen=True, slots=True)
class Recheck:
    """Internal message: verify the credential again (its channel lost history)."""


@dataclass(eq=False, slots=True)
class MethodRun:
    """One method call being run, and how far it let go of its session's queue."""

    msg: Method
    #: The greenlet that runs it to its end: the processor that took it from the queue.
    greenlet: object = field(default_factory=gevent.getcurrent)
    #: It called ``unblock()`` (it may no longer change who the session is).
    asked: bool = False
    #: The queue no longer waits for it: its greenlet is not the processor any more.
    detached: bool = False
    #: The backend call returned: a later ``unblock()`` does nothing.
    finished: bool = False


class Session:
    """Serves one DDP client over one transport until either side closes."""

    def __init__(self, ctx: SessionContext, transport: Transport, handshake: Handshake) -> None:
        #: The worker as this session sees it (one shared object: no per-session cost).
        self.ctx = ctx
        self.transport = transport
        self.handshake = handshake
        self.conn = ServerConnection()
        self.id: str | None = None
        self.identity: Identity = ANONYMOUS
        #: The live watch on ``identity``'s credential (``relay.server.revocation``).
        self._watcher = Watcher(ctx.streams, self._revoked, self._recheck_later)
        #: Results of a pipelined ``login`` already run to judge a resume, by method id.
        self._preanswered: dict[str, str] = {}
        #: The method the queue waits for: a revocation seen meanwhile waits for its
        #: outcome (it may log the session in as someone else).
        self._blocking: MethodRun | None = None
        #: Methods that unblocked and still run (``RELAY_MAX_UNBLOCKED_METHODS`` at most).
        #: An empty frozenset until one unblocks (a set costs 216 bytes per session).
        self._unblocked: set[MethodRun] | frozenset[MethodRun] = frozenset()
        self._revocation_pending = False
        self.mergebox = MergeBox()
        #: Its subscriptions and what runs them (``relay.server.subscriptions``);
        #: ``subs`` is their table, by id.
        self.subscriptions = Subscriptions(self)
        self.subs: dict[str, Subscription] = self.subscriptions.by_id
        self.sent_count = 0
        #: The last messages sent (counted ones), for replay on resume: ``log[-1]`` is
        #: message number ``sent_count``. A list, not a deque: an idle session's log is
        #: short, and a deque's first block alone costs 760 bytes; trimming its front is a
        #: short memmove (RELAY_RESUME_LOG pointers at most).
        self.log: list[str] = []
        #: The characters the log holds: it keeps at most RELAY_RESUME_LOG messages and
        #: RELAY_RESUME_LOG_BYTES of them (large messages must not pile up per session).
        self._log_size = 0
        #: Completed methods' result messages, so a re-sent method is answered, not re-run.
        self.results: OrderedDict[str, str] = OrderedDict()
        #: The characters ``results`` holds (bounded by MAX_RESULT_CHARS).
        self._results_size = 0
        #: The coordinator's epoch for this session; None: it cannot be parked/resumed.
        self.epoch: int | None = None
        #: Whose share this session's pool calls and parked bytes count against: the
        #: client's address as the limits key it (an IPv6 /64 is one client).
        self.owner = address_key(handshake.remote_addr or None, ctx.settings.address_ipv6_prefix)
        #: False once the client showed it cannot resume (it reconnected naming a session
        #: without ``receivedCount``: a client older than Meteor 3.5): never parked.
        self.resumable = True
        #: Ending to move to another relay (``hand_over``): parked whatever it holds.
        self._handover = False
        #: The teardown parked the session (a resume or a take-over can have it).
        self.parked = False
        self._deliberate = False
        self._close: disconnect.Disconnect | None = None
        self.opened_at = time.monotonic()
        #: When the ticker next ticks it (``tick``): 0, at its first round.
        self.tick_due = 0.0
        settings = ctx.settings
        self.heartbeat = Heartbeat(settings.heartbeat_interval, settings.heartbeat_timeout)
        #: A list, not a deque: it is nearly always empty, and an empty deque costs 760
        #: bytes per session (its first block) against 56 (the queue is bounded and short).
        self._pending: list[ClientMessage | Resync | Recheck | StopSub] = []
        #: The queued messages' memory, within the worker's total (``relay.server.gate``).
        self._budget = ctx.gate.session_budget(on_evict=self._evicted)
        #: Bytes reserved per queued message, in queue order (0 for internal ones).
        self._pending_sizes: list[int] = []
        self._processor: gevent.Greenlet | None = None
        self._heartbeat_started = False
        #: Set once the session is over (``start``).
        self.ended = gevent.event.Event()
        self.closed = False
        self.close_reason: str | None = None
        #: The support trace recording this session's frames (``relay.server.tracebook``);
        #: None, the rule, costs one test per frame.
        self.trace: Tracer | None = None

    # -- reading ---------------------------------------------------------------------------

    def start(self) -> gevent.event.Event:
        """Serve the socket in the background and return at once; the event is set when
        the session is over (torn down: parked or dropped). An idle session holds no
        greenlet: the transport calls back when input arrives."""
        self.ctx.session_opened(self)
        self.transport.start(self._on_inbound, self._on_end)
        return self.ended

    def serve(self) -> None:
        """Serve the socket; returns when the session is over."""
        self.start().wait()

    def _on_inbound(self, texts: list[Inbound]) -> None:
        for text in texts:
            if self.closed:
                return  # the rest of the socket's input is drained unread
            self.feed(text)

    def _on_end(self) -> None:
        try:
            self._teardown()
        finally:
            self.ended.set()

    def feed(self, text: Inbound) -> None:
        """Handle one inbound DDP frame (from the socket greenlet)."""
        now = time.monotonic()
        self.heartbeat.received(now)
        # A pong after our ping: the next ping may be due before the timeout was.
        self.tick_due = min(self.tick_due, now + self.heartbeat.interval)
        if self.trace is not None:
            self.trace.received(text)
        metrics = self.ctx.metrics
        if isinstance(text, Oversized):
            # Dropped by the transport as it arrived; the session goes on (invariant I6).
            metrics.protocol_errors.labels(reason="Message too large").inc()
            reason = f"Message too large ({text.size} bytes; the limit is {text.limit})"
            self.send([messages.error(reason, text.prefix)])
            return
        try:
            msg = self.conn.receive(text)
        except RemoteProtocolError as exc:
            metrics.protocol_errors.labels(reason=_metric_reason(exc.reason)).inc()
            if exc.reply is not None:
                self.send([exc.reply])
            if exc.close:
                self.close(disconnect.PROTOCOL_ERROR)
            return
        except LocalProtocolError:
            return
        metrics.messages_received.labels(msg=type(msg).__name__.lower()).inc()
        if isinstance(msg, Ping):
            # Answered at once, outside the queue, and not counted (Meteor 3.5's rule).
            if not self.closed:
                self._write([messages.encode(messages.pong(msg.id))])
            return
        if isinstance(msg, Pong):
            return
        if isinstance(msg, Disconnect):
            self._deliberate = True  # Meteor 3.5: no resume grace period wanted
            self.close(disconnect.CLIENT_DISCONNECT)
            return
        if len(self._pending) >= self.ctx.settings.max_pending_messages:
            metrics.limited.labels(limit="pending_messages").inc()
            self.close(disconnect.TOO_MANY_PENDING)
            return
        # What the queued message holds in memory: its text's size is the measure (the
        # parsed message holds about as much, the text is gone once parsed).
        size = sys.getsizeof(text)
        if not self.ctx.gate.reserve_pending(self._budget, size):
            self._evicted()
            return
        self._queue(msg, size)

    def _evicted(self) -> None:
        """Too many queued bytes (this session's own, or the most of a full worker): drop
        the queue now, giving its bytes back, and close (the client may resume)."""
        self._drop_pending()
        self.close(disconnect.PENDING_BYTES)

    def _drop_pending(self) -> None:
        """Forget the queued messages and give their bytes back to the budgets."""
        self._pending.clear()
        self._pending_sizes.clear()
        self._budget.release_all()

    def _queue(self, msg: ClientMessage | Resync | Recheck | StopSub, size: int = 0) -> None:
        self._pending.append(msg)
        self._pending_sizes.append(size)
        if self._processor is None:
            self._processor = gevent.spawn(self._process)

    # -- the processor greenlet -----------------------------------------------------------

    def _process(self) -> None:
        me = gevent.getcurrent()
        try:
            # A method that unblocked makes its greenlet leave the loop when it ends: a
            # new processor took the queue meanwhile.
            while self._pending and not self.closed and self._processor is me:
                msg = self._pending.pop(0)
                self._budget.release(self._pending_sizes.pop(0))
                try:
                    self._dispatch(msg)
                except gevent.GreenletExit:
                    raise
                except Exception:
                    # A bug in the relay itself: log it, keep the worker and the session.
                    # The message's type only: its parameters may carry credentials.
                    log.exception(
                        "session %s: unexpected error handling a %s",
                        session_tag(self.id),
                        type(msg).__name__,
                    )
        finally:
            if self._processor is me:
                self._processor = None
        # A message may have arrived between the loop test and the reset above.
        if self._processor is None and self._pending and not self.closed:
            self._processor = gevent.spawn(self._process)

    def request_resync(self, sub_id: str) -> None:
        """Queue a re-run of ``sub_id`` (its channel lost history), in message order."""
        if self.closed or any(isinstance(m, Resync) and m.sub_id == sub_id for m in self._pending):
            return
        self._queue(Resync(sub_id))

    def desync(self) -> None:
        """Fan-out could not apply a change to this session's view: start it afresh."""
        if not self.closed:
            self.resumable = False  # its mergebox no longer says what the client holds
            self.close(disconnect.SERVER_ERROR)

    def queue_internal(self, msg: StopSub) -> None:
        """Queue a publication's own stop, in message order."""
        if not self.closed:
            self._queue(msg)

    def _dispatch(self, msg: ClientMessage | Resync | Recheck | StopSub) -> None:
        if isinstance(msg, Resync):
            self._on_resync(msg.sub_id)
        elif isinstance(msg, StopSub):
            self.subscriptions.stopped_by_run(msg)
        elif isinstance(msg, Recheck):
            self._on_recheck()
        elif isinstance(msg, Connect):
            self._on_connect(msg)
        elif isinstance(msg, Sub):
            self._on_sub(msg)
        elif isinstance(msg, Unsub):
            self._on_unsub(msg)
        elif isinstance(msg, Method):
            self._on_method(msg)

    def _on_connect(self, msg: Connect) -> None:
        try:
            self.identity = self.ctx.run(self.ctx.backend.authenticate, self.handshake, urgent=True)
        except Exception:
            log.exception("authentication failed; closing the socket")
            self.send([messages.error("Internal server error")])
            self.close(disconnect.SERVER_ERROR)
            return
        resumer = self.ctx.resumer
        if (
            resumer is not None
            and msg.session is not None
            and msg.received_count is not None
            and self.ctx.settings.resume_window > 0
        ):
            handshake_identity = self.identity
            resumed = resumer.resume(msg.session, msg.received_count, self._bound_to)
            if resumed is not None:
                # The hook may refuse before anything of the session is sent.
                self.id, self.epoch = resumed.state.session_id, resumed.epoch
                if self._opened(resumed=True):
                    self._restore(resumed, msg.received_count)
                return
            # Judging the binding may have run the client's login: not resumed, it runs
            # again from the queue, as for any new session.
            self.identity = handshake_identity
        self._preanswered.clear()
        self.resumable = msg.session is None or msg.received_count is not None
        # A fresh id unless resumed exactly: clients before Meteor 3.5 wipe their cache
        # when they get their old id back (invariant I7), and send no receivedCount.
        self.id = random_id()
        if resumer is not None:
            self.epoch = resumer.created(self.id)
        if not self._opened(resumed=False):
            return
        self.send([messages.connected(self.id)])
        self._connected()
        self._watch_credential()
        self._start_universal()

    def _opened(self, *, resumed: bool) -> bool:
        """The application's connection hook (Meteor's ``onConnection``): False, with the
        client told why and the socket closed, when it refuses the session."""
        backend = self.ctx.backend
        if not backend.connection_hooks():
            return True
        try:
            self.ctx.run(backend.connection_opened, self.call_context(), resumed, urgent=True)
        except ClientError as exc:
            self.send([messages.error(exc.reason or str(exc.error))])
            self.close(disconnect.REFUSED)
            return False
        except Exception:
            log.exception("the connection hook failed; the session goes on")
        return True

    # -- identity ---------------------------------------------------------------------------

    def _bound_to(self, state: ParkedSession) -> bool:
        """Whether this client may have the parked session ``state`` (its resume binding).

        The session id alone is not enough for a logged-in session: the client must
        present the session's credential again, either on the upgrade (the same Django
        session cookie, the same bearer token) or, as every Meteor client does, with the
        ``login`` ``{resume: token}`` it pipelines right behind ``connect``. That login
        is run here, as the parked session, and answered later from the results (it is
        not run twice). A session without a credential needs the handshake to prove the
        same user; an anonymous one is bound to nothing but its id (about 100 random
        bits, never logged, known to its client only): docs/security.md says what that
        leaves.
        """
        if state.credential is None:
            # Nothing to present again: the handshake must prove the same user (or none).
            return state.user_id == self.identity.user_id
        if self.identity.credential == state.credential:
            return True
        login = self._pipelined_login()
        if login is None:
            return False
        ctx = CallContext(state.session_id, ANONYMOUS, self.handshake, login.random_seed)
        try:
            outcome = self.ctx.run(
                self.ctx.backend.call, ctx, login.method, login.params, urgent=True
            )
            reply = messages.encode(messages.result(login.id, outcome.result))
        except Exception:
            return False  # refused (or failed): the queued login runs again, normally
        identity = outcome.identity
        if identity is None or identity.credential != state.credential:
            return False
        self.identity = identity
        self._preanswered[login.id] = reply
        return True

    def _pipelined_login(self) -> Method | None:
        """The ``login`` ``{resume: ...}`` queued behind ``connect``, waiting briefly for
        it to arrive (a Meteor client sends it before any other method or sub)."""
        deadline = time.monotonic() + RESUME_LOGIN_WAIT
        while True:
            for msg in self._pending:
                if isinstance(msg, Method) and msg.method == "login":
                    params = msg.params
                    if len(params) == 1 and isinstance(params[0], dict) and "resume" in params[0]:
                        return msg
                    return None  # a password login: it proves nothing about this session
            if self._pending or self.closed or time.monotonic() >= deadline:
                return None
            gevent.sleep(0.01)

    def _set_identity(self, identity: Identity) -> None:
        """Log the session in or out (Meteor's ``setUserId``): watch the new credential,
        and re-run every subscription as the new user, sending only the difference.

        A revocation pending from before (of the credential this one replaces) is
        settled here, BEFORE the new credential is watched: one of the new credential
        that arrives meanwhile (caught up at once, or during the re-run) stays pending
        and closes the session when the method ends."""
        previous = self.identity
        paused = self._revocation_pending  # live routing was stopped by a revocation
        self._revocation_pending = False
        self.identity = identity
        if identity.user_id != previous.user_id:
            tracebook.follow(self)  # a trace of the new user starts here
        self._watch_credential()
        if identity.user_id != previous.user_id or paused:
            # The same user again (a resume login, getNewToken) sees the same data.
            self._rerun_many(list(self.subs.values()))

    def _watch_credential(self) -> None:
        """(Re)attach the live watch on the identity's credential, if it has a route."""
        if self.closed:
            self._watcher.stop()
        else:
            self._watcher.follow(self.identity)

    def _revoked(self) -> None:
        """The credential's row is gone: close now, as Meteor does; never park (the
        client reconnects, its login fails, and it goes on logged out). While a method of
        this session runs, wait for its outcome: ``logout`` deletes the session's own
        token, and its commit can reach the listener before the method returns the new
        identity (then the old credential no longer speaks for the session)."""
        if self._blocking is not None:
            if not self._revocation_pending:
                self._revocation_pending = True
                # Nothing more of the revoked user's data meanwhile: live routing stops
                # until the method's outcome says who the session is.
                for sub in self.subs.values():
                    self.subscriptions.pause(sub)
            return
        self.ctx.metrics.revocations.inc()
        self.close(disconnect.REVOKED)

    def _recheck_later(self) -> None:
        if self.closed or any(isinstance(m, Recheck) for m in self._pending):
            return
        self._queue(Recheck())

    def _on_recheck(self) -> None:
        try:
            identity = self.ctx.run(self.ctx.backend.verify, self.identity, urgent=True)
        except Exception:
            log.exception("session %s: verifying its credential failed", session_tag(self.id))
            return  # kept: the next lost history or reconnect checks again
        if identity is None:
            self._revoked()
            return
        self.identity = identity
        self._watch_credential()

    def _start_universal(self) -> None:
        """Run the universal publications (Meteor's null publications) for a new session:
        their documents come without ``ready`` and they live as long as the session."""
        for name in self.ctx.backend.universal_publications():
            sub = Subscription(UNIVERSAL_PREFIX + name, name, (), ready=True)
            self.subs[sub.id] = sub
            self._rerun_many([sub])

    def _connected(self) -> None:
        self.ctx.session_connected(self)
        tracebook.follow(self)
        if self.conn.heartbeats:
            self._heartbeat_started = True
            self.heartbeat.received(time.monotonic())
            self.tick_due = 0.0  # the ticker's next round sets when

    def _restore(self, resumed: Resumed, received_count: int, *, announce: bool = True) -> None:
        """Carry on a parked session: same id, the messages lost in flight, then the
        subscriptions re-run against the restored mergebox so that only what changed
        while the client was away is sent. ``announce``: the client reconnected and gets
        ``connected`` (a take-over's client never left: it gets the rest only)."""
        state = resumed.state
        assert self.id == state.session_id  # set with the epoch by _on_connect
        self.mergebox = MergeBox.from_state(state.mergebox)
        self.results = OrderedDict()
        self._results_size = 0
        for method_id, reply in [*state.results.items(), *self._preanswered.items()]:
            self._keep_result(method_id, reply)
        self._preanswered.clear()
        connected = [messages.encode(messages.connected(self.id))] if announce else []
        # The client counts ``connected`` before the replayed messages: number the log the
        # way it will, so a drop in the middle of the replay still resumes exactly.
        kept = state.log[: len(state.log) - len(resumed.missed)]
        self.log = []
        self._log_size = 0
        self._log_extend([*kept, *connected, *resumed.missed])
        self.sent_count = state.sent_count + len(connected)
        if connected or resumed.missed:
            self._write([*connected, *resumed.missed])
        self.ctx.metrics.messages_sent.inc(len(connected) + len(resumed.missed))
        self._connected()
        self._watch_credential()
        subs = [Subscription(p.id, p.name, p.params, p.ready) for p in state.subs]
        for sub in subs:
            self.subs[sub.id] = sub
        # Re-run against the restored mergebox: only what changed meanwhile is sent, and
        # a subscription still loading when the socket died is ready once it is complete.
        self._rerun_many(subs)

    # -- moving between relays (SockJS over HTTP) ---------------------------------------------

    def hand_over(self, wait: float, end_transport: Callable[[], None]) -> tuple[str, int] | None:
        """End here to go on elsewhere (``relay.httpsession``: the client's next request
        landed on another relay): let what is queued run (at most ``wait`` seconds), then
        ``end_transport`` (without a close frame) and park whatever the session holds.
        The session's id and how many counted messages the client was given, or None
        when it could not be parked (busy past ``wait``, closed, no coordinator): the
        caller then closes it the ordinary way, and the client resumes by itself. An id of
        ``""``: no ``connect`` was handled yet (a taker starts the session afresh)."""
        deadline = time.monotonic() + wait
        while (self._pending or self._processor is not None or self._unblocked) and (
            not self.closed and time.monotonic() < deadline
        ):
            gevent.sleep(0.01)
        if self.closed or self._pending or self._processor is not None or self._unblocked:
            return None
        unwritten: list[str] = getattr(self.transport, "unwritten", list)()
        delivered = self.sent_count - sum(1 for text in unwritten if not _uncounted(text))
        self._handover = True
        end_transport()
        self.close(disconnect.HANDOVER)
        self.ended.wait()
        if self.id is None:
            return ("", 0)
        return (self.id, delivered) if self.parked else None

    def take_over(self, resumed: Resumed, delivered: int) -> bool:
        """Go on with a session another relay handed over (``hand_over``): its identity
        checked again, no ``connected`` (the client never left), the messages it was not
        given, then the subscriptions against the restored mergebox. False when the
        identity no longer holds (the session then closes)."""
        state = resumed.state
        self.ctx.session_opened(self)
        try:
            if state.credential is not None:
                verified = self.ctx.run(
                    self.ctx.backend.verify,
                    Identity(user_id=state.user_id, credential=state.credential),
                    urgent=True,
                )
            else:
                verified = self.ctx.run(self.ctx.backend.authenticate, self.handshake, urgent=True)
                if verified.user_id != state.user_id:
                    verified = None
        except Exception:
            log.exception("verifying a handed-over session failed")
            verified = None
        self.conn.adopt(state.version)
        self.id, self.epoch = state.session_id, resumed.epoch
        try:
            if verified is None:
                self.close(disconnect.REVOKED)
                return False
            self.identity = verified
            if not self._opened(resumed=True):
                return False
            self._restore(resumed, delivered, announce=False)
            return True
        finally:
            # Reading starts last, whatever happened: a closed session then ends.
            self.transport.start(self._on_inbound, self._on_end)

    def call_context(
        self, random_seed: str | None = None, unblock: Callable[[], None] | None = None
    ) -> CallContext:
        assert self.id is not None
        return CallContext(self.id, self.identity, self.handshake, random_seed, unblock)

    def _on_sub(self, msg: Sub) -> None:
        backend, metrics = self.ctx.backend, self.ctx.metrics
        if msg.id.startswith(UNIVERSAL_PREFIX):
            metrics.subscriptions.labels(outcome="refused").inc()
            self.send([messages.nosub(msg.id, messages.meteor_error(400, "Match failed"))])
            return
        if not backend.has_publication(msg.name):
            metrics.subscriptions.labels(outcome="not_found").inc()
            err = messages.meteor_error(404, f"Subscription '{_shown(msg.name)}' not found")
            self.send([messages.nosub(msg.id, err)])
            return
        known = self.subs.get(msg.id)
        if known is not None:
            # Not re-run (Meteor ignores a duplicate id); a resumed client re-sends its subs
            # and a ready one is confirmed again, which clients ignore if already ready.
            if known.ready:
                self.send([messages.ready([msg.id])])
            return
        rejection = self._limited("subscription", msg.name)
        if rejection is not None:
            metrics.subscriptions.labels(outcome="refused").inc()
            self.send([messages.nosub(msg.id, rejection)])
            return
        named = sum(1 for sub_id in self.subs if not sub_id.startswith(UNIVERSAL_PREFIX))
        if named >= self.ctx.settings.max_subs_per_session:
            metrics.subscriptions.labels(outcome="refused").inc()
            metrics.limited.labels(limit="subs_per_session").inc()
            err = messages.meteor_error(
                "too-many-subscriptions",
                f"At most {self.ctx.settings.max_subs_per_session} subscriptions per session",
            )
            self.send([messages.nosub(msg.id, err)])
            return
        outcome = self.subscriptions.start(Subscription(msg.id, msg.name, msg.params))
        if outcome is not None:
            metrics.subscriptions.labels(outcome=outcome).inc()

    def _limited(self, kind: Literal["method", "subscription"], name: str) -> dict[str, Any] | None:
        """The rate limits' error for this call (Meteor's ``too-many-requests``), or None."""
        assert self.id is not None
        rejection = self.ctx.gate.check(
            kind, name, self.identity.user_id, self.id, self.handshake.remote_addr
        )
        return None if rejection is None else rejection.meteor_error()

    def _on_resync(self, sub_id: str) -> None:
        """Re-run a subscription and send only the difference (its history was lost)."""
        sub = self.subs.get(sub_id)
        if sub is not None:
            self._rerun_many([sub])

    def _rerun_many(self, subs: list[Subscription]) -> None:
        """Re-run ``subs`` and send only the difference (``Subscriptions.rerun``)."""
        if not self.subscriptions.rerun(subs):
            # The mergebox already holds a value that cannot be sent: the client's view
            # can no longer be kept exact. Start it afresh (never resumed).
            self.resumable = False
            self.close(disconnect.SERVER_ERROR)

    def _on_unsub(self, msg: Unsub) -> None:
        if isinstance(msg.id, str):
            self.subscriptions.unsub(msg.id)
        # Meteor answers nosub even for an unknown id.
        self.send([messages.nosub(msg.id)])

    def _on_method(self, msg: Method) -> None:
        backend, metrics = self.ctx.backend, self.ctx.metrics
        done = self.results.get(msg.id)
        if done is not None:
            # Re-sent after a resume: answered again, never executed twice.
            self.send_texts([done])
            self.send([messages.updated([msg.id])])
            return
        if not backend.has_method(msg.method):
            metrics.method_calls.labels(outcome="not_found").inc()
            err = messages.meteor_error(404, f"Method '{_shown(msg.method)}' not found")
            self.send([messages.result(msg.id, err=err), messages.updated([msg.id])])
            return
        rejection = self._limited("method", msg.method)
        if rejection is not None:
            # Meteor's order for a refused call: ``updated`` (nothing was written), then
            # ``result`` with the error. Not kept for a re-send: it may succeed later.
            metrics.method_calls.labels(outcome="limited").inc()
            self.send([messages.updated([msg.id]), messages.result(msg.id, err=rejection)])
            return
        run = MethodRun(msg)
        self._blocking = run
        try:
            self._run_method(run)
        finally:
            if run.detached:
                self._unblocked_ended(run)
            else:
                self._blocking = None
                self._settle_revocation()

    def _settle_revocation(self) -> None:
        if self._revocation_pending and not self.closed:
            # The method did not replace the revoked credential: the revocation stands.
            self._revocation_pending = False
            self._revoked()

    def _unblock(self, run: MethodRun) -> None:
        """``run``'s ``unblock()`` (Meteor's ``this.unblock()``), called from the greenlet
        running the method: the queue goes on without it, unless the session already has
        its share of unblocked methods (then as soon as one of them ends)."""
        if run.asked or run.finished:
            return  # idempotent, and nothing to let go of once the method returned
        run.asked = True
        if self._blocking is run and len(self._unblocked) < self.ctx.settings.max_unblocked_methods:
            self._detach(run)

    def _detach(self, run: MethodRun) -> None:
        """Let the queue go on while ``run`` goes on in its greenlet (no longer the
        processor); a new processor takes the queue."""
        run.detached = True
        if isinstance(self._unblocked, frozenset):
            self._unblocked = set()
        self._unblocked.add(run)
        self._blocking = None
        # It can no longer change who the session is: a revocation it held back stands.
        self._settle_revocation()
        self._processor = None
        if self._pending and not self.closed:
            self._processor = gevent.spawn(self._process)

    def _unblocked_ended(self, run: MethodRun) -> None:
        if isinstance(self._unblocked, set):
            self._unblocked.discard(run)
        waiting = self._blocking
        if (
            waiting is not None
            and waiting.asked
            and not waiting.finished
            and len(self._unblocked) < self.ctx.settings.max_unblocked_methods
        ):
            self._detach(waiting)  # it asked while the session had no room: room now

    def _run_method(self, run: MethodRun) -> None:
        backend, metrics = self.ctx.backend, self.ctx.metrics
        msg = run.msg
        started = time.monotonic()
        outcome: MethodOutcome | None = None
        try:
            try:
                outcome = self.ctx.run(
                    backend.call,
                    self.call_context(msg.random_seed, functools.partial(self._unblock, run)),
                    msg.method,
                    msg.params,
                    owner=self.owner,
                )
            finally:
                run.finished = True
            if outcome.identity is not None and run.asked:
                # Meteor: "Can't call setUserId in a method after calling unblock": later
                # messages may already run as the old user. The backend broke that rule;
                # its writes stand (and are fenced), the switch does not.
                log.error("method %r changed the user after calling unblock()", msg.method)
                outcome = replace(outcome, identity=None)
                reply = messages.encode(messages.result(msg.id, err=messages.INTERNAL_ERROR))
                outcome_label = "server_error"
            else:
                reply, outcome_label = self._encode_result(msg, outcome), "ok"
        except ClientError as exc:
            reply = messages.encode(messages.result(msg.id, err=client_error(exc)))
            outcome_label = "client_error"
        except Exception:
            log.exception("method %r failed", msg.method)
            reply = messages.encode(messages.result(msg.id, err=messages.INTERNAL_ERROR))
            outcome_label = "server_error"
        metrics.method_calls.labels(outcome=outcome_label).inc()
        # Registered names only reach here (has_method); the label set stays bounded.
        metrics.method_seconds.labels(method=method_label(msg.method)).observe(
            time.monotonic() - started
        )
        if outcome is not None and outcome.identity is not None:
            # Logged in or out: the subscriptions' difference goes before ``result``, as
            # Meteor's setUserId sends it (its client expects the user's document first).
            self._set_identity(outcome.identity)
        self._keep_result(msg.id, reply)
        self.send_texts([reply])
        if outcome is not None:
            self._write_fence(msg, outcome)
        self.send([messages.updated([msg.id])])
        if outcome is not None and outcome.close:
            self.close(disconnect.CLOSED_BY_SERVER)

    @staticmethod
    def _encode_result(msg: Method, outcome: MethodOutcome) -> str:
        try:
            return messages.encode(messages.result(msg.id, outcome.result))
        except (TypeError, ValueError):
            log.exception("method %r returned a value that cannot be sent", msg.method)
            return messages.encode(messages.result(msg.id, err=messages.INTERNAL_ERROR))

    def _keep_result(self, method_id: str, reply: str) -> None:
        """Keep a completed method's ``result`` for a re-send after a resume: the newest
        MAX_RESULTS of them, and no more than MAX_RESULT_CHARS together."""
        results = self.results
        self._results_size += len(reply) - len(results.pop(method_id, ""))
        results[method_id] = reply
        while len(results) > 1 and (
            len(results) > MAX_RESULTS or self._results_size > MAX_RESULT_CHARS
        ):
            self._results_size -= len(results.popitem(last=False)[1])

    def _write_fence(self, msg: Method, outcome: MethodOutcome) -> None:
        """Hold ``updated`` until the method's writes were routed to this session (I5)."""
        channels = self.subscriptions.channels()
        deadline = time.monotonic() + self.ctx.settings.write_fence_timeout
        for write in outcome.writes:
            if write.channel not in channels:
                continue  # no subscription here can get a message from that channel
            remaining = max(0.0, deadline - time.monotonic())
            seen = self.ctx.streams.wait_for(write.channel, write.seq, remaining)
            # A live query that must read itself again (an unroutable change, a window
            # out of buffer) owes the session that change until its fetch is in.
            for query in self.subscriptions.queries_on(write.channel) if seen else ():
                remaining = max(0.0, deadline - time.monotonic())
                seen = seen and query.wait_settled(write.seq, remaining)
            # And a publication's observe callback its data.
            for observer in self.subscriptions.observers_on(write.channel) if seen else ():
                remaining = max(0.0, deadline - time.monotonic())
                seen = seen and observer.wait_done(write.seq, remaining)
            if not seen:
                self.ctx.metrics.fence_timeouts.inc()
                log.warning(
                    "method %r: updated sent before %s seq %d was seen (fence timeout)",
                    msg.method,
                    write.channel,
                    write.seq,
                )

    # -- output ---------------------------------------------------------------------------

    def send(self, msgs: Iterable[dict[str, Any]]) -> None:
        """Encode and queue server messages for this client."""
        texts = [messages.encode(m) for m in msgs]
        if texts:
            self.send_texts(texts)

    def _log_extend(self, texts: list[str]) -> None:
        log = self.log
        log.extend(texts)
        size = self._log_size + sum(map(len, texts))
        settings = self.ctx.settings
        if len(log) > settings.resume_log or size > settings.resume_log_bytes:
            # Drop the oldest (one slice: a list's front is a memmove), keeping one at least.
            drop = min(max(0, len(log) - settings.resume_log), len(log) - 1)
            size -= sum(map(len, log[:drop]))
            while drop < len(log) - 1 and size > settings.resume_log_bytes:
                size -= len(log[drop])
                drop += 1
            del log[:drop]
        self._log_size = size

    def send_texts(
        self, texts: list[str], shared: SharedFrames | None = None, *, metered: bool = False
    ) -> bool:
        """Send counted messages; True if they went to the transport. After the socket
        closed they are still counted and logged (not sent): a session that will be parked
        must replay them on resume. ``metered``: the caller adds them to the
        ``messages_sent`` metric itself (fan-out does, once per delivery)."""
        if not texts:
            return False
        self.sent_count += len(texts)
        self._log_extend(texts)
        if self.closed:
            return False
        self._write(texts, shared)
        if not metered:
            self.ctx.metrics.messages_sent.inc(len(texts))
        return True

    def _write(self, texts: Sequence[str], shared: SharedFrames | None = None) -> None:
        """The one way out to the transport (what a trace records)."""
        if self.trace is not None:
            self.trace.sent(texts)
        self.transport.send(texts, shared)

    # -- liveness and closing ---------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Called by the worker's ticker (``relay.server.ticker``), once a second while
        traced, else from ``tick_due`` on: when the heartbeat or the handshake timeout
        can act, and every ``BACKSTOP_SECONDS`` at most."""
        self.tick_due = now + BACKSTOP_SECONDS
        if self.trace is not None:
            self.trace.tick()
            self.tick_due = now
        if self.closed:
            return
        if self.transport.closed:
            # A backstop: the transport's end (``_on_end``) normally tears the session down.
            self.close(self._why_transport_closed())
            return
        if self.conn.state is State.AWAITING_CONNECT:
            deadline = self.opened_at + self.ctx.settings.handshake_timeout
            if now > deadline:
                self.close(disconnect.HANDSHAKE_TIMEOUT)
            self.tick_due = min(self.tick_due, deadline)
            return
        if not self._heartbeat_started:
            return
        action = self.heartbeat.poll(now)
        if action is HeartbeatAction.PING:
            # Pings are not counted in sent_count (Meteor 3.5's receivedCount rule).
            self._write(_PING)
        elif action is HeartbeatAction.TIMEOUT:
            self.close(disconnect.HEARTBEAT_TIMEOUT)
        self.tick_due = min(self.tick_due, self.heartbeat.due())

    def close(self, reason: disconnect.Disconnect) -> None:
        if self.closed:
            return
        self.closed = True
        self._close = reason
        self.close_reason = reason.reason
        self.conn.close()
        self.ctx.metrics.disconnects.labels(reason=reason.name).inc()
        self.transport.close(reason.code, reason.reason)

    def _why_transport_closed(self) -> disconnect.Disconnect:
        # The transport closes on its own when the client reads slower than we write.
        if getattr(self.transport, "overflowed", False):
            return disconnect.SLOW
        return disconnect.TRANSPORT_CLOSED

    def _teardown(self) -> None:
        if not self.closed:
            self.close(self._why_transport_closed())
        self._drop_pending()
        # The subscriptions stop at once, not after the methods: their stop callbacks
        # (a presence leave) must not wait for a slow method of a socket that is gone. A
        # parked session's subscriptions are re-run by its resume.
        self.subscriptions.detach_all()
        # The methods in flight (the queue's and the unblocked ones) finish before the
        # session parks, so that their results are kept for a re-send.
        me = gevent.getcurrent()
        running = [self._processor, *(run.greenlet for run in self._unblocked)]
        greenlets = [g for g in running if isinstance(g, gevent.Greenlet) and g is not me]
        if greenlets:
            gevent.joinall(greenlets, timeout=PARK_DRAIN_SECONDS)
        self._watcher.stop()
        if self.trace is not None:
            self.trace.finish("ended")
        try:
            parked = self.parked = self._park_or_drop()
            self._closed_hook(parked)
        finally:
            # Last: a draining worker waits until its sessions are gone, parking included.
            self.ctx.session_closed(self)

    def _closed_hook(self, parked: bool) -> None:
        backend = self.ctx.backend
        if self.id is None or self._close is disconnect.REFUSED or not backend.connection_hooks():
            return
        try:
            self.ctx.run(backend.connection_closed, self.call_context(), parked)
        except Exception:
            log.exception("the connection close hook failed")

    def _park_or_drop(self) -> bool:
        """Park the session if a resume could use it (True), else forget it."""
        resumer = self.ctx.resumer
        if resumer is None or self.id is None:
            return False
        reason = self._close
        if (
            self._deliberate
            or reason is disconnect.REVOKED
            or (reason is not None and not reason.reconnect)
        ):
            resumer.dropped(self.id, self.epoch)
            return False
        if self.ctx.settings.resume_window <= 0:
            return False
        if not self._handover and (not self.resumable or not (self.subs or self.results)):
            # Nothing a resume would save over a fresh session (or a client that cannot
            # resume at all): forget it rather than fill the park store.
            resumer.dropped(self.id, self.epoch)
            return False
        if self.epoch is None:
            # Connected while the coordinator was unavailable: register it now, late.
            self.epoch = resumer.created(self.id)
            if self.epoch is None:
                return False
        log = list(self.log)
        state = ParkedSession(
            session_id=self.id,
            user_id=self.identity.user_id,
            version=self.conn.version or "1",
            sent_count=self.sent_count,
            log_start=self.sent_count - len(log) + 1,
            log=log,
            subs=[ParkedSubscription(s.id, s.name, s.params, s.ready) for s in self.subs.values()],
            mergebox=self.mergebox.to_state(),
            results=dict(self.results),
            credential=self.identity.credential,
        )
        return resumer.park(state, self.epoch, self.owner)


def _uncounted(text: str) -> bool:
    """``ping`` and ``pong``, which the client's ``receivedCount`` leaves out."""
    return text.startswith(('{"msg":"ping"', '{"msg":"pong"'))


def _shown(name: str) -> str:
    """A client's name as an error's reason quotes it: cut, so the answer stays small."""
    return name if len(name) <= NAME_IN_REASON else name[:NAME_IN_REASON] + "..."


def _metric_reason(reason: str) -> str:
    # Keep label cardinality bounded: "Parse error: <detail>" -> "Parse error".
    return reason.split(":", 1)[0][:40]
