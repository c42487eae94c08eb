"""Meteor's accounts methods over DDP, on Django's users (Meteor 3.x names and errors).

Job: the methods a Meteor client's ``accounts-base`` and ``accounts-password`` call, with
Meteor's parameters, results and error strings (``accounts_server.js``,
``password_server.js``), registered by ``django_app/ddp.py`` when ``DDP_ACCOUNTS`` is on:

============================  ================================================================
``login(options)``            ``{user: {username}|{email}|{id}, password}`` (password: a
                              digest object or a plain string) or ``{resume: token}``;
                              result ``{id, token, tokenExpires, type}``, type
                              ``"password"`` or ``"resume"``
``logout()``                  deletes the caller's resume token; logged out
``getNewToken()``             a new token with the old one's creation (and expiry) time
``removeOtherTokens()``       deletes every other token of the user
``createUser(options)``       ``{username?, email?, password, profile?}``, when
                              ``DDP_CREATE_USER`` is on; logs in (type ``"password"``)
``changePassword(old, new)``  ``{passwordChanged: true}``; every other token is revoked
``forgotPassword({email})``   emails a reset token (Django's ``default_token_generator``)
``resetPassword(token, new)`` sets the password (every token revoked) and logs in
``verifyEmail(token)``        marks ``DDP_EMAIL_VERIFIED_FIELD`` and logs in
============================  ================================================================

Refusals go through ``refuse(message)``, Meteor's ``Accounts._handleError``: with
``DDP_AMBIGUOUS_ERRORS`` on (the default, as Meteor 3) every such refusal says 403
"Something went wrong. Please check your credentials.", whatever failed (unknown user,
wrong or unset password, inactive user, a taken username or email in ``createUser``, a
wrong old password in ``changePassword``); off, Meteor's own reason. Errors Meteor always
spells out stay spelled out (resume errors, "Signups forbidden", "Must be logged in",
"Token expired", ...). Every parameter is type-checked and bounded (400 "Match failed"):
passwords at most 256 characters, digests exactly 64 lowercase hex digits, usernames,
emails and ids at most 512 characters, tokens at most 256.

Logging in is ``log_in(ctx, user)``: a new resume token, ``ctx.set_user`` (the backend
hands the relay the new identity once the method's transaction committed), Django's
``user_logged_in`` signal with ``request=None`` (which sets ``last_login``), and the login
result. An application's own login method calls it the same way (see
``django_app.context.MethodContext``). A ``resume`` login does not send
``user_logged_in``: clients resume at every reconnect, and ``last_login`` is part of what
invalidates Django's password-reset tokens. Failed password logins send Django's
``user_login_failed`` (no transaction is open then, so receivers' writes persist).

Password-reset and email-verification tokens are Django's token generators' (valid for
``PASSWORD_RESET_TIMEOUT``, void once used), prefixed with the user's base64 id:
``<uidb64>.<token>``. ``verifyEmail`` needs a boolean user field named by
``DDP_EMAIL_VERIFIED_FIELD``: Django's ``User`` has no notion of a verified address, so
without it there is nothing to verify and the method refuses every token (403 "Verify
email link expired"); the application sends ``email_verification_token(user)`` itself.
Django's password validators run on plain passwords only: a Meteor client sends a digest,
which hides the password, so a policy for Meteor clients must also live in the client.
``createUser`` without a username uses the email address as the username when the user
model's ``USERNAME_FIELD`` is not the email field (Django's ``User`` needs one).

What must not live here: password hashing (``django_app.accounts.hashers``), token storage
(``django_app.accounts.tokens``) or building the relay's identity (the backend does, from
``ctx.set_user``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from django.contrib.auth import get_user_model, user_logged_in, user_login_failed
from django.contrib.auth.password_validation import validate_password
from django.contrib.auth.tokens import PasswordResetTokenGenerator, default_token_generator
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import connections, models, router
from django.utils import timezone
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_decode, urlsafe_base64_encode
from django.utils.module_loading import import_string

from django_app.accounts.hashers import check_user_password, run_hasher_once, set_user_password
from django_app.accounts.passwords import parse_password
from django_app.accounts.revocation import keep_token
from django_app.accounts.sessions import load_session, refresh_auth_hash, session_key, session_user
from django_app.accounts.tokens import find_token, hash_token, issue_token
from django_app.accounts.users import (
    email_field,
    find_user,
    find_user_by_field,
    taken_case_insensitively,
    user_id_of,
    username_field,
    verified_field,
)
from django_app.conf import ddp_settings
from django_app.context import MethodContext
from django_app.exceptions import DDPError, MatchFailed
from django_app.methods import Method
from django_app.models import LoginToken
from django_app.registries import Registry

__all__ = [
    "AMBIGUOUS_REASON",
    "METHOD_NAMES",
    "email_verification_token",
    "log_in",
    "login_result",
    "password_reset_token",
    "refuse",
    "register_methods",
]

logger = logging.getLogger("django_app.accounts")

#: Meteor 3's ambiguous refusal (``Accounts._handleError``).
AMBIGUOUS_REASON: Final = "Something went wrong. Please check your credentials."
LOGGED_OUT_REASON: Final = "You've been logged out by the server. Please log in again."
EXPIRED_REASON: Final = "Your session has expired. Please log in again."
NOT_LOGGED_IN: Final = "You are not logged in."
#: The longest username, email address or id a user query may carry.
MAX_FIELD_LENGTH: Final = 512
#: The longest resume, reset or verification token accepted.
MAX_TOKEN_LENGTH: Final = 256
#: The first key of the advisory locks that serialise ``createUser`` per name.
_SIGNUP_LOCK: Final = 0x44445055
_USER_QUERY_KEYS: Final = frozenset({"id", "username", "email"})
_SCALARS: Final = (str, int, float, bool, type(None))


def refuse(message: str) -> DDPError:
    """Meteor's ``_handleError``: 403 with ``message``, or the ambiguous reason when
    ``DDP_AMBIGUOUS_ERRORS`` is on."""
    return DDPError(403, AMBIGUOUS_REASON if ddp_settings.AMBIGUOUS_ERRORS else message)


def login_result(user: Any, token: LoginToken, secret: str, login_type: str) -> dict[str, Any]:
    """Meteor's login result: ``{id, token, tokenExpires, type}`` (an aware datetime goes
    out as EJSON ``{"$date": ms}``)."""
    return {
        "id": user_id_of(user),
        "token": secret,
        "tokenExpires": token.expires,
        "type": login_type,
    }


def log_in(
    ctx: MethodContext,
    user: Any,
    *,
    login_type: str = "password",
    token: LoginToken | None = None,
    secret: str | None = None,
) -> dict[str, Any]:
    """Log the calling session in as ``user`` and return Meteor's login result.

    Issues a new resume token unless ``token`` and its ``secret`` are given (a resume
    login), sets the session's user (``ctx.set_user``) and, for a new token, sends
    Django's ``user_logged_in`` (``request=None``), which sets ``last_login``. An inactive
    user is refused like a wrong password.
    """
    if not getattr(user, "is_active", True):
        raise refuse("Login forbidden")
    if token is None or secret is None:
        token, secret = issue_token(user)
        user_logged_in.send(sender=type(user), request=None, user=user)
    ctx.set_user(user, token)
    return login_result(user, token, secret, login_type)


# -- parameter checks -------------------------------------------------------------------


def _bounded(value: Any, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > limit or (not empty and not value):
        raise MatchFailed()
    return value


def _user_query(value: Any) -> dict[str, str]:
    """Meteor's ``_userQueryValidator``: exactly one of id, username, email, non-empty."""
    if not isinstance(value, dict) or len(value) != 1 or not value.keys() <= _USER_QUERY_KEYS:
        raise MatchFailed()
    return {key: _bounded(v, MAX_FIELD_LENGTH) for key, v in value.items()}


