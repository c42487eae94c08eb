"""Start the example app under real gunicorn gevent relay workers, for end-to-end tests.

The relay runs in its own process (monkey-patched by its worker); the test process stays
unpatched and talks to it over loopback, as a user's client would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from relay.dev.launch import ROOT, example_env, gunicorn_argv, manage_argv, relay_env
from relay.dev.processes import (
    free_port,
    http_status,
    log_end,
    spawn,
    stop_process,
    wait_until_ready,
)

__all__ = ["ROOT", "RelayProcess", "example_env", "free_port", "manage"]


def manage(database_url: str, *args: str) -> str:
    proc = subprocess.run(
        manage_argv(*args),
        env=example_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class RelayProcess:
    """gunicorn serving ``relay.server.app:create_app()`` on a free loopback port."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        *,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/websocket"
        self.log_path = log_path
        extra = {
            **relay_env(self.port, workers=workers, graceful_timeout=5, log_level="info"),
            # The workers of one relay share session ownership (resume across workers).
            "RELAY_COORDINATOR_PATH": str(log_path.parent / f"coordinator-{self.port}.sqlite"),
            **(env or {}),
        }
        self._env = example_env(database_url, extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RelayProcess:
        self.proc = spawn(
            gunicorn_argv(), self.log_path, env=self._env, cwd=ROOT, new_session=False
        )
        wait_until_ready(
            self.proc,
            lambda: http_status(self.url + "/readyz") == 200,
            timeout,
            name="relay",
            log_path=self.log_path,
        )
        return self

    def log(self) -> str:
        return log_end(self.log_path)

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
