"""Settings of the example project, configured from the environment.

``DATABASE_URL`` (``postgresql://user[:password]@host:port/name``, ``?host=/socket/dir``
for a Unix socket; default ``postgresql://relay@127.0.0.1:5432/relay``),
``DJANGO_SECRET_KEY`` or ``DJANGO_SECRET_KEY_FILE`` (no default: see below),
``DJANGO_DEBUG`` (off), ``DJANGO_ALLOWED_HOSTS`` (comma list; default localhost,
127.0.0.1 and [::1] only), ``DJANGO_LOG_LEVEL`` (INFO), ``DJANGO_CONN_MAX_AGE`` (60
seconds), ``DJANGO_CSRF_TRUSTED_ORIGINS`` (comma list), ``HTTP_FORWARDED_COUNT`` (0: how
many trusted proxies append to ``X-Forwarded-For``, as Meteor reads it) and
``DEMO_SERVE_STATIC`` (on).

Safe to expose by mistake: there is no fixed ``SECRET_KEY`` (``example.secret_key``: the
environment, a key file that ``make run`` generates and keeps, or a random key of the
process with ``DJANGO_DEBUG`` on or under pytest/mypy; otherwise the process refuses to
start), only loopback host names are served unless ``DJANGO_ALLOWED_HOSTS`` names more,
and the admin's login is throttled (``example.throttle``: 10 failed logins per username,
30 per client address, per 15 minutes). The DDP endpoints and the relay's ``/healthz``,
``/readyz`` and ``/metrics`` are answered by the relay itself, not by Django, so
``ALLOWED_HOSTS`` does not apply to them.

Static files: the admin's CSS and JS are served by ``django.contrib.staticfiles``' own
view with ``insecure=True`` (see ``urls.py``) so ``make run`` looks right without DEBUG and
without ``collectstatic`` or an extra dependency. That view is slow and meant for demos:
a real deployment serves static files from a CDN, nginx or whitenoise and sets
``DEMO_SERVE_STATIC=0``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.conf import global_settings

from example.secret_key import ENV_KEY, inspection_only, resolve_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


def database_from_url(url: str) -> dict[str, Any]:
    """A Django DATABASES entry for a ``postgresql://`` URL (no third-party parser)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme!r}")
    query = parse_qs(parts.query)
    host = unquote(parts.hostname or "") or query.get("host", [""])[0]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")) or "relay",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(parts.port or ""),
        # Relay workers are long-lived: keep connections for a minute, check them before use.
        "CONN_MAX_AGE": int(os.environ.get("DJANGO_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
    }


DEBUG = _env_bool("DJANGO_DEBUG", False)
_secret_key = resolve_secret_key(os.environ, debug=DEBUG, inspecting=inspection_only(sys.modules))
SECRET_KEY = _secret_key.value
if _secret_key.source == "ephemeral":
    # Exported, so what this process starts (runserver's autoreloader child, the relays
    # and manage.py a test run starts through devstack.launch) signs with the same key.
    os.environ[ENV_KEY] = SECRET_KEY
    if DEBUG and not inspection_only(sys.modules):
        warnings.warn(
            "DJANGO_DEBUG is on and no DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE is set: "
            "using a random SECRET_KEY for this process (sessions and signed links end "
            "with it).",
            RuntimeWarning,
            stacklevel=1,
        )

# Loopback only unless told otherwise: a Host header the operator did not name is a 400
# for Django's views (the admin). Names behind a proxy or an ingress go in the variable.
ALLOWED_HOSTS = _env_list("DJANGO_ALLOWED_HOSTS") or ["localhost", "127.0.0.1", "[::1]"]
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS")
#: Proxies in front that append the client to X-Forwarded-For (Meteor's variable); 0
#: means the socket peer is the client. Only the admin login throttle reads it here.
HTTP_FORWARDED_COUNT = _env_int("HTTP_FORWARDED_COUNT", 0)

INSTALLED_APPS = [
    # django.contrib.admin, with the throttled login site (example/admin_site.py).
    "example.apps.ExampleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_app",
    "bookstore",
    # The live demo page at / (example/demo): Meteor's client in the browser.
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL", "postgresql://relay@127.0.0.1:5432/relay")
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The accounts hasher first: passwords set from now on are hashed by it, so Meteor clients'
# SHA-256 digests can be checked (django_app.accounts). Django's defaults follow, so hashes
# made before still verify (and are upgraded at the next login).
PASSWORD_HASHERS = [
    "django_app.accounts.hashers.MeteorPBKDF2PasswordHasher",
    *global_settings.PASSWORD_HASHERS,
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEMO_SERVE_STATIC = _env_bool("DEMO_SERVE_STATIC", True)
# Django's two finders, and the demo page's Meteor client bundles from example/demo's
# node_modules (demo.finders: those three files only, installed by `npm ci` there).
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "demo.finders.VendorFinder",
]

# Django's default cache, said out loud: the admin login throttle counts in it, per
# worker process (see example/throttle.py for making it cluster-wide).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Admin login throttling (example/throttle.py): failed logins allowed per window, per
# username and per client address; a limit of 0 turns that counter off.
ADMIN_LOGIN_THROTTLE_CACHE = "default"
ADMIN_LOGIN_THROTTLE_WINDOW = 15 * 60
ADMIN_LOGIN_THROTTLE_PER_USERNAME = 10
ADMIN_LOGIN_THROTTLE_PER_ADDRESS = 30

# django_app (the ddp app): see django_app/conf.py for every DDP_* setting.
DDP_DECIMAL_ENCODING = "string"
DDP_ATOMIC_METHODS = True
# Meteor's Accounts.createUser over DDP (off by default in django_app): the demo lets
# anyone sign up.
DDP_CREATE_USER = True
# Seconds a crashed relay worker's presence outlives it (django_app.presence).
DDP_PRESENCE_LEASE = _env_int("DDP_PRESENCE_LEASE", 10)

LOG_LEVEL = os.environ.get("DJANGO_LOG_LEVEL", "INFO").upper()
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django.db.backends": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django_app": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "bookstore": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
    },
}
