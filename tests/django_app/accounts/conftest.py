"""Fixtures of the accounts tests: users, logged-in identities and a method caller."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User

from django_app.backend import DjangoBackend
from relay.backend import ANONYMOUS, CallContext, Handshake, Identity, MethodOutcome

PASSWORD = "correct horse battery staple"


@pytest.fixture
def reader(db: None) -> User:
    return User.objects.create_user("reader", "reader@example.com", PASSWORD)


Call = Callable[..., MethodOutcome]


@pytest.fixture
def call(backend: DjangoBackend, handshake: Handshake) -> Call:
    """``call(name, *params, identity=ANONYMOUS, handshake=None)``: a method through the
    backend, as the relay calls it."""

    def run(
        name: str, *params: Any, identity: Identity = ANONYMOUS, shake: Handshake | None = None
    ) -> MethodOutcome:
        ctx = CallContext("session-1", identity, shake or handshake, random_seed=None)
        return backend.call(ctx, name, list(params))

    return run