def _logged_in_user(ctx: MethodContext) -> Any:
    user = ctx.user
    if ctx.user_id is None or user is None or not user.is_authenticated:
        return None
    return user


# -- login ------------------------------------------------------------------------------


def login(ctx: MethodContext, options: dict[str, Any]) -> dict[str, Any]:
    """``login``: the resume handler first, then the password handler, as Meteor orders
    them; an option neither recognises is 400 "Unrecognized options for login request"."""
    if options.get("resume"):
        return _resume(ctx, options["resume"])
    if options.get("password"):
        return _password_login(ctx, options)
    raise DDPError(400, "Unrecognized options for login request")


def _resume(ctx: MethodContext, resume: Any) -> dict[str, Any]:
    secret = _bounded(resume, MAX_TOKEN_LENGTH)
    row = find_token(secret)
    if row is None or not getattr(row.user, "is_active", True):
        raise DDPError(403, LOGGED_OUT_REASON)
    if row.expires <= timezone.now():
        raise DDPError(403, EXPIRED_REASON)
    return log_in(ctx, row.user, login_type="resume", token=row, secret=secret)


def _password_login(ctx: MethodContext, options: dict[str, Any]) -> dict[str, Any]:
    if "user" not in options or not options.keys() <= {"user", "password", "code"}:
        raise MatchFailed()
    query = _user_query(options["user"])
    if "code" in options:
        _bounded(options["code"], MAX_FIELD_LENGTH)  # 2FA codes: accepted, not supported
    password = parse_password(options["password"])
    user = find_user(query)
    if user is None:
        run_hasher_once(password)
        _failed(query)
        raise refuse("User not found")
    if not user.has_usable_password():
        run_hasher_once(password)
        _failed(query)
        raise refuse("User has no password set")
    if not check_user_password(user, password):
        _failed(query)
        raise refuse("Incorrect password")
    if not getattr(user, "is_active", True):
        _failed(query)
        raise refuse("Login forbidden")
    return log_in(ctx, user, login_type="password")


