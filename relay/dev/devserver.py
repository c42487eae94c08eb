"""``make run``: the demo on an embedded default, in one command.

Layer: L4 tool (not used in production). Starts a throwaway PostgreSQL under
``.state/postgres`` unless ``DATABASE_URL`` is set, migrates and seeds the example
project, then serves it with gunicorn gevent workers on ``127.0.0.1:${PORT:-8000}``
(Django admin over HTTP, DDP on ``/websocket`` and ``/sockjs``). Ctrl-C or SIGTERM stops
gunicorn and the embedded PostgreSQL. It drives Django only through ``manage.py`` subprocesses,
so ``relay`` still never imports Django.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from relay.dev.embedded_postgres import EmbeddedPostgres
from relay.dev.launch import ROOT, example_env, fresh_metrics_dir, gunicorn_argv, manage_argv
from relay.dev.processes import ignore_stop_signals, interrupt_on_stop_signals, stop_process


def _env(database_url: str, state: Path) -> dict[str, str]:
    env = example_env(database_url, keep_caller_settings=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(fresh_metrics_dir(state / "metrics"))
    # Without ZooKeeper, the workers of this node share session ownership through one
    # SQLite file, so a reconnect that lands on another worker resumes too.
    if not env.get("RELAY_ZOOKEEPER"):
        env.setdefault("RELAY_COORDINATOR_PATH", str(state / "coordinator.sqlite"))
    return env


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(manage_argv(*args), env=env, check=True)


def main() -> int:
    interrupt_on_stop_signals()
    state = Path(os.environ.get("RELAY_STATE_DIR", ROOT / ".state")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    pg: EmbeddedPostgres | None = None
    gunicorn: subprocess.Popen[bytes] | None = None
    try:
        database_url = os.environ.get("DATABASE_URL", "")
        if not database_url:
            pg = EmbeddedPostgres(state / "postgres")
            pg.start()
            pg.create_database("relay")
            database_url = pg.dsn("relay")
        port = os.environ.get("PORT", "8000")
        env = _env(database_url, state)
        env["PORT"] = port
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "collectstatic", "--noinput", "-v", "0")
        _manage(env, "seed_demo")
        password = env.get("DEMO_ADMIN_PASSWORD", "ddp-relay-demo")
        print(
            f"\nddp-relay demo\n"
            f"  Django admin   http://127.0.0.1:{port}/admin/   (user admin, password {password})\n"
            f"  DDP WebSocket  ws://127.0.0.1:{port}/websocket\n"
            f"  DDP SockJS     http://127.0.0.1:{port}/sockjs\n"
            f"  Metrics        http://127.0.0.1:{port}/metrics\n"
            f"  Database       {database_url}\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        gunicorn = subprocess.Popen(gunicorn_argv(), env=env)
        return gunicorn.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        ignore_stop_signals()
        stop_process(gunicorn, timeout=35)
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
