"""The example's settings that make it safe to expose by mistake (``ALLOWED_HOSTS``, the
proxy count, the admin site), and the accounts settings it turns on. The SECRET_KEY has
its own file: ``test_example_secret_key.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import global_settings
from django.contrib import admin
from django.test import Client
from example.admin_site import ThrottledAdminSite

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json
import example.settings as s
print(json.dumps({"hosts": s.ALLOWED_HOSTS, "forwarded": s.HTTP_FORWARDED_COUNT,
                  "debug": s.DEBUG, "create_user": s.DDP_CREATE_USER}))
"""


def probe(**env: str) -> subprocess.CompletedProcess[str]:
    """The example's settings imported by a fresh interpreter with only ``env`` set (and
    a key), as a server process would import them."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DEMO_", "HTTP_FORWARDED"))
    }
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT / "example"), str(ROOT)])
    base["DJANGO_SECRET_KEY"] = "k" * 60
    return subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def probed(**env: str) -> dict[str, Any]:
    proc = probe(**env)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_defaults_serve_loopback_names_only() -> None:
    values = probed()
    assert values["hosts"] == ["localhost", "127.0.0.1", "[::1]"]
    assert values["forwarded"] == 0 and values["debug"] is False
    assert values["create_user"] is True


def test_allowed_hosts_and_proxy_count_from_the_environment() -> None:
    values = probed(
        DJANGO_ALLOWED_HOSTS=" books.example.com, .internal.example ,,", HTTP_FORWARDED_COUNT="2"
    )
    assert values["hosts"] == ["books.example.com", ".internal.example"]
    assert values["forwarded"] == 2
    # Blank means the default, not "no host at all" (which would serve nothing).
    assert probed(DJANGO_ALLOWED_HOSTS=" , ")["hosts"] == ["localhost", "127.0.0.1", "[::1]"]


def test_a_bad_proxy_count_refuses_to_start() -> None:
    proc = probe(HTTP_FORWARDED_COUNT="two")
    assert proc.returncode != 0
    assert "HTTP_FORWARDED_COUNT must be a whole number, not 'two'" in proc.stderr


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8000", 200),
        ("localhost", 200),
        ("[::1]:8000", 200),
        ("evil.example", 400),
        ("127.0.0.1.evil.example", 400),
    ],
)
def test_django_answers_only_allowed_host_names(settings: Any, host: str, status: int) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]
    assert Client().get("/admin/login/", HTTP_HOST=host).status_code == status


def test_accounts_settings_of_the_example() -> None:
    from example import settings as example_settings

    assert example_settings.DDP_CREATE_USER is True
    hashers = list(example_settings.PASSWORD_HASHERS)
    assert hashers[0] == "django_app.accounts.hashers.MeteorPBKDF2PasswordHasher"
    assert hashers[1:] == list(global_settings.PASSWORD_HASHERS)


def test_the_admin_site_is_the_throttled_one() -> None:
    assert isinstance(admin.site, ThrottledAdminSite)
    from django.conf import settings

    assert "django.contrib.admin" not in settings.INSTALLED_APPS
    assert "example.apps.ExampleAdminConfig" in settings.INSTALLED_APPS
