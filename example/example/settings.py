"""Settings of the example project, configured from the environment.

``DATABASE_URL`` (``postgresql://user[:password]@host:port/name``, ``?host=/socket/dir``
for a Unix socket; default ``postgresql://relay@127.0.0.1:5432/relay``),
``DJANGO_SECRET_KEY`` (a development default), ``DJANGO_DEBUG`` (off),
``DJANGO_LOG_LEVEL`` (INFO), ``DJANGO_CONN_MAX_AGE`` (60 seconds),
``DJANGO_CSRF_TRUSTED_ORIGINS`` (comma list) and ``DEMO_SERVE_STATIC`` (on).

Static files: the admin's CSS and JS are served by ``django.contrib.staticfiles``' own
view with ``insecure=True`` (see ``urls.py``) so ``make run`` looks right without DEBUG and
without ``collectstatic`` or an extra dependency. That view is slow and meant for demos:
a real deployment serves static files from a CDN, nginx or whitenoise and sets
``DEMO_SERVE_STATIC=0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


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


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-ddp-relay-example-development-key-change-me"
)
DEBUG = _env_bool("DJANGO_DEBUG", False)
# A demo: any host name may reach it. Set real names in a deployment.
ALLOWED_HOSTS = ["*"]
CSRF_TRUSTED_ORIGINS = _env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_app",
    "bookstore",
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

# django_app (the ddp app): see django_app/conf.py for every DDP_* setting.
DDP_DECIMAL_ENCODING = "string"
DDP_ATOMIC_METHODS = True

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
