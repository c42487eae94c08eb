"""Where the example's ``SECRET_KEY`` comes from, so that it is never a key anyone knows.

Job: ``resolve_secret_key`` picks, in this order, ``DJANGO_SECRET_KEY``; the file named
by ``DJANGO_SECRET_KEY_FILE`` (``make run`` points it at a key generated once in its
state directory, see ``devstack/launch.py``); or, only with ``DJANGO_DEBUG`` on or in a
process that just inspects the project (a pytest run, a mypy check), a random key of
this process. Anything else refuses to start with ``ImproperlyConfigured``: an example
exposed by mistake with a published fixed key would let anyone forge session cookies,
password-reset links and every signed value.

What it must not do: fall back to a fixed key, write the key file (the launcher does),
or import Django beyond its exception class (the settings import it first thing).
"""

from __future__ import annotations

import secrets
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from django.core.exceptions import ImproperlyConfigured

__all__ = [
    "ENV_FILE",
    "ENV_KEY",
    "SecretKey",
    "inspection_only",
    "new_secret_key",
    "read_key_file",
    "resolve_secret_key",
]

ENV_KEY = "DJANGO_SECRET_KEY"
ENV_FILE = "DJANGO_SECRET_KEY_FILE"

#: Modules whose presence at settings time means the process only inspects the project.
INSPECTORS = ("pytest", "mypy")

#: A key file larger than this is not a key file (a wrong path, e.g. a log).
MAX_KEY_FILE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SecretKey:
    """A resolved key and where it came from (``ephemeral``: random, this process only)."""

    value: str
    source: Literal["environment", "file", "ephemeral"]


def new_secret_key() -> str:
    """A fresh random key: 50 bytes from ``secrets`` (67 URL-safe characters), above
    Django's own ``check --deploy`` thresholds (50 characters, 5 distinct)."""
    return secrets.token_urlsafe(50)


def read_key_file(path: Path) -> str:
    """The key stored in ``path`` (surrounding whitespace removed); ImproperlyConfigured
    when it cannot be read, is empty or is too large to be a key file."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{ENV_FILE}={path}: cannot read it ({exc.strerror or exc})."
        ) from None
    if len(raw) > MAX_KEY_FILE_BYTES:
        raise ImproperlyConfigured(
            f"{ENV_FILE}={path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a key file."
        )
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ImproperlyConfigured(f"{ENV_FILE}={path} is not UTF-8 text.") from None
    if not key:
        raise ImproperlyConfigured(f"{ENV_FILE}={path} is empty.")
    return key


def inspection_only(modules: Container[str]) -> bool:
    """Whether this process is a test run or a type check (``sys.modules`` holds pytest
    or mypy before the settings load): it gets a random key, as DEBUG does. pytest-django
    and django-stubs load the settings before any test fixture or configuration of ours
    could set a key, and no server process imports either."""
    return any(name in modules for name in INSPECTORS)


def resolve_secret_key(
    environ: Mapping[str, str], *, debug: bool, inspecting: bool = False
) -> SecretKey:
    """The key for these settings (see the module docstring for the order).

    A blank ``DJANGO_SECRET_KEY`` counts as unset (``DJANGO_SECRET_KEY=`` in a compose
    file must not mean an empty key); a blank ``DJANGO_SECRET_KEY_FILE`` too. A file
    that is named but unusable refuses to start even with DEBUG on: it was asked for.
    """
    key = environ.get(ENV_KEY, "")
    if key.strip():
        return SecretKey(key, "environment")
    path = environ.get(ENV_FILE, "").strip()
    if path:
        return SecretKey(read_key_file(Path(path)), "file")
    if debug or inspecting:
        return SecretKey(new_secret_key(), "ephemeral")
    raise ImproperlyConfigured(
        f'No SECRET_KEY: set {ENV_KEY} (e.g. to the output of `python -c "import secrets; '
        f'print(secrets.token_urlsafe(50))"`) or {ENV_FILE} to a file holding one. '
        "`make run` generates and keeps one for you; DJANGO_DEBUG=1 uses a random key "
        "for this process only."
    )
