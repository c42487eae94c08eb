"""docker-compose.yml and what it mounts (deploy/haproxy.cfg, deploy/prometheus.yml, Grafana's
provisioning and dashboard), checked without a Docker engine, and kept in step with
``make cluster`` (``devstack.cluster``).

The compose file is validated against the compose-spec JSON schema (``check-jsonschema
--builtin-schema vendor.compose-spec``) and by docker-compose itself (``config -q``; the
v1 client needs no engine for that), then read: PostgreSQL, 3 ZooKeeper nodes, a
one-shot migration, three DDP-only relays with an internal port and /readyz health
checks there, the web tier, HAProxy routing DDP to the relays and the rest to the web,
Prometheus scraping the internal ports (``promtool check config``), Grafana provisioned
with the dashboard, locust under a profile. ``haproxy -c`` checks both HAProxy configs.

Every dashboard query names metrics the relay exports; they are run for real against
``make cluster`` under locust in ``tests/e2e/test_cluster.py`` (Grafana itself is not
installable here).

Compose and ``make cluster`` must agree on what matters, each read from its own source:
the number of relays, the balancer's routing and checks, and the relays' settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.cluster import Cluster
from relay.metrics import get_metrics
from tests.deploy.conftest import ROOT, all_envs, run
from tests.deploy.prometheus_server import DASHBOARD, dashboard_queries
from tests.fixtures.postgres import services_required
from tests.fixtures.relays import require_cluster_tools

COMPOSE = ROOT / "docker-compose.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
HAPROXY_IN_CONTAINER = "/usr/local/etc/haproxy/haproxy.cfg"
#: Settings whose values are addresses, which differ by design between containers and
#: loopback; the other RELAY_* values of a relay must be equal in compose and the cluster.
ADDRESS_SETTINGS = ("RELAY_INTERNAL_HOST", "RELAY_INTERNAL_PORT", "RELAY_ZOOKEEPER")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def relay_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run ``ddp-relay serve``."""
    return {name: svc for name, svc in services.items() if svc.get("command") == ["serve"]}


def built_here(svc: dict[str, Any]) -> bool:
    return svc.get("build") == {"context": ".", "target": "example"}


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


def routing(text: str) -> dict[str, Any]:
    """What a balancer config does, without its addresses: for the one frontend that is
    not a stats page, the paths each backend gets and the default backend; per
    backend, its balance and health-check lines and how many servers it has, each with
    ``check``; and every stickiness keyword found anywhere (there must be none)."""
    sections = haproxy_sections(text)
    (frontend,) = [
        body
        for name, body in sections.items()
        if name.startswith("frontend ") and not any(line.startswith("stats ") for line in body)
    ]
    # Lines of one acl name are ORed: ``{name: ["path_beg /sockjs", "path /readyz", ...]}``.
    acls: dict[str, list[str]] = {}
    for line in frontend:
        if line.startswith("acl "):
            _, name, matcher, *values = line.split()
            assert matcher in ("path", "path_beg"), line
            acls.setdefault(name, []).extend(f"{matcher} {value}" for value in values)
    routes = {}
    for line in frontend:
        if line.startswith("use_backend "):
            _, backend, condition, acl = line.split()
            assert condition == "if", line
            routes[backend] = sorted(acls[acl])
    (default,) = [line.split()[1] for line in frontend if line.startswith("default_backend ")]
    backends = {}
    for name, body in sections.items():
        if name.startswith("backend "):
            servers = [line.split() for line in body if line.startswith("server ")]
            assert all("check" in words for words in servers), name
            checks = ("balance", "option h", "http-check")
            backends[name.split()[1]] = {
                "checks": [line for line in body if line.startswith(checks)],
                "servers": len(servers),
            }
    sticky = [
        line
        for body in sections.values()
        for line in body
        if line.split()[0] in ("cookie", "stick", "stick-table", "hash-type")
        or (line.startswith("balance ") and line != "balance roundrobin")
        or " cookie " in line
    ]
    return {
        "routes": routes,
        "default": default,
        "backends": backends,
        "sticky": sticky,
        "tunnel": any(line.startswith("timeout tunnel ") for line in sections["defaults"]),
        "forwardfor": "option forwardfor" in frontend,
    }


# --- compose: the file itself ---------------------------------------------------------------


