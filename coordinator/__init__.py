"""Cluster coordination for ddp-relay (relay membership, session ownership, leadership).

Depends on the standard library and kazoo only; never imports ``relay`` or Django.

The interface and its types are re-exported here; pick an implementation explicitly:
``coordinator.memory.MemoryCoordinator`` (in-process: tests, single-process runs),
``coordinator.sqlite.SQLiteCoordinator`` (one SQLite file shared by the worker processes
of one node: the single-node default) or ``coordinator.zk.ZooKeeperCoordinator`` (kazoo;
imported only by whoever needs it, so that importing ``coordinator`` does not import
kazoo).
"""

from coordinator.base import (
    MAX_FACTS_BYTES,
    Coordinator,
    LeaderCallback,
    Member,
    SessionRecord,
    State,
    StateListener,
)
from coordinator.errors import (
    CoordinatorError,
    FencedError,
    NotConnectedError,
    SessionExists,
    SessionNotFound,
)

__all__ = [
    "MAX_FACTS_BYTES",
    "Coordinator",
    "CoordinatorError",
    "FencedError",
    "LeaderCallback",
    "Member",
    "NotConnectedError",
    "SessionExists",
    "SessionNotFound",
    "SessionRecord",
    "State",
    "StateListener",
]
