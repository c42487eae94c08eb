"""A bounded set of long-lived greenlets that run blocking backend (ORM) calls, fairly.

Layer: runtime (gevent). Django keeps one database connection per thread, which under gevent's
monkey-patching means one per greenlet. Running publications and methods in the socket
greenlets would open a connection per session; running them here bounds a worker process
to ``size`` connections, however many sessions it serves. Callers block cooperatively
until their call is done; the call's exception is re-raised in the caller.

Fairness (issue 9's probe: 24 sessions in a 15-second method made a new client wait 14 s
for ``connected``): a call is either *urgent* (what a new session needs to start, such as
identifying its user: never queued behind anyone's methods) or *normal* (publications
and methods), and normal calls carry an *owner* (the client's address). Normal calls may
hold at most ``size - reserved`` slots, so ``reserved`` slots are always left for urgent
calls; one owner may hold at most ``per_owner`` slots; and queued normal calls are taken
round-robin across owners, so one address flooding the pool delays its own calls, not
everyone's. Urgent calls go first whenever a slot is free.

Saturation is observable: ``busy`` and ``size`` are read by the worker's sampler, and
``on_wait`` (when given) is told how long each call waited for its slot, once per call.

Must not: know about DDP, sessions or Django (the callables it runs do).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gevent
import gevent.event

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP = object()


@dataclass(eq=False, slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    owner: Hashable | None
    urgent: bool
    done: gevent.event.AsyncResult = field(default_factory=gevent.event.AsyncResult)
    #: When it was queued (monotonic): its wait ends when a slot takes it.
    queued: float = 0.0


class WorkPool:
    """Run callables on at most ``size`` greenlets, each kept alive between calls.

    ``reserved`` slots are kept for urgent calls (default: a quarter of ``size``, at least
    one when ``size`` > 1); ``per_owner`` caps the slots one owner's normal calls hold
    (default: all normal slots but one, at least one).
    """

    def __init__(
        self,
        size: int,
        on_exit: Callable[[], None] | None = None,
        *,
        reserved: int | None = None,
        per_owner: int | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._size = size
        self._on_exit = on_exit
        self._on_wait = on_wait
        if reserved is None:
            reserved = size // 4 if size > 3 else (1 if size > 1 else 0)
        self._normal_cap = max(1, size - max(0, reserved))
        # One slot short of all: behind a proxy whose forwarded address is not trusted,
        # every client is one owner, and that must not halve the worker's throughput.
        self._per_owner = max(1, per_owner if per_owner is not None else self._normal_cap - 1)
        self._urgent: deque[_Job] = deque()
        #: Queued normal calls by owner, in round-robin order (the next owner first).
        self._queued: OrderedDict[Hashable | None, deque[_Job]] = OrderedDict()
        self._running_by_owner: dict[Hashable | None, int] = {}
        self._running = 0
        self._running_normal = 0
        self._workers: list[gevent.Greenlet] = []
        #: Pool greenlets waiting for a job.
        self._waiting: deque[gevent.event.AsyncResult] = deque()
        self._closed = False

    def run(
        self, fn: Callable[..., T], *args: Any, owner: Hashable | None = None, urgent: bool = False
    ) -> T:
        """Run ``fn(*args)`` on a pool greenlet and return its result (or raise its error)."""
        if self._closed:
            raise RuntimeError("work pool is closed")
        job = _Job(fn, args, owner, urgent, queued=time.monotonic())
        if urgent:
            self._urgent.append(job)
        else:
            self._queued.setdefault(owner, deque()).append(job)
        self._dispatch()
        return job.done.get()  # type: ignore[no-any-return]

    @property
    def busy(self) -> int:
        return self._running

    @property
    def size(self) -> int:
        return self._size

    @property
    def queued(self) -> int:
        return len(self._urgent) + sum(len(q) for q in self._queued.values())

    # -- scheduling -------------------------------------------------------------------------

    def _pick(self) -> _Job | None:
        """The next job a free slot may take (and count it as running), or None."""
        if self._running >= self._size:
            return None
        job = self._urgent.popleft() if self._urgent else self._pick_normal()
        if job is None:
            return None
        self._running += 1
        if not job.urgent:
            self._running_normal += 1
            self._running_by_owner[job.owner] = self._running_by_owner.get(job.owner, 0) + 1
        if self._on_wait is not None:
            try:
                self._on_wait(time.monotonic() - job.queued)
            except Exception:  # a metric must not lose a job
                log.exception("work pool wait hook failed")
        return job

    def _pick_normal(self) -> _Job | None:
        if self._running_normal >= self._normal_cap:
            return None
        for owner in list(self._queued):
            if self._running_by_owner.get(owner, 0) >= self._per_owner:
                continue
            jobs = self._queued.pop(owner)
            job = jobs.popleft()
            if jobs:
                self._queued[owner] = jobs  # to the back of the rotation
            return job
        return None

    def _finished(self, job: _Job) -> None:
        self._running -= 1
        if not job.urgent:
            self._running_normal -= 1
            left = self._running_by_owner[job.owner] - 1
            if left:
                self._running_by_owner[job.owner] = left
            else:
                del self._running_by_owner[job.owner]

    def _dispatch(self) -> None:
        """Hand takeable jobs to waiting greenlets, spawning one while below ``size``."""
        while True:
            if not self._waiting and len(self._workers) >= self._size:
                return
            job = self._pick()
            if job is None:
                return
            if self._waiting:
                self._waiting.popleft().set(job)
            else:
                self._workers.append(gevent.spawn(self._work, job))

    def _work(self, job: Any) -> None:
        try:
            while job is not _STOP:
                try:
                    job.done.set(job.fn(*job.args))
                except gevent.GreenletExit:
                    job.done.set_exception(RuntimeError("work pool stopped"))
                    raise
                except BaseException as exc:
                    job.done.set_exception(exc)
                finally:
                    self._finished(job)
                job = self._pick()
                if job is None:
                    if self._closed:
                        return
                    waiter: gevent.event.AsyncResult = gevent.event.AsyncResult()
                    self._waiting.append(waiter)
                    job = waiter.get()
                # Others may be takeable now that this slot's owner share was released.
                self._dispatch()
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:
                    log.exception("work pool exit hook failed")

    def close(self, timeout: float = 10.0) -> None:
        """Let queued calls finish, then stop every pool greenlet (bounded by ``timeout``)."""
        if self._closed:
            return
        self._closed = True
        with gevent.Timeout(timeout, False):
            while self._running or self.queued:
                gevent.sleep(0.005)
        stranded = [*self._urgent, *(j for q in self._queued.values() for j in q)]
        self._urgent.clear()
        self._queued.clear()
        for job in stranded:
            job.done.set_exception(RuntimeError("work pool stopped"))
        while self._waiting:
            self._waiting.popleft().set(_STOP)
        gevent.joinall(self._workers, timeout=0.5)
        gevent.killall([w for w in self._workers if not w.dead], block=True, timeout=1)
