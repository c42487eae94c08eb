"""Calling ``async def`` methods and publications from the synchronous backend.

Job: ``call(func, *args)`` calls ``func(*args)`` and, when that is a coroutine (an
``async def`` function, or anything returning an awaitable), runs it to completion with
asgiref's ``async_to_sync``, from the calling thread (in a relay: the work-pool greenlet
that runs the method). ``async_to_sync`` runs the coroutine's event loop elsewhere and
runs every ``sync_to_async(thread_sensitive=True)`` call back in the calling thread:
Django's async ORM (``acreate``, ``aupdate``, ``afirst``...) thus uses the caller's
database connection, inside the ``transaction.atomic()`` the backend opened, and the
coroutine sees the caller's context variables (``current_method()``).

Why more than ``async_to_sync``: asyncio records the running event loop per OS thread,
and greenlets (a gevent relay's sessions, pool slots and ``async_to_sync``'s loop thread
alike) share one OS thread. While the coroutine's loop waits, every other greenlet would
see it as running: Django then refuses their ORM calls (``SynchronousOnlyOperation``),
the async method's own ``sync_to_async`` calls included, and their own ``async_to_sync``
raises. So while a coroutine runs, a greenlet switch tracer keeps the running loop per
greenlet: each greenlet sees the loop it runs, or none. Without greenlet installed, or
when no coroutine runs, nothing is traced.

Must not: import gevent or the relay runtime, or change how a synchronous function is
called (its result is returned as it is, in the caller's thread).
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction

try:
    import greenlet  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - gevent (hence greenlet) is a dependency
    greenlet = None

__all__ = ["call"]

#: The running loop of each greenlet switched out while it had one.
_loops: weakref.WeakKeyDictionary[Any, asyncio.AbstractEventLoop] = weakref.WeakKeyDictionary()
#: Per OS thread (its root greenlet): coroutines running, and the tracer ours replaced.
_tracing: dict[Any, tuple[int, Any]] = {}


def call(func: Callable[..., Any], /, *args: Any) -> Any:
    """``func(*args)``; when it is a coroutine function, or returns an awaitable, the
    awaited result (its exception, raised here)."""
    if iscoroutinefunction(func):
        with _greenlet_local_loops():
            return async_to_sync(func)(*args)
    result = func(*args)
    if not inspect.isawaitable(result):
        return result
    try:
        with _greenlet_local_loops():
            return async_to_sync(_awaited)(result)
    finally:
        if inspect.iscoroutine(result) and inspect.getcoroutinestate(result) == "CORO_CREATED":
            result.close()  # never started (the loop could not run): no "never awaited"


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


@contextmanager
def _greenlet_local_loops() -> Iterator[None]:
    """Trace greenlet switches in this OS thread while the block runs (nested blocks
    share one tracer; the last to leave removes it)."""
    if greenlet is None:
        yield
        return
    root = _root()
    depth, previous = _tracing.get(root, (0, None))
    if depth == 0:
        previous = greenlet.settrace(_trace)
    _tracing[root] = (depth + 1, previous)
    try:
        yield
    finally:
        depth, previous = _tracing.pop(root)
        if depth > 1:
            _tracing[root] = (depth - 1, previous)
        elif greenlet.gettrace() is _trace:
            greenlet.settrace(previous)
        # else: someone installed a tracer over ours since: theirs stays as it is


def _root() -> Any:
    """This OS thread's root greenlet (a greenlet's parents end there)."""
    current = greenlet.getcurrent()
    while current.parent is not None:
        current = current.parent
    return current


def _trace(event: str, args: tuple[Any, Any]) -> None:
    if event in ("switch", "throw"):
        origin, target = args
        running = asyncio._get_running_loop()
        if running is not None:
            _loops[origin] = running
        else:
            _loops.pop(origin, None)
        wanted = _loops.get(target)
        if wanted is not running:
            asyncio._set_running_loop(wanted)
    previous = _tracing.get(_root(), (0, None))[1]
    if previous is not None:
        previous(event, args)
