"""End-to-end fixtures of this directory only: the Node.js DDP clients' toolchain.

Relays, databases and the local cluster come from ``tests/fixtures/relays.py`` (registered
in ``tests/conftest.py``); helpers the modules share are in ``tests/e2e/convergence.py``
and ``tests/e2e/reconnects.py``. This file must not start servers or define helpers that
test modules import (pytest owns conftest modules).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.postgres import services_required

NODE_DIR = Path(__file__).resolve().parent / "node"
#: What ``npm ci`` in tests/e2e/node installs (``make deps``) and the node clients need.
NPM_PACKAGES = (
    "ddp",
    "simpleddp",
    "ddp.js",
    "meteor-client-side",
    "jsdom",
    "ws",
    "isomorphic-ws",
    # The npm login libraries of tests/e2e/test_accounts_clients.py.
    "ddp-login",
    "asteroid",
    "simpleddp-plugin-login",
)


def _missing_node() -> str:
    if shutil.which("node") is None:
        return "`node` is not on PATH (apt-get install nodejs npm, or `make deps`)"
    modules = NODE_DIR / "node_modules"
    missing = [p for p in NPM_PACKAGES if not (modules / p / "package.json").exists()]
    if missing:
        return (
            f"npm packages {', '.join(missing)} are not installed in {NODE_DIR} "
            "(run `make deps`, i.e. `npm ci` there)"
        )
    return ""


@pytest.fixture(scope="session")
def node_toolchain() -> Path:
    """``tests/e2e/node``, once node and the npm DDP clients are known to be there; else
    the test fails (CI, ``RELAY_REQUIRE_SERVICES=1``) or is skipped."""
    missing = _missing_node()
    if missing:
        if services_required():
            pytest.fail(f"node DDP clients required (CI, RELAY_REQUIRE_SERVICES): {missing}")
        pytest.skip(f"NODE DDP CLIENT TESTS SKIPPED: {missing}")
    return NODE_DIR