def test_compose_matches_the_compose_spec(check_jsonschema: Path) -> None:
    result = run([check_jsonschema, "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_catches_an_unknown_key(check_jsonschema: Path, tmp_path: Path) -> None:
    """Control: the schema check really rejects a misspelt key."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    interval: 5s\n", "    intervall: 5s\n", 1))
    result = run([check_jsonschema, "--builtin-schema", "vendor.compose-spec", broken])
    assert result.returncode != 0, result.stdout


def _docker_compose() -> str | None:
    found = shutil.which("docker-compose")
    if found is None and services_required():
        pytest.fail("docker-compose (v1) is missing: apt-get install --no-install-recommends "
                    "docker-compose", pytrace=False)  # fmt: skip
    return found


def test_docker_compose_accepts_the_file() -> None:
    binary = _docker_compose()
    if binary is None:
        pytest.skip("SKIPPED: no docker-compose (apt-get install docker-compose); schema-checked")
    env = {**os.environ, "DJANGO_SECRET_KEY": "x" * 50}
    result = run([binary, "-f", COMPOSE, "config", "-q"], env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([binary, "-f", COMPOSE, "--profile", "loadtest", "config", "--services"], env=env)
    assert result.returncode == 0 and "locust" in result.stdout.split(), result.stderr


def test_postgres_and_migrations(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    migrate = services["migrate"]
    assert built_here(migrate)
    assert migrate["command"] == ["migrate"]  # ddp-relay migrate (the image's ENTRYPOINT)
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert "@postgres:5432/" in migrate["environment"]["DATABASE_URL"]


def test_zookeeper_ensemble_of_three(services: dict[str, dict[str, Any]]) -> None:
    nodes = {name: svc for name, svc in services.items() if svc.get("image") == "zookeeper:3.8"}
    assert sorted(nodes) == ["zk1", "zk2", "zk3"]
    assert {svc["environment"]["ZOO_MY_ID"] for svc in nodes.values()} == {"1", "2", "3"}
    for name, svc in nodes.items():
        servers = svc["environment"]["ZOO_SERVERS"].split()
        assert sorted(servers) == [f"server.{i}=zk{i}:2888:3888;2181" for i in (1, 2, 3)], name
        assert svc["healthcheck"]["test"]


def test_three_ddp_only_relays_healthy_on_their_internal_port(
    services: dict[str, dict[str, Any]],
) -> None:
    relays = relay_services(services)
    assert sorted(relays) == ["relay1", "relay2", "relay3"]
    known = set(all_envs())
    for name, relay in relays.items():
        assert built_here(relay), name
        env = relay["environment"]
        assert env["RELAY_WSGI_APP"] == "", name
        internal = env["RELAY_INTERNAL_PORT"]
        assert int(internal) > 0 and env["RELAY_INTERNAL_HOST"] == "0.0.0.0"
        assert f"127.0.0.1:{internal}/readyz" in " ".join(relay["healthcheck"]["test"]), name
        assert env["RELAY_ZOOKEEPER"] == "zk1:2181,zk2:2181,zk3:2181"
        assert {f"zk{i}" for i in (1, 2, 3)} <= set(relay["depends_on"])
        assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        # No misspelt setting silently ignored by the relay.
        assert {key for key in env if key.startswith("RELAY_")} <= known, name
        assert "ports" not in relay, f"{name}: reach relays through the load balancer"
        graceful = float(env.get("RELAY_GRACEFUL_TIMEOUT", 30))
        assert seconds(relay["stop_grace_period"]) > graceful, name
        assert relay["ulimits"]["nofile"]["soft"] > 10_000, name
        assert any("/tmp/prometheus-multiproc" in t for t in relay["tmpfs"])


def test_the_web_tier_serves_the_project(services: dict[str, dict[str, Any]]) -> None:
    web = services["web"]
    assert built_here(web)
    assert web["command"][0] == "web" and "0.0.0.0:8000" in web["command"]
    assert web["environment"]["RELAY_WSGI_APP"] == "example.wsgi:application"
    relay_env = relay_services(services)["relay1"]["environment"]
    # One SECRET_KEY and one database for both tiers (sessions made by one are read by
    # the other).
    for key in ("DJANGO_SECRET_KEY", "DATABASE_URL"):
        assert web["environment"][key] == relay_env[key], key
    assert "/livez" in " ".join(web["healthcheck"]["test"])
    assert "ports" not in web


def test_the_balancer_is_the_only_public_port(services: dict[str, dict[str, Any]]) -> None:
    (lb,) = [svc for svc in services.values() if str(svc.get("image", "")).startswith("haproxy:")]
    assert "8000:8000" in lb["ports"]
    assert f"./deploy/haproxy.cfg:{HAPROXY_IN_CONTAINER}:ro" in lb["volumes"]
    assert set(lb["depends_on"]) == {*relay_services(services), "web"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if svc is not lb or port != "8000:8000":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to all"


def test_prometheus_scrapes_every_relays_internal_port(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = sorted(t for group in job["static_configs"] for t in group["targets"])
    relays = relay_services(services)
    assert targets == sorted(
        f"{name}:{svc['environment']['RELAY_INTERNAL_PORT']}" for name, svc in relays.items()
    )


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if services_required():
            pytest.fail("promtool is missing: apt-get install prometheus", pytrace=False)
        pytest.skip("SKIPPED: no promtool (apt-get install prometheus)")
    result = run([promtool, "check", "config", PROMETHEUS_YML])
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    (datasource,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "ddp-relay.yml").read_text()
    )["providers"]
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_locust_runs_only_under_its_profile(services: dict[str, dict[str, Any]]) -> None:
    locust = services["locust"]
    assert locust["profiles"] == ["loadtest"]
    assert "loadtest/locustfile.py" in " ".join(locust["entrypoint"])
    assert "http://lb:8000" in " ".join(locust["entrypoint"])
    assert all(not svc.get("profiles") for name, svc in services.items() if name != "locust")


# --- the dashboard's queries ------------------------------------------------------------------


def exposed_metric_names() -> set[str]:
    """The sample names relay/metrics.py exposes (counters end in _total, histograms have
    _bucket, _count and _sum), read from the metric objects themselves."""
    names = set()
    for metric in vars(get_metrics()).values():
        if not hasattr(metric, "describe"):  # not a metric (e.g. the method label set)
            continue
        for family in metric.describe():
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
            else:
                names.add(family.name)
    return names


def test_every_dashboard_query_names_metrics_the_relay_has() -> None:
    known = exposed_metric_names()
    queries = dashboard_queries()
    assert len(queries) >= 10
    wanted = {"sessions", "messages", "method", "change", "backfill", "resumes", "disconnects"}
    assert all(any(w in expr for _, expr in queries) for w in wanted)
    for title, expr in queries:
        used = set(re.findall(r"\bddp_relay_[a-z_]+\b", expr))
        assert used and used <= known, f"{title}: {sorted(used - known)} not in relay/metrics.py"


# --- compose and `make cluster` agree ---------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_plan(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    """``make cluster``'s cluster, configured but not started."""
    require_cluster_tools()
    return Cluster(tmp_path_factory.mktemp("cluster"))


def test_compose_and_make_cluster_run_as_many_relays(
    services: dict[str, dict[str, Any]], cluster_plan: Cluster
) -> None:
    assert len(cluster_plan.relays) == len(relay_services(services))
    assert len(cluster_plan.zookeepers) == len(
        [s for s in services.values() if str(s.get("image", "")).startswith("zookeeper:")]
    )


def test_compose_and_make_cluster_route_alike(cluster_plan: Cluster) -> None:
    cluster_plan.state_dir.mkdir(parents=True, exist_ok=True)
    cluster_plan._write_haproxy_config()
    compose = routing(HAPROXY_CFG.read_text())
    loopback = routing(cluster_plan.haproxy_config.read_text())
    assert compose == loopback
    assert compose["routes"] == {
        "relays": ["path /readyz", "path_beg /sockjs", "path_beg /websocket"]
    }
    assert compose["default"] == "web"
    assert compose["backends"]["relays"]["servers"] == len(cluster_plan.relays)
    assert "option httpchk GET /readyz" in compose["backends"]["relays"]["checks"]
    assert "balance roundrobin" in compose["backends"]["relays"]["checks"]
    assert compose["sticky"] == [] and compose["tunnel"] and compose["forwardfor"]


def test_compose_and_make_cluster_give_relays_the_same_settings(
    services: dict[str, dict[str, Any]], cluster_plan: Cluster
) -> None:
    compose_env = {
        k: str(v)
        for k, v in relay_services(services)["relay1"]["environment"].items()
        if k.startswith("RELAY_")
    }
    # What the cluster sets, not what it inherits from whoever runs the test.
    loopback_env = {
        k: v
        for k, v in cluster_plan.relay_environment(cluster_plan.relays[0]).items()
        if k.startswith("RELAY_") and os.environ.get(k) != v
    }
    assert set(compose_env) == set(loopback_env)
    for key in set(compose_env) - set(ADDRESS_SETTINGS):
        assert compose_env[key] == loopback_env[key], key
    for env in (compose_env, loopback_env):
        assert int(env["RELAY_INTERNAL_PORT"]) > 0
        assert len(env["RELAY_ZOOKEEPER"].split(",")) == len(cluster_plan.zookeepers)


@pytest.mark.parametrize("which", ["compose", "make cluster"])
def test_haproxy_accepts_the_config(which: str, cluster_plan: Cluster) -> None:
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    if haproxy is None:
        if services_required():
            pytest.fail("haproxy is missing: apt-get install haproxy", pytrace=False)
        pytest.skip("SKIPPED: no haproxy (apt-get install haproxy)")
    if which == "compose":
        config = HAPROXY_CFG
    else:
        cluster_plan.state_dir.mkdir(parents=True, exist_ok=True)
        cluster_plan._write_haproxy_config()
        config = cluster_plan.haproxy_config
    result = run([haproxy, "-c", "-f", config])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stickiness_check_sees_a_cookie() -> None:
    """Control: ``routing`` really reports stickiness."""
    sticky = HAPROXY_CFG.read_text().replace(
        "balance roundrobin", "balance roundrobin\n    cookie SERVERID insert indirect", 1
    )
    assert routing(sticky)["sticky"] == ["cookie SERVERID insert indirect"]


def test_compose_uses_the_console_script(services: dict[str, dict[str, Any]]) -> None:
    """Every service built here runs a `ddp-relay` command (the image's ENTRYPOINT)."""
    commands = {name: svc["command"][0] for name, svc in services.items() if built_here(svc)}
    assert commands == {
        "migrate": "migrate", "relay1": "serve", "relay2": "serve", "relay3": "serve",
        "web": "web",
    }  # fmt: skip
