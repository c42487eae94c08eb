"""How a relay of the example project is launched: its environment and command lines.

Outside the layers, like ``relay.dev.embedded_postgres``: ``relay.dev.devserver`` (``make run``),
``relay.dev.cluster`` (``make cluster``), the end-to-end tests and the benchmark harness all
start gunicorn relays and ``manage.py`` of ``example/`` this way. Standard library only.

Its job: the environment of such a child (``example_env``: the database, the example's
settings and WSGI app, ``PYTHONPATH``; ``relay_env``: the ``HOST``/``PORT``/``RELAY_*``
and ``PROMETHEUS_MULTIPROC_DIR`` that ``relay.server.gunicorn_conf`` reads), gunicorn's argv
(``gunicorn_argv``), ``manage.py``'s (``manage_argv``) and an emptied Prometheus
multiprocess directory (``fresh_metrics_dir``).

What it must not do: start or stop anything (``relay.dev.processes`` and the callers do),
import Django or gevent (the children do that), or bind a relay to anything but
127.0.0.1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "EXAMPLE",
    "HOST",
    "ROOT",
    "example_env",
    "fresh_metrics_dir",
    "gunicorn_argv",
    "manage_argv",
    "relay_env",
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"
HOST = "127.0.0.1"


def example_env(
    database_url: str,
    extra: Mapping[str, str] | None = None,
    *,
    keep_caller_settings: bool = False,
) -> dict[str, str]:
    """This process's environment, pointed at ``database_url`` and the example project,
    updated with ``extra``.

    ``keep_caller_settings`` (``make run``, ``make cluster``): a ``DJANGO_SETTINGS_MODULE``
    or ``RELAY_WSGI_APP`` of the caller's wins, and its ``PYTHONPATH`` is kept after the
    example's; otherwise (tests, benchmarks) the example's settings always apply.
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
    return env


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
