"""Znode data encodings: session records and members, as bytes.

Job: the compact wire form of what ``coordinator.zk`` stores, and strict decoding of it
(anything unreadable is a ``CoordinatorError``, never a crash in the caller).

Session record: one line of compact JSON (``v``, owner, epoch, cursor, parked,
expires_at), a newline, then the raw ``facts`` bytes: no base64, so 64 KiB of facts is
64 KiB on the wire, well under ZooKeeper's ~1 MB znode limit. The session id is the znode
name, not part of the data. Member: compact JSON ``{"address", "started_at"}``.

Must not: talk to ZooKeeper, import kazoo, or change a format without bumping ``v``.
"""

from __future__ import annotations

import json

from coordinator.base import Member, SessionRecord
from coordinator.errors import CoordinatorError

__all__ = ["decode_member", "decode_record", "encode_member", "encode_record"]


def encode_record(record: SessionRecord) -> bytes:
    """Znode data: one line of compact JSON, a newline, then the raw facts bytes."""
    header = {
        "v": 1,
        "owner": record.owner,
        "epoch": record.epoch,
        "cursor": record.cursor,
        "parked": record.parked,
        "expires_at": record.expires_at,
    }
    line = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return line + b"\n" + record.facts


def decode_record(session_id: str, data: bytes) -> SessionRecord:
    """Inverse of ``encode_record``; ``CoordinatorError`` if the data is not a record."""
    line, sep, facts = data.partition(b"\n")
    try:
        header = json.loads(line)
        if not sep or header.get("v") != 1:
            raise ValueError("unknown record format")
        return SessionRecord(
            session_id=session_id,
            owner=str(header["owner"]),
            epoch=int(header["epoch"]),
            cursor=int(header["cursor"]),
            parked=bool(header["parked"]),
            expires_at=float(header["expires_at"]),
            facts=facts,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CoordinatorError(f"session {session_id}: unreadable record: {exc}") from exc


def encode_member(member: Member) -> bytes:
    """Member znode data (the relay id is the znode name)."""
    fields = {"address": member.address, "started_at": member.started_at}
    return json.dumps(fields, separators=(",", ":"), allow_nan=False).encode()


def decode_member(relay_id: str, data: bytes) -> Member:
    """Inverse of ``encode_member``; ``CoordinatorError`` if unreadable."""
    try:
        fields = json.loads(data)
        return Member(relay_id, str(fields["address"]), float(fields["started_at"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CoordinatorError(f"member {relay_id}: unreadable data: {exc}") from exc
