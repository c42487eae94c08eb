"""What django_app/ddp.py registers, with accounts on (the suite) and off."""

from __future__ import annotations

import subprocess
import sys

from django.contrib.auth import user_logged_out

from django_app.accounts.methods import METHOD_NAMES
from django_app.accounts.users import USER_PUBLICATION
from django_app.models import LoginToken
from django_app.registries import registry


def test_accounts_on() -> None:
    tokens = registry.collection_for_model(LoginToken)
    assert (tokens.collection_name, tokens.published) == ("ddp.logintoken", ())
    assert not tokens.allow_remove(None, {}) and not tokens.allow_insert(None, {})
    assert registry.get_collection("users") is not None
    assert registry.has_publication(USER_PUBLICATION)
    assert registry.has_publication("meteor.loginServiceConfiguration")
    assert set(METHOD_NAMES) == {
        "login",
        "logout",
        "getNewToken",
        "removeOtherTokens",
        "createUser",
        "changePassword",
        "forgotPassword",
        "resetPassword",
        "verifyEmail",
    }
    assert all(registry.has_method(name) for name in METHOD_NAMES)
    assert any(entry[0][0] == "ddp_revoke_django_session" for entry in user_logged_out.receivers)
    # No publication returns the token table.
    assert not any(p.name.startswith("ddp.logintoken") for p in registry.publications)


def test_accounts_off() -> None:
    code = (
        "import django, example.settings as s; s.DDP_ACCOUNTS = False; django.setup();"
        "from django_app.registries import registry as r;"
        "print(r.get_collection('ddp.logintoken') is not None, r.get_collection('users'),"
        " r.has_method('login'), r.has_publication('ddp.accounts.user'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "",
            "PYTHONPATH": ":".join(sys.path),
            "DJANGO_SETTINGS_MODULE": "example.settings",
            "DJANGO_SECRET_KEY": "a-test-secret-key-that-is-long-enough-0123456789abcdef",
        },
    )
    assert result.stdout.split() == ["True", "None", "False", "False"], result.stderr
