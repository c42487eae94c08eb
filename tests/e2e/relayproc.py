"""Start the example app under real gunicorn gevent relay workers, for end-to-end tests.

The relay runs in its own process (monkey-patched by its worker); the test process stays
unpatched and talks to it over loopback, as a user's client would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "example"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "DJANGO_SETTINGS_MODULE": "example.settings",
            "RELAY_WSGI_APP": "example.wsgi:application",
            "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)]),
        }
    )
    env.update(extra or {})
    return env


def manage(database_url: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE / "manage.py"), *args],
        env=example_env(database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


class RelayProcess:
    """gunicorn serving ``relay.app:create_app()`` on a free loopback port."""

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
            "PORT": str(self.port),
            "RELAY_WORKERS": str(workers),
            "RELAY_GRACEFUL_TIMEOUT": "5",
            "RELAY_LOG_LEVEL": "info",
            # The workers of one relay share session ownership (resume across workers).
            "RELAY_COORDINATOR_PATH": str(log_path.parent / f"coordinator-{self.port}.sqlite"),
            **(env or {}),
        }
        self._env = example_env(database_url, extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> RelayProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:relay.gunicorn_conf",
                "relay.app:create_app()",
            ],
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"relay did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
