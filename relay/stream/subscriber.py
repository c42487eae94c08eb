"""What fan-out may use of a session: the ``Subscriber`` protocol.

Layer: runtime. The channel streams (``relay.stream.fanout``) route committed changes to the
subscriptions attached to them; this is the whole of what they see of the session that
owns a subscription. ``relay.server.session.Session`` implements it; stream tests use a
small fake.

Must not: import ``relay.server`` (it is above this layer), or grow per-delivery
indirection: fan-out runs for every attached subscription of every commit, so the
members are plain attributes and methods called directly, never wrappers.
"""

from __future__ import annotations

from typing import Protocol

from relay.protocol.mergebox import MergeBox
from relay.transport import SharedFrames


class Subscriber(Protocol):
    """A session as fan-out sees it.

    The contract, in the order ``Streams._apply`` relies on it:

    - ``closed``: once True, fan-out stops sending to the session (it still advances the
      subscription's cursor, so nothing is applied twice if it were ever reopened).
    - ``mergebox``: the session's view of what its client holds. Fan-out calls
      ``mergebox.update(sub_id, ...)`` on it directly, for its own attachments' ``sub_id``
      only, and never keeps the box across deliveries: the session may replace it (a
      resumed session restores a parked one). Direct calls, not a method on the session,
      because this runs once per attached subscription per commit. It is safe without a
      lock: gevent does not switch inside ``update`` and the session mutates its box from
      its own greenlet only.
    - ``send_texts(texts, shared, metered=True)``: queue the encoded messages (counted for
      resumption, never blocking: a slow client is cut off by its transport). ``shared``
      lets sockets of one batch reuse frames; ``metered`` means fan-out adds them to the
      ``messages_sent`` metric itself, once per delivery. True if they went out.
    - ``request_resync(sub_id)``: the subscription's history was lost (or its route cannot
      be decided from the payload); the session re-runs it later, in its own message
      order. Must not block or re-enter the streams.
    """

    @property
    def closed(self) -> bool: ...

    @property
    def mergebox(self) -> MergeBox: ...

    def send_texts(
        self, texts: list[str], shared: SharedFrames | None = None, *, metered: bool = False
    ) -> bool: ...

    def request_resync(self, sub_id: str) -> None: ...
