"""The Helm chart (helm/ddp-relay), checked statically: lint, render, schema-validate.

No cluster: ``helm lint --strict`` and ``helm template`` run offline, every rendered
manifest goes through ``kubernetes-validate --strict`` against Kubernetes 1.30's schemas,
and the manifests are then read with PyYAML to check what the chart promises: every relay
setting (``relay.config.Settings`` and the ``RELAY_*`` that ``relay.server.gunicorn_conf`` reads)
is a value that lands in the ConfigMap, probes hit /healthz and /readyz, the pod outlives
its drain, and values.schema.json rejects wrong types.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import Settings
from tests.deploy.conftest import (
    CHART,
    ROOT,
    Helm,
    all_envs,
    gunicorn_envs,
    run,
    settings_envs,
)

RELEASE = "rel"
FULLNAME = f"{RELEASE}-ddp-relay"

# Values whose key does not follow relay.<camelCase of the env suffix>.
VALUE_PATH_EXCEPTIONS = {"RELAY_ZOOKEEPER": ("coordinator", "zookeeper")}

# Settings holding credentials: they reach the pod from a Secret, never the ConfigMap.
SECRET_ENVS = {"RELAY_DATABASE_URL"}

# Non-default test values for settings whose type alone does not give a valid one.
SETTINGS_TEST_VALUES: dict[str, Any] = {
    "RELAY_DATABASE_URL": "postgresql://listener:pw@db-direct:5432/relay",
    "RELAY_ZOOKEEPER": "zk1:2181,zk2:2181,zk3:2181/ddp",
    "RELAY_COORDINATOR_PATH": "/var/run/ddp-relay/coordinator.sqlite",
    # Read by the relay (its socket limit) and by gunicorn_conf.py: one value for both.
    "RELAY_WORKER_CONNECTIONS": 12345,
}

# Chart defaults that differ from the relay's (documented in values.yaml).
CHART_DEFAULT_EXCEPTIONS: dict[str, Any] = {
    "wsgi_app": "example.wsgi:application",
    "coordinator_path": "/tmp/ddp-relay/coordinator.sqlite",
}

DEV_DATABASE_URL = "postgresql://relay:relay@postgres:5432/relay"

# Non-default test values for the RELAY_* variables relay/server/gunicorn_conf.py reads.
GUNICORN_TEST_VALUES: dict[str, Any] = {
    "RELAY_WORKERS": 3,
    "RELAY_WORKER_CONNECTIONS": 12345,
    "RELAY_GRACEFUL_TIMEOUT": 45,
    "RELAY_ACCESS_LOG": "-",
    "RELAY_LOG_LEVEL": "debug",
}


# --- helpers ------------------------------------------------------------------------------


def configmap_envs() -> set[str]:
    return set(all_envs()) - SECRET_ENVS


def value_path(env: str) -> tuple[str, ...]:
    """relay.maxMessageBytes for RELAY_MAX_MESSAGE_BYTES (the chart's naming rule)."""
    if env in VALUE_PATH_EXCEPTIONS:
        return VALUE_PATH_EXCEPTIONS[env]
    first, *rest = env.removeprefix("RELAY_").lower().split("_")
    return ("relay", first + "".join(part.capitalize() for part in rest))


def nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for key, value in d.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def non_default_settings() -> dict[str, Any]:
    """A valid, non-default value for each Settings field (keyed by env var)."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        env = f.metadata["env"]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        if env in SETTINGS_TEST_VALUES:
            out[env] = SETTINGS_TEST_VALUES[env]
        elif isinstance(default, bool):
            out[env] = not default
        elif isinstance(default, int):
            out[env] = default + 7
        elif isinstance(default, float):
            out[env] = default + 0.5
        elif isinstance(default, tuple):
            out[env] = ["https://a.example", "https://b.example"]
        else:
            out[env] = f"custom_{f.name}.module:factory"
    return out


class Manifests:
    def __init__(self, text: str) -> None:
        self.text = text
        self.docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def configmap(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap")["data"]
        return data

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["spec"]["containers"]
        return dict(container)

    def job_container(self) -> dict[str, Any]:
        (container,) = self.one("Job")["spec"]["template"]["spec"]["containers"]
        return dict(container)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_environment(
    manifests: Manifests,
    container: dict[str, Any] | None = None,
    existing_secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """The environment a container would see: envFrom and env resolved against the rendered
    ConfigMaps and Secrets (plus ``existing_secrets``, the ones the user manages)."""
    container = manifests.container if container is None else container
    configmaps = {c["metadata"]["name"]: c["data"] for c in manifests.all("ConfigMap")}
    secrets = {s["metadata"]["name"]: s["stringData"] for s in manifests.all("Secret")}
    secrets.update(existing_secrets or {})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


# --- fixtures -----------------------------------------------------------------------------


Render = Callable[..., Manifests]


@pytest.fixture(scope="module")
def values_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Path]]:
    directory = tmp_path_factory.mktemp("values")
    counter = iter(range(10_000))

    def write(values: dict[str, Any]) -> Path:
        path = directory / f"values-{next(counter)}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    yield write


@pytest.fixture(scope="module")
def helm_template(helm: Helm, values_file: Callable[..., Path]) -> Callable[..., Any]:
    """``helm template`` with values (dict); the CompletedProcess."""

    def template(values: dict[str, Any] | None = None, chart: Path = CHART) -> Any:
        args: list[str | Path] = ["template", RELEASE, chart, "--namespace", "relays"]
        if values:
            args += ["--values", values_file(values)]
        return helm.run(*args)

    return template


@pytest.fixture(scope="module")
def render(helm_template: Callable[..., Any]) -> Render:
    """Rendered manifests for values (memoised: the same values render once)."""
    cache: dict[str, Manifests] = {}

    def _render(values: dict[str, Any] | None = None) -> Manifests:
        key = json.dumps(values or {}, sort_keys=True)
        if key not in cache:
            result = helm_template(values)
            assert result.returncode == 0, result.stderr
            cache[key] = Manifests(result.stdout)
        return cache[key]

    return _render


# Every RELAY_* setting away from its default.
SETTINGS_VALUES: dict[str, Any] = merge(
    *(nested(value_path(env), v) for env, v in non_default_settings().items()),
    *(nested(value_path(env), v) for env, v in GUNICORN_TEST_VALUES.items()),
    {"coordinator": {"zookeeper": "zk1:2181,zk2:2181,zk3:2181/ddp"}},
)

# Every optional part on (the ServiceMonitor needs relay.metrics).
FULL_VALUES: dict[str, Any] = merge(
    SETTINGS_VALUES,
    {
        "relay": {"metrics": True},
        "database": {
            "existingSecret": "relay-db",
            "secretKey": "url",
            "changeStreamSecretKey": "listen-url",
        },
        "ingress": {
            "enabled": True,
            "hosts": ["ddp.example.com"],
            "alb": {"certificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/x"},
        },
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "replicaCount": 3,
        "preStopSleepSeconds": 15,
        "extraEnv": [{"name": "DJANGO_SECRET_KEY", "value": "s"}],
        "extraEnvFrom": [{"secretRef": {"name": "django"}}],
        "podDisruptionBudget": {"minAvailable": 2},
        "migrations": {"command": ["python", "manage.py", "migrate", "--noinput"]},
        "django": {"settingsModule": "mysite.settings"},
    },
)


@pytest.fixture(scope="module")
def default(render: Render) -> Manifests:
    return render()


@pytest.fixture(scope="module")
def settings(render: Render) -> Manifests:
    return render(SETTINGS_VALUES)


@pytest.fixture(scope="module")
def full(render: Render) -> Manifests:
    return render(FULL_VALUES)


# --- lint and schema validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "values", [None, SETTINGS_VALUES, FULL_VALUES], ids=["default", "settings", "full"]
)
def test_helm_lint_strict(
    helm: Helm, values_file: Callable[..., Path], values: dict[str, Any] | None
) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART]
    if values:
        args += ["--values", values_file(values)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_manifests_pass_kubernetes_validate_strict(
    kubernetes_validate: Path,
    default: Manifests,
    settings: Manifests,
    full: Manifests,
    tmp_path: Path,
) -> None:
    renders = {"default": default, "settings": settings, "full": full}
    files = []
    for name, manifests in renders.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifests.text)
        files.append(path)
    result = run([kubernetes_validate, "--strict", "-k", "1.30.0", *files])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every kind was checked against a schema, except the operator's CRD (checked below).
    for line in output.splitlines():
        if "Couldn't find schema" in line:
            assert "ServiceMonitor" in line, line
    documents = sum(len(manifests.docs) for manifests in renders.values())
    assert output.count("passed for resource") == documents - 1


def test_kubernetes_validate_catches_a_broken_manifest(
    kubernetes_validate: Path, default: Manifests, tmp_path: Path
) -> None:
    """Control: the validator really rejects wrong types and unknown fields."""
    deployment = default.one("Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "three"
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = run([kubernetes_validate, "--strict", "-k", "1.30.0", path])
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "three"}, "replicaCount"),
        ({"relay": {"maxMessageBytes": "1MB"}}, "relay.maxMessageBytes"),
        ({"relay": {"permessageDeflate": "yes"}}, "relay.permessageDeflate"),
        ({"relay": {"allowedOrigins": "*"}}, "relay.allowedOrigins"),
        ({"relay": {"workers": 0}}, "relay.workers"),
        ({"relay": {"heartbeatInterval": "soon"}}, "relay.heartbeatInterval"),
        ({"relay": {"maxMesageBytes": 1}}, "maxMesageBytes"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        ({"relay": {"databaseUrl": "mysql://x"}}, "relay.databaseUrl"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_schema_rejects_wrong_values(
    helm: Helm, values_file: Callable[..., Path], values: dict[str, Any], complaint: str
) -> None:
    result = helm.run("lint", "--strict", CHART, "--values", values_file(values))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert complaint in output, output


def test_decimal_settings_may_come_from_set(helm: Helm) -> None:
    """``--set`` passes 2.5 as a string: the schema accepts numeric strings for decimals."""
    result = helm.run(
        "template", RELEASE, CHART, "--set", "relay.heartbeatInterval=2.5",
        "--show-only", "templates/configmap.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"]["RELAY_HEARTBEAT_INTERVAL"] == "2.5"


# --- relay settings <-> values <-> ConfigMap ----------------------------------------------


def test_values_have_exactly_one_key_per_relay_setting() -> None:
    """relay.* holds exactly the relay's settings (a new Settings field fails here)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = {value_path(env) for env in all_envs()}
    relay_keys = {("relay", key) for key in values["relay"]}
    assert relay_keys == {p for p in expected if p[0] == "relay"}
    for path in expected:
        node = values
        for key in path:
            assert key in node, f"values.yaml lacks {'.'.join(path)}"
            node = node[key]


def test_values_yaml_documents_every_env_var() -> None:
    text = (CHART / "values.yaml").read_text()
    for env in all_envs():
        dotted = ".".join(value_path(env))
        assert re.search(rf"^#\s+{re.escape(dotted)}\s+{env}\b", text, re.M), (
            f"values.yaml's mapping table lacks the row `{dotted}  {env}`"
        )


def test_every_gunicorn_env_var_has_a_test_value() -> None:
    assert set(gunicorn_envs()) == set(GUNICORN_TEST_VALUES), (
        "relay/server/gunicorn_conf.py reads other RELAY_* variables than this test knows: add a "
        "value to the chart (values.yaml, schema, ConfigMap) and to GUNICORN_TEST_VALUES"
    )


def test_every_relay_setting_is_settable_and_reaches_the_pod(settings: Manifests) -> None:
    data = settings.configmap
    wanted = non_default_settings()
    for env in set(settings_envs()) - SECRET_ENVS:
        assert env in data, f"{env} missing from the ConfigMap"
    pod_env = pod_environment(settings)
    parsed = Settings.from_env(pod_env)
    for f in fields(Settings):
        value = wanted[f.metadata["env"]]
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(parsed, f.name) == expected, f.metadata["env"]
    for env, value in GUNICORN_TEST_VALUES.items():
        assert data[env] == str(value), env
    assert data["RELAY_ZOOKEEPER"] == "zk1:2181,zk2:2181,zk3:2181/ddp"
    # Integers stay integers (Helm's float64 would print 8388615 as 8.388615e+06).
    assert data["RELAY_SEND_BUFFER_BYTES"] == str(wanted["RELAY_SEND_BUFFER_BYTES"])
    assert all(isinstance(v, str) for v in data.values())


@pytest.mark.parametrize("which", ["default", "settings"])
def test_configmap_holds_only_relay_settings(which: str, request: pytest.FixtureRequest) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    assert set(manifests.configmap) == configmap_envs()


def test_chart_defaults_are_the_relays_defaults(default: Manifests) -> None:
    data = default.configmap
    pod_env = pod_environment(default)
    # RELAY_DATABASE_URL is not set at all: the relay falls back to DATABASE_URL (an empty
    # RELAY_DATABASE_URL would switch live updates off).
    assert "RELAY_DATABASE_URL" not in pod_env
    assert Settings.from_env(pod_env) == Settings(
        database_url=DEV_DATABASE_URL, **CHART_DEFAULT_EXCEPTIONS
    )
    # The SQLite file the workers of a pod share lives on a writable emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in default.container["volumeMounts"]}
    volumes = {v["name"]: v for v in default.pod["spec"]["volumes"]}
    coordinator_dir = Path(data["RELAY_COORDINATOR_PATH"]).parent
    mount = next(m for m in mounts if coordinator_dir.is_relative_to(m))
    assert "emptyDir" in volumes[mounts[mount]]
    assert data["RELAY_ZOOKEEPER"] == ""
    # gunicorn_conf evaluated with the ConfigMap's env, then with no RELAY_* at all.
    script = (
        "import importlib, json, os, sys\n"
        "out = []\n"
        "for env in json.load(sys.stdin):\n"
        "    for key in [k for k in os.environ if k.startswith('RELAY_')]:\n"
        "        del os.environ[key]\n"
        "    os.environ.update(env)\n"
        "    import relay.server.gunicorn_conf as conf\n"
        "    conf = importlib.reload(conf)\n"
        "    out.append({k: getattr(conf, k) for k in\n"
        "        ('workers', 'worker_connections', 'graceful_timeout', 'accesslog', 'loglevel')})\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([data, {}]),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    from_chart, relay_defaults = json.loads(result.stdout)
    assert from_chart == relay_defaults


def test_settings_change_rolls_the_pods(default: Manifests, render: Render) -> None:
    changed = render({"relay": {"maxMessageBytes": 2048}})
    key = "checksum/config"
    assert (
        default.pod["metadata"]["annotations"][key] != changed.pod["metadata"]["annotations"][key]
    )


# --- the pod ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "full"])
def test_probes_hit_healthz_and_readyz(which: str, request: pytest.FixtureRequest) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    container = manifests.container
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    env = env_of(container)
    assert env["HOST"]["value"] == "0.0.0.0"
    assert env["PORT"]["value"] == "8000"


@pytest.mark.parametrize(
    "values",
    [{}, {"relay": {"gracefulTimeout": 120}}, {"preStopSleepSeconds": 30}, FULL_VALUES],
    ids=["default", "graceful-120", "prestop-30", "full"],
)
def test_pod_outlives_prestop_and_graceful_drain(render: Render, values: dict[str, Any]) -> None:
    manifests = render(values)
    graceful = int(manifests.configmap["RELAY_GRACEFUL_TIMEOUT"])
    pre_stop = manifests.container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep = int(pre_stop[1])
    grace = manifests.pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > graceful
    assert grace > sleep + graceful


def test_too_short_termination_grace_period_is_refused(helm_template: Callable[..., Any]) -> None:
    result = helm_template({"terminationGracePeriodSeconds": 40})  # = 10 s sleep + 30 s drain
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr
    ok = helm_template({"terminationGracePeriodSeconds": 41})
    assert ok.returncode == 0, ok.stderr
    assert Manifests(ok.stdout).pod["spec"]["terminationGracePeriodSeconds"] == 41


def test_container_runs_gunicorn_after_raising_fd_limit(default: Manifests) -> None:
    container = default.container
    assert container["command"] == ["/bin/sh", "-c"]
    (script,) = container["args"]
    assert "ulimit -n" in script
    assert script.rstrip().endswith(
        "exec gunicorn -c python:relay.server.gunicorn_conf 'relay.server.app:create_app()'"
    )
    syntax = run(["sh", "-n", "-c", script])
    assert syntax.returncode == 0, syntax.stderr


def test_prometheus_multiproc_dir_is_an_emptydir(default: Manifests) -> None:
    container = default.container
    directory = env_of(container)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in default.pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[directory]]
    assert '"$PROMETHEUS_MULTIPROC_DIR"/*.db' in container["args"][0]


def test_pod_runs_as_non_root_with_a_read_only_root(default: Manifests) -> None:
    pod_security = default.pod["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] != 0
    security = default.container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in default.container["volumeMounts"]}
    assert "/tmp" in mounts  # gunicorn's heartbeat files
    assert default.pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("which", ["default", "settings"])
def test_relay_env_comes_from_the_configmap(which: str, request: pytest.FixtureRequest) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    container = manifests.container
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == manifests.one("ConfigMap")["metadata"]["name"]
    env = env_of(container)
    assert env["DJANGO_SETTINGS_MODULE"]["value"] == "example.settings"
    assert {name for name in env if name.startswith("RELAY_")} <= SECRET_ENVS
    for name in SECRET_ENVS & set(env):
        assert "secretKeyRef" in env[name]["valueFrom"], name


def test_extra_env_reaches_relays_and_migrations(full: Manifests) -> None:
    for container in (full.container, full.job_container()):
        assert env_of(container)["DJANGO_SETTINGS_MODULE"]["value"] == "mysite.settings"
        assert env_of(container)["DJANGO_SECRET_KEY"]["value"] == "s"
        assert {"secretRef": {"name": "django"}} in container["envFrom"]


# --- database URL -------------------------------------------------------------------------


def test_database_urls_from_existing_secret(full: Manifests) -> None:
    # relay.databaseUrl is set too (SETTINGS_VALUES), but the existing Secret's key wins.
    assert full.all("Secret") == []
    env = env_of(full.container)
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "relay-db", "key": "url"}}
    assert env["RELAY_DATABASE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "relay-db", "key": "listen-url"}
    }
    job_env = env_of(full.job_container())
    assert job_env["DATABASE_URL"]["valueFrom"] == env["DATABASE_URL"]["valueFrom"]
    assert "RELAY_DATABASE_URL" not in job_env
    existing = {
        "relay-db": {"url": "postgresql://pgbouncer/relay", "listen-url": "postgresql://db/relay"}
    }
    pod_env = pod_environment(full, existing_secrets={**existing, "django": {}})
    assert Settings.from_env(pod_env).database_url == "postgresql://db/relay"