def _failed(query: Mapping[str, str]) -> None:
    """Django's ``user_login_failed``, with the query as the (non-secret) credentials."""
    user_login_failed.send(sender=__name__, credentials=dict(query), request=None)


# -- tokens -----------------------------------------------------------------------------


def logout(ctx: MethodContext) -> None:
    """``logout``: delete the caller's resume token (a Django session's row stays: the
    browser's session is not the DDP client's to end) and log the session out."""
    if ctx.credential is not None:
        LoginToken.objects.filter(pk=ctx.credential, kind=LoginToken.KIND_RESUME).delete()
    ctx.set_user(None)


def get_new_token(ctx: MethodContext) -> dict[str, Any]:
    """``getNewToken``: a new token keeping the current one's ``created`` and expiry, so a
    stolen token cannot be renewed forever; the session is logged in with it."""
    user = _logged_in_user(ctx)
    if user is None:
        raise DDPError(NOT_LOGGED_IN)
    current = None
    if ctx.credential is not None:
        current = LoginToken.objects.filter(pk=ctx.credential, user=user.pk).first()
    if current is None:
        raise DDPError("Invalid login token")
    row, secret = issue_token(user, created=current.created, expires=current.expires)
    return log_in(ctx, user, login_type="resume", token=row, secret=secret)


def remove_other_tokens(ctx: MethodContext) -> None:
    """``removeOtherTokens``: delete every token of the user but the caller's, which closes
    the sessions holding them on every relay."""
    user = _logged_in_user(ctx)
    if user is None:
        raise DDPError(NOT_LOGGED_IN)
    others = LoginToken.objects.filter(user=user.pk)
    if ctx.credential is not None:
        others = others.exclude(pk=ctx.credential)
    others.delete()


# -- creating users -----------------------------------------------------------------------


def create_user(ctx: MethodContext, options: dict[str, Any]) -> dict[str, Any]:
    """``createUser``: a new user (Django's validators on a plain password, model
    validation, case-insensitive duplicates refused), logged in (type ``"password"``).
    Other option keys are ignored, as Meteor leaves them to ``onCreateUser``."""
    if not ddp_settings.CREATE_USER:
        raise DDPError(403, "Signups forbidden")
    username = options.get("username")
    email = options.get("email")
    if username is not None:
        _bounded(username, MAX_FIELD_LENGTH, empty=True)
    if email is not None:
        _bounded(email, MAX_FIELD_LENGTH, empty=True)
    if "password" not in options:
        raise MatchFailed()
    password = parse_password(options["password"])
    profile = options.get("profile")
    if profile is not None and not isinstance(profile, dict):
        raise MatchFailed()
    if not username and not email:
        raise DDPError(400, "Need to set a username or email")
    model = get_user_model()
    name_field = username_field(model)
    address_field = email_field(model)
    if email and address_field is None:
        raise DDPError(400, f"{model._meta.verbose_name} has no email address")
    if not username:
        username = email
    user = model(**{name_field.attname: username})
    if email and address_field is not None:
        setattr(user, address_field.attname, email)
    _apply_profile(user, profile)
    if password.plain is not None:
        validate_password(password.plain, user)
    set_user_password(user, password)
    user.full_clean(exclude=["password"], validate_unique=False)
    _lock_names(model, [v for v in (username, email) if v])
    if taken_case_insensitively(name_field, str(username)):
        raise refuse("Username already exists.")
    if email and address_field is not None and taken_case_insensitively(address_field, email):
        raise refuse("Email already exists.")
    user.save()
    return log_in(ctx, user, login_type="password")


