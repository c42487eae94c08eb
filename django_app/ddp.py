"""What the ``ddp`` app itself declares over DDP: login tokens and Meteor's accounts.

``DDPConfig.ready`` imports this module like every installed app's ``ddp.py``. Always:

* the token table (``django_app.models.LoginToken``) as collection ``ddp.logintoken`` with
  no fields, so its inserts and deletes travel the change stream (a deleted token closes
  the sessions holding it, on every relay); no publication returns it and its mutators
  deny everything (the ``Collection`` default);
* the presence table (``django_app.models.Presence``) as collection
  ``DDP_PRESENCE_COLLECTION`` (``presence``), which ``django_app.presence.present``
  returns to publications;
* the trace table (``django_app.models.SessionTrace``) as collection ``TRACE_COLLECTION``
  with its target and ``until``, so a trace started, extended or stopped reaches every
  relay (``django_app.tracing``);
* Django's ``user_logged_out`` connected to ``revoke_django_session``, and the database
  ``Session`` model's ``post_delete`` to ``revoke_deleted_django_session``.

With ``DDP_ACCOUNTS`` on (the default), Meteor's accounts: the ``users`` collection of
``AUTH_USER_MODEL`` (``django_app.accounts.users``), the null publication
``USER_PUBLICATION`` that every session runs (its user's own document, nothing when
logged out), ``meteor.loginServiceConfiguration`` (ready, no documents: Meteor clients
subscribe to it at startup), the accounts methods (``django_app.accounts.methods``) and,
unless ``DDP_DEFAULT_RATE_LIMIT`` is off, Meteor's default rate limit on them (plus the
same limit on ``changePassword``, which Meteor leaves out).

What must not live here: the implementations (``django_app.accounts``).
"""

from __future__ import annotations

from typing import Final

from django.apps import apps
from django.contrib.auth import user_logged_out
from django.db.models.signals import post_delete

from django_app.accounts.methods import register_methods
from django_app.accounts.revocation import (
    revoke_deleted_django_session,
    revoke_django_session,
)
from django_app.accounts.tokens import TOKEN_COLLECTION
from django_app.accounts.users import USER_PUBLICATION, own_user_cursors, users_collection_class
from django_app.collection import Collection
from django_app.conf import ddp_settings
from django_app.context import SubscriptionContext
from django_app.cursor import Cursor
from django_app.models import LoginToken, Presence, SessionTrace
from django_app.publications import Publication
from django_app.registries import registry
from django_app.tracing import TRACE_COLLECTION
from relay.limits.ratelimit import CHANGE_PASSWORD_RULE, DEFAULT_ACCOUNTS_RULE

__all__ = ["LOGIN_SERVICE_CONFIGURATION", "USER_PUBLICATION", "LoginTokenCollection"]

#: What Meteor's ``accounts-base`` client subscribes to at startup.
LOGIN_SERVICE_CONFIGURATION: Final = "meteor.loginServiceConfiguration"


@registry.register
class LoginTokenCollection(Collection):
    """The token table on the change stream: keys only, never published."""

    model = LoginToken
    name = TOKEN_COLLECTION
    fields = ()


@registry.register
class PresenceCollection(Collection):
    """Who is present on a topic (``django_app.presence``): ``topic`` and ``userId``
    (None for an anonymous session), in ``DDP_PRESENCE_COLLECTION``. Publications
    return it through ``present(ctx, topic)``; its mutators deny everything."""

    model = Presence
    name = ddp_settings.PRESENCE_COLLECTION
    fields = ("topic", "user_id")
    rename = {"user_id": "userId"}


@registry.register
class SessionTraceCollection(Collection):
    """The trace table on the change stream, never published: its target and ``until``
    travel so that extending or stopping a trace (an update) reaches relays too."""

    model = SessionTrace
    name = TRACE_COLLECTION
    fields = ("session_id", "user_id", "until")


user_logged_out.connect(revoke_django_session, dispatch_uid="ddp_revoke_django_session")
if apps.is_installed("django.contrib.sessions"):
    from django.contrib.sessions.models import Session

    post_delete.connect(
        revoke_deleted_django_session,
        sender=Session,
        dispatch_uid="ddp_revoke_deleted_django_session",
    )


def _own_user(ctx: SubscriptionContext) -> list[Cursor]:
    return own_user_cursors(ctx.user)


if ddp_settings.ACCOUNTS:
    registry.register(users_collection_class())
    Publication(USER_PUBLICATION, func=_own_user)
    Publication(LOGIN_SERVICE_CONFIGURATION, cursors=[])
    register_methods(registry)
    if ddp_settings.DEFAULT_RATE_LIMIT:
        registry.add_rate_limit_rule(DEFAULT_ACCOUNTS_RULE)
        registry.add_rate_limit_rule(CHANGE_PASSWORD_RULE)
