"""Byte budgets, pure: how many bytes of queued inbound messages a session, and the worker
holding it, may keep at once (``RELAY_MAX_PENDING_BYTES``, ``RELAY_MAX_WORKER_PENDING_BYTES``).

Layer: pure (no I/O, no gevent, no clock). A session's budget has the worker's as its
parent: a reservation is taken from both or from neither, so one session can never hold
more than its own limit, and all the sessions of a worker together never more than the
worker's. The session reserves a message's size when it queues the message, releases it
when the message has been handled, and releases whatever it still holds when it closes
(``release_all``). What to do when a reservation is refused (close the session, which is
what the relay does with too many pending messages) is the caller's decision; ``reserve``
says which budget was full, for the close reason and the metric. When a shared budget
(the worker's) is full, the one to give way is its largest holder, not whoever asks
next: ``evict_largest`` runs the ``on_evict`` of the child holding the most (a hostile
client's queue, not an honest client's one message), which must release what it holds.

Not thread-safe; gevent-safe (a call never yields, so no greenlet sees half a reservation).

Must not: read a clock, do I/O, import gevent or Django, or import anything of the project.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable


class ByteBudget:
    """At most ``limit`` bytes held at once (0: no limit of its own), within ``parent``'s."""

    __slots__ = ("__weakref__", "_children", "_used", "limit", "name", "on_evict", "parent")

    def __init__(
        self,
        limit: int,
        parent: ByteBudget | None = None,
        *,
        name: str = "",
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        if limit < 0:
            raise ValueError(f"limit must not be negative (got {limit})")
        self.limit = limit
        self.parent = parent
        #: Says which budget refused (``"session"``, ``"worker"``): a metric label.
        self.name = name
        #: Called by the parent's ``evict_largest``: give up what this budget holds.
        self.on_evict = on_evict
        self._used = 0
        #: The budgets within this one (weakly: a closed session's goes with it).
        self._children: weakref.WeakSet[ByteBudget] = weakref.WeakSet()
        if parent is not None:
            parent._children.add(self)

    def evict_largest(self, spare: ByteBudget | None = None) -> bool:
        """Ask the child holding the most bytes to give them up, if it holds more than
        ``spare`` (the asker: when it holds the most, it is the one to give way, and
        this returns False); True if one was asked."""
        floor = spare._used if spare is not None else 0
        candidates = [
            c
            for c in self._children
            if c is not spare and c._used > floor and c.on_evict is not None
        ]
        if not candidates:
            return False
        largest = max(candidates, key=lambda c: c._used)
        assert largest.on_evict is not None
        largest.on_evict()
        return True

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, size: int) -> ByteBudget | None:
        """Take ``size`` bytes from this budget and every ancestor: None when taken, else
        the nearest budget that has no room (and nothing is taken anywhere)."""
        if size < 0:
            raise ValueError(f"size must not be negative (got {size})")
        budget: ByteBudget | None = self
        while budget is not None:
            if budget.limit and budget._used + size > budget.limit:
                return budget
            budget = budget.parent
        budget = self
        while budget is not None:
            budget._used += size
            budget = budget.parent
        return None

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved earlier, here and in every ancestor. Giving
        back more than is held is a bug of the caller's; it is clamped so that a budget
        never goes negative (which would let later reservations past the limit)."""
        if size < 0:
            raise ValueError(f"size must not be negative (got {size})")
        size = min(size, self._used)
        budget: ByteBudget | None = self
        while budget is not None:
            budget._used = max(0, budget._used - size)
            budget = budget.parent

    def release_all(self) -> None:
        """Give back everything this budget holds (its session closed)."""
        self.release(self._used)
