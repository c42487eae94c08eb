"""ctx.set_user and ctx.credential (Meteor's setUserId) in an application's own methods."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from django_app import DDPError, MethodContext, log_in, method
from django_app.accounts.tokens import issue_token
from django_app.backend import DjangoBackend
from django_app.models import LoginToken
from django_app.registries import Registry
from relay.backend import ANONYMOUS, CallContext, Handshake, Identity

pytestmark = pytest.mark.django_db


@pytest.fixture
def app_backend() -> DjangoBackend:
    reg = Registry()

    @method("loginWithPin", registry=reg)
    def login_with_pin(ctx: MethodContext, username: str, pin: str) -> dict[str, Any]:
        user = User.objects.filter(username=username).first()
        if user is None or pin != "1234":
            raise DDPError(403, "Incorrect PIN")
        return log_in(ctx, user, login_type="pin")

    @method("becomeWithoutToken", registry=reg)
    def become(ctx: MethodContext, username: str) -> dict[str, Any]:
        ctx.set_user(User.objects.get(username=username))
        return {"user_id": ctx.user_id, "credential": ctx.credential}

    @method("whoami", registry=reg)
    def whoami(ctx: MethodContext) -> dict[str, Any]:
        return {"user_id": ctx.user_id, "credential": ctx.credential}

    @method("leave", registry=reg)
    def leave(ctx: MethodContext) -> dict[str, Any]:
        ctx.set_user(None)
        return {"user_id": ctx.user_id, "authenticated": ctx.user.is_authenticated}

    @method("failAfterLogin", registry=reg)
    def fail_after_login(ctx: MethodContext, username: str) -> None:
        log_in(ctx, User.objects.get(username=username))
        raise DDPError(500, "later")

    return DjangoBackend(registry=reg)


def run(
    backend: DjangoBackend,
    handshake: Handshake,
    name: str,
    *params: Any,
    identity: Identity = ANONYMOUS,
) -> Any:
    return backend.call(CallContext("s", identity, handshake), name, list(params))


def test_an_application_login_method(
    app_backend: DjangoBackend, handshake: Handshake, reader: User
) -> None:
    outcome = run(app_backend, handshake, "loginWithPin", "reader", "1234")
    assert outcome.result["type"] == "pin" and outcome.result["id"] == str(reader.pk)
    identity = outcome.identity
    assert identity is not None and identity.revocation is not None
    row = LoginToken.objects.get(pk=identity.credential)
    assert row.user_id == reader.pk
    seen = run(app_backend, handshake, "whoami", identity=identity).result
    assert seen == {"user_id": str(reader.pk), "credential": row.pk}
    assert run(app_backend, handshake, "whoami", identity=identity).identity is None


def test_set_user_without_a_token(
    app_backend: DjangoBackend, handshake: Handshake, reader: User
) -> None:
    outcome = run(app_backend, handshake, "becomeWithoutToken", "reader")
    assert outcome.result == {"user_id": str(reader.pk), "credential": None}
    assert outcome.identity == Identity(user=reader, user_id=str(reader.pk))


def test_set_user_none_logs_out(
    app_backend: DjangoBackend, handshake: Handshake, reader: User
) -> None:
    row, _ = issue_token(reader)
    identity = Identity(user=reader, user_id=str(reader.pk), credential=row.pk)
    outcome = run(app_backend, handshake, "leave", identity=identity)
    assert outcome.result == {"user_id": None, "authenticated": False}
    assert outcome.identity == ANONYMOUS
    assert LoginToken.objects.filter(pk=row.pk).exists()  # setUserId(null) keeps tokens


def test_a_failing_method_changes_nobody(
    app_backend: DjangoBackend, handshake: Handshake, reader: User
) -> None:
    with pytest.raises(DDPError):
        run(app_backend, handshake, "failAfterLogin", "reader")
    assert not LoginToken.objects.exists()  # rolled back with the method


def test_set_user_checks_its_arguments(reader: User) -> None:
    other = User.objects.create_user("other", "o@example.com", "x")
    row, _ = issue_token(other)
    ctx = MethodContext(user=None, user_id=None, session_id="s")
    with pytest.raises(ValueError, match="not a token of user"):
        ctx.set_user(reader, row)
    with pytest.raises(ValueError, match="takes no token"):
        ctx.set_user(None, row)
    assert not ctx.user_changed
    ctx.set_user(other, row)
    assert (ctx.user_id, ctx.credential, ctx.user_changed) == (str(other.pk), row.pk, True)
