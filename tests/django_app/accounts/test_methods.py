"""The accounts methods through DjangoBackend.call: results, errors, identities."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import user_login_failed
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from django_app.accounts.methods import (
    AMBIGUOUS_REASON,
    email_verification_token,
    password_reset_token,
)
from django_app.accounts.tokens import hash_token, issue_token, session_token
from django_app.backend import DjangoBackend
from django_app.models import LoginToken
from relay.backend import ANONYMOUS, ClientError, Condition, Handshake, Identity
from tests.django_app.accounts.conftest import PASSWORD, Call
from tests.django_app.accounts.helpers import digest, error_of, token_ids

pytestmark = pytest.mark.django_db

LOGGED_OUT = "You've been logged out by the server. Please log in again."
EXPIRED = "Your session has expired. Please log in again."


def refused(call: Call, name: str, *params: Any, **kwargs: Any) -> tuple[Any, Any]:
    with pytest.raises(ClientError) as info:
        call(name, *params, **kwargs)
    return error_of(info.value)


def logged_in(call: Call, password: str = PASSWORD, **user: str) -> Identity:
    outcome = call("login", {"user": user or {"username": "reader"}, "password": digest(password)})
    assert outcome.identity is not None
    return outcome.identity


# -- login with a password ------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [{"username": "reader"}, {"username": "READER"}, {"email": "Reader@example.com"}, "id"],
)
def test_password_login(call: Call, reader: User, query: Any) -> None:
    query = {"id": str(reader.pk)} if query == "id" else query
    outcome = call("login", {"user": query, "password": digest(PASSWORD)})
    result = outcome.result
    assert set(result) == {"id", "token", "tokenExpires", "type"}
    assert (result["id"], result["type"]) == (str(reader.pk), "password")
    row = LoginToken.objects.get(hashed_token=hash_token(result["token"]))
    assert (row.user_id, row.kind, row.expires) == (reader.pk, "resume", result["tokenExpires"])
    assert result["tokenExpires"] - row.created == dt.timedelta(days=90)
    identity = outcome.identity
    assert identity is not None
    assert (identity.user, identity.user_id, identity.credential) == (
        reader,
        str(reader.pk),
        row.pk,
    )
    assert identity.revocation is not None
    assert identity.revocation.conditions == (Condition("id", "exact", row.pk),)
    reader.refresh_from_db()
    assert reader.last_login is not None  # user_logged_in ran


def test_plain_password_login(call: Call, reader: User) -> None:
    outcome = call("login", {"user": {"username": "reader"}, "password": PASSWORD})
    assert outcome.result["type"] == "password"


def test_a_2fa_code_is_accepted_and_ignored(call: Call, reader: User) -> None:
    options = {"user": {"username": "reader"}, "password": digest(PASSWORD), "code": "123456"}
    assert call("login", options).result["type"] == "password"


@pytest.fixture
def no_password(db: None) -> User:
    user = User.objects.create_user("nopass", "nopass@example.com")
    assert not user.has_usable_password()
    return user


@pytest.fixture
def inactive(db: None) -> User:
    return User.objects.create_user("gone", "gone@example.com", PASSWORD, is_active=False)


REFUSALS = [
    ({"username": "nobody"}, PASSWORD, "User not found"),
    ({"id": "999999"}, PASSWORD, "User not found"),
    ({"id": "x"}, PASSWORD, "User not found"),
    ({"username": "reader"}, "wrong", "Incorrect password"),
    ({"username": "nopass"}, PASSWORD, "User has no password set"),
    ({"username": "gone"}, PASSWORD, "Login forbidden"),
]


@pytest.mark.parametrize(("query", "password", "specific"), REFUSALS)
@pytest.mark.parametrize("ambiguous", [True, False])
def test_refused_logins(
    call: Call,
    reader: User,
    no_password: User,
    inactive: User,
    settings: Any,
    query: dict[str, str],
    password: str,
    specific: str,
    ambiguous: bool,
) -> None:
    settings.DDP_AMBIGUOUS_ERRORS = ambiguous
    failures: list[dict[str, Any]] = []

    def record(sender: Any, credentials: dict[str, Any], **kwargs: Any) -> None:
        failures.append(credentials)

    user_login_failed.connect(record)
    try:
        for sent in (digest(password), password):
            error = refused(call, "login", {"user": query, "password": sent})
            assert error == (403, AMBIGUOUS_REASON if ambiguous else specific)
    finally:
        user_login_failed.disconnect(record)
    assert failures == [query, query]  # no password in what receivers see
    assert LoginToken.objects.count() == 0


def test_an_inactive_users_wrong_password_says_incorrect(
    call: Call, inactive: User, settings: Any
) -> None:
    settings.DDP_AMBIGUOUS_ERRORS = False
    options = {"user": {"username": "gone"}, "password": digest("wrong")}
    assert refused(call, "login", options) == (403, "Incorrect password")


@pytest.mark.parametrize(
    "options",
    [
        {"user": {"username": "reader", "email": "reader@example.com"}, "password": "x"},
        {"user": {}, "password": "x"},
        {"user": {"name": "reader"}, "password": "x"},
        {"user": {"username": ""}, "password": "x"},
        {"user": {"username": 5}, "password": "x"},
        {"user": {"username": "r" * 513}, "password": "x"},
        {"user": "reader", "password": "x"},
        {"password": "x"},
        {"user": {"username": "reader"}, "password": "x", "extra": 1},
        {"user": {"username": "reader"}, "password": "x", "code": ""},
        {"user": {"username": "reader"}, "password": "x" * 257},
        {"user": {"username": "reader"}, "password": {"digest": "ab", "algorithm": "sha-256"}},
        {"user": {"username": "reader"}, "password": {"digest": "a" * 64, "algorithm": "md5"}},
        {"user": {"username": "re\x00ader"}, "password": "x"},
        {"resume": 5},
        {"resume": "t" * 257},
    ],
)
def test_login_match_failed(call: Call, reader: User, options: dict[str, Any]) -> None:
    assert refused(call, "login", options) == (400, "Match failed")


@pytest.mark.parametrize("options", [{}, {"foo": 1}, {"password": ""}, {"resume": ""}])
def test_unrecognized_options(call: Call, options: dict[str, Any]) -> None:
    assert refused(call, "login", options) == (400, "Unrecognized options for login request")


@pytest.mark.parametrize("params", [[], ["x"], [[]], [{}, {}]])
def test_login_params(call: Call, params: list[Any]) -> None:
    assert refused(call, "login", *params) == (400, "Match failed")


# -- resume -------------------------------------------------------------------------------


def test_resume(call: Call, reader: User) -> None:
    first = call("login", {"user": {"username": "reader"}, "password": digest(PASSWORD)})
    last_login = User.objects.get(pk=reader.pk).last_login
    token = first.result["token"]
    outcome = call("login", {"resume": token})
    assert outcome.result == {**first.result, "type": "resume"}
    assert outcome.identity is not None and first.identity is not None
    assert outcome.identity.credential == first.identity.credential
    # Clients resume at every reconnect: that is not a login Django records.
    assert User.objects.get(pk=reader.pk).last_login == last_login


def test_resume_errors(call: Call, reader: User) -> None:
    assert refused(call, "login", {"resume": "unknown"}) == (403, LOGGED_OUT)
    _, secret = issue_token(reader, expires=timezone.now() - dt.timedelta(seconds=1))
    assert refused(call, "login", {"resume": secret}) == (403, EXPIRED)
    _, live = issue_token(reader)
    User.objects.filter(pk=reader.pk).update(is_active=False)  # revokes it, too
    assert refused(call, "login", {"resume": live}) == (403, LOGGED_OUT)
    User.objects.filter(pk=reader.pk).update(is_active=True)
    # A Django session's row cannot be resumed by its session key.
    session_token(reader, "browser-session-key", timezone.now() + dt.timedelta(hours=1))
    assert refused(call, "login", {"resume": "browser-session-key"}) == (403, LOGGED_OUT)


# -- logout, getNewToken, removeOtherTokens -----------------------------------------------


def test_logout(call: Call, reader: User) -> None:
    identity = logged_in(call)
    other = logged_in(call)
    outcome = call("logout", identity=identity)
    assert outcome.result is None and outcome.identity == ANONYMOUS
    assert token_ids(reader) == {other.credential}
    assert call("logout").identity == ANONYMOUS  # logged out already: fine


def test_logout_keeps_a_browser_sessions_row(call: Call, reader: User) -> None:
    row = session_token(reader, "k", timezone.now() + dt.timedelta(hours=1))
    identity = Identity(user=reader, user_id=str(reader.pk), credential=row.pk)
    assert call("logout", identity=identity).identity == ANONYMOUS
    assert token_ids(reader) == {row.pk}


def test_get_new_token(call: Call, reader: User) -> None:
    when = timezone.now() - dt.timedelta(days=30)
    old, _ = issue_token(reader, created=when)
    identity = Identity(user=reader, user_id=str(reader.pk), credential=old.pk)
    outcome = call("getNewToken", identity=identity)
    result = outcome.result
    new = LoginToken.objects.get(hashed_token=hash_token(result["token"]))
    assert (new.created, new.expires) == (when, old.expires)  # never later
    assert result == {
        "id": str(reader.pk),
        "token": result["token"],
        "tokenExpires": old.expires,
        "type": "resume",
    }
    assert outcome.identity is not None and outcome.identity.credential == new.pk
    assert token_ids(reader) == {old.pk, new.pk}  # the old one stays (Meteor's order)


def test_get_new_token_errors(call: Call, reader: User) -> None:
    assert refused(call, "getNewToken") == ("You are not logged in.", None)
    no_token = Identity(user=reader, user_id=str(reader.pk))
    assert refused(call, "getNewToken", identity=no_token) == ("Invalid login token", None)
    someone = User.objects.create_user("someone", "s@example.com", "x")
    theirs, _ = issue_token(someone)
    stolen = Identity(user=reader, user_id=str(reader.pk), credential=theirs.pk)
    assert refused(call, "getNewToken", identity=stolen) == ("Invalid login token", None)


def test_remove_other_tokens(call: Call, reader: User) -> None:
    mine = logged_in(call)
    logged_in(call)
    session_token(reader, "k", timezone.now() + dt.timedelta(hours=1))
    someone = User.objects.create_user("someone", "s@example.com", "x")
    issue_token(someone)
    assert call("removeOtherTokens", identity=mine).result is None
    assert token_ids(reader) == {mine.credential}
    assert len(token_ids(someone)) == 1
    assert refused(call, "removeOtherTokens") == ("You are not logged in.", None)


# -- createUser ---------------------------------------------------------------------------


@pytest.fixture
def signups(settings: Any) -> None:
    settings.DDP_CREATE_USER = True


def test_signups_are_off_by_default(call: Call, settings: Any) -> None:
    from django_app.conf import DEFAULTS

    assert DEFAULTS["DDP_CREATE_USER"] is False
    settings.DDP_CREATE_USER = False  # the example project turns them on
    options = {"username": "new", "password": digest("a long new password")}
    assert refused(call, "createUser", options) == (403, "Signups forbidden")
    assert not User.objects.filter(username="new").exists()


def test_create_user(call: Call, signups: None) -> None:
    options = {"username": "new", "email": "new@example.com", "password": digest("pw-12345678")}
    outcome = call("createUser", options)
    user = User.objects.get(username="new")
    assert (outcome.result["id"], outcome.result["type"]) == (str(user.pk), "password")
    assert user.email == "new@example.com" and user.check_password("pw-12345678")
    assert outcome.identity is not None and outcome.identity.user_id == str(user.pk)
    # Django's own login takes the password a digest set.
    assert Client().login(username="new", password="pw-12345678")


def test_create_user_with_an_email_only_and_a_profile(
    call: Call, signups: None, settings: Any
) -> None:
    settings.DDP_USER_PROFILE = {"name": "first_name"}
    options = {
        "email": "solo@example.com",
        "password": "plain password ok",
        "profile": {"name": "Solo", "ignored": True},
        "anythingElse": 1,
    }
    call("createUser", options)
    user = User.objects.get(email="solo@example.com")
    assert (user.username, user.first_name) == ("solo@example.com", "Solo")


@pytest.mark.parametrize("ambiguous", [True, False])
def test_create_user_duplicates(
    call: Call, reader: User, signups: None, settings: Any, ambiguous: bool
) -> None:
    settings.DDP_AMBIGUOUS_ERRORS = ambiguous
    for options, specific in [
        ({"username": "READER"}, "Username already exists."),
        ({"username": "new", "email": "READER@example.com"}, "Email already exists."),
    ]:
        error = refused(call, "createUser", {**options, "password": digest("pw-12345678")})
        assert error == (403, AMBIGUOUS_REASON if ambiguous else specific)
    assert User.objects.count() == 1


def test_create_user_validation(call: Call, signups: None, settings: Any) -> None:
    error = refused(call, "createUser", {"password": digest("x")})
    assert error == (400, "Need to set a username or email")
    error = refused(call, "createUser", {"username": "", "email": "", "password": "x"})
    assert error == (400, "Need to set a username or email")
    settings.AUTH_PASSWORD_VALIDATORS = [
        {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}
    ]
    error = refused(call, "createUser", {"username": "short", "password": "abc"})
    assert error[0] == 400 and "too short" in error[1]
    error = refused(call, "createUser", {"username": "bad name!", "password": digest("x")})
    assert error[0] == 400 and error[1].startswith("username:")
    assert not User.objects.exists()


@pytest.mark.parametrize(
    "options",
    [
        {"username": "new"},
        {"username": 5, "password": "x"},
        {"email": ["a"], "password": "x"},
        {"username": "new", "password": 5},
        {"username": "new", "password": "x", "profile": "p"},
        {"username": "n" * 513, "password": "x"},
    ],
)
def test_create_user_match_failed(call: Call, signups: None, options: dict[str, Any]) -> None:
    assert refused(call, "createUser", options) == (400, "Match failed")


def test_create_user_profile_values_must_be_scalars(
    call: Call, signups: None, settings: Any
) -> None:
    settings.DDP_USER_PROFILE = {"name": "first_name"}
    options = {"username": "new", "password": "x", "profile": {"name": {"x": 1}}}
    assert refused(call, "createUser", options) == (400, "Match failed")


# -- changePassword -----------------------------------------------------------------------


def test_change_password(call: Call, reader: User) -> None:
    mine = logged_in(call)
    logged_in(call)
    session_token(reader, "k", timezone.now() + dt.timedelta(hours=1))
    outcome = call("changePassword", digest(PASSWORD), digest("a brand new one"), identity=mine)
    assert outcome.result == {"passwordChanged": True} and outcome.identity is None
    assert token_ids(reader) == {mine.credential}  # every other token revoked
    reader.refresh_from_db()
    assert reader.check_password("a brand new one")
    assert logged_in(call, "a brand new one").user_id == str(reader.pk)


def test_change_password_keeps_the_browsers_django_session(
    backend: DjangoBackend, call: Call, reader: User
) -> None:
    client = Client()
    assert client.login(username="reader", password=PASSWORD)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    shake = Handshake({}, {settings.SESSION_COOKIE_NAME: key}, "127.0.0.1", "/websocket")
    identity = backend.authenticate(shake)
    call("changePassword", PASSWORD, "a brand new one", identity=identity, shake=shake)
    assert token_ids(reader) == {identity.credential}
    # The browser is still logged in (its session's auth hash was refreshed) ...
    assert backend.authenticate(shake).user_id == str(reader.pk)
    assert client.get("/admin/").status_code in (200, 302)
    # ... while a session the DDP client did not come with is logged out by Django.
    other = Client()
    other.force_login(User.objects.get(pk=reader.pk))
    reader.set_password("third")
    reader.save()
    other_key = other.cookies[settings.SESSION_COOKIE_NAME].value
    other_shake = Handshake({}, {settings.SESSION_COOKIE_NAME: other_key}, "::1", "/websocket")
    assert backend.authenticate(other_shake) == ANONYMOUS


@pytest.mark.parametrize("ambiguous", [True, False])
def test_change_password_errors(call: Call, reader: User, settings: Any, ambiguous: bool) -> None:
    settings.DDP_AMBIGUOUS_ERRORS = ambiguous
    assert refused(call, "changePassword", digest(PASSWORD), digest("new")) == (
        401,
        "Must be logged in",
    )
    mine = logged_in(call)
    error = refused(call, "changePassword", digest("wrong"), digest("new"), identity=mine)
    assert error == (403, AMBIGUOUS_REASON if ambiguous else "Incorrect password")
    for params in ([None, digest("new")], [digest(PASSWORD)], [digest(PASSWORD), "n" * 257]):
        assert refused(call, "changePassword", *params, identity=mine) == (400, "Match failed")
    User.objects.filter(pk=reader.pk).update(password=make_password(None))
    mine = Identity(user=User.objects.get(pk=reader.pk), user_id=str(reader.pk))
    error = refused(call, "changePassword", digest(PASSWORD), digest("new"), identity=mine)
    assert error == (403, AMBIGUOUS_REASON if ambiguous else "User has no password set")


def test_change_password_runs_the_validators_on_a_plain_password(
    call: Call, reader: User, settings: Any
) -> None:
    settings.AUTH_PASSWORD_VALIDATORS = [
        {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"}
    ]
    mine = logged_in(call)
    error = refused(call, "changePassword", PASSWORD, "short", identity=mine)
    assert error[0] == 400 and "too short" in error[1]
    assert User.objects.get(pk=reader.pk).check_password(PASSWORD)


# -- forgotPassword, resetPassword, verifyEmail -----------------------------------------------


def test_forgot_and_reset_password(call: Call, reader: User, mailoutbox: list[Any]) -> None:
    logged_in(call)
    assert call("forgotPassword", {"email": "READER@example.com"}).result is None
    (mail,) = mailoutbox
    assert mail.to == ["reader@example.com"] and mail.subject == "Reset your password"
    token = password_reset_token(User.objects.get(pk=reader.pk))
    assert token in mail.body
    outcome = call("resetPassword", token, digest("after the reset"))
    assert outcome.result["type"] == "password"
    assert outcome.identity is not None
    assert token_ids(reader) == {outcome.identity.credential}  # every older token revoked
    assert User.objects.get(pk=reader.pk).check_password("after the reset")
    # Used: the token no longer matches the password it was made for.
    assert refused(call, "resetPassword", token, digest("again")) == (403, "Token expired")


def test_reset_link_and_custom_email(
    call: Call, reader: User, settings: Any, mailoutbox: list[Any]
) -> None:
    settings.DDP_PASSWORD_RESET_URL = "https://app.example.com/#/reset-password/{token}"
    call("forgotPassword", {"email": "reader@example.com"})
    assert f"https://app.example.com/#/reset-password/{password_reset_token(reader)}" in (
        mailoutbox[0].body
    )
    settings.DDP_PASSWORD_RESET_EMAIL = "tests.django_app.accounts.helpers.reset_email"
    call("forgotPassword", {"email": "reader@example.com"})
    assert mailoutbox[1].subject == "reader" and mailoutbox[1].body.startswith("https://")


@pytest.mark.parametrize("ambiguous", [True, False])
def test_forgot_password_for_nobody(
    call: Call, reader: User, inactive: User, settings: Any, mailoutbox: list[Any], ambiguous: bool
) -> None:
    settings.DDP_AMBIGUOUS_ERRORS = ambiguous
    for email in ("nobody@example.com", "gone@example.com"):
        if ambiguous:
            assert call("forgotPassword", {"email": email}).result is None
        else:
            assert refused(call, "forgotPassword", {"email": email}) == (403, "User not found")
    assert mailoutbox == []


@pytest.mark.parametrize(
    "params",
    [[{}], [{"email": 5}], [{"email": "a@b.c", "x": 1}], ["a@b.c"], [{"email": ""}]],
)
def test_forgot_password_match_failed(call: Call, params: list[Any]) -> None:
    assert refused(call, "forgotPassword", *params) == (400, "Match failed")


@pytest.mark.parametrize(
    "token", ["", "garbage", "Mg.bad-token", "!!!.x", "MTIzNDU2Nzg5.x", "bm9wZQ.x"]
)
def test_reset_password_bad_tokens(call: Call, reader: User, token: str) -> None:
    assert refused(call, "resetPassword", token, digest("x")) == (403, "Token expired")


def test_reset_password_match_failed(call: Call, reader: User) -> None:
    token = password_reset_token(reader)
    assert refused(call, "resetPassword", token, None) == (400, "Match failed")
    assert refused(call, "resetPassword", "t" * 257, digest("x")) == (400, "Match failed")
    assert refused(call, "resetPassword", 5, digest("x")) == (400, "Match failed")


def test_reset_password_marks_the_address_verified(call: Call, reader: User, settings: Any) -> None:
    settings.DDP_EMAIL_VERIFIED_FIELD = "is_staff"  # any boolean field of the model
    call("resetPassword", password_reset_token(reader), digest("after the reset"))
    assert User.objects.get(pk=reader.pk).is_staff


def test_verify_email(call: Call, reader: User, settings: Any) -> None:
    token = email_verification_token(reader)
    assert refused(call, "verifyEmail", token) == (403, "Verify email link expired")
    settings.DDP_EMAIL_VERIFIED_FIELD = "is_staff"  # any boolean field of the model
    token = email_verification_token(reader)
    outcome = call("verifyEmail", token)
    assert outcome.result["type"] == "password" and outcome.identity is not None
    assert User.objects.get(pk=reader.pk).is_staff
    assert refused(call, "verifyEmail", token) == (403, "Verify email link expired")  # used
    assert refused(call, "verifyEmail", "nope") == (403, "Verify email link expired")
    assert refused(call, "verifyEmail", 5) == (400, "Match failed")
    # A reset token is not a verification token, nor the other way round.
    reader.is_staff = False
    reader.save()
    assert refused(call, "verifyEmail", password_reset_token(reader)) == (
        403,
        "Verify email link expired",
    )


def test_a_verification_token_of_one_user_never_passes_for_another(settings: Any) -> None:
    # Found in review: without separators, user 1 with "2alice@example.com" hashed like
    # user 12 with "alice@example.com", and verifyEmail logs the caller in.
    from django_app.accounts.methods import _email_verification

    settings.DDP_EMAIL_VERIFIED_FIELD = "is_staff"
    one = User(pk=1, username="one", email="2alice@example.com", password="x")
    twelve = User(pk=12, username="twelve", email="alice@example.com", password="x")
    stamp = 1_000_000
    assert _email_verification._make_hash_value(one, stamp) != _email_verification._make_hash_value(
        twelve, stamp
    )
    token = _email_verification._make_token_with_timestamp(one, stamp, _email_verification.secret)
    assert not _email_verification.check_token(twelve, token)
