"""docker-compose.yml and deploy/haproxy.cfg, checked statically (no Docker engine here).

The compose file is validated against the compose-spec JSON schema
(``check-jsonschema --builtin-schema vendor.compose-spec``) and then read to check the
cluster it describes: PostgreSQL 15, a 3-node ZooKeeper ensemble, a one-shot migration, two
relays with /readyz health checks, and HAProxy balancing them round robin without
stickiness. ``haproxy -c`` runs when haproxy is installed (not yet a `make deps` tool).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, all_envs, run

COMPOSE = ROOT / "docker-compose.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY_IN_CONTAINER = "/usr/local/etc/haproxy/haproxy.cfg"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def relay_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services built from the Dockerfile that serve (not the one-shot migration)."""
    return {
        name: svc
        for name, svc in services.items()
        if svc.get("build") in (".", {"context": "."}) and "command" not in svc
    }


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """``{"backend relays": [lines...], ...}`` with comments and blank lines dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            assert current is not None, f"directive outside a section: {raw!r}"
            current.append(" ".join(line.split()))
    return sections


# --- compose ------------------------------------------------------------------------------


def test_compose_matches_the_compose_spec(check_jsonschema: Path) -> None:
    result = run([check_jsonschema, "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_an_unknown_key(check_jsonschema: Path, tmp_path: Path) -> None:
    """Control: the schema check really rejects a misspelt key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    interval: 5s\n", "    intervall: 5s\n", 1))
    result = run([check_jsonschema, "--builtin-schema", "vendor.compose-spec", broken])
    assert result.returncode != 0, result.stdout


def test_postgres_and_migrations(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    migrate = services["migrate"]
    assert migrate["build"] == "."
    assert migrate["command"][:3] == ["python", "example/manage.py", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["environment"]["DATABASE_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in migrate["environment"]["DATABASE_URL"]


def test_zookeeper_ensemble_of_three(services: dict[str, dict[str, Any]]) -> None:
    nodes = {name: svc for name, svc in services.items() if svc.get("image") == "zookeeper:3.8"}
    assert sorted(nodes) == ["zk1", "zk2", "zk3"]
    ids = {svc["environment"]["ZOO_MY_ID"] for svc in nodes.values()}
    assert ids == {"1", "2", "3"}
    for name, svc in nodes.items():
        servers = svc["environment"]["ZOO_SERVERS"].split()
        assert sorted(servers) == [f"server.{i}=zk{i}:2888:3888;2181" for i in (1, 2, 3)], name
        assert svc["healthcheck"]["test"]


def test_two_relays_with_readyz_health_checks(services: dict[str, dict[str, Any]]) -> None:
    relays = relay_services(services)
    assert sorted(relays) == ["relay1", "relay2"]
    known = set(all_envs())
    for name, relay in relays.items():
        assert "/readyz" in " ".join(relay["healthcheck"]["test"]), name
        assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = relay["environment"]
        assert env["RELAY_WSGI_APP"] == "example.wsgi:application"
        assert env["DJANGO_SETTINGS_MODULE"] == "example.settings"
        assert env["RELAY_ZOOKEEPER"] == "zk1:2181,zk2:2181,zk3:2181"
        # No misspelt setting silently ignored by the relay.
        assert {key for key in env if key.startswith("RELAY_")} <= known, name
        assert "ports" not in relay, f"{name}: reach relays through the load balancer"
        # The container outlives gunicorn's graceful drain before Docker's SIGKILL.
        graceful = float(env.get("RELAY_GRACEFUL_TIMEOUT", 30))
        assert seconds(relay["stop_grace_period"]) > graceful, name
        assert relay["ulimits"]["nofile"]["soft"] > 10_000, name


def test_load_balancer_fronts_the_relays_on_port_8000(
    services: dict[str, dict[str, Any]],
) -> None:
    (lb,) = [svc for svc in services.values() if str(svc.get("image", "")).startswith("haproxy:")]
    assert "8000:8000" in lb["ports"]
    assert f"./deploy/haproxy.cfg:{HAPROXY_IN_CONTAINER}:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == set(relay_services(services))


# --- haproxy.cfg --------------------------------------------------------------------------


def test_haproxy_round_robin_without_stickiness(services: dict[str, dict[str, Any]]) -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    frontends = [body for name, body in sections.items() if name.startswith("frontend ")]
    assert len(frontends) == 1
    assert "bind :8000" in frontends[0]
    (backend_name,) = [
        line.split()[1] for line in frontends[0] if line.startswith("default_backend ")
    ]
    backend = sections[f"backend {backend_name}"]
    assert "balance roundrobin" in backend
    everything = [line for body in sections.values() for line in body]
    for line in everything:
        keyword = line.split()[0]
        assert keyword not in ("cookie", "stick", "stick-table", "hash-type"), line
        assert not (keyword == "balance" and line != "balance roundrobin"), line
    servers = {line.split()[1]: line.split() for line in backend if line.startswith("server ")}
    assert {name: words[2] for name, words in servers.items()} == {
        name: f"{name}:8000" for name in relay_services(services)
    }
    for words in servers.values():
        assert "check" in words
        assert "cookie" not in words
    assert "option httpchk GET /readyz" in backend
    assert any(line.startswith("timeout tunnel ") for line in sections["defaults"])


def test_haproxy_accepts_the_config() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (`apt-get install haproxy`); checked statically")
    result = run([haproxy, "-c", "-f", HAPROXY_CFG])
    assert result.returncode == 0, result.stdout + result.stderr