def _apply_profile(user: Any, profile: dict[str, Any] | None) -> None:
    """Store ``profile`` where ``DDP_USER_PROFILE`` says (nothing when it is None)."""
    source = ddp_settings.USER_PROFILE
    if profile is None or source is None:
        return
    model = type(user)
    if isinstance(source, str):
        setattr(user, model._meta.get_field(source).attname, profile)
        return
    for key, name in source.items():
        if key in profile:
            if not isinstance(profile[key], _SCALARS):
                raise MatchFailed()
            setattr(user, model._meta.get_field(name).attname, profile[key])


def _lock_names(model: type[models.Model], names: list[str]) -> None:
    """Serialise concurrent signups of the same names until the transaction ends (the
    duplicate checks cannot see another transaction's uncommitted user)."""
    using = router.db_for_write(model)
    with connections[using].cursor() as cursor:
        for name in sorted({n.lower() for n in names}):
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_SIGNUP_LOCK, name])


# -- passwords ------------------------------------------------------------------------------


def change_password(ctx: MethodContext, old_password: Any, new_password: Any) -> dict[str, bool]:
    """``changePassword``: check the old password, set the new one. The user-table trigger
    revokes every token of the user but the caller's (``ddp.keep_token``); a caller logged
    in by its Django session cookie keeps that session logged in too."""
    old = parse_password(old_password)
    new = parse_password(new_password)
    current = _logged_in_user(ctx)
    if current is None:
        raise DDPError(401, "Must be logged in")
    user = get_user_model()._default_manager.filter(pk=current.pk).first()
    if user is None:
        raise refuse("User not found")
    if not user.has_usable_password():
        raise refuse("User has no password set")
    if not check_user_password(user, old):
        raise refuse("Incorrect password")
    if new.plain is not None:
        validate_password(new.plain, user)
    browser_session = _own_django_session(ctx, user)
    set_user_password(user, new)
    with keep_token(ctx.credential):
        user.save(update_fields=["password"])
    if browser_session is not None:
        refresh_auth_hash(browser_session, user)
    return {"passwordChanged": True}


def _own_django_session(ctx: MethodContext, user: Any) -> Any:
    """The Django session the caller was authenticated with (its credential is that
    session's row and the handshake's cookie names it, logged in as ``user``), or None."""
    key = session_key(ctx.handshake)
    if key is None or ctx.credential is None:
        return None
    row = LoginToken.objects.filter(pk=ctx.credential, kind=LoginToken.KIND_SESSION).first()
    if row is None or row.hashed_token != hash_token(key):
        return None
    session = load_session(key)
    owner = session_user(session)
    return session if owner is not None and owner.pk == user.pk else None


class _EmailVerificationTokenGenerator(PasswordResetTokenGenerator):
    """Tokens that prove an address: void once it is verified or changed."""

    key_salt = "django_app.accounts.methods.EmailVerificationTokenGenerator"

    def _make_hash_value(self, user: Any, timestamp: int) -> str:
        address = email_field(type(user))
        flag = verified_field(type(user))
        email = getattr(user, address.attname) if address is not None else ""
        verified = getattr(user, flag.attname) if flag is not None else False
        last = getattr(user, "last_login", None)
        login = "" if last is None else last.replace(microsecond=0)
        # Separated parts: "1" + "2a@x" must not hash like "12" + "a@x" (one user's token
        # passing for another's). Bound to the password and last login too, as Django's
        # reset tokens are: a token dies when either changes.
        parts = (user.pk, email, verified, user.password, login, timestamp)
        return "|".join(str(part) for part in parts)


_email_verification = _EmailVerificationTokenGenerator()


def _wrap(user: Any, token: str) -> str:
    return f"{urlsafe_base64_encode(force_bytes(user.pk))}.{token}"


def _unwrap(wrapped: str, generator: PasswordResetTokenGenerator) -> Any:
    """The active user a ``<uidb64>.<token>`` string proves, or None."""
    uidb64, _, token = wrapped.partition(".")
    model = get_user_model()
    pk = model._meta.pk
    assert pk is not None
    try:
        user_pk = pk.to_python(urlsafe_base64_decode(uidb64).decode())
    except (ValueError, TypeError, OverflowError, UnicodeDecodeError, ValidationError):
        return None
    user = model._default_manager.filter(pk=user_pk).first()
    if user is None or not getattr(user, "is_active", True):
        return None
    return user if generator.check_token(user, token) else None


def password_reset_token(user: Any) -> str:
    """The token ``resetPassword`` takes: Django's ``default_token_generator``'s, with the
    user's id (valid for ``PASSWORD_RESET_TIMEOUT``, void once the password changes or the
    user logs in)."""
    return _wrap(user, default_token_generator.make_token(user))


