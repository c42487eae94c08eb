"""Connection hooks: Django signals sent when a DDP session opens and when its socket closes.

Job: Meteor's ``Meteor.onConnection`` and ``connection.onClose`` for Django code, as two
``django.dispatch.Signal``\\ s the backend sends (only when something listens: the relay
skips the calls otherwise). Receivers get ``connection``, a ``SubscriptionContext``
(``user``, ``user_id``, ``session_id``, ``handshake``, ``client_address``), and:

* ``connection_opened(sender, connection, resumed)``: before the session answers
  ``connected``, for a new session and again for one resumed on this relay. Raising
  ``DDPError`` refuses it: the client gets a DDP ``error`` with the reason and the socket
  is closed (code 4500). Runs on every connect: keep it fast.
* ``connection_closed(sender, connection, parked)``: the session's socket is gone;
  ``parked`` when it may still be resumed (on any relay, within the resume window).
  A receiver's exception is logged and does not stop the others.

To close a session from server code: in one of its methods, ``ctx.close_connection()``;
for every session of a user, on every relay, revoke the user's tokens
(``django_app.accounts.tokens.revoke_user_tokens`` or the admin).

What must not live here: sending them (``django_app.backend``) or any receiver.
"""

from __future__ import annotations

from django.dispatch import Signal

__all__ = ["connection_closed", "connection_opened"]

connection_opened = Signal()
connection_closed = Signal()
