"""relay.client's packaging: the pure modules stay pure, the public API stays where it was,
and without websocket-client (the ``client`` extra) the error says what to install."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import relay.client
from relay.client import DDPClient, DDPClientError, connection, errors, reconnect, retry_delay

PACKAGE = Path(relay.client.__file__).parent
ROOT = PACKAGE.parent.parent
PURE = ["cache.py", "reconnect.py", "errors.py"]
#: What a pure module may import: the standard library's plain parts, the protocol, and the
#: other pure modules. Import-linter cannot say this (websocket, threading are not ours).
ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "itertools",
    "random",
    "typing",
    "relay.protocol",
    "relay.client.cache",
    "relay.client.errors",
    "relay.client.reconnect",
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("name", PURE)
def test_pure_modules_import_no_socket_nor_thread(name: str) -> None:
    names = imported(PACKAGE / name)
    outside = {n for n in names if not any(n == a or n.startswith(a + ".") for a in ALLOWED)}
    assert outside == set()


def test_public_api() -> None:
    assert relay.client.__all__ == ["DDPClient", "DDPClientError", "retry_delay"]
    assert DDPClient is connection.DDPClient
    assert DDPClientError is errors.DDPClientError
    assert retry_delay is reconnect.retry_delay
    assert "DDPClient" in dir(relay.client)
    with pytest.raises(AttributeError, match="nope"):
        _ = relay.client.nope  # type: ignore[attr-defined]


def test_without_websocket_client() -> None:
    # A fresh interpreter where ``import websocket`` fails as if it were not installed.
    script = """
import sys
sys.modules["websocket"] = None
from relay.client import DDPClientError, retry_delay
from relay.client.cache import DocumentCache
from relay.client.reconnect import plan_resume
assert retry_delay(0) == 0.01
try:
    from relay.client import DDPClient
except ImportError as exc:
    print(type(exc).__name__, exc)
else:
    raise SystemExit("DDPClient imported without websocket-client")
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("ModuleNotFoundError ")
    assert "websocket-client" in out.stdout and "ddp-relay[client]" in out.stdout