def test_database_url_from_plain_value_for_development(default: Manifests) -> None:
    secret = default.one("Secret")
    assert secret["stringData"] == {"DATABASE_URL": DEV_DATABASE_URL}
    ref = env_of(default.container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "DATABASE_URL"}
    # The hook Job runs before the chart's Secret exists: it gets the URL inline.
    assert env_of(default.job_container())["DATABASE_URL"]["value"] == DEV_DATABASE_URL


def test_change_stream_url_in_the_charts_secret_beside_an_existing_one(render: Render) -> None:
    url = "postgresql://listener:pw@db-direct:5432/relay"
    manifests = render({"database": {"existingSecret": "relay-db"}, "relay": {"databaseUrl": url}})
    secret = manifests.one("Secret")
    assert secret["stringData"] == {"RELAY_DATABASE_URL": url}
    pod_env = pod_environment(manifests, existing_secrets={"relay-db": {"DATABASE_URL": "x"}})
    assert pod_env["RELAY_DATABASE_URL"] == url
    assert "RELAY_DATABASE_URL" not in manifests.configmap


def test_change_stream_key_needs_the_existing_secret(helm_template: Callable[..., Any]) -> None:
    result = helm_template({"database": {"changeStreamSecretKey": "listen-url"}})
    assert result.returncode != 0
    assert "database.changeStreamSecretKey" in result.stderr


