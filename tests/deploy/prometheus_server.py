"""A real Prometheus (Debian's ``prometheus``) for the tests: the compose config, pointed
at test relays, its query API, and the dashboard's queries.

``running_prometheus`` starts one on a free loopback port with the given config (a dict,
as ``deploy/prometheus.yml`` parses) and stops it when the block ends; ``query`` asks it
for an instant vector. Not a test module: ``test_compose``, ``test_alerts`` and
``tests/e2e/test_cluster`` share it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.processes import free_port, spawn, stop_process, wait_until_ready
from tests.fixtures.services import services_required

ROOT = Path(__file__).resolve().parents[2]
#: The compose stack's Prometheus configuration, which the tests point at their relay.
PROMETHEUS_YML = ROOT / "deploy" / "prometheus.yml"
#: The Grafana dashboard the compose stack provisions.
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ddp-relay.json"


def dashboard_queries() -> list[tuple[str, str]]:
    """Every (panel title, PromQL expression) of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def compose_config(*targets: str, interval: str = "1s") -> dict[str, Any]:
    """The compose Prometheus config, scraping only ``targets`` (host:port each) every
    ``interval``."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval=interval, evaluation_interval=interval)
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": list(targets)}]
    return config


def prometheus_binary() -> str:
    """``prometheus`` on PATH; missing fails under ``make test``/CI, else skips."""
    binary = shutil.which("prometheus")
    if binary is None:
        if services_required():
            pytest.fail("prometheus is missing: apt-get install prometheus", pytrace=False)
        pytest.skip("SKIPPED: no prometheus (apt-get install prometheus)")
    return binary


@contextlib.contextmanager
def running_prometheus(config: dict[str, Any], directory: Path) -> Iterator[str]:
    """A Prometheus with ``config`` (data and log in ``directory``), up and scraping a
    target; yields its URL."""
    binary = prometheus_binary()
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    proc = spawn(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log,
        new_session=False,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            proc, lambda: bool(query(url, "up == 1")), 60, name="prometheus", log_path=log
        )
        yield url
    finally:
        stop_process(proc, timeout=15)


def api(url: str, path: str, **params: str) -> Any:
    """``/api/v1/<path>``'s data, or None while Prometheus does not answer."""
    encoded = f"?{urllib.parse.urlencode(params)}" if params else ""
    try:
        with urllib.request.urlopen(f"{url}/api/v1/{path}{encoded}", timeout=5) as resp:
            body = json.loads(resp.read())
    except OSError:
        return None
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, expr: str) -> list[Any]:
    """The instant vector ``expr`` evaluates to now ([] when Prometheus is not up yet)."""
    data = api(url, "query", query=expr)
    return [] if data is None else list(data["result"])
