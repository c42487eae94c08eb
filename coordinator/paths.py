"""Every znode path the ZooKeeper coordinator uses, built here under one versioned root.

Job: the layout, in one place::

    <root>                       default /ddp-relay/v1 (bump v1 on incompatible changes)
    <root>/members/<relay_id>    ephemeral; data: JSON {address, started_at}
    <root>/sessions/<session_id> persistent; data: session record (see zk.py); the znode
                                 version is the compare-and-set token
    <root>/election/<uuid>-n_NNNNNNNNNN   ephemeral sequential; lowest sequence leads
    <root>/expiry/<bucket>/<session_id>.<epoch>
                                 persistent, empty: the index of parked sessions by the
                                 minute their window ends (bucket = expires_at // 60,
                                 zero-padded), so the leader's sweep reads only the
                                 sessions due, not every record (zk.py)
    <root>/expiry/indexed        persistent, empty: every record is in the index

Must not: talk to ZooKeeper or import kazoo. Ids are validated here (``base.check_id``),
so a session id can never escape its parent with ``/`` or ``..``.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.base import check_id

__all__ = ["DEFAULT_ROOT", "Paths"]

DEFAULT_ROOT = "/ddp-relay/v1"


@dataclass(frozen=True, slots=True)
class Paths:
    """The znode layout under ``root``."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        parts = self.root.split("/")
        if not self.root.startswith("/") or self.root.endswith("/") or len(parts) < 2:
            raise ValueError(f"root must be an absolute znode path, got {self.root!r}")
        for part in parts[1:]:
            check_id("root path component", part)

    @property
    def members(self) -> str:
        return f"{self.root}/members"

    @property
    def sessions(self) -> str:
        return f"{self.root}/sessions"

    @property
    def election(self) -> str:
        return f"{self.root}/election"

    @property
    def expiry(self) -> str:
        return f"{self.root}/expiry"

    @property
    def expiry_marker(self) -> str:
        """Set once every record of the tree is indexed (``zk.expired_sessions``)."""
        return f"{self.expiry}/indexed"

    def expiry_bucket(self, bucket: int) -> str:
        return f"{self.expiry}/{bucket:012d}"

    def expiry_entry(self, bucket: int, session_id: str, epoch: int) -> str:
        return f"{self.expiry_bucket(bucket)}/{check_id('session id', session_id)}.{epoch}"

    @staticmethod
    def expiry_entry_parts(name: str) -> tuple[str, int]:
        """(session id, epoch) of an expiry entry's name; ValueError if it is not one."""
        session_id, _, epoch = name.rpartition(".")
        return check_id("session id", session_id), int(epoch)

    def member(self, relay_id: str) -> str:
        return f"{self.members}/{check_id('relay id', relay_id)}"

    def session(self, session_id: str) -> str:
        return f"{self.sessions}/{check_id('session id', session_id)}"

    def candidate_prefix(self, token: str) -> str:
        """Prefix for this process's election node; ZooKeeper appends a sequence number."""
        return f"{self.election}/{check_id('candidate token', token)}-n_"

    @staticmethod
    def sequence(node_name: str) -> int:
        """The sequence number ZooKeeper appended to an election node's name."""
        return int(node_name.rsplit("-n_", 1)[1])
