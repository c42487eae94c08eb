"""django_app: publish Django models to Meteor clients over DDP (the ``ddp`` app).

Add ``"django_app"`` to ``INSTALLED_APPS`` and declare, in a ``ddp.py`` module of any
installed app, the collections, publications and methods::

    from django_app import Collection, Cursor, DDPError, method, publish, registry

The public names are loaded lazily (PEP 562), so ``import django_app`` works before
Django is set up; none of them touches a model at import. What must not live here: any
import with side effects, or anything but this re-export.

Meteor's accounts (``login``, resume tokens, the ``users`` collection) are the
``django_app.accounts`` package; a project's own login method calls ``log_in(ctx, user)``.

Inside, a module imports only modules listed before it here, function-level imports
included (no circles; ``tests/django_app/test_layers.py`` keeps it so):

1. leaves: ``conf`` (``DDP_*`` settings), ``channel``, ``exceptions``, ``cursor``,
   ``models`` (``LoginToken``, presence, session traces), ``signals`` (connection
   hooks), ``streams`` (event stream declarations), ``ejson_types`` (``ejson_type``),
   ``coroutines`` (awaiting ``async def`` functions), then ``serializer``,
   ``signature``, ``ordering`` (a sorted, sliced cursor as a live window), ``modifiers``
   (Mongo update modifiers as SQL),
   ``accounts.passwords`` (Meteor's digest) and ``accounts.tokens`` (login tokens);
2. ``collection`` (one published model) and ``accounts.revocation`` (the token
   revocation settings, ``user_logged_out``), then ``mutator`` (a collection's Meteor
   mutators), ``accounts.hashers`` (``MeteorPBKDF2PasswordHasher``),
   ``accounts.users`` (user lookups, the ``users`` collection) and
   ``accounts.sessions`` (the handshake's Django session);
3. ``registries``: the index of collections, publications and methods, and the project's
   ``registry``; it knows methods and publications only by protocol;
4. what fills or reads it: ``context`` (``ctx``), ``methods`` (``@method``),
   ``publications`` (``@publish``, ``Publication``), ``triggers``, ``checks``;
5. ``fields`` (``MeteorIdField``), ``changes`` (``touch``, ``prune``), ``events``
   (``publish_event``), ``presence`` (``present``);
6. ``accounts.identity`` (the relay's ``Identity`` of a token) and ``tracing`` (session
   traces: start, stop, store, export), then ``accounts.authenticators``
   (``DDP_AUTHENTICATORS``), ``accounts.methods`` (the accounts methods, ``log_in``) and
   ``trace_replay`` (a recorded trace played against a relay);
7. on top: ``backend`` (the relay's ``Backend``), ``apps``, ``ddp`` (the app's own
   declarations), ``admin`` and the management commands.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_app.accounts.methods import log_in
    from django_app.collection import Collection, computed
    from django_app.context import MethodContext, SubscriptionContext
    from django_app.cursor import Cursor
    from django_app.ejson_types import ejson_type
    from django_app.events import publish_event
    from django_app.exceptions import DDPError
    from django_app.fields import MeteorIdField
    from django_app.methods import method
    from django_app.presence import present
    from django_app.publications import Count, Publication, publish
    from django_app.registries import registry
    from django_app.streams import Stream, StreamCursor
    from relay.limits.ratelimit import Rule

__all__ = [
    "Collection",
    "Count",
    "Cursor",
    "DDPError",
    "MeteorIdField",
    "MethodContext",
    "Publication",
    "Rule",
    "Stream",
    "StreamCursor",
    "SubscriptionContext",
    "computed",
    "ejson_type",
    "log_in",
    "method",
    "present",
    "publish",
    "publish_event",
    "registry",
]

_EXPORTS = {
    "Collection": "django_app.collection",
    "Count": "django_app.publications",
    "Cursor": "django_app.cursor",
    "DDPError": "django_app.exceptions",
    "MeteorIdField": "django_app.fields",
    "MethodContext": "django_app.context",
    "Publication": "django_app.publications",
    "Rule": "relay.limits.ratelimit",
    "Stream": "django_app.streams",
    "StreamCursor": "django_app.streams",
    "SubscriptionContext": "django_app.context",
    "present": "django_app.presence",
    "publish_event": "django_app.events",
    "computed": "django_app.collection",
    "ejson_type": "django_app.ejson_types",
    "log_in": "django_app.accounts.methods",
    "method": "django_app.methods",
    "publish": "django_app.publications",
    "registry": "django_app.registries",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'django_app' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