def test_no_database_at_all_is_refused(helm_template: Callable[..., Any]) -> None:
    result = helm_template({"database": {"url": "", "existingSecret": ""}})
    assert result.returncode != 0
    assert "database.existingSecret" in result.stderr


# --- migrations ---------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(
    default: Manifests, full: Manifests
) -> None:
    job = default.one("Job")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert default.job_container()["command"] == [
        "python", "example/manage.py", "migrate", "--noinput",
    ]  # fmt: skip
    assert full.job_container()["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migrations_can_be_turned_off(render: Render) -> None:
    assert render({"migrations": {"enabled": False}}).all("Job") == []


def test_selectors_pick_relay_pods_only(default: Manifests) -> None:
    """Service, PDB and Deployment select the relay pods, never the migration Job's pod."""
    pod_labels = default.pod["metadata"]["labels"]
    job_labels = default.one("Job")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        default.one("Service")["spec"]["selector"],
        default.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        default.one("Deployment")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
        assert not selector.items() <= job_labels.items()


# --- service, PDB, metrics, ingress -------------------------------------------------------


def test_service_and_pdb(default: Manifests, full: Manifests) -> None:
    service = default.one("Service")
    assert service["spec"]["sessionAffinity"] == "None"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert default.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert full.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": default.one("PodDisruptionBudget")["spec"]["selector"],
    }


