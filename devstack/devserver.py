"""``make run``: the demo on an embedded default, in one command.

Local tool (not used in production). Starts a throwaway PostgreSQL under
``.state/postgres`` (``RELAY_STATE_DIR/postgres``) unless ``DATABASE_URL`` is set, migrates
and seeds the example project, then serves it with gunicorn gevent workers on
``127.0.0.1:${PORT:-8000}`` (Django admin over HTTP, DDP on ``/websocket`` and ``/sockjs``).
It drives Django only through ``manage.py`` subprocesses, so ``relay`` still never imports
Django. Unless the caller sets ``DJANGO_SECRET_KEY`` or ``DJANGO_SECRET_KEY_FILE``, the
example's ``SECRET_KEY`` is ``.state/secret_key``, generated on the first run and kept
(mode 0600), so logins and sessions outlive a restart.

Stopping: SIGTERM (``kill``, a supervisor, GNU make forwarding its own), SIGINT (Ctrl-C)
or SIGHUP, once or many times, at any point of the start-up or while serving, stops
gunicorn (and its workers) and then the embedded PostgreSQL, and exits with status 0.
The cleanup runs once, to its end: later signals are only noted
(``devstack.processes.run_until_stopped``); a signal that comes while PostgreSQL or gunicorn is
being started takes effect once it has started, so it is stopped too.

Must not: import Django, gevent or anything beyond the standard library and ``devstack``;
exit while gunicorn, one of its workers or the embedded PostgreSQL it started still runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT, example_env, fresh_metrics_dir, gunicorn_argv, manage_argv
from devstack.processes import (
    interrupt_on_stop_signals,
    run_until_stopped,
    stop_deferred,
    stop_process_tree,
    stop_requested,
)

#: The example's kept SECRET_KEY, under the state directory.
SECRET_KEY_FILE = "secret_key"


def _env(database_url: str, state: Path) -> dict[str, str]:
    env = example_env(
        database_url, keep_caller_settings=True, secret_key_file=state / SECRET_KEY_FILE
    )
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(state / "metrics"))
    # Without ZooKeeper, the workers of this node share session ownership through one
    # SQLite file, so a reconnect that lands on another worker resumes too.
    if not env.get("RELAY_ZOOKEEPER"):
        env.setdefault("RELAY_COORDINATOR_PATH", str(state / "coordinator.sqlite"))
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(manage_argv(*args), env=env, check=True)


def _say(message: str) -> None:
    # A closed terminal (SIGHUP) makes writing fail; that must not cut the cleanup short.
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)


class _DevServer:
    """What ``make run`` started, so that ``stop()`` stops exactly that, once."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.pg: EmbeddedPostgres | None = None
        self.gunicorn: subprocess.Popen[bytes] | None = None
        # gunicorn drains for RELAY_GRACEFUL_TIMEOUT s, then kills its workers itself.
        self.stop_timeout = int(os.environ.get("RELAY_GRACEFUL_TIMEOUT", "30")) + 5

    def serve(self) -> int:
        """Start everything, then wait for gunicorn; its exit status."""
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            # Deferred: a stop signal during pg_ctl start would otherwise leave a
            # postmaster coming up that no one stops. It takes effect once it runs.
            with stop_deferred():
                self.pg = EmbeddedPostgres(self.state / "postgres")
                self.pg.start()
            self.pg.create_database("relay")
            database_url = self.pg.dsn("relay")
        port = os.environ.get("PORT", "8000")
        env = _env(database_url, self.state)
        env["PORT"] = port
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "collectstatic", "--noinput", "-v", "0")
        _manage(env, "seed_demo")
        password = env.get("DEMO_ADMIN_PASSWORD", "ddp-relay-demo")
        reader = env.get("DEMO_READER_PASSWORD", "bookworm-2026")
        print(
            f"\nddp-relay demo\n"
            f"  Live demo page http://127.0.0.1:{port}/   (open it in two windows)\n"
            f"  Django admin   http://127.0.0.1:{port}/admin/   (user admin, password {password})\n"
            f"  DDP login      user reader, password {reader} (Meteor.loginWithPassword)\n"
            f"  DDP WebSocket  ws://127.0.0.1:{port}/websocket\n"
            f"  DDP SockJS     http://127.0.0.1:{port}/sockjs\n"
            f"  Metrics        http://127.0.0.1:{port}/metrics\n"
            f"  Database       {database_url}\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        # Deferred: an interrupt between the fork and the assignment would lose the
        # handle. gunicorn stays in this process group, so a terminal's Ctrl-C (or a
        # supervisor's group signal) also reaches it and its workers directly.
        with stop_deferred():
            self.gunicorn = subprocess.Popen(gunicorn_argv(), env=env)
        return self.gunicorn.wait()

    def stop(self) -> None:
        """Stop gunicorn, then PostgreSQL. Idempotent: each handle is dropped only once
        what it names is gone, so a second call stops what a first one could not."""
        with stop_deferred():
            if self.gunicorn is not None:
                stop_process_tree(self.gunicorn, self.stop_timeout)
                self.gunicorn = None
            if self.pg is not None:
                self.pg.stop()
                self.pg = None


def main() -> int:
    interrupt_on_stop_signals()
    state = Path(os.environ.get("RELAY_STATE_DIR", ROOT / ".state")).resolve()
    server = _DevServer(state)

    def serve() -> int:
        state.mkdir(parents=True, exist_ok=True)
        return server.serve()

    def failed(exc: Exception) -> int:
        # A start-up step that failed because the stop signal killed it too (manage.py
        # is in this process group) is part of the stop, not an error of its own.
        if stop_requested() is None:
            raise exc
        return 0

    def stopped(signum: int | None) -> None:
        if signum is not None:
            _say(f"devserver: stopped ({signal.Signals(signum).name})")

    return run_until_stopped(serve, server.stop, failed, stopped)


if __name__ == "__main__":
    raise SystemExit(main())
