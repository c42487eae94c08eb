"""Running one Node.js client script of ``tests/e2e/node`` and reading its JSON report.

The scripts print one JSON line last (their report) and exit 0 on success; a script that
hangs past its own timeout, or prints no report, fails the test with everything it printed.
``start_watch`` starts the long-running ``watch.js`` (one npm client subscribed until its
stdin closes); the caller reads its pipes.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"


def run_report(
    argv: Sequence[str], env: Mapping[str, str], label: str, timeout: float
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``node <argv>`` in ``tests/e2e/node``; its report and the finished process."""
    try:
        proc = subprocess.run(
            ["node", *argv],
            cwd=NODE_DIR,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{label}: node did not exit (its own hard timeout failed): {exc}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        report: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(
            f"{label}: no JSON report (exit {proc.returncode})\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return report, proc


def start_watch(
    library: str,
    url: str,
    transport: str,
    publication: str,
    params: Sequence[Any],
    env: Mapping[str, str],
) -> subprocess.Popen[str]:
    """``node watch.js <library> <url> <transport> <publication> <params>`` with ``env``
    on top of this process's, its three pipes open (text)."""
    argv = ["node", "watch.js", library, url, transport, publication, json.dumps(list(params))]
    return subprocess.Popen(
        argv,
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
