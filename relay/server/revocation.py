"""Revocation reaching open sockets: a session's credential watched on the change stream.

Layer: runtime. A session logged in with a credential (a login token, the Django session
behind its cookie) holds one ``CredentialWatch``: a ``relay.stream.fanout.StreamTarget``
attached to the credential's route (``Identity.revocation``: the credential's row on the
change stream, by primary key). When that row leaves the route (deleted by a logout on
another connection, ``removeOtherTokens``, a password change, a deactivation, a Django
logout), the watch sees it in the delivery and the session is closed at once, on
whichever relay holds it: the write side's delete is the only signal, there is no
polling. When the channel lost history the watch cannot know what it missed: the
session re-checks the credential with the backend (``Backend.verify``) instead.

``Watcher`` is what a session holds: the one current watch of its identity's credential,
moved when the identity changes and let go when the session ends.

Must not: send DDP messages, touch the database (the session verifies, through the work
pool) or block: fan-out calls it from the listener's greenlet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from relay.stream.routing import matches

if TYPE_CHECKING:
    from relay.backend import Identity
    from relay.server.context import SessionStreams
    from relay.stream.fanout import Attachment, Batch, BatchCache

__all__ = ["CredentialWatch", "Watcher"]


class CredentialWatch:
    """Fan-out's view of one session's credential: ``revoked`` when its row goes,
    ``lost`` when the channel lost history (the session must verify it again)."""

    __slots__ = ("_credential", "_lost", "_revoked", "closed")

    def __init__(
        self, credential: str, revoked: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        self._credential = credential
        self._revoked = revoked
        self._lost = lost
        self.closed = False

    def deliver(self, att: Attachment, batches: Sequence[Batch], cache: BatchCache) -> int:
        route = att.route
        for batch in batches:
            if batch.seq <= att.cursor:
                continue
            att.cursor = batch.seq
            for change in batch.changes:
                if change.id != self._credential or change.collection != route.collection:
                    continue
                gone = change.op == "d" or (
                    route.conditions is not None and not matches(route.conditions, change.routing)
                )
                if gone and not self.closed:
                    self.closed = True
                    self._revoked()
                    return 0
        return 0

    def lost(self, att: Attachment) -> None:
        if not self.closed:
            self._lost()


class Watcher:
    """A session's watch on its current credential: ``follow(identity)`` moves it (none
    for an identity without a revocation route), ``stop()`` lets go of the channel."""

    __slots__ = ("_attachment", "_lost", "_revoked", "_streams", "_watch")

    def __init__(
        self, streams: SessionStreams, revoked: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        self._streams = streams
        self._revoked = revoked
        self._lost = lost
        self._watch: CredentialWatch | None = None
        self._attachment: Attachment | None = None

    def follow(self, identity: Identity) -> None:
        self.stop()
        route, credential = identity.revocation, identity.credential
        if route is None or credential is None:
            return
        self._watch = CredentialWatch(credential, self._revoked, self._lost)
        self._attachment = self._streams.attach(self._watch, route, identity.position)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.closed = True  # a trip already on its way is ignored
            self._watch = None
        if self._attachment is not None:
            self._streams.detach(self._attachment)
            self._attachment = None
