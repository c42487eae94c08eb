"""Read-only ORM views of the change-stream tables (``managed = False``).

Job: let Python code and the admin shell inspect ``ddp_channel`` and ``ddp_changelog``,
which the ``ddp`` migrations create with SQL (``relay.protocol.changestream`` is their
contract) and the database triggers fill. What must not live here: writing to them (only
the triggers' ``ddp_flush()`` and ``django_app.changes.prune`` do) or decoding changes:
the ORM loads ``changes`` with floats, so read it with ``changestream.loads_payload`` when
decimal scale matters.
"""

from __future__ import annotations

from django.db import models

__all__ = ["ChangelogEntry", "ChannelPosition"]


class ChannelPosition(models.Model):
    """``ddp_channel``: the last sequence number published on a channel, and its epoch."""

    channel = models.TextField(primary_key=True)
    seq = models.BigIntegerField()
    epoch = models.TextField()

    class Meta:
        managed = False
        db_table = "ddp_channel"

    def __str__(self) -> str:
        return f"{self.channel}@{self.seq}"


class ChangelogEntry(models.Model):
    """``ddp_changelog``: one committed transaction's changes on one channel."""

    id = models.BigAutoField(primary_key=True)
    channel = models.TextField()
    seq = models.BigIntegerField()
    epoch = models.TextField()
    txid = models.BigIntegerField()
    created_at = models.DateTimeField()
    changes = models.JSONField()

    class Meta:
        managed = False
        db_table = "ddp_changelog"

    def __str__(self) -> str:
        return f"{self.channel}#{self.seq}"
