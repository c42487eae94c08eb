"""gunicorn settings for a relay.

Run: ``gunicorn -c python:relay.server.gunicorn_conf 'relay.server.app:create_app()'``.

Layer: composition. Values come from the environment so the same file serves ``make run``, the
tests, the local cluster and the Helm chart: ``HOST`` and ``PORT`` (bind, default
127.0.0.1:8000), ``RELAY_INTERNAL_PORT`` and ``RELAY_INTERNAL_HOST`` (a second listener
for metrics and health, see ``relay.server.app``; read through ``relay.config.Settings``,
so a bad value stops the master with the settings' message), ``RELAY_WORKERS`` (default
2), ``RELAY_WORKER_CONNECTIONS`` (default 10000: gevent's default of 1000 is far below
what one relay process holds), ``RELAY_GRACEFUL_TIMEOUT`` (default 30 s).

The master's hooks: ``on_starting`` makes the directory where the workers share their
health reports (``relay.server.readiness``) and hands it to them as ``RELAY_HEALTH_DIR``
(always a new one: two relays on one host must not read each other's workers);
``nworkers_changed`` records how many workers there should be (``/startupz``);
``child_exit`` drops a dead worker's report and its Prometheus multiprocess files;
``on_exit`` deletes the directory.

Must not: monkey-patch or start anything at import (this module runs in the master; the
worker patches after the fork), or keep per-worker state (the workers' files are theirs).
"""

from __future__ import annotations

import os
from typing import Any

from relay import metrics
from relay.config import ConfigError, Settings
from relay.server import readiness

_settings = Settings.from_env()
_host = os.environ.get("HOST", "127.0.0.1")
_port = os.environ.get("PORT", "8000")

bind = [f"{_host}:{_port}"]
if _settings.internal_port:
    if str(_settings.internal_port) == _port.strip():
        # The app tells the listeners apart by port: one port cannot be both.
        raise ConfigError(f"RELAY_INTERNAL_PORT must differ from PORT (both {_port})")
    bind.append(f"{_settings.internal_host or _host}:{_settings.internal_port}")
workers = int(os.environ.get("RELAY_WORKERS", "2"))
worker_class = "relay.server.worker.RelayWorker"
# The relay's own socket limit (Settings.worker_connections) reads the same variable.
worker_connections = int(
    os.environ.get("RELAY_WORKER_CONNECTIONS", str(Settings().worker_connections))
)
graceful_timeout = int(os.environ.get("RELAY_GRACEFUL_TIMEOUT", "30"))
timeout = 30
keepalive = 5
accesslog = os.environ.get("RELAY_ACCESS_LOG") or None
loglevel = os.environ.get("RELAY_LOG_LEVEL", "info")
# gunicorn 23+ opens a control socket at a machine-wide default path; several relays on one
# host (the local cluster, the tests) would fight over it, and the relay does not use it.
control_socket_disable = True


def on_starting(server: Any) -> None:
    directory = readiness.make_directory()
    readiness.set_expected_workers(directory, server.cfg.workers)
    # Inherited by every worker forked from now on.
    os.environ["RELAY_HEALTH_DIR"] = directory


def nworkers_changed(server: Any, new_value: int, old_value: int | None) -> None:
    directory = os.environ.get("RELAY_HEALTH_DIR", "")
    if directory:
        readiness.set_expected_workers(directory, new_value)


def child_exit(server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid)
    directory = os.environ.get("RELAY_HEALTH_DIR", "")
    if directory:
        readiness.forget(directory, worker.pid)


def on_exit(server: Any) -> None:
    directory = os.environ.get("RELAY_HEALTH_DIR", "")
    if directory:
        readiness.remove_directory(directory)
