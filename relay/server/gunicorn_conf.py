"""gunicorn settings for a relay.

Run: ``gunicorn -c python:relay.server.gunicorn_conf 'relay.server.app:create_app()'``.

Layer: composition. Values come from the environment so the same file serves ``make run``, the
tests, the local cluster and the Helm chart: ``HOST`` and ``PORT`` (bind, default
127.0.0.1:8000), ``RELAY_WORKERS`` (default 2), ``RELAY_WORKER_CONNECTIONS`` (default
10000: gevent's default of 1000 is far below what one relay process holds),
``RELAY_GRACEFUL_TIMEOUT`` (default 30 s). ``child_exit`` cleans the dead worker's
Prometheus multiprocess files.
"""

from __future__ import annotations

import os
from typing import Any

from relay import metrics
from relay.config import Settings

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
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


def child_exit(server: Any, worker: Any) -> None:
    metrics.mark_process_dead(worker.pid)
