"""The Helm chart (helm/ddp-relay), checked statically: lint, render, schema-validate.

No cluster: ``helm lint --strict`` and ``helm template`` run offline, every rendered
manifest goes through ``kubernetes-validate --strict`` against Kubernetes 1.30's schemas,
and the manifests are then read with PyYAML to check what the chart promises: every relay
setting (``relay.config.Settings``, the ``RELAY_*`` that ``relay.server.gunicorn_conf`` reads
and the issue #12 contract's) reaches the relay pods; the web tier, the internal port, the
Ingress's routing, HPA, NetworkPolicy, topology spread and the bundled ZooKeeper render as
promised; each combination the chart refuses is refused with its message; and
values.schema.json rejects wrong types. The value sets a platform team would use live in
tests/deploy/values/ (all-in-one, production, external-zookeeper).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
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
NAMESPACE = "relays"
FULLNAME = f"{RELEASE}-ddp-relay"
WEB = f"{FULLNAME}-web"
ZOOKEEPER = f"{FULLNAME}-zookeeper"
VALUES_DIR = Path(__file__).resolve().parent / "values"

# The relay settings of the issue #12 contract. They are listed here as well as read from
# Settings, so the chart is held to the contract even while relay/config.py catches up.
CONTRACT_ENVS = {
    "RELAY_INTERNAL_PORT",
    "RELAY_INTERNAL_HOST",
    "RELAY_COORDINATOR_REQUIRED",
    "RELAY_ZOOKEEPER_DIGEST",
    "RELAY_ZOOKEEPER_TLS",
    "RELAY_ZOOKEEPER_TLS_CA",
    "RELAY_ZOOKEEPER_TLS_CERT",
    "RELAY_ZOOKEEPER_TLS_KEY",
    "RELAY_ZOOKEEPER_TLS_VERIFY",
}

# Values whose key does not follow relay.<camelCase of the env suffix>.
VALUE_PATH_EXCEPTIONS: dict[str, tuple[str, ...]] = {
    "RELAY_ZOOKEEPER": ("coordinator", "zookeeper", "hosts"),
    "RELAY_ZOOKEEPER_DIGEST": ("coordinator", "zookeeper", "digest"),
    "RELAY_ZOOKEEPER_TLS": ("coordinator", "zookeeper", "tls", "enabled"),
    "RELAY_ZOOKEEPER_TLS_CA": ("coordinator", "zookeeper", "tls", "caKey"),
    "RELAY_ZOOKEEPER_TLS_CERT": ("coordinator", "zookeeper", "tls", "certKey"),
    "RELAY_ZOOKEEPER_TLS_KEY": ("coordinator", "zookeeper", "tls", "keyKey"),
    "RELAY_ZOOKEEPER_TLS_VERIFY": ("coordinator", "zookeeper", "tls", "verify"),
}

# Settings holding credentials: they reach the pod from a Secret, never the ConfigMap.
SECRET_ENVS = {"RELAY_DATABASE_URL", "RELAY_ZOOKEEPER_DIGEST"}

# Settings the chart derives instead of taking as a value: the digest comes from a Secret
# the user names, the TLS paths from where the chart mounts the TLS Secret's keys.
DERIVED_ENVS = {
    "RELAY_ZOOKEEPER_DIGEST",
    "RELAY_ZOOKEEPER_TLS_CA",
    "RELAY_ZOOKEEPER_TLS_CERT",
    "RELAY_ZOOKEEPER_TLS_KEY",
}

# Non-default test values for settings whose type alone does not give a valid one.
SETTINGS_TEST_VALUES: dict[str, Any] = {
    "RELAY_DATABASE_URL": "postgresql://listener:pw@db-direct:5432/relay",
    "RELAY_ZOOKEEPER": "zk1:2181,zk2:2181,zk3:2181/ddp",
    "RELAY_COORDINATOR_PATH": "/var/run/ddp-relay/coordinator.sqlite",
    # Read by the relay (its socket limit) and by gunicorn_conf.py: one value for both.
    "RELAY_WORKER_CONNECTIONS": 12345,
    "RELAY_INTERNAL_PORT": 9100,
    "RELAY_INTERNAL_HOST": "0.0.0.0",
    "RELAY_COORDINATOR_REQUIRED": False,
    "RELAY_ZOOKEEPER_TLS": True,
    "RELAY_ZOOKEEPER_TLS_VERIFY": False,
}

# The TLS part of the settings render, and what the pod then sees.
SETTINGS_TLS = {
    "enabled": True,
    "existingSecret": "zk-tls",
    "caKey": "ca.pem",
    "certKey": "client.pem",
    "keyKey": "client-key.pem",
    "mountPath": "/etc/zk",
    "verify": False,
}
SETTINGS_DERIVED_EXPECTED = {
    "RELAY_ZOOKEEPER_DIGEST": "relay:s3cret",
    "RELAY_ZOOKEEPER_TLS_CA": "/etc/zk/ca.pem",
    "RELAY_ZOOKEEPER_TLS_CERT": "/etc/zk/client.pem",
    "RELAY_ZOOKEEPER_TLS_KEY": "/etc/zk/client-key.pem",
}
SETTINGS_EXISTING_SECRETS = {"zk-auth": {"digest": "relay:s3cret"}}

# Chart defaults that differ from the relay's (documented in values.yaml), by env var.
CHART_DEFAULT_EXCEPTIONS: dict[str, Any] = {
    "RELAY_COORDINATOR_PATH": "/tmp/ddp-relay/coordinator.sqlite",
    "RELAY_INTERNAL_PORT": 9000,
    # The bundled ensemble's client Service.
    "RELAY_ZOOKEEPER": f"{ZOOKEEPER}.{NAMESPACE}.svc:2181",
}

DEV_DATABASE_URL = "postgresql://relay:relay@postgres:5432/relay"
SECRET_KEY = "test-secret-key"

# Non-default test values for the RELAY_* variables relay/server/gunicorn_conf.py reads.
GUNICORN_TEST_VALUES: dict[str, Any] = {
    "RELAY_WORKERS": 3,
    "RELAY_WORKER_CONNECTIONS": 12345,
    "RELAY_GRACEFUL_TIMEOUT": 45,
    "RELAY_ACCESS_LOG": "-",
    "RELAY_LOG_LEVEL": "debug",
}


# --- helpers ------------------------------------------------------------------------------


def chart_envs() -> set[str]:
    """Every RELAY_* variable the chart provides: the relay's, gunicorn's, the contract's."""
    return set(all_envs()) | CONTRACT_ENVS


def configmap_envs() -> set[str]:
    return chart_envs() - SECRET_ENVS


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


def load_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text())
    return values


def non_default_settings() -> dict[str, Any]:
    """A valid, non-default value for each Settings field (keyed by env var)."""
    out: dict[str, Any] = {}
    for f in fields(Settings):
        env = f.metadata["env"]
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
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
    for env in CONTRACT_ENVS - set(out):
        if env in SETTINGS_TEST_VALUES:
            out[env] = SETTINGS_TEST_VALUES[env]
    return out


def settings_field_names() -> dict[str, str]:
    """Env var -> Settings field name, for the fields Settings has today."""
    return {f.metadata["env"]: f.name for f in fields(Settings)}


