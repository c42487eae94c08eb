"""Tools for the static deployment checks: helm, kubernetes-validate, check-jsonschema.

``make deploy-tools`` (part of ``make deps``) installs them: helm into ``.state/tools/bin``,
the two validators with the venv's ``test`` extra. A missing tool FAILS the tests that need
it in CI and under ``make test`` (``services_required()``), and skips them elsewhere, with
a banner in the terminal summary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from relay.config import Settings
from tests.deploy.helm_tool import find_helm, helm_env
from tests.fixtures.postgres import services_required

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ddp-relay"

_missing: dict[str, str] = {}


def settings_envs() -> list[str]:
    """Every env var of the relay's Settings dataclass, from the fields' metadata."""
    return [f.metadata["env"] for f in fields(Settings)]


def gunicorn_envs() -> list[str]:
    """The RELAY_* variables relay/server/gunicorn_conf.py reads from the operator: not the
    ones it sets itself for its workers (``os.environ["RELAY_HEALTH_DIR"] = ...``)."""
    source = (ROOT / "relay" / "server" / "gunicorn_conf.py").read_text()
    read = set(re.findall(r"""environ(?:\.get)?\(\s*["'](RELAY_[A-Z0-9_]+)""", source))
    own = set(re.findall(r"""environ\[\s*["'](RELAY_[A-Z0-9_]+)["']\s*\]\s*=""", source))
    return sorted(read - own)


def all_envs() -> list[str]:
    """Every RELAY_* variable a relay pod may get: the relay's settings and gunicorn's."""
    return [*settings_envs(), *gunicorn_envs()]


def require_tool(name: str, path: Path | None, hint: str) -> Path:
    """``path``, or fail (CI, ``make test``) / skip (elsewhere) the test."""
    if path is not None:
        return path
    message = f"{name} not found ({hint})"
    if services_required():
        pytest.fail(f"{message}; required here (CI or RELAY_REQUIRE_SERVICES=1)", pytrace=False)
    _missing[name] = hint
    pytest.skip(f"SKIPPED FOR LACK OF {name.upper()}: {message}")


def venv_tool(name: str) -> Path | None:
    """A console script next to this interpreter (the venv's bin), else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


@dataclass(frozen=True)
class Helm:
    binary: Path
    env: dict[str, str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *map(str, args)],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = require_tool("helm", find_helm(), "run `make deploy-tools`")
    return Helm(binary, helm_env(tmp_path_factory.mktemp("helm-home")))


@pytest.fixture(scope="session")
def kubernetes_validate() -> Path:
    return require_tool(
        "kubernetes-validate", venv_tool("kubernetes-validate"), "pip install -e '.[test]'"
    )


@pytest.fixture(scope="session")
def check_jsonschema() -> Path:
    return require_tool(
        "check-jsonschema", venv_tool("check-jsonschema"), "pip install -e '.[test]'"
    )


def run(cmd: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output (never raises on a non-zero exit)."""
    return subprocess.run(  # type: ignore[call-overload,no-any-return]
        [str(part) for part in cmd], capture_output=True, text=True, timeout=60, **kwargs
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _missing:
        terminalreporter.write_sep("!", "DEPLOY TOOLS NOT AVAILABLE", red=True, bold=True)
        for name, hint in sorted(_missing.items()):
            terminalreporter.write_line(f"Tests that need {name} were SKIPPED ({hint}).", red=True)
