"""The ``ddp`` app's models: the login tokens, and read-only views of the change stream.

Job: ``LoginToken`` (``ddp_login_token``), the credentials of Meteor accounts: one row per
resume token a DDP ``login`` handed out, and one per Django session a DDP session was
authenticated with (its cookie). Only hashes are stored. Deleting a row revokes it: the
token collection is on the change stream (``django_app/ddp.py``), so every relay closes
the sessions holding it. ``ChannelPosition`` and ``ChangelogEntry`` let Python code and the
admin shell inspect ``ddp_channel`` and ``ddp_changelog``, which the ``ddp`` migrations
create with SQL (``relay.protocol.changestream`` is their contract) and the database
triggers fill (``managed = False``).

``SessionTrace`` and ``TraceChunk`` are support traces (``django_app.tracing``): a trace
switched on for one session or user until a time (published keys only: relays re-read
the orders when it changes), and the frames relays recorded for it, in batches.

``Presence``, ``PresenceHold`` and ``PresenceLease`` are who is present on a topic
(``django_app.presence`` writes them): one published row per member and topic, one
private row per subscription holding it, one lease per relay worker.

What must not live here: token logic (``django_app.accounts.tokens``), presence logic
(``django_app.presence``), writing to the change-stream tables (only the triggers'
``ddp_flush()`` and ``django_app.changes.prune`` do) or decoding changes: the ORM loads
``changes`` with floats, so read it with ``changestream.loads_payload`` when decimal
scale matters.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from relay.protocol.alea import random_id

__all__ = [
    "ChangelogEntry",
    "ChannelPosition",
    "LoginToken",
    "Presence",
    "PresenceHold",
    "PresenceLease",
    "SessionTrace",
    "TraceChunk",
]


class LoginToken(models.Model):
    """``ddp_login_token``: one credential a DDP session can be logged in with.

    ``hashed_token`` is the standard base64 of the SHA-256 of the secret (Meteor's
    ``hashedToken``: 44 characters); the secret itself is never stored. ``kind`` is
    ``"resume"`` for a token handed to a client by a login method (the client sends it back
    as ``login({resume})`` or ``Authorization: Bearer``), ``"session"`` for the Django
    session whose cookie authenticated a DDP session (the hash is of the session key).
    ``created`` is Meteor's ``when``: a token renewed by ``getNewToken`` keeps it.
    """

    KIND_RESUME = "resume"
    KIND_SESSION = "session"
    KINDS = ((KIND_RESUME, "resume token"), (KIND_SESSION, "Django session"))

    id = models.CharField(primary_key=True, max_length=17, default=random_id, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ddp_login_tokens"
    )
    hashed_token = models.CharField(max_length=44, unique=True, editable=False)
    kind = models.CharField(max_length=7, choices=KINDS, default=KIND_RESUME)
    created = models.DateTimeField()
    expires = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "ddp_login_token"
        verbose_name = "login token"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.pk}"

    def __repr__(self) -> str:
        # Never the hash: repr() ends up in logs and tracebacks.
        return f"<LoginToken {self.pk} {self.kind} user={self.user_id!r}>"


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


class Presence(models.Model):
    """``ddp_presence``: a member (a user, or an anonymous session) present on a topic.

    Published as the collection ``DDP_PRESENCE_COLLECTION`` (``django_app/ddp.py``): the
    row exists while at least one ``PresenceHold`` holds it. ``id`` is a digest of the
    topic and the member, so neither a session id nor the member key reaches clients.
    """

    id = models.CharField(primary_key=True, max_length=24, editable=False)
    topic = models.CharField(max_length=200, db_index=True)
    #: The present user's primary key as text; None for an anonymous session.
    user_id = models.CharField(max_length=64, null=True)
    since = models.DateTimeField()

    class Meta:
        db_table = "ddp_presence"

    def __str__(self) -> str:
        return f"{self.user_id or 'anonymous'} on {self.topic}"


class PresenceHold(models.Model):
    """``ddp_presence_hold``: one subscription (run) that holds a ``Presence`` row, and
    the relay worker (``owner``) whose lease it lives on. Never published."""

    token = models.CharField(primary_key=True, max_length=24, editable=False)
    presence_id = models.CharField(max_length=24, db_index=True)
    owner = models.CharField(max_length=24, db_index=True)

    class Meta:
        db_table = "ddp_presence_hold"


class PresenceLease(models.Model):
    """``ddp_presence_lease``: a relay worker's lease; its holds go when it expires."""

    owner = models.CharField(primary_key=True, max_length=24, editable=False)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        db_table = "ddp_presence_lease"


class SessionTrace(models.Model):
    """``ddp_session_trace``: record the DDP frames of one session, or of every session of
    one user, until ``until``; bounded per session by ``max_frames``, ``max_chars`` and
    ``frame_chars`` (the relay's cut per frame), and in all by ``max_total_chars``."""

    id = models.CharField(primary_key=True, max_length=17, default=random_id, editable=False)
    session_id = models.CharField(max_length=64, null=True, blank=True, db_index=True)
    user_id = models.CharField(max_length=64, null=True, blank=True, db_index=True)
    until = models.DateTimeField(db_index=True)
    max_frames = models.PositiveIntegerField(default=2000)
    max_chars = models.PositiveIntegerField(default=1_000_000)
    frame_chars = models.PositiveIntegerField(default=4096)
    max_total_chars = models.PositiveBigIntegerField(default=20_000_000)
    created = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True, default="")
    note = models.TextField(blank=True, default="")

    class Meta:
        db_table = "ddp_session_trace"
        verbose_name = "session trace"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(session_id__isnull=False) | models.Q(user_id__isnull=False),
                name="ddp_session_trace_has_target",
            )
        ]

    def __str__(self) -> str:
        target = f"session {self.session_id}" if self.session_id else f"user {self.user_id}"
        return f"trace {self.pk} of {target}"


class TraceChunk(models.Model):
    """``ddp_trace_chunk``: one batch of frames a relay recorded for a trace: the relay
    (host-pid), the session, the number of its first frame, the frames (JSON list, see
    ``relay.server.trace``), their characters and the recorder's counters then."""

    id = models.BigAutoField(primary_key=True)
    trace = models.ForeignKey(SessionTrace, on_delete=models.CASCADE, related_name="chunks")
    relay = models.CharField(max_length=255)
    session_id = models.CharField(max_length=64)
    first = models.PositiveIntegerField()
    frames = models.JSONField()
    chars = models.PositiveIntegerField()
    stats = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "ddp_trace_chunk"
        indexes = [
            models.Index(fields=["trace", "session_id", "first"], name="ddp_trace_chunk_order")
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.first} ({len(self.frames)} frames)"