class Manifests:
    def __init__(self, text: str) -> None:
        self.text = text
        self.docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        return found[0] if found else None

    @property
    def configmap(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", FULLNAME)["data"]
        return data

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment", FULLNAME)["spec"]["template"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["spec"]["containers"]
        return dict(container)

    @property
    def web_pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment", WEB)["spec"]["template"]
        return spec

    @property
    def web_container(self) -> dict[str, Any]:
        (container,) = self.web_pod["spec"]["containers"]
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


def mounted_files(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Path of each file a container sees from a Secret volume -> (Secret name, key)."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    out: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        # A StatefulSet's volumeClaimTemplates are not in its pod's volumes.
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        for item in secret["items"]:
            out[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return out


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The message of a `fail` (helm exits non-zero and prints it on stderr)."""
    assert result.returncode != 0, "the chart rendered, but should have refused these values"
    return " ".join(result.stderr.split())


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
    """``helm template`` with values (dict) over the minimal ones; the CompletedProcess.
    ``bare=True`` leaves the minimal values out (for the refusals of missing values)."""

    def template(
        values: dict[str, Any] | None = None, chart: Path = CHART, bare: bool = False
    ) -> Any:
        args: list[str | Path] = ["template", RELEASE, chart, "--namespace", NAMESPACE]
        merged = (values or {}) if bare else merge(MINIMAL_VALUES, values or {})
        if merged:
            args += ["--values", values_file(merged)]
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


# What a plain install needs: a secret key (the database URL has a development default).
MINIMAL_VALUES: dict[str, Any] = {"django": {"secretKey": SECRET_KEY}}

# Every RELAY_* setting away from its default, on an external ensemble, relays serving the
# WSGI app themselves (web tier off), so each value lands in the relays' environment.
SETTINGS_VALUES: dict[str, Any] = merge(
    *(
        nested(value_path(env), v)
        for env, v in non_default_settings().items()
        if env not in DERIVED_ENVS
    ),
    *(nested(value_path(env), v) for env, v in GUNICORN_TEST_VALUES.items()),
    {
        "coordinator": {
            "zookeeper": {
                "hosts": "zk1:2181,zk2:2181,zk3:2181/ddp",
                "digest": {"existingSecret": "zk-auth", "key": "digest"},
                "tls": SETTINGS_TLS,
            }
        },
        "zookeeper": {"bundled": {"enabled": False}},
        "web": {"enabled": False},
    },
)

ALL_IN_ONE_VALUES = load_values("all-in-one")
EXTERNAL_ZOOKEEPER_VALUES = load_values("external-zookeeper")
# Every optional part on: the production set plus every setting away from its default,
# with the bundled ZooKeeper instead of the external one.
FULL_VALUES: dict[str, Any] = merge(
    SETTINGS_VALUES,
    {"coordinator": {"zookeeper": {"hosts": ""}}, "web": {"enabled": True}},
    {"zookeeper": {"bundled": {"enabled": True}}, "relay": {"metrics": True}},
    load_values("production"),
    {"coordinator": {"zookeeper": {"tls": {"mountPath": "/etc/zk"}}}},
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


@pytest.fixture(scope="module")
def all_in_one(render: Render) -> Manifests:
    return render(ALL_IN_ONE_VALUES)


@pytest.fixture(scope="module")
def external_zookeeper(render: Render) -> Manifests:
    return render(EXTERNAL_ZOOKEEPER_VALUES)


RENDERS = ["default", "settings", "full", "all_in_one", "external_zookeeper"]


# --- lint and schema validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [MINIMAL_VALUES, SETTINGS_VALUES, FULL_VALUES, ALL_IN_ONE_VALUES, EXTERNAL_ZOOKEEPER_VALUES],
    ids=RENDERS,
)
def test_helm_lint_strict(
    helm: Helm, values_file: Callable[..., Path], values: dict[str, Any]
) -> None:
    result = helm.run(
        "lint", "--strict", CHART, "--values", values_file(merge(MINIMAL_VALUES, values))
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rendered_manifests_pass_kubernetes_validate_strict(
    kubernetes_validate: Path, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    renders: dict[str, Manifests] = {name: request.getfixturevalue(name) for name in RENDERS}
    files = []
    for name, manifests in renders.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifests.text)
        files.append(path)
    result = run([kubernetes_validate, "--strict", "-k", "1.30.0", *files])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every kind was checked against a schema, except the operator's CRD.
    monitors = 0
    for line in output.splitlines():
        if "Couldn't find schema" in line:
            assert "ServiceMonitor" in line, line
            monitors += 1
    documents = sum(len(manifests.docs) for manifests in renders.values())
    assert output.count("passed for resource") == documents - monitors
    kinds = {doc["kind"] for manifests in renders.values() for doc in manifests.docs}
    assert {
        "Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "Ingress", "ConfigMap",
        "HorizontalPodAutoscaler", "NetworkPolicy", "Job", "Secret", "ServiceAccount",
    } <= kinds  # fmt: skip


def test_kubernetes_validate_catches_a_broken_manifest(
    kubernetes_validate: Path, default: Manifests, tmp_path: Path
) -> None:
    """Control: the validator really rejects wrong types and unknown fields."""
    deployment = default.one("Deployment", FULLNAME)
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
        ({"relay": {"internalPort": 70000}}, "relay.internalPort"),
        ({"relay": {"coordinatorRequired": "no"}}, "relay.coordinatorRequired"),
        ({"database": {"url": "mysql://x"}}, "database.url"),
        ({"relay": {"databaseUrl": "mysql://x"}}, "relay.databaseUrl"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        ({"coordinator": {"zookeeper": "zk:2181"}}, "coordinator.zookeeper"),
        ({"coordinator": {"zookeeper": {"tls": {"enabled": "on"}}}}, "tls.enabled"),
        ({"zookeeper": {"bundled": {"replicas": 4}}}, "zookeeper.bundled.replicas"),
        ({"zookeeper": {"bundled": {"antiAffinity": "strict"}}}, "antiAffinity"),
        ({"autoscaling": {"minReplicas": "two"}}, "autoscaling.minReplicas"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "targetCPUUtilization"),
        ({"networkPolicy": {"enabled": "yes"}}, "networkPolicy.enabled"),
        ({"networkPolicy": {"ingressControllers": {"cidr": "10.0.0.0/8"}}}, "ingressControllers"),
        ({"web": {"healthPath": "health"}}, "web.healthPath"),
        ({"web": {"replicas": 2}}, "replicas"),
        ({"ingress": {"path": "/"}}, "path"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_schema_rejects_wrong_values(
    helm: Helm, values_file: Callable[..., Path], values: dict[str, Any], complaint: str
) -> None:
    result = helm.run(
        "lint", "--strict", CHART, "--values", values_file(merge(MINIMAL_VALUES, values))
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert complaint in output, output


def test_decimal_settings_may_come_from_set(helm: Helm) -> None:
    """``--set`` passes 2.5 as a string: the schema accepts numeric strings for decimals."""
    result = helm.run(
        "template", RELEASE, CHART, "--set", "relay.heartbeatInterval=2.5",
        "--set", f"django.secretKey={SECRET_KEY}",
        "--show-only", "templates/configmap.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["data"]["RELAY_HEARTBEAT_INTERVAL"] == "2.5"


def test_a_plain_install_needs_only_a_secret_key(helm: Helm) -> None:
    """The defaults render safe: web tier, internal port, two relays on the bundled ZooKeeper."""
    result = helm.run("template", RELEASE, CHART, "--set", "django.secretKey=k")
    assert result.returncode == 0, result.stderr
    manifests = Manifests(result.stdout)
    assert manifests.one("Deployment", FULLNAME)["spec"]["replicas"] == 2
    assert manifests.one("StatefulSet", ZOOKEEPER)["spec"]["replicas"] == 3
    assert manifests.configmap["RELAY_ZOOKEEPER"].startswith(f"{ZOOKEEPER}.")
    assert manifests.one("Deployment", WEB)["spec"]["replicas"] == 2


# --- relay settings <-> values <-> ConfigMap ----------------------------------------------


def test_values_have_exactly_one_key_per_relay_setting() -> None:
    """relay.* holds exactly the relay's settings (a new Settings field fails here)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = {value_path(env) for env in chart_envs()}
    relay_keys = {("relay", key) for key in values["relay"]}
    assert relay_keys == {p for p in expected if p[0] == "relay"}
    for path in expected:
        node = values
        for key in path:
            assert key in node, f"values.yaml lacks {'.'.join(path)}"
            node = node[key]


def test_values_yaml_documents_every_env_var() -> None:
    text = (CHART / "values.yaml").read_text()
    for env in chart_envs():
        dotted = ".".join(value_path(env))
        assert re.search(rf"^#\s+{re.escape(dotted)}\s+{env}\b", text, re.M), (
            f"values.yaml's mapping table lacks the row `{dotted}  {env}`"
        )


def test_every_gunicorn_env_var_has_a_test_value() -> None:
    known = set(GUNICORN_TEST_VALUES) | set(SETTINGS_TEST_VALUES) | set(settings_envs())
    assert set(gunicorn_envs()) <= known, (
        "relay/server/gunicorn_conf.py reads other RELAY_* variables than this test knows: add a "
        "value to the chart (values.yaml, schema, ConfigMap) and to GUNICORN_TEST_VALUES"
    )


def test_every_relay_setting_is_settable_and_reaches_the_pod(
    settings: Manifests, tmp_path: Path
) -> None:
    data = settings.configmap
    wanted = {**non_default_settings(), **SETTINGS_DERIVED_EXPECTED}
    for env in chart_envs() - SECRET_ENVS:
        assert env in data, f"{env} missing from the ConfigMap"
    pod_env = pod_environment(settings, existing_secrets=SETTINGS_EXISTING_SECRETS)
    for env in CONTRACT_ENVS:
        value = wanted[env]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert pod_env[env] == text, env
    # The relay checks that the TLS files exist: lay out what the pod's Secret mount holds
    # under tmp_path, and parse with the paths moved there.
    for path in mounted_files(settings.pod, settings.container):
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text("-----BEGIN CERTIFICATE-----\n")
    moved = {env: str(tmp_path / pod_env[env].lstrip("/")) for env in SETTINGS_DERIVED_EXPECTED}
    del moved["RELAY_ZOOKEEPER_DIGEST"]
    parsed = Settings.from_env({**pod_env, **moved})
    for f in fields(Settings):
        if f.metadata["env"] in moved:
            assert getattr(parsed, f.name) == moved[f.metadata["env"]]
            continue
        setting = wanted[f.metadata["env"]]
        expected = tuple(setting) if isinstance(setting, list) else setting
        assert getattr(parsed, f.name) == expected, f.metadata["env"]
    for env, value in GUNICORN_TEST_VALUES.items():
        assert data[env] == str(value), env
    assert data["RELAY_ZOOKEEPER"] == "zk1:2181,zk2:2181,zk3:2181/ddp"
    # Integers stay integers (Helm's float64 would print 8388615 as 8.388615e+06).
    assert data["RELAY_SEND_BUFFER_BYTES"] == str(wanted["RELAY_SEND_BUFFER_BYTES"])
    assert all(isinstance(v, str) for v in data.values())


@pytest.mark.parametrize("which", RENDERS)
def test_configmap_holds_only_relay_settings(which: str, request: pytest.FixtureRequest) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    assert set(manifests.configmap) == configmap_envs()


def test_chart_defaults_are_the_relays_defaults(default: Manifests) -> None:
    data = default.configmap
    pod_env = pod_environment(default)
    # RELAY_DATABASE_URL is not set at all: the relay falls back to DATABASE_URL (an empty
    # RELAY_DATABASE_URL would switch live updates off).
    assert "RELAY_DATABASE_URL" not in pod_env
    # The web tier serves the Django app: the relays get the relay's own default, "".
    assert data["RELAY_WSGI_APP"] == ""
    for env, value in CHART_DEFAULT_EXCEPTIONS.items():
        assert data[env] == str(value), env
    names = settings_field_names()
    exceptions = {names[env]: v for env, v in CHART_DEFAULT_EXCEPTIONS.items() if env in names}
    assert Settings.from_env(pod_env) == Settings(database_url=DEV_DATABASE_URL, **exceptions)
    # The contract's settings at their relay defaults (the internal port aside).
    assert data["RELAY_INTERNAL_HOST"] == ""
    assert data["RELAY_COORDINATOR_REQUIRED"] == "true"
    assert data["RELAY_ZOOKEEPER_TLS"] == "false"
    assert data["RELAY_ZOOKEEPER_TLS_VERIFY"] == "true"
    for env in ("RELAY_ZOOKEEPER_TLS_CA", "RELAY_ZOOKEEPER_TLS_CERT", "RELAY_ZOOKEEPER_TLS_KEY"):
        assert data[env] == "", env
    assert "RELAY_ZOOKEEPER_DIGEST" not in pod_env
    # The SQLite file the workers of a pod share lives on a writable emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in default.container["volumeMounts"]}
    volumes = {v["name"]: v for v in default.pod["spec"]["volumes"]}
    coordinator_dir = Path(data["RELAY_COORDINATOR_PATH"]).parent
    mount = next(m for m in mounts if coordinator_dir.is_relative_to(m))
    assert "emptyDir" in volumes[mounts[mount]]
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


# --- the relay pod ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["default", "settings", "full", "external_zookeeper"])
def test_probes_and_metrics_are_on_the_internal_port(
    which: str, request: pytest.FixtureRequest
) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    container = manifests.container
    internal = int(manifests.configmap["RELAY_INTERNAL_PORT"])
    assert internal > 0
    ports = {p["name"]: p for p in container["ports"]}
    assert ports == {
        "http": {"name": "http", "containerPort": 8000, "protocol": "TCP"},
        "internal": {"name": "internal", "containerPort": internal, "protocol": "TCP"},
    }
    assert container["startupProbe"]["httpGet"] == {"path": "/startupz", "port": "internal"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "internal"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}
    env = env_of(container)
    assert env["HOST"]["value"] == "0.0.0.0"
    assert env["PORT"]["value"] == "8000"
    service = manifests.one("Service", FULLNAME)
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http",
        "internal": "internal",
    }
    annotations = manifests.pod["metadata"]["annotations"]
    if manifests.configmap["RELAY_METRICS"] == "true":
        assert annotations["prometheus.io/port"] == str(internal)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_all_in_one_keeps_everything_on_one_port(all_in_one: Manifests) -> None:
    container = all_in_one.container
    assert all_in_one.configmap["RELAY_INTERNAL_PORT"] == "0"
    assert [p["name"] for p in container["ports"]] == ["http"]
    for probe, path in [("startupProbe", "/startupz"), ("livenessProbe", "/livez")]:
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert [p["name"] for p in all_in_one.one("Service")["spec"]["ports"]] == ["http"]
    assert all_in_one.pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    # No web tier: the relays serve the Django app, and the Ingress sends them everything.
    assert all_in_one.configmap["RELAY_WSGI_APP"] == "example.wsgi:application"
    assert all_in_one.named("Deployment", WEB) is None
    assert all_in_one.all("StatefulSet") == []
    assert all_in_one.configmap["RELAY_ZOOKEEPER"] == ""
    (rule,) = all_in_one.one("Ingress")["spec"]["rules"]
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {FULLNAME}


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
    assert grace > sleep + graceful


def test_too_short_termination_grace_period_is_refused(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template({"terminationGracePeriodSeconds": 40}))  # = 10 s + 30 s
    assert "terminationGracePeriodSeconds (40) must be greater than" in message
    ok = helm_template({"terminationGracePeriodSeconds": 41})
    assert ok.returncode == 0, ok.stderr
    assert Manifests(ok.stdout).pod["spec"]["terminationGracePeriodSeconds"] == 41


def test_container_runs_ddp_relay_serve_after_raising_fd_limit(
    default: Manifests, render: Render, tmp_path: Path
) -> None:
    container = default.container
    assert container["command"][:2] == ["/bin/sh", "-c"]
    script, name = container["command"][2:]
    assert "ulimit -n" in script
    assert container["args"] == ["ddp-relay", "serve"]
    # The wrapper really execs its args (a stale metrics file goes first).
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_123.db").write_bytes(b"stale")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    result = run(["sh", "-c", script, name, "printf", "%s|", "serve", "--workers", "3"], env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "serve|--workers|3|"
    assert list(metrics_dir.iterdir()) == []
    # The args are overridable, and keep the wrapper.
    custom = render({"args": ["ddp-relay", "serve", "--workers", "4"]}).container
    assert custom["args"] == ["ddp-relay", "serve", "--workers", "4"]
    assert custom["command"] == container["command"]


EXISTING_SECRETS = {
    "relay-db": {"DATABASE_URL": "postgresql://relay:pw@db:5432/relay"},
    "django": {"DJANGO_SECRET_KEY": "k"},
    "zookeeper-auth": {"relay": "relay:pw"},
}


@pytest.mark.parametrize("which", ["default", "all_in_one", "external_zookeeper"])
def test_the_containers_run_what_the_ddp_relay_cli_plans(
    which: str, request: pytest.FixtureRequest
) -> None:
    """Each container's command, with the environment the chart gives it, is one the
    console script accepts (relay.cli.plan: arguments parsed, settings valid)."""
    from relay import cli

    manifests: Manifests = request.getfixturevalue(which)
    relay_env = pod_environment(manifests, manifests.container, EXISTING_SECRETS)
    assert manifests.container["args"][0] == "ddp-relay"
    serve = cli.plan(manifests.container["args"][1:], relay_env)
    assert serve is not None
    assert serve.argv[1:] == ["-m", "gunicorn", "-c", cli.RELAY_GUNICORN_CONF, cli.RELAY_APP]
    if manifests.named("Deployment", WEB) is not None:
        web = manifests.web_container
        web_env = pod_environment(manifests, web, EXISTING_SECRETS)
        assert web["command"] == ["ddp-relay"]
        planned = cli.plan(web["args"], web_env)
        assert planned is not None
        assert planned.argv[planned.argv.index("--bind") + 1] == "0.0.0.0:8000"
        assert planned.argv[planned.argv.index("--worker-class") + 1] == "gthread"
        assert planned.argv[-1] == "relay.server.web:create_app()"
        assert planned.env["RELAY_WSGI_APP"] == "example.wsgi:application"
    job = manifests.job_container()
    migrate = cli.plan(job["command"][1:], pod_environment(manifests, job, EXISTING_SECRETS))
    assert migrate is not None
    assert migrate.argv[1:] == ["-m", "django", "migrate", "--noinput"]


def test_prometheus_multiproc_dir_is_an_emptydir(default: Manifests) -> None:
    container = default.container
    directory = env_of(container)["PROMETHEUS_MULTIPROC_DIR"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in default.pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[directory]]
    assert '"$PROMETHEUS_MULTIPROC_DIR"/*.db' in container["command"][2]


@pytest.mark.parametrize("which", ["default", "full"])
def test_pods_run_as_non_root_with_a_read_only_root(
    which: str, request: pytest.FixtureRequest
) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    pods = [
        d["spec"]["template"] for d in manifests.all("Deployment") + manifests.all("StatefulSet")
    ]
    pods.append(manifests.one("Job")["spec"]["template"])
    assert len(pods) == 4  # relays, web tier, ZooKeeper, migrations
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] != 0
        assert pod["spec"]["automountServiceAccountToken"] is False
        for container in pod["spec"]["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.parametrize("which", ["default", "settings"])
def test_relay_env_comes_from_the_configmap(which: str, request: pytest.FixtureRequest) -> None:
    manifests: Manifests = request.getfixturevalue(which)
    container = manifests.container
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == FULLNAME
    env = env_of(container)
    assert env["DJANGO_SETTINGS_MODULE"]["value"] == "example.settings"
    assert {name for name in env if name.startswith("RELAY_")} <= SECRET_ENVS
    for name in SECRET_ENVS & set(env):
        assert "secretKeyRef" in env[name]["valueFrom"], name


def test_extra_env_reaches_relays_web_and_migrations(render: Render) -> None:
    manifests = render(
        {
            "extraEnv": [{"name": "DJANGO_ALLOWED_HOSTS", "value": "ddp.example.com"}],
            "extraEnvFrom": [{"secretRef": {"name": "django-extra"}}],
        }
    )
    for container in (manifests.container, manifests.web_container, manifests.job_container()):
        assert env_of(container)["DJANGO_ALLOWED_HOSTS"]["value"] == "ddp.example.com"
        assert {"secretRef": {"name": "django-extra"}} in container["envFrom"]


def test_default_topology_spread_across_zones_and_nodes(default: Manifests, render: Render) -> None:
    for name in (FULLNAME, WEB):
        pod = default.one("Deployment", name)["spec"]["template"]
        constraints = pod["spec"]["topologySpreadConstraints"]
        assert [(c["topologyKey"], c["whenUnsatisfiable"]) for c in constraints] == [
            ("topology.kubernetes.io/zone", "ScheduleAnyway"),
            ("kubernetes.io/hostname", "ScheduleAnyway"),
        ]
        for constraint in constraints:
            selector = constraint["labelSelector"]["matchLabels"]
            assert selector.items() <= pod["metadata"]["labels"].items()
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]
    own = [{"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}]
    assert (
        render({"topologySpreadConstraints": own}).pod["spec"]["topologySpreadConstraints"] == own
    )
    assert "topologySpreadConstraints" not in render({"topologySpreadConstraints": []}).pod["spec"]


# --- secrets: database URL, DJANGO_SECRET_KEY, ZooKeeper digest and TLS --------------------


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
    assert env_of(full.web_container)["DATABASE_URL"] == env["DATABASE_URL"]


def test_database_url_from_plain_value_for_development(default: Manifests) -> None:
    secret = default.one("Secret", f"{FULLNAME}-database")
    assert secret["stringData"] == {"DATABASE_URL": DEV_DATABASE_URL}
    ref = env_of(default.container)["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "DATABASE_URL"}
    # The hook Job runs before the chart's Secret exists: it gets the URL inline.
    assert env_of(default.job_container())["DATABASE_URL"]["value"] == DEV_DATABASE_URL


def test_change_stream_url_in_the_charts_secret_beside_an_existing_one(render: Render) -> None:
    url = "postgresql://listener:pw@db-direct:5432/relay"
    manifests = render({"database": {"existingSecret": "relay-db"}, "relay": {"databaseUrl": url}})
    secret = manifests.one("Secret", f"{FULLNAME}-database")
    assert secret["stringData"] == {"RELAY_DATABASE_URL": url}
    pod_env = pod_environment(manifests, existing_secrets={"relay-db": {"DATABASE_URL": "x"}})
    assert pod_env["RELAY_DATABASE_URL"] == url
    assert "RELAY_DATABASE_URL" not in manifests.configmap


def test_change_stream_key_needs_the_existing_secret(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template({"database": {"changeStreamSecretKey": "listen-url"}}))
    assert "database.changeStreamSecretKey is a key of database.existingSecret" in message


def test_no_database_at_all_is_refused(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template({"database": {"url": "", "existingSecret": ""}}))
    assert "set database.existingSecret (production) or database.url (development)" in message


def test_one_secret_key_for_relays_web_and_migrations(default: Manifests, full: Manifests) -> None:
    secret = default.one("Secret", f"{FULLNAME}-django")
    assert secret["stringData"] == {"DJANGO_SECRET_KEY": SECRET_KEY}
    for container in (default.container, default.web_container):
        assert pod_environment(default, container)["DJANGO_SECRET_KEY"] == SECRET_KEY
    assert env_of(default.job_container())["DJANGO_SECRET_KEY"]["value"] == SECRET_KEY
    ref = {"secretKeyRef": {"name": "django", "key": "secret-key"}}
    for container in (full.container, full.web_container, full.job_container()):
        assert env_of(container)["DJANGO_SECRET_KEY"]["valueFrom"] == ref


def test_secret_key_from_extra_env_counts(render: Render) -> None:
    entry = {"name": "DJANGO_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    manifests = render({"django": {"secretKey": ""}, "extraEnv": [entry]})
    assert manifests.named("Secret", f"{FULLNAME}-django") is None
    names = [e["name"] for e in manifests.container["env"]]
    assert names.count("DJANGO_SECRET_KEY") == 1


def test_zookeeper_digest_and_tls_reach_the_relays(settings: Manifests) -> None:
    env = env_of(settings.container)
    assert env["RELAY_ZOOKEEPER_DIGEST"]["valueFrom"] == {
        "secretKeyRef": {"name": "zk-auth", "key": "digest"}
    }
    assert "RELAY_ZOOKEEPER_DIGEST" not in settings.configmap
    files = mounted_files(settings.pod, settings.container)
    data = settings.configmap
    assert files == {
        data["RELAY_ZOOKEEPER_TLS_CA"]: ("zk-tls", "ca.pem"),
        data["RELAY_ZOOKEEPER_TLS_CERT"]: ("zk-tls", "client.pem"),
        data["RELAY_ZOOKEEPER_TLS_KEY"]: ("zk-tls", "client-key.pem"),
    }
    mount = next(m for m in settings.container["volumeMounts"] if m["mountPath"] == "/etc/zk")
    assert mount["readOnly"] is True


def test_zookeeper_tls_without_a_client_certificate(render: Render) -> None:
    tls = {"enabled": True, "existingSecret": "zk-ca"}
    manifests = render({"coordinator": {"zookeeper": {"tls": tls}}})
    data = manifests.configmap
    assert data["RELAY_ZOOKEEPER_TLS"] == "true"
    assert data["RELAY_ZOOKEEPER_TLS_CERT"] == data["RELAY_ZOOKEEPER_TLS_KEY"] == ""
    files = mounted_files(manifests.pod, manifests.container)
    assert files == {data["RELAY_ZOOKEEPER_TLS_CA"]: ("zk-ca", "ca.crt")}
    # The bundled ensemble serves TLS with that same Secret, and relays use its TLS port.
    assert data["RELAY_ZOOKEEPER"] == f"{ZOOKEEPER}.{NAMESPACE}.svc:2281"


# --- the web tier -------------------------------------------------------------------------


def test_web_tier_serves_the_django_app_and_relays_only_ddp(
    default: Manifests, full: Manifests
) -> None:
    for manifests, app in [
        (default, "example.wsgi:application"),
        (full, "mysite.wsgi:application"),
    ]:
        assert manifests.configmap["RELAY_WSGI_APP"] == ""
        container = manifests.web_container
        assert container["command"] == ["ddp-relay"]
        assert container["args"][:3] == ["web", "--bind", "0.0.0.0:8000"]
        assert container["args"][3:] == ["--workers", "2", "--threads", "4"]
        env = env_of(container)
        assert env["RELAY_WSGI_APP"]["value"] == app
        assert [p["name"] for p in container["ports"]] == ["http"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/livez", "port": "http"}
        # Not a relay: no ConfigMap of RELAY_* settings, no relay selector.
        assert "envFrom" not in container or all(
            "configMapRef" not in s for s in container["envFrom"]
        )
    assert env_of(full.web_container)["DJANGO_SETTINGS_MODULE"]["value"] == "mysite.settings"
    web = default.one("Deployment", WEB)
    assert web["spec"]["replicas"] == 2
    service = default.one("Service", WEB)
    assert (
        service["spec"]["selector"].items() <= web["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    assert default.one("PodDisruptionBudget", WEB)["spec"]["maxUnavailable"] == 1


def test_web_args_are_overridable(render: Render) -> None:
    args = ["web", "--bind", "0.0.0.0:8000", "--timeout", "60"]
    assert render({"web": {"args": args}}).web_container["args"] == args


def test_selectors_never_overlap(full: Manifests) -> None:
    """Each Service, PDB, HPA target and NetworkPolicy picks its own pods and no others."""
    pods = {
        "relay": full.pod["metadata"]["labels"],
        "web": full.web_pod["metadata"]["labels"],
        "zookeeper": full.one("StatefulSet")["spec"]["template"]["metadata"]["labels"],
        "migrate": full.one("Job")["spec"]["template"]["metadata"]["labels"],
    }
    selectors: list[tuple[str, dict[str, str]]] = [
        ("relay", full.one("Service", FULLNAME)["spec"]["selector"]),
        ("relay", full.one("PodDisruptionBudget", FULLNAME)["spec"]["selector"]["matchLabels"]),
        ("relay", full.one("NetworkPolicy", FULLNAME)["spec"]["podSelector"]["matchLabels"]),
        ("web", full.one("Service", WEB)["spec"]["selector"]),
        ("web", full.one("PodDisruptionBudget", WEB)["spec"]["selector"]["matchLabels"]),
        ("web", full.one("NetworkPolicy", WEB)["spec"]["podSelector"]["matchLabels"]),
        ("zookeeper", full.one("Service", ZOOKEEPER)["spec"]["selector"]),
        (
            "zookeeper",
            full.one("PodDisruptionBudget", ZOOKEEPER)["spec"]["selector"]["matchLabels"],
        ),
        ("zookeeper", full.one("NetworkPolicy", ZOOKEEPER)["spec"]["podSelector"]["matchLabels"]),
    ]
    for owner, selector in selectors:
        for component, labels in pods.items():
            assert (selector.items() <= labels.items()) == (component == owner), (owner, component)


# --- Ingress, ServiceMonitor --------------------------------------------------------------


def test_ingress_routes_ddp_to_relays_and_the_rest_to_the_web_tier(full: Manifests) -> None:
    ingress = full.one("Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ddp.example.com"
    routes = {
        p["path"]: (p["pathType"], p["backend"]["service"]["name"], p["backend"]["service"]["port"])
        for p in rule["http"]["paths"]
    }
    assert routes == {
        "/websocket": ("Prefix", FULLNAME, {"name": "http"}),
        "/sockjs": ("Prefix", FULLNAME, {"name": "http"}),
        "/": ("Prefix", WEB, {"name": "http"}),
    }
    # The Ingress never reaches the internal port: "http" is the public one on both Services.
    relay_ports = {p["name"]: p["port"] for p in full.one("Service", FULLNAME)["spec"]["ports"]}
    assert relay_ports["http"] != relay_ports["internal"]
    assert "internal" not in json.dumps(ingress["spec"])


def test_ingress_for_the_aws_alb(full: Manifests) -> None:
    annotations = full.one("Ingress")["metadata"]["annotations"]
    assert full.one("Ingress")["spec"]["ingressClassName"] == "alb"
    lb_attributes = annotations["alb.ingress.kubernetes.io/load-balancer-attributes"]
    assert lb_attributes == "idle_timeout.timeout_seconds=3600"
    tg_attributes = annotations["alb.ingress.kubernetes.io/target-group-attributes"]
    assert "stickiness.enabled=false" in tg_attributes.split(",")
    assert annotations["alb.ingress.kubernetes.io/target-type"] == "ip"
    assert annotations["alb.ingress.kubernetes.io/healthcheck-port"] == "traffic-port"
    assert annotations["alb.ingress.kubernetes.io/certificate-arn"].startswith("arn:aws:acm:")
    idle = int(lb_attributes.rsplit("=", 1)[1])
    assert idle > float(full.configmap["RELAY_HEARTBEAT_INTERVAL"])
    assert idle > float(full.configmap["RELAY_SOCKJS_HEARTBEAT"])
    # Each target group checks its own path on the traffic port: the relays' terse /readyz.
    relay = full.one("Service", FULLNAME)["metadata"]["annotations"]
    assert relay["alb.ingress.kubernetes.io/healthcheck-path"] == "/readyz"
    assert relay["alb.ingress.kubernetes.io/healthcheck-port"] == "traffic-port"
    web = full.one("Service", WEB)["metadata"]["annotations"]
    assert web["alb.ingress.kubernetes.io/healthcheck-path"] == "/livez"


def test_ingress_of_another_class_gets_no_alb_annotations(external_zookeeper: Manifests) -> None:
    ingress = external_zookeeper.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations == {"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"}
    (rule,) = ingress["spec"]["rules"]
    assert "host" not in rule
    assert "annotations" not in external_zookeeper.one("Service", FULLNAME)["metadata"]
    paths = {p["path"]: p["backend"]["service"]["name"] for p in rule["http"]["paths"]}
    assert paths == {"/websocket": FULLNAME, "/sockjs": FULLNAME, "/": WEB}


def test_optional_resources_are_off_by_default(default: Manifests) -> None:
    for kind in ("Ingress", "ServiceMonitor", "HorizontalPodAutoscaler", "NetworkPolicy"):
        assert default.all(kind) == [], kind


def test_service_monitor_scrapes_the_internal_port(full: Manifests) -> None:
    monitor = full.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = full.one("Service", FULLNAME)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    # The selector picks the relays' Service only.
    for other in (WEB, ZOOKEEPER):
        labels = full.one("Service", other)["metadata"]["labels"]
        assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] == "internal"


def test_service_monitor_needs_metrics(helm_template: Callable[..., Any]) -> None:
    message = refusal(
        helm_template(
            {"relay": {"metrics": False}, "metrics": {"serviceMonitor": {"enabled": True}}}
        )
    )
    assert "metrics.serviceMonitor.enabled needs relay.metrics: true" in message


# --- HPA ----------------------------------------------------------------------------------


def test_hpa_scales_on_cpu_and_sessions_and_scales_down_one_drain_at_a_time(
    full: Manifests,
) -> None:
    assert "replicas" not in full.one("Deployment", FULLNAME)["spec"]
    hpa = full.one("HorizontalPodAutoscaler", FULLNAME)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 12)
    cpu, sessions = spec["metrics"]
    assert cpu["resource"]["name"] == "cpu"
    assert cpu["resource"]["target"] == {"type": "Utilization", "averageUtilization": 60}
    assert sessions["type"] == "Pods"
    assert sessions["pods"]["metric"] == {"name": "ddp_relay_sessions"}
    assert sessions["pods"]["target"] == {"type": "AverageValue", "averageValue": "8000"}
    scale_down = spec["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    (policy,) = scale_down["policies"]
    grace = full.pod["spec"]["terminationGracePeriodSeconds"]
    assert policy["type"] == "Pods" and policy["value"] == 1
    assert policy["periodSeconds"] >= grace
    # The web tier's own HPA.
    web = full.one("HorizontalPodAutoscaler", WEB)["spec"]
    assert web["scaleTargetRef"]["name"] == WEB
    assert "replicas" not in full.one("Deployment", WEB)["spec"]


def test_hpa_scale_down_period_shorter_than_a_drain_is_refused(
    helm_template: Callable[..., Any], render: Render
) -> None:
    autoscaling = {"enabled": True, "scaleDown": {"periodSeconds": 30}}
    message = refusal(helm_template({"autoscaling": autoscaling}))
    assert "autoscaling.scaleDown.periodSeconds (30) is shorter than a relay's drain" in message
    autoscaling["scaleDown"] = {"periodSeconds": 120}
    manifests = render({"autoscaling": autoscaling})
    (policy,) = manifests.one("HorizontalPodAutoscaler")["spec"]["behavior"]["scaleDown"][
        "policies"
    ]
    assert policy["periodSeconds"] == 120


# --- NetworkPolicy ------------------------------------------------------------------------


def _rules(policy: dict[str, Any], direction: str) -> list[tuple[list[Any], set[Any]]]:
    key = "from" if direction == "ingress" else "to"
    return [
        (rule.get(key, []), {p["port"] for p in rule["ports"]})
        for rule in policy["spec"].get(direction, [])
    ]


def test_network_policies(full: Manifests) -> None:
    values = load_values("production")["networkPolicy"]
    zk_labels = full.one("StatefulSet")["spec"]["selector"]["matchLabels"]
    dns = (
        values.get("dns", {"peers": None})["peers"]
        or yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["dns"]["peers"]
    )

    relay = full.one("NetworkPolicy", FULLNAME)
    assert relay["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert _rules(relay, "ingress") == [
        (values["ingressControllers"], {"http"}),
        (values["prometheus"], {"internal"}),
    ]
    assert _rules(relay, "egress") == [
        (dns, {53}),
        (values["postgres"]["peers"], {5432}),
        ([{"podSelector": {"matchLabels": zk_labels}}], {2281}),  # TLS port
    ]

    web = full.one("NetworkPolicy", WEB)
    assert _rules(web, "ingress") == [(values["ingressControllers"], {"http"})]
    assert _rules(web, "egress") == [
        (dns, {53}),
        (values["postgres"]["peers"], {5432}),
        ([{"ipBlock": {"cidr": "0.0.0.0/0"}}], {587}),
    ]

    zookeeper = full.one("NetworkPolicy", ZOOKEEPER)
    relay_labels = full.one("Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    assert _rules(zookeeper, "ingress") == [
        ([{"podSelector": {"matchLabels": relay_labels}}], {"client-tls"}),
        ([{"podSelector": {"matchLabels": zk_labels}}], {"quorum", "election"}),
    ]

    migrate = full.one("NetworkPolicy", f"{FULLNAME}-migrate")
    assert "ingress" not in migrate["spec"]
    assert _rules(migrate, "egress") == [(dns, {53}), (values["postgres"]["peers"], {5432})]


def test_network_policy_to_an_external_zookeeper(external_zookeeper: Manifests) -> None:
    relay = external_zookeeper.one("NetworkPolicy", FULLNAME)
    egress = _rules(relay, "egress")
    assert egress[-1] == ([{"ipBlock": {"cidr": "10.40.0.0/24"}}], {2181})
    # No peers for PostgreSQL given: its port, any destination (documented).
    assert egress[1] == ([], {5432})
    # The default Prometheus selector reaches the internal port.
    assert [ports for _, ports in _rules(relay, "ingress")] == [{"http"}, {"internal"}]


def test_network_policy_lets_prometheus_scrape_a_single_port_relay(render: Render) -> None:
    peers = [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
    manifests = render(
        merge(ALL_IN_ONE_VALUES, {"networkPolicy": {"enabled": True, "ingressControllers": peers}})
    )
    relay = manifests.one("NetworkPolicy", FULLNAME)
    prometheus = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["prometheus"]
    assert _rules(relay, "ingress") == [(peers, {"http"}), (prometheus, {"http"})]
    # No ZooKeeper at all: no egress rule for one.
    assert [ports for _, ports in _rules(relay, "egress")] == [{53}, {5432}]


# --- the bundled ZooKeeper ----------------------------------------------------------------


def _zoo_cfg(manifests: Manifests) -> dict[str, str]:
    text = manifests.one("ConfigMap", ZOOKEEPER)["data"]["zoo.cfg"]
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_bundled_zookeeper_ensemble(default: Manifests) -> None:
    statefulset = default.one("StatefulSet", ZOOKEEPER)
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    headless = default.one("Service", f"{ZOOKEEPER}-headless")
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    (container,) = spec["template"]["spec"]["containers"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["zookeeper"]["bundled"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", values["image"]["tag"])
    assert container["image"] == f"zookeeper:{values['image']['tag']}"
    assert container["readinessProbe"]["exec"]["command"] == [
        "bash",
        "/etc/zookeeper-chart/ready.sh",
    ]
    affinity = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/data"] == "data"
    assert default.one("PodDisruptionBudget", ZOOKEEPER)["spec"]["maxUnavailable"] == 1
    # zoo.cfg names every server by its stable name behind the headless Service.
    cfg = _zoo_cfg(default)
    assert {k: v for k, v in cfg.items() if k.startswith("server.")} == {
        f"server.{i + 1}": f"{ZOOKEEPER}-{i}.{ZOOKEEPER}-headless.{NAMESPACE}.svc:2888:3888"
        for i in range(3)
    }
    assert cfg["clientPort"] == "2181" and "secureClientPort" not in cfg
    assert set(cfg["4lw.commands.whitelist"].split(",")) == {"ruok", "srvr"}
    # Relays point at the client Service, which serves the client port.
    client = default.one("Service", ZOOKEEPER)
    assert client["spec"]["ports"] == [{"name": "client", "port": 2181, "targetPort": "client"}]
    assert default.configmap["RELAY_ZOOKEEPER"] == f"{ZOOKEEPER}.{NAMESPACE}.svc:2181"


def test_bundled_zookeeper_scripts_are_valid_bash(default: Manifests, full: Manifests) -> None:
    for manifests in (default, full):
        data = manifests.one("ConfigMap", ZOOKEEPER)["data"]
        for name in ("start.sh", "ready.sh", "alive.sh"):
            result = run(["bash", "-n", "-c", data[name]])
            assert result.returncode == 0, (name, result.stderr)
        assert "zkServer.sh start-foreground /etc/zookeeper-chart/zoo.cfg" in data["start.sh"]


def test_bundled_zookeeper_probes_answer_like_zookeeper(default: Manifests, tmp_path: Path) -> None:
    """ready.sh and alive.sh against a fake four-letter-word server on 127.0.0.1."""
    data = default.one("ConfigMap", ZOOKEEPER)["data"]
    answers = {b"srvr": b"Zookeeper version: 3.8.4\nMode: standalone\n", b"ruok": b"imok"}

    def probe(script: str, answer_for: dict[bytes, bytes]) -> int:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            port = server.getsockname()[1]

            def serve() -> None:
                conn, _ = server.accept()
                with conn:
                    word = conn.recv(4)
                    conn.sendall(answer_for.get(word, b""))

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            result = run(["bash", "-c", script.replace("/2181", f"/{port}")])
            thread.join(timeout=5)
            return result.returncode

    assert probe(data["alive.sh"], answers) == 0
    # A standalone server is not part of the quorum: not ready.
    assert probe(data["ready.sh"], answers) != 0
    quorum = {**answers, b"srvr": b"Zookeeper version: 3.8.4\nMode: follower\n"}
    assert probe(data["ready.sh"], quorum) == 0
    assert probe(data["alive.sh"], {}) != 0


def test_bundled_zookeeper_over_tls(full: Manifests) -> None:
    cfg = _zoo_cfg(full)
    assert cfg["secureClientPort"] == "2281"
    assert cfg["clientPortAddress"] == "127.0.0.1"  # the plain port: probes only
    assert cfg["ssl.keyStore.type"] == cfg["ssl.trustStore.type"] == "PEM"
    assert cfg["ssl.clientAuth"] == "need"
    statefulset = full.one("StatefulSet", ZOOKEEPER)
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    files = mounted_files(statefulset["spec"]["template"], container)
    assert files == {
        "/etc/zookeeper-tls/ca.crt": ("zookeeper-server-tls", "ca.crt"),
        "/etc/zookeeper-tls/tls.crt": ("zookeeper-server-tls", "tls.crt"),
        "/etc/zookeeper-tls/tls.key": ("zookeeper-server-tls", "tls.key"),
    }
    assert cfg["ssl.trustStore.location"] in files
    start = full.one("ConfigMap", ZOOKEEPER)["data"]["start.sh"]
    assert f"> {cfg['ssl.keyStore.location']}" in start
    assert full.one("Service", ZOOKEEPER)["spec"]["ports"][0]["port"] == 2281
    assert full.configmap["RELAY_ZOOKEEPER"] == f"{ZOOKEEPER}.{NAMESPACE}.svc:2281"
    assert full.configmap["RELAY_ZOOKEEPER_TLS"] == "true"
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in affinity


# --- refused combinations (one test each, asserting the message) --------------------------


@pytest.mark.parametrize(
    ("relay", "idle", "setting"),
    [
        ({}, 15, "relay.heartbeatInterval (15)"),
        ({"heartbeatInterval": 5}, 25, "relay.sockjsHeartbeat (25)"),
        ({"heartbeatInterval": "20.5"}, 20, "relay.heartbeatInterval (20.5)"),
    ],
    ids=["heartbeat", "sockjs-heartbeat", "decimal-heartbeat"],
)
def test_refuses_an_alb_idle_timeout_not_above_the_heartbeat(
    helm_template: Callable[..., Any], relay: dict[str, Any], idle: int, setting: str
) -> None:
    values = {"relay": relay, "ingress": {"enabled": True, "alb": {"idleTimeoutSeconds": idle}}}
    message = refusal(helm_template(values))
    assert f"ingress.alb.idleTimeoutSeconds ({idle}) must be above {setting}" in message
    assert "the ALB would close idle DDP sockets" in message
    # One second more is accepted; another ingress class has no ALB timeout to check.
    values["ingress"]["alb"]["idleTimeoutSeconds"] = 26
    assert helm_template(values).returncode == 0
    values["ingress"] = {"enabled": True, "className": "nginx", "alb": {"idleTimeoutSeconds": idle}}
    assert helm_template(values).returncode == 0


@pytest.mark.parametrize("web_enabled", [True, False])
def test_refuses_target_type_instance_with_a_cluster_ip_service(
    helm_template: Callable[..., Any], web_enabled: bool
) -> None:
    values: dict[str, Any] = {
        "ingress": {"enabled": True, "alb": {"targetType": "instance"}},
        "web": {"enabled": web_enabled},
    }
    message = refusal(helm_template(values))
    assert "ingress.alb.targetType instance needs a NodePort (or LoadBalancer) Service" in message
    assert "service.type is ClusterIP" in message
    values["service"] = {"type": "NodePort"}
    if web_enabled:
        assert "web.service.type is ClusterIP" in refusal(helm_template(values))
        values["web"]["service"] = {"type": "NodePort"}
    assert helm_template(values).returncode == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"podDisruptionBudget": {"minAvailable": 2}},
            "podDisruptionBudget.minAvailable (2) is not below the replica count (2): it blocks",
        ),
        (
            {"podDisruptionBudget": {"maxUnavailable": 0}},
            "podDisruptionBudget.maxUnavailable 0 blocks every drain",
        ),
        (
            {"podDisruptionBudget": {"maxUnavailable": "0%"}},
            "podDisruptionBudget.maxUnavailable 0 blocks every drain",
        ),
        (
            {"podDisruptionBudget": {"minAvailable": "100%"}},
            "podDisruptionBudget.minAvailable 100% blocks every drain",
        ),
        (
            {
                "autoscaling": {"enabled": True, "minReplicas": 3},
                "podDisruptionBudget": {"minAvailable": 3},
            },
            "podDisruptionBudget.minAvailable (3) is not below the replica count (3)",
        ),
        (
            {"web": {"podDisruptionBudget": {"minAvailable": 2}}},
            "web.podDisruptionBudget.minAvailable (2) is not below the replica count (2)",
        ),
    ],
    ids=["min-available", "max-unavailable-0", "max-unavailable-0%", "min-100%", "hpa-min", "web"],
)
def test_refuses_a_pdb_that_blocks_every_drain(
    helm_template: Callable[..., Any], values: dict[str, Any], expected: str
) -> None:
    assert expected in refusal(helm_template(values))


def test_a_pdb_that_lets_one_pod_go_is_accepted(render: Render) -> None:
    manifests = render({"podDisruptionBudget": {"minAvailable": 1}, "replicaCount": 2})
    assert manifests.one("PodDisruptionBudget", FULLNAME)["spec"]["minAvailable"] == 1
    assert render({"podDisruptionBudget": {"minAvailable": "50%"}}).all("PodDisruptionBudget")


def test_refuses_no_django_secret_key(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template(bare=True))
    assert "no DJANGO_SECRET_KEY: set django.existingSecret" in message
    assert "or django.secretKey (development)" in message
    ok = helm_template({"django": {"existingSecret": "django"}}, bare=True)
    assert ok.returncode == 0, ok.stderr


def test_refuses_a_secret_key_given_twice(helm_template: Callable[..., Any]) -> None:
    values = {"extraEnv": [{"name": "DJANGO_SECRET_KEY", "value": "x"}]}
    assert "DJANGO_SECRET_KEY is set twice" in refusal(helm_template(values))


@pytest.mark.parametrize(
    ("values", "count"),
    [
        ({"replicaCount": 2}, 2),
        (
            {
                "replicaCount": 1,
                "autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 4},
            },
            4,
        ),
    ],
    ids=["replicas", "hpa"],
)
def test_refuses_several_relays_without_a_shared_coordinator(
    helm_template: Callable[..., Any], values: dict[str, Any], count: int
) -> None:
    alone = merge(values, {"zookeeper": {"bundled": {"enabled": False}}})
    message = refusal(helm_template(alone))
    assert f"{count} relays without a shared coordinator" in message
    assert "Set coordinator.zookeeper.hosts" in message
    # Any one of the ways out renders.
    ways_out: list[dict[str, Any]] = [
        {"coordinator": {"zookeeper": {"hosts": "zk:2181"}}},
        {"zookeeper": {"bundled": {"enabled": True}}},
        {"relay": {"resumeWindow": 0}},
        {"replicaCount": 1, "autoscaling": {"enabled": False}},
    ]
    for way_out in ways_out:
        result = helm_template(merge(alone, way_out))
        assert result.returncode == 0, (way_out, result.stderr)


def test_refuses_external_and_bundled_zookeeper_together(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template({"coordinator": {"zookeeper": {"hosts": "zk:2181"}}}))
    assert (
        "coordinator.zookeeper.hosts (an external ensemble) and zookeeper.bundled.enabled"
        in message
    )


def test_refuses_a_network_policy_nobody_can_pass(helm_template: Callable[..., Any]) -> None:
    message = refusal(helm_template({"networkPolicy": {"enabled": True}}))
    assert "empty networkPolicy.ingressControllers" in message


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            {"enabled": True},
            "coordinator.zookeeper.tls.enabled needs coordinator.zookeeper.tls.existingSecret",
        ),
        ({"certKey": "tls.crt"}, "coordinator.zookeeper.tls.certKey and keyKey go together"),
    ],
    ids=["no-secret", "cert-without-key"],
)
def test_refuses_incomplete_zookeeper_tls(
    helm_template: Callable[..., Any], tls: dict[str, Any], expected: str
) -> None:
    assert expected in refusal(helm_template({"coordinator": {"zookeeper": {"tls": tls}}}))


# --- migrations ---------------------------------------------------------------------------


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default: Manifests) -> None:
    job = default.one("Job")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert default.job_container()["command"] == ["ddp-relay", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_migrations_can_be_turned_off(render: Render) -> None:
    assert render({"migrations": {"enabled": False}}).all("Job") == []


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


@pytest.mark.parametrize(
    "values", [{}, FULL_VALUES, ALL_IN_ONE_VALUES], ids=["default", "full", "all-in-one"]
)
def test_notes_render(
    helm: Helm,
    values_file: Callable[..., Path],
    notes_chart: Path,
    values: dict[str, Any],
) -> None:
    args: list[str | Path] = ["template", RELEASE, notes_chart]
    args += ["--show-only", "templates/notes-check.yaml"]
    args += ["--values", values_file(merge(MINIMAL_VALUES, values))]
    result = helm.run(*args)
    assert result.returncode == 0, result.stderr
    notes = yaml.safe_load(result.stdout)["notes"]
    assert "/websocket" in notes
    assert FULLNAME in notes
    if values is FULL_VALUES:
        assert "ddp.example.com/websocket" in notes
        assert "WARNING" not in notes
        assert "bundled ZooKeeper" in notes
        assert "Internal port" in notes
        assert "3-12 (HPA)" in notes
    elif values is ALL_IN_ONE_VALUES:
        assert "served by the relays" in notes
        assert "sessions resume on this pod only" in notes
    else:
        assert "WARNING: the database URL comes from the plain value" in notes
        assert "WARNING: DJANGO_SECRET_KEY comes from the plain value" in notes


# --- the bundled ensemble's configuration on real ZooKeeper servers ------------------------


def _openssl(cwd: Path, *args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the `openssl` command is needed to make test certificates"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _leaf(d: Path, name: str, san: str) -> None:
    """``name.key`` (PKCS#8, as the chart asks for) and ``name.crt`` signed by ``ca``."""
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
             "-extfile", f"{name}.ext")  # fmt: skip
    assert "BEGIN PRIVATE KEY" in (d / f"{name}.key").read_text()


def _rewrite(text: str, replacements: list[tuple[str, str]]) -> str:
    """Each pattern must match exactly one line, so a changed chart fails here, loudly."""
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count == 1, (pattern, count)
    return text


def _zookeeper_answers_over_tls(port: int, pki: Path, *, with_certificate: bool) -> bool:
    """Send a ZooKeeper ConnectRequest over TLS; whether a ConnectResponse comes back."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(pki / "relay.crt"), str(pki / "relay.key"))
    # protocolVersion, lastZxidSeen, timeOut, sessionId, passwd (length + 16 bytes), readOnly
    body = struct.pack(">iqiqi16s?", 0, 0, 30000, 0, 16, bytes(16), False)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(struct.pack(">i", len(body)) + body)
            return len(tls.recv(4)) == 4
    except (ssl.SSLError, ConnectionError):
        return False


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_bundled_zookeeper_forms_a_tls_quorum_on_real_zookeeper(
    full: Manifests, tmp_path: Path
) -> None:
    """The chart's zoo.cfg, start.sh, ready.sh and alive.sh (production values: TLS with
    clientAuth need) run three real ZooKeeper 3.8 servers. Only what differs between a pod
    and this machine is rewritten: host names and ports (loopback), and the mount paths;
    every other line is the chart's. A relay-like TLS client with a client certificate then
    writes through one server and reads through another; one without a certificate is
    refused."""
    from kazoo.client import KazooClient

    from devstack import local_zookeeper
    from devstack.processes import free_port, spawn, stop_process
    from tests.fixtures.zookeeper import require_zookeeper

    require_zookeeper()
    java, jar = local_zookeeper.find_zookeeper()
    data = full.one("ConfigMap", ZOOKEEPER)["data"]
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl(pki, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=ca", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    _leaf(pki, "server", "IP:127.0.0.1,DNS:localhost")
    _leaf(pki, "relay", "DNS:relay.invalid")

    ports = [
        {
            "client": free_port(),
            "secure": free_port(),
            "quorum": free_port(),
            "election": free_port(),
        }
        for _ in range(3)
    ]
    # A stand-in for the image's zkServer.sh: start.sh ends by exec'ing it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "zkServer.sh").write_text('#!/bin/sh\necho "$@" > "$ZK_ARGS"\n')
    (bin_dir / "zkServer.sh").chmod(0o755)

    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(3):
            root = tmp_path / f"zk-{i}"
            for sub in ("data", "tls", "run"):
                (root / sub).mkdir(parents=True)
            for key, source in [
                ("ca.crt", "ca.crt"),
                ("tls.crt", "server.crt"),
                ("tls.key", "server.key"),
            ]:
                shutil.copy(pki / source, root / "tls" / key)
            start = data["start.sh"]
            for pod_path, here in [
                ("/data/", "data/"),
                ("/etc/zookeeper-tls/", "tls/"),
                ("/run/zookeeper/", "run/"),
            ]:
                start = start.replace(pod_path, f"{root}/{here}")
            env = {
                "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "HOSTNAME": f"{ZOOKEEPER}-{i}",
                "ZK_ARGS": str(root / "args"),
            }
            result = run(["bash", "-c", start], env=env)
            assert result.returncode == 0, result.stderr
            assert (root / "data" / "myid").read_text().strip() == str(i + 1)
            assert (root / "args").read_text().split() == [
                "start-foreground", "/etc/zookeeper-chart/zoo.cfg",
            ]  # fmt: skip
            cfg = _rewrite(
                data["zoo.cfg"],
                [
                    (r"^dataDir=/data$", f"dataDir={root}/data"),
                    (r"^clientPort=2181$", f"clientPort={ports[i]['client']}"),
                    (r"^secureClientPort=2281$", f"secureClientPort={ports[i]['secure']}"),
                    (r"^ssl\.keyStore\.location=/run/zookeeper/keystore\.pem$",
                     f"ssl.keyStore.location={root}/run/keystore.pem"),
                    (r"^ssl\.trustStore\.location=/etc/zookeeper-tls/ca\.crt$",
                     f"ssl.trustStore.location={root}/tls/ca.crt"),
                    *(
                        (rf"^server\.{n + 1}=\S+:2888:3888$",
                         f"server.{n + 1}=127.0.0.1:{ports[n]['quorum']}:{ports[n]['election']}")
                        for n in range(3)
                    ),
                ],
            )  # fmt: skip
            (root / "zoo.cfg").write_text(cfg)
            argv = local_zookeeper.command(java, jar, root / "zoo.cfg", tls=True)
            processes.append(spawn(argv, root / "zookeeper.log", cwd=root))

        def probe(script: str, i: int) -> bool:
            text = script.replace("/127.0.0.1/2181", f"/127.0.0.1/{ports[i]['client']}")
            return run(["bash", "-c", text]).returncode == 0

        deadline = time.monotonic() + 60
        while not all(probe(data["ready.sh"], i) for i in range(3)):
            for i, proc in enumerate(processes):
                assert proc.poll() is None, (tmp_path / f"zk-{i}" / "zookeeper.log").read_text()[
                    -3000:
                ]
            assert time.monotonic() < deadline, "no quorum within 60 s:\n" + "\n".join(
                (tmp_path / f"zk-{i}" / "zookeeper.log").read_text()[-2000:] for i in range(3)
            )
            time.sleep(0.5)
        assert all(probe(data["alive.sh"], i) for i in range(3))
        modes = sorted(local_zookeeper.mode(p["client"]) or "" for p in ports)
        assert modes == ["follower", "follower", "leader"]

        def client(i: int, with_certificate: bool) -> KazooClient:
            certificate = (
                {"certfile": str(pki / "relay.crt"), "keyfile": str(pki / "relay.key")}
                if with_certificate
                else {}
            )
            return KazooClient(
                hosts=f"127.0.0.1:{ports[i]['secure']}", use_ssl=True, verify_certs=True,
                ca=str(pki / "ca.crt"), timeout=5, connection_retry={"max_tries": 1},
                **certificate,
            )  # fmt: skip

        writer, reader = client(0, True), client(2, True)
        writer.start(timeout=30)
        reader.start(timeout=30)
        try:
            writer.create("/chart-check", b"through TLS")
            reader.sync("/chart-check")
            assert reader.get("/chart-check")[0] == b"through TLS"
        finally:
            for c in (writer, reader):
                c.stop()
                c.close()
        # clientAuth need: a ZooKeeper connect request without a client certificate is
        # refused, the same request with one is answered.
        assert _zookeeper_answers_over_tls(ports[1]["secure"], pki, with_certificate=True)
        assert not _zookeeper_answers_over_tls(ports[1]["secure"], pki, with_certificate=False)
    finally:
        for proc in processes:
            stop_process(proc, 10)
