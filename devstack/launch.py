"""How a relay of the example project is launched: its environment and command lines.

Outside the layers, like ``devstack.embedded_postgres``: ``devstack.devserver`` (``make run``),
``devstack.cluster`` (``make cluster``), the end-to-end tests and the benchmark harness all
start gunicorn relays and ``manage.py`` of ``example/`` this way. Standard library only.

Its job: the environment of such a child (``example_env``: the database, the example's
settings and WSGI app, ``PYTHONPATH``, a secret key; ``relay_env``: the
``HOST``/``PORT``/``RELAY_*`` and ``PROMETHEUS_MULTIPROC_DIR`` that
``relay.server.gunicorn_conf`` reads), gunicorn's argv (``gunicorn_argv``),
``manage.py``'s (``manage_argv``), an emptied Prometheus multiprocess directory
(``fresh_metrics_dir``) and the kept local key file of ``make run``
(``ensure_secret_key_file``).

The example refuses to start without a ``SECRET_KEY`` (``example/example/secret_key.py``),
and every process of one launch must share one key (a session cookie or a password-reset
link made by one process is checked by another). So a child gets the caller's
``DJANGO_SECRET_KEY`` or ``DJANGO_SECRET_KEY_FILE``; else the key file the launcher asks
for (``make run``: ``$RELAY_STATE_DIR/secret_key``, generated once and kept, mode 0600);
else this process's throwaway key (``process_secret_key``: tests, benchmarks, ``make
cluster``), the same for all its children.

What it must not do: start or stop anything (``devstack.processes`` and the callers do),
import Django or gevent (the children do that), bind a relay to anything but 127.0.0.1,
or write a secret key anywhere but the file it is asked to keep.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "EXAMPLE",
    "HOST",
    "ROOT",
    "SECRET_KEY_ENV",
    "SECRET_KEY_FILE_ENV",
    "ensure_secret_key_file",
    "example_env",
    "fresh_metrics_dir",
    "gunicorn_argv",
    "manage_argv",
    "process_secret_key",
    "relay_env",
]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "example"
HOST = "127.0.0.1"
#: Where the example reads its SECRET_KEY from (``example/example/secret_key.py``).
SECRET_KEY_ENV = "DJANGO_SECRET_KEY"
SECRET_KEY_FILE_ENV = "DJANGO_SECRET_KEY_FILE"
#: Random bytes in a generated key (``secrets.token_urlsafe``: 67 characters).
_KEY_BYTES = 50


def example_env(
    database_url: str,
    extra: Mapping[str, str] | None = None,
    *,
    keep_caller_settings: bool = False,
    secret_key_file: Path | None = None,
) -> dict[str, str]:
    """This process's environment, pointed at ``database_url`` and the example project,
    updated with ``extra``, with a secret key (see the module docstring).

    ``keep_caller_settings`` (``make run``, ``make cluster``): a ``DJANGO_SETTINGS_MODULE``
    or ``RELAY_WSGI_APP`` of the caller's wins, and its ``PYTHONPATH`` is kept after the
    example's; otherwise (tests, benchmarks) the example's settings always apply.
    ``secret_key_file``: when neither the caller nor ``extra`` gives a key, use this
    file, generated on first use and kept (``ensure_secret_key_file``).
    """
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url
    example = {
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "RELAY_WSGI_APP": "example.wsgi:application",
    }
    paths = [str(EXAMPLE), str(ROOT)]
    if keep_caller_settings:
        example = {key: env.get(key, value) for key, value in example.items()}
        paths += filter(None, [env.get("PYTHONPATH")])
    env.update(example)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    if not (env.get(SECRET_KEY_ENV, "").strip() or env.get(SECRET_KEY_FILE_ENV, "").strip()):
        if secret_key_file is not None:
            env[SECRET_KEY_FILE_ENV] = str(ensure_secret_key_file(secret_key_file))
        else:
            env[SECRET_KEY_ENV] = process_secret_key()
    return env


def process_secret_key() -> str:
    """This process's ``DJANGO_SECRET_KEY``: the one in its environment, else a new
    random key put there, so every child it starts (and Django, should this process load
    the example's settings later) uses the same one. It ends with the process tree."""
    key = os.environ.get(SECRET_KEY_ENV, "")
    if not key.strip():
        key = secrets.token_urlsafe(_KEY_BYTES)
        os.environ[SECRET_KEY_ENV] = key
    return key


def ensure_secret_key_file(path: Path) -> Path:
    """``path``, holding a secret key: read as it is when it already holds one (only
    narrowed to mode 0600), else written with a new random key, mode 0600.

    The file appears complete or not at all (written under another name, then linked
    into place), so launchers started side by side agree on one key and a reader never
    sees half a key; a file that exists but is empty is replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if _holds_key(path):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return path
    fd, tmp_name = tempfile.mkstemp(prefix=".secret_key.", dir=path.parent)  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(_KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if another launcher got there first: keep theirs
        except FileExistsError:
            if not _holds_key(path):  # an empty leftover, not a rival's key
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _holds_key(path: Path) -> bool:
    try:
        return bool(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return False


def relay_env(
    port: int,
    *,
    workers: int,
    graceful_timeout: int,
    log_level: str,
    metrics_dir: Path | None = None,
) -> dict[str, str]:
    """What ``relay.server.gunicorn_conf`` reads: a relay on ``127.0.0.1:port`` with ``workers``
    gevent workers (and ``PROMETHEUS_MULTIPROC_DIR=metrics_dir`` when given)."""
    env = {
        "HOST": HOST,
        "PORT": str(port),
        "RELAY_WORKERS": str(workers),
        "RELAY_GRACEFUL_TIMEOUT": str(graceful_timeout),
        "RELAY_LOG_LEVEL": log_level,
    }
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def gunicorn_argv(name: str | None = None) -> list[str]:
    """``python -m gunicorn -c python:relay.server.gunicorn_conf 'relay.server.app:create_app()'``
    (with ``--name name`` for ``ps``)."""
    naming = ["--name", name] if name else []
    config = ["-c", "python:relay.server.gunicorn_conf"]
    return [sys.executable, "-m", "gunicorn", *config, *naming, "relay.server.app:create_app()"]


def manage_argv(*args: str) -> list[str]:
    """``python example/manage.py args...``."""
    return [sys.executable, str(EXAMPLE / "manage.py"), *args]


def fresh_metrics_dir(path: Path) -> Path:
    """``path``, created, without the ``*.db`` files of a previous relay (the Prometheus
    multiprocess directory must start empty)."""
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    return path
