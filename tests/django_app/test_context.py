"""``MethodContext`` in a relay session: Meteor lets a method call ``setUserId`` and then
``unblock()`` (only the reverse throws). The relay applies a new user when the method
returns, so such an ``unblock()`` lets nothing go on: the method logs the session in, and
no later message runs as the old user meanwhile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gevent
import pytest
from django.contrib.auth import get_user_model

from django_app.accounts.methods import log_in
from django_app.backend import DjangoBackend
from django_app.context import MethodContext
from django_app.methods import Method
from django_app.models import LoginToken
from django_app.registries import registry as default_registry
from relay.backend import CallContext, MethodOutcome
from tests.relay.server.helpers import FakeBackend, FakeContext, Peer

pytestmark = pytest.mark.django_db(transaction=True)


class Bridge(FakeBackend):
    """The fake backend, with ``review.*`` methods run by the real DjangoBackend."""

    def __init__(self, django: DjangoBackend) -> None:
        super().__init__()
        self.django = django

    def has_method(self, name: str) -> bool:
        return name.startswith("review.") or super().has_method(name)

    def call(self, ctx: CallContext, name: str, params: Sequence[Any]) -> MethodOutcome:
        if name.startswith("review."):
            return self.django.call(ctx, name, params)
        return super().call(ctx, name, params)


def test_login_then_unblock_logs_the_session_in() -> None:
    user = get_user_model().objects.create_user("ann", password="pw")

    def login_then_unblock(ctx: MethodContext) -> Any:
        result = log_in(ctx, user)  # Meteor: this.setUserId(id) ...
        ctx.unblock()  # ... then this.unblock(): allowed
        return result["id"]

    with default_registry.isolated() as registry:
        registry.add_method(Method("review.loginThenUnblock", login_then_unblock))
        backend = Bridge(DjangoBackend(registry=registry))
        backend.identity = backend.identity.__class__()  # anonymous at connect
        ctx = FakeContext(backend=backend)
        peer = Peer(ctx)
        peer.connect()
        peer.send({"msg": "method", "id": "m", "method": "review.loginThenUnblock", "params": []})
        result = peer.expect("result", timeout=5)
        gevent.sleep(0.05)
    assert LoginToken.objects.filter(user_id=user.pk).exists()  # the login committed
    assert "error" not in result, f"Meteor logs the session in; here: {result}"
    assert peer.session.identity.user_id == str(user.pk)