def test_prometheus_scrape_annotations(default: Manifests, render: Render) -> None:
    annotations = default.pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"
    off = render({"relay": {"metrics": False}})
    assert "prometheus.io/scrape" not in off.pod["metadata"]["annotations"]


def test_optional_resources_are_off_by_default(default: Manifests) -> None:
    assert default.all("Ingress") == []
    assert default.all("ServiceMonitor") == []


def test_service_monitor(full: Manifests) -> None:
    monitor = full.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = full.one("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["relays"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_service_monitor_needs_metrics(helm_template: Callable[..., Any]) -> None:
    result = helm_template(
        {"relay": {"metrics": False}, "metrics": {"serviceMonitor": {"enabled": True}}}
    )
    assert result.returncode != 0
    assert "relay.metrics" in result.stderr


def test_ingress_for_the_aws_alb(full: Manifests) -> None:
    ingress = full.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    lb_attributes = annotations["alb.ingress.kubernetes.io/load-balancer-attributes"]
    assert lb_attributes == "idle_timeout.timeout_seconds=3600"
    tg_attributes = annotations["alb.ingress.kubernetes.io/target-group-attributes"]
    assert "stickiness.enabled=false" in tg_attributes.split(",")
    assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    # The idle timeout outlasts the DDP heartbeat.
    idle = int(lb_attributes.rsplit("=", 1)[1])
    assert idle > float(full.configmap["RELAY_HEARTBEAT_INTERVAL"])
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ddp.example.com"
    (path,) = rule["http"]["paths"]
    service = full.one("Service")
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    assert path["backend"]["service"]["port"]["name"] in {
        p["name"] for p in service["spec"]["ports"]
    }


def test_ingress_of_another_class_gets_no_alb_annotations(render: Render) -> None:
    manifests = render(
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
            }
        }
    )
    ingress = manifests.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations == {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}
    (rule,) = ingress["spec"]["rules"]
    assert "host" not in rule


# --- NOTES.txt ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with a template that renders NOTES.txt (helm template skips it)."""
    chart = tmp_path_factory.mktemp("notes") / "ddp-relay"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "notes-check.yaml").write_text(
        'notes: |\n{{ include (print $.Template.BasePath "/NOTES.txt") . | indent 2 }}\n'
    )
    return chart


@pytest.mark.parametrize("values", [{}, FULL_VALUES], ids=["default", "full"])
def test_notes_render(
    helm: Helm,
    values_file: Callable[..., Path],
    notes_chart: Path,
    values: dict[str, Any],
) -> None:
    args: list[str | Path] = ["template", RELEASE, notes_chart]
    args += ["--show-only", "templates/notes-check.yaml", "--values", values_file(values)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["notes"]
    assert "/websocket" in notes
    assert FULLNAME in notes
    if values:
        assert "ddp.example.com/websocket" in notes
        assert "WARNING" not in notes
        assert "RELAY_ZOOKEEPER" in notes
    else:
        assert "WARNING: the database URL comes from the plain value" in notes