def email_verification_token(user: Any) -> str:
    """The token ``verifyEmail`` takes, for the application to send to ``user``'s address
    (void once the address is verified or changed)."""
    return _wrap(user, _email_verification.make_token(user))


def forgot_password(ctx: MethodContext, options: dict[str, Any]) -> None:
    """``forgotPassword({email})``: email a password-reset token to the active user with a
    usable password and that address. An unknown address answers success while
    ``DDP_AMBIGUOUS_ERRORS`` is on (nobody learns which addresses have accounts), else 403
    "User not found"."""
    if options.keys() != {"email"}:
        raise MatchFailed()
    email = _bounded(options["email"], MAX_FIELD_LENGTH)
    address_field = email_field()
    user = find_user_by_field(address_field, email) if address_field is not None else None
    if (
        user is None
        or address_field is None
        or not getattr(user, "is_active", True)
        or not user.has_usable_password()
    ):
        if ddp_settings.AMBIGUOUS_ERRORS:
            return
        raise DDPError(403, "User not found")
    token = password_reset_token(user)
    url = ddp_settings.PASSWORD_RESET_URL
    link = url.replace("{token}", token) if url else None
    subject, body = _reset_email(user, token, link)
    send_mail(subject, body, None, [getattr(user, address_field.attname)])


def _reset_email(user: Any, token: str, url: str | None) -> tuple[str, str]:
    path = ddp_settings.PASSWORD_RESET_EMAIL
    if path is not None:
        compose: Callable[[Any, str, str | None], tuple[str, str]] = import_string(path)
        return compose(user, token, url)
    if url is not None:
        action = f"To reset your password, open this link:\n\n{url}\n"
    else:
        action = f"To reset your password, enter this reset token in the app:\n\n{token}\n"
    body = (
        f"Hello,\n\n{action}\nThe token is valid once. If you did not ask for a new"
        " password, ignore this email.\n"
    )
    return "Reset your password", body


def reset_password(ctx: MethodContext, token: str, new_password: Any) -> dict[str, Any]:
    """``resetPassword(token, newPassword)``: set the password of the user the reset token
    proves (every token of the user is revoked, the address counts as verified) and log
    the session in with a new token (type ``"password"``); a bad or used token is 403
    "Token expired"."""
    new = parse_password(new_password)
    user = _unwrap(_bounded(token, MAX_TOKEN_LENGTH, empty=True), default_token_generator)
    if user is None:
        raise DDPError(403, "Token expired")
    if new.plain is not None:
        validate_password(new.plain, user)
    set_user_password(user, new)
    changed = ["password"]
    flag = verified_field(type(user))
    if flag is not None:
        setattr(user, flag.attname, True)
        changed.append(flag.attname)
    user.save(update_fields=changed)
    return log_in(ctx, user, login_type="password")


def verify_email(ctx: MethodContext, token: str) -> dict[str, Any]:
    """``verifyEmail(token)``: mark the address verified and log in (type ``"password"``);
    a bad or used token, or no ``DDP_EMAIL_VERIFIED_FIELD``, is 403 "Verify email link
    expired"."""
    _bounded(token, MAX_TOKEN_LENGTH, empty=True)
    flag = verified_field()
    user = _unwrap(token, _email_verification) if flag is not None else None
    if user is None or flag is None:
        raise DDPError(403, "Verify email link expired")
    setattr(user, flag.attname, True)
    user.save(update_fields=[flag.attname])
    return log_in(ctx, user, login_type="password")


#: Every accounts method: name -> (function, atomic). ``login`` and ``forgotPassword`` are
#: not atomic: a failed login's ``user_login_failed`` receivers keep their writes, and no
#: transaction stays open while an email is sent.
METHODS: Final[dict[str, tuple[Callable[..., Any], bool]]] = {
    "login": (login, False),
    "logout": (logout, True),
    "getNewToken": (get_new_token, True),
    "removeOtherTokens": (remove_other_tokens, True),
    "createUser": (create_user, True),
    "changePassword": (change_password, True),
    "forgotPassword": (forgot_password, False),
    "resetPassword": (reset_password, True),
    "verifyEmail": (verify_email, True),
}
METHOD_NAMES: Final = tuple(METHODS)


def register_methods(registry: Registry) -> None:
    """Register every accounts method in ``registry``."""
    for name, (func, atomic) in METHODS.items():
        registry.add_method(Method(name, func, atomic=atomic))
