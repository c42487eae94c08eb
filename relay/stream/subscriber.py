"""What fan-out may use of a session: the ``Subscriber`` protocol.

Layer: runtime. A live query (``relay.live.query``) hands the effects of each delivery to
every session subscribed to it; this is the whole of what it sees of such a session.
``relay.server.session.Session`` implements it; tests use a small fake.

Must not: import ``relay.server`` (it is above this layer), or grow per-delivery
indirection: fan-out runs for every subscriber of every query hit by a commit, so the
members are plain attributes and methods called directly, never wrappers.
"""

from __future__ import annotations

from typing import Protocol

from relay.protocol.mergebox import MergeBox
from relay.transport import SharedFrames


class Subscriber(Protocol):
    """A session as fan-out sees it.

    The contract, in the order ``LiveQuery._publish`` relies on it:

    - ``closed``: once True, fan-out stops sending to the session.
    - ``mergebox``: the session's view of what its client holds. Fan-out calls
      ``mergebox.update(handle, ...)`` on it directly, for the subscription handle it
      joined with only, and never keeps the box across deliveries: the session may
      replace it (a resumed session restores a parked one). Direct calls, not a method
      on the session, because this runs once per subscriber per commit. It is safe
      without a lock: gevent does not switch inside ``update`` and the session mutates
      its box from its own greenlets only, never across a switch.
    - ``send_texts(texts, shared, metered=True)``: queue the encoded messages (counted for
      resumption, never blocking: a slow client is cut off by its transport). ``shared``
      lets sockets of one batch reuse frames; ``metered`` means fan-out adds them to the
      ``messages_sent`` metric itself, once per delivery. True if they went out.
    - ``desync()``: a change could not be applied to the session's view (a bug, a value
      that cannot be sent): its client can no longer be kept exact, so the session closes
      with a server error (its client starts afresh). Must not block.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def mergebox(self) -> MergeBox: ...

    def send_texts(
        self, texts: list[str], shared: SharedFrames | None = None, *, metered: bool = False
    ) -> bool: ...

    def desync(self) -> None: ...
