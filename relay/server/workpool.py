"""A bounded set of long-lived greenlets that run blocking backend (ORM) calls.

Layer: runtime (gevent). Django keeps one database connection per thread, which under gevent's
monkey-patching means one per greenlet. Running publications and methods in the socket
greenlets would open a connection per session; running them here bounds a worker process
to ``size`` connections, however many sessions it serves. Callers block cooperatively
until their call is done; the call's exception is re-raised in the caller.

Must not: know about DDP, sessions or Django (the callables it runs do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import gevent.event
import gevent.queue

T = TypeVar("T")
log = logging.getLogger(__name__)

_STOP = object()


class WorkPool:
    """Run callables on at most ``size`` greenlets, each kept alive between calls."""

    def __init__(self, size: int, on_exit: Callable[[], None] | None = None) -> None:
        self._size = size
        self._on_exit = on_exit
        self._jobs: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self._workers: list[gevent.Greenlet] = []
        self._idle = 0
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a pool greenlet and return its result (or raise its error)."""
        if self._closed:
            raise RuntimeError("work pool is closed")
        done: gevent.event.AsyncResult = gevent.event.AsyncResult()
        self._jobs.put((fn, args, done))
        if self._idle == 0 and len(self._workers) < self._size:
            self._workers.append(gevent.spawn(self._work))
        return done.get()  # type: ignore[no-any-return]

    @property
    def busy(self) -> int:
        return len(self._workers) - self._idle

    def _work(self) -> None:
        try:
            while True:
                self._idle += 1
                try:
                    job = self._jobs.get()
                finally:
                    self._idle -= 1
                if job is _STOP:
                    return
                fn, args, done = job
                try:
                    done.set(fn(*args))
                except gevent.GreenletExit:
                    done.set_exception(RuntimeError("work pool stopped"))
                    raise
                except BaseException as exc:
                    done.set_exception(exc)
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
        for _ in self._workers:
            self._jobs.put(_STOP)
        gevent.joinall(self._workers, timeout=timeout)
        gevent.killall([w for w in self._workers if not w.dead], block=False)
