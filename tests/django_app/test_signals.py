"""Connection hooks (``django_app.signals``) and closing a session from server code."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from django_app import DDPError, MethodContext, method
from django_app.accounts.tokens import issue_token, revoke_user_tokens
from django_app.backend import DjangoBackend
from django_app.models import LoginToken
from django_app.registries import registry
from django_app.signals import connection_closed, connection_opened
from relay.backend import ClientError

pytestmark = pytest.mark.django_db


@pytest.fixture
def seen() -> Iterator[list[tuple[str, Any, bool]]]:
    events: list[tuple[str, Any, bool]] = []

    def opened(sender: Any, connection: Any, resumed: bool, **kwargs: Any) -> None:
        if connection.client_address == "203.0.113.66":
            raise DDPError(403, "Not from there")
        events.append(("opened", connection.session_id, resumed))

    def closed(sender: Any, connection: Any, parked: bool, **kwargs: Any) -> None:
        events.append(("closed", connection.session_id, parked))
        raise RuntimeError("a broken receiver is logged, not raised")

    connection_opened.connect(opened)
    connection_closed.connect(closed)
    try:
        yield events
    finally:
        connection_opened.disconnect(opened)
        connection_closed.disconnect(closed)


def test_no_receivers_means_no_hooks(backend: DjangoBackend) -> None:
    assert backend.connection_hooks() is False


def test_receivers_see_opens_and_closes_and_may_refuse(
    backend: DjangoBackend, make_ctx: Any, seen: list[tuple[str, Any, bool]], handshake: Any
) -> None:
    assert backend.connection_hooks() is True
    ctx = make_ctx()
    backend.connection_opened(ctx, False)
    backend.connection_closed(ctx, True)
    assert seen == [("opened", "session-1", False), ("closed", "session-1", True)]
    hostile = type(handshake)(headers={}, cookies={}, remote_addr="203.0.113.66", path="/")
    with pytest.raises(ClientError) as refused:
        backend.connection_opened(type(ctx)("s2", ctx.identity, hostile), False)
    assert (refused.value.error, refused.value.reason) == (403, "Not from there")


def test_a_method_closes_its_own_session(backend: DjangoBackend, make_ctx: Any) -> None:
    with registry.isolated():

        @method("tests.bye")
        def bye(ctx: MethodContext) -> str:
            ctx.close_connection()
            return "bye"

        outcome = backend.call(make_ctx(), "tests.bye", [])
    assert outcome.result == "bye" and outcome.close is True
    assert backend.call(make_ctx(), "users.whoami", []).close is False


def test_revoke_user_tokens_removes_every_token_of_the_user() -> None:
    user = get_user_model().objects.create_user("hooked", password="x-long-password")
    other = get_user_model().objects.create_user("other", password="x-long-password")
    issue_token(user)
    issue_token(user)
    issue_token(other)
    assert revoke_user_tokens(user) == 2
    assert list(LoginToken.objects.values_list("user", flat=True)) == [other.pk]
