"""End-to-end fixtures: the example app migrated, seeded and served by real gunicorn relays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.relayproc import RelayProcess, manage


@pytest.fixture(scope="session")
def e2e_database(pg_server: Any) -> str:
    """A database of its own for the end-to-end relays, migrated and seeded once."""
    pg_server.create_database("e2e")
    url = str(pg_server.dsn("e2e"))
    manage(url, "migrate", "--noinput", "-v", "0")
    manage(url, "seed_demo")
    return url


@pytest.fixture(scope="session")
def relay_server(
    e2e_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RelayProcess]:
    """The example app under ``gunicorn -k relay.server.worker.RelayWorker`` with two workers."""
    log_path: Path = tmp_path_factory.mktemp("relay") / "relay.log"
    relay = RelayProcess(e2e_database, log_path, workers=2).start()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On an end-to-end failure, attach the relay's log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        relay = item.funcargs.get("relay_server") if hasattr(item, "funcargs") else None
        if isinstance(relay, RelayProcess):
            report.sections.append(("relay log", relay.log()[-8000:]))
