"""Revocation reaching open sockets: a session's credential watched on the change stream.

Layer: runtime. A session logged in with a credential (a login token, the Django session
behind its cookie) holds one ``CredentialWatch``: a ``relay.stream.subscriber.Subscriber``
attached to the credential's route (``Identity.revocation``: the credential's row on the
change stream, by primary key). When that row leaves the route (deleted by a logout on
another connection, ``removeOtherTokens``, a password change, a deactivation, a Django
logout), fan-out reports it here and the session is closed at once, on whichever relay
holds it: the write side's delete is the only signal, there is no polling. When the
channel lost history the watch cannot know what it missed: the session re-checks the
credential with the backend (``Backend.verify``) instead.

Its mergebox is a tripwire, not a view: it keeps nothing, sends nothing, and reports a
removal (``fields`` None) of the credential's own document (its wire id is the
credential, ``relay.backend.Identity``). Fan-out hands it the deletes of other rows of
the channel too (a deleted row carries no values a route condition could test).

``Watcher`` is what a session holds: the one current watch of its identity's credential,
moved when the identity changes and let go when the session ends.

Must not: send DDP messages, touch the database (the session verifies, through the work
pool) or block: fan-out calls it from the listener's greenlet.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from relay.protocol.mergebox import MergeBox
from relay.transport import SharedFrames

if TYPE_CHECKING:
    from relay.backend import Identity
    from relay.server.context import SessionStreams
    from relay.stream.fanout import Attachment

__all__ = ["CredentialWatch", "Watcher"]

#: The watch's sub id on its attachment (it owns its mergebox: no clash with the session's).
WATCH_ID = "credential"


class _Tripwire(MergeBox):
    """A mergebox that holds nothing and calls back when its document is removed."""

    __slots__ = ("_doc_id", "_tripped")

    def __init__(self, doc_id: str, tripped: Callable[[], None]) -> None:
        super().__init__()
        self._doc_id = doc_id
        self._tripped = tripped

    def update(
        self,
        sub: Hashable,
        collection: str,
        doc_id: str,
        fields: Mapping[str, Any] | None,
        equals: Callable[[Any, Any], bool] | None = None,
        memo: Any = None,
    ) -> list[dict[str, Any]]:
        if fields is None and doc_id == self._doc_id:
            self._tripped()
        return []


class CredentialWatch:
    """Fan-out's view of one session's credential: ``revoked`` when its row goes,
    ``lost`` when the channel lost history (the session must verify it again)."""

    __slots__ = ("_revoked", "closed", "lost", "mergebox")

    def __init__(
        self, credential: str, revoked: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        self._revoked = revoked
        self.lost = lost
        self.closed = False
        self.mergebox: MergeBox = _Tripwire(credential, self._trip)

    def _trip(self) -> None:
        if not self.closed:
            self.closed = True
            self._revoked()

    def send_texts(
        self, texts: list[str], shared: SharedFrames | None = None, *, metered: bool = False
    ) -> bool:
        return False  # the tripwire never produces messages

    def request_resync(self, sub_id: str) -> None:
        if not self.closed:
            self.lost()


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
        self._attachment = self._streams.attach(self._watch, WATCH_ID, route, identity.position)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.closed = True  # a trip already on its way is ignored
            self._watch = None
        if self._attachment is not None:
            self._streams.detach(self._attachment)
            self._attachment = None
