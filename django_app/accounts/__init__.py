"""Meteor's accounts protocol on Django's users (``accounts-base``, ``accounts-password``).

A Meteor client logs in over DDP with the ``login`` method (a password or a resume token),
gets a login token back, sees its own user document in the ``users`` collection, and is
logged out everywhere when the token is removed. Here, on Django's ``AUTH_USER_MODEL``
(custom models included) and Django's password hashers:

* ``passwords``: Meteor's SHA-256 digest of a password and the client's password
  parameter (a digest object or a plain string);
* ``hashers``: ``MeteorPBKDF2PasswordHasher``, the Django hasher that makes a digest
  verifiable (the scheme is in its docstring);
* ``tokens``: login tokens (``django_app.models.LoginToken``), issued, hashed, expired;
* ``revocation``: what keeps tokens honest on the write side (the user-table trigger's
  per-transaction settings, Django's ``user_logged_out``);
* ``users``: finding users as Meteor does, and the ``users`` collection;
* ``identity``: the relay's ``Identity`` of a user and a token, and its revocation route;
* ``authenticators``: who a new DDP session is, from its handshake (session cookie,
  ``Authorization: Bearer``);
* ``methods``: ``login``, ``logout``, ``getNewToken``, ``removeOtherTokens``,
  ``createUser``, ``changePassword``, ``forgotPassword``, ``resetPassword``,
  ``verifyEmail``, and ``log_in`` for an application's own login methods.

``django_app/ddp.py`` registers the collections, publications and methods (when
``DDP_ACCOUNTS`` is on). Nothing here but this docstring: import the modules.
"""
