"""Fixtures of the django_app tests: the backend, contexts, and the seeded demo data."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command

from relay.backend import ANONYMOUS, CallContext, Handshake, Identity


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """seed_demo and logins hash passwords: the Meteor hasher with one PBKDF2 iteration
    (``tests/django_app/accounts/helpers.py``) keeps that out of the test time while
    hashing as a project does; MD5 stays as an older hasher to upgrade from."""
    from tests.django_app.accounts.helpers import TEST_HASHERS

    settings.PASSWORD_HASHERS = TEST_HASHERS


@pytest.fixture
def handshake() -> Handshake:
    return Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")


@pytest.fixture
def make_ctx(handshake: Handshake) -> Any:
    """``make_ctx(seed=None, identity=ANONYMOUS)``: a relay CallContext."""

    def make(seed: str | None = None, identity: Identity = ANONYMOUS) -> CallContext:
        return CallContext("session-1", identity, handshake, random_seed=seed)

    return make


@pytest.fixture
def backend() -> Any:
    from django_app.backend import DjangoBackend

    return DjangoBackend()


@pytest.fixture
def seeded(db: None) -> Iterator[str]:
    """The demo data of ``manage.py seed_demo``; yields its output."""
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    yield out.getvalue()
