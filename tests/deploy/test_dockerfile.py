"""The Dockerfile, .dockerignore and the lock (deploy/constraints.txt).

There is no Docker engine here, so the image is checked two ways: statically (stages, the
base pinned by digest, a numeric non-root USER, the HEALTHCHECK, OCI labels, the lock
used, the example only in its own target, what the build context leaves out), and by
running what can run without Docker for real: the builder stage's COPY and RUN
instructions, replayed in a scratch directory (the wheel built, a virtualenv installed
from it with the constraints, ``pip check``), and the HEALTHCHECK's command against a live
HTTP server and a dead port.

The lock is current when every requirement of the runtime closure (pyproject's
dependencies and the ``zookeeper`` extra, followed through the installed metadata of
.venv) is pinned, each pin satisfies the specifiers that ask for it, and the replayed
builder installs exactly the pinned set.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from devstack.processes import free_port
from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "deploy" / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DIGEST_PIN = re.compile(r"^(python:3\.11-slim-bookworm|node:20-bookworm-slim)@sha256:[0-9a-f]{64}$")
#: The extras the image installs (the builder's ``...whl[zookeeper]``).
IMAGE_EXTRAS = ("zookeeper",)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def global_args() -> dict[str, str]:
    args = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = Stage(name.strip(), base.strip())
            found[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, rest))
    return found


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage.all("ENV"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def resolved_base(stage: Stage) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: global_args()[m.group(1)], stage.base)


# --- stages, base, user, entry point --------------------------------------------------------


def test_stages_and_the_pinned_base() -> None:
    found = stages()
    assert list(found) == ["builder", "production", "demo-assets", "example", "release"]
    for name in ("builder", "production", "demo-assets"):
        assert DIGEST_PIN.match(resolved_base(found[name])), resolved_base(found[name])
    assert found["example"].base == "production"
    # The demo page's bundles come from its own lock, into the example image only.
    assert "npm ci" in " ".join(found["demo-assets"].all("RUN"))
    assert any("package-lock.json" in c for c in found["demo-assets"].all("COPY"))
    assert "--from=demo-assets /demo/node_modules /app/example/demo/node_modules" in (
        found["example"].all("COPY")
    )
    assert not any("demo-assets" in c for c in found["production"].all("COPY"))
    # The last stage is what a plain `docker build .` gives: the production image.
    assert found["release"].base == "production" and found["release"].instructions == []


def test_production_runs_as_a_numeric_non_root_user_with_the_console_script() -> None:
    production = stages()["production"]
    (user,) = production.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), user
    assert stages()["example"].all("USER") == []  # inherits it
    (entrypoint,) = production.all("ENTRYPOINT")
    (cmd,) = production.all("CMD")
    assert json.loads(entrypoint) == list(PYPROJECT["project"]["scripts"]) == ["ddp-relay"]
    assert json.loads(cmd) == ["serve"]
    env = env_of(production)
    assert env["HOST"] == "0.0.0.0"
    assert env["PATH"].startswith("/opt/ddp-relay/bin:")
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus-multiproc"
    assert "DJANGO_SETTINGS_MODULE" not in env and "RELAY_WSGI_APP" not in env
    assert set(production.all("EXPOSE")[0].split()) == {env["PORT"], env["RELAY_INTERNAL_PORT"]}


def test_oci_labels_say_what_pyproject_says() -> None:
    production = stages()["production"]
    labels = {}
    for rest in production.all("LABEL"):
        for pair in shlex.split(rest):
            key, _, value = pair.partition("=")
            labels[key] = value
    (version_arg,) = [a for a in production.all("ARG") if a.startswith("VERSION=")]
    assert version_arg == f"VERSION={PYPROJECT['project']['version']}"
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]["text"]
    for key in ("title", "description", "authors", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.title"] == PYPROJECT["project"]["name"]


def test_the_lock_is_used_and_the_example_stays_out_of_production() -> None:
    found = stages()
    builder = found["builder"]
    copies = " ".join(builder.all("COPY"))
    assert "deploy/constraints.txt" in copies
    (run,) = builder.all("RUN")
    assert "--constraint constraints.txt" in run and "--only-binary=:all:" in run
    assert "[zookeeper]" in run and "pip check" in run
    for name, stage in found.items():
        sources = " ".join(stage.all("COPY") + stage.all("ADD") + stage.all("RUN"))
        for tooling in ("devstack", "tests", "loadtest", "helm"):
            assert not re.search(rf"(^|[\s/]){tooling}\b", sources), (name, tooling)
        if name not in ("example", "demo-assets"):
            assert not re.search(r"(^|\s)example\b", sources), name
    assert found["example"].all("COPY")[0] == "example /app/example"
    # demo-assets takes the demo page's npm lock and nothing else of the example.
    assert found["demo-assets"].all("COPY") == [
        "example/demo/package.json example/demo/package-lock.json ./"
    ]
    env = env_of(found["example"])
    assert env["DJANGO_SETTINGS_MODULE"] == "example.settings"
    assert env["RELAY_WSGI_APP"] == "example.wsgi:application"
    assert env["PYTHONPATH"] == "/app/example"
    # Only the venv crosses into the runtime image, not the sources or the wheels.
    assert found["production"].all("COPY") == ["--from=builder /opt/ddp-relay /opt/ddp-relay"]


# --- .dockerignore --------------------------------------------------------------------------


def _ignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!")))
    return rules


def ignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or a parent."""
    verdict = False
    parts = path.split("/")
    for negated, pattern in _ignore_rules():
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            verdict = not negated
    return verdict


def test_build_context_has_what_is_copied_and_not_the_tooling() -> None:
    for stage in stages().values():
        for rest in stage.all("COPY"):
            if rest.startswith("--from="):
                continue
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not ignored(source), source
    for gone in ("devstack", "tests", "loadtest", ".git", ".venv", ".state", "node_modules",
                 "helm", "docs", "deploy/haproxy.cfg", "example/staticfiles"):  # fmt: skip
        assert ignored(gone), gone


# --- the HEALTHCHECK, run ---------------------------------------------------------------------


def healthcheck_argv() -> list[str]:
    (rest,) = stages()["production"].all("HEALTHCHECK")
    options, _, command = rest.partition("CMD ")
    assert {"--interval", "--timeout", "--start-period", "--retries"} <= {
        option.split("=")[0] for option in options.split()
    }
    argv: list[str] = json.loads(command)
    assert argv[0] == "python" and "curl" not in command and "wget" not in command
    assert "/livez" in command
    return argv


class _Livez(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/livez" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def livez() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Livez)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_healthcheck(**env: str) -> int:
    argv = healthcheck_argv()
    clean = {k: v for k, v in os.environ.items() if k not in ("PORT", "RELAY_INTERNAL_PORT")}
    done = subprocess.run(
        [sys.executable, *argv[1:]], env={**clean, **env}, capture_output=True, timeout=30
    )
    return done.returncode


def test_healthcheck_asks_the_internal_port_else_the_public_one(livez: int) -> None:
    dead = str(free_port())
    assert _run_healthcheck(RELAY_INTERNAL_PORT=str(livez), PORT=dead) == 0
    assert _run_healthcheck(RELAY_INTERNAL_PORT=dead, PORT=str(livez)) != 0
    assert _run_healthcheck(RELAY_INTERNAL_PORT="0", PORT=str(livez)) == 0
    assert _run_healthcheck(PORT=str(livez)) == 0
    assert _run_healthcheck(RELAY_INTERNAL_PORT="0", PORT=dead) != 0


# --- the lock ---------------------------------------------------------------------------------


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"not an exact pin: {line!r}"
        found[canonicalize_name(name)] = Version(version)
    return found


def _applies(req: Requirement, extras: tuple[str, ...] = ()) -> bool:
    if req.marker is None:
        return True
    environment = {key: str(value) for key, value in default_environment().items()}
    return any(req.marker.evaluate({**environment, "extra": extra}) for extra in extras or ("",))


def runtime_closure() -> dict[str, list[Requirement]]:
    """Every distribution the image needs, with the requirements that ask for it: the
    [project] dependencies and the image's extras, then each one's own runtime
    requirements as the installed metadata in .venv states them."""
    wanted: dict[str, list[Requirement]] = {}
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in IMAGE_EXTRAS:
        todo += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        seen = name in wanted
        wanted.setdefault(name, []).append(req)
        if seen:
            continue
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if _applies(sub, tuple(req.extras)):
                todo.append(sub)
    return wanted


def test_the_lock_pins_the_whole_runtime_closure_within_its_bounds() -> None:
    pinned = pins()
    closure = runtime_closure()
    assert {"django", "gevent", "gunicorn", "kazoo", "psycopg2-binary"} <= set(closure)
    missing = sorted(set(closure) - set(pinned))
    assert missing == [], f"not in deploy/constraints.txt (run `make lock`): {missing}"
    for name, reqs in closure.items():
        for req in reqs:
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"deploy/constraints.txt pins {name}=={pinned[name]}, but {req} is asked "
                "for (run `make lock`)"
            )
    stale = sorted(set(pinned) - set(closure))
    assert stale == [], f"pinned but not needed at run time (run `make lock`): {stale}"


def test_the_lock_says_how_to_regenerate_it() -> None:
    header = CONSTRAINTS.read_text(encoding="utf-8").split("\n", 5)[:4]
    assert any("make lock" in line for line in header)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^lock:", makefile, re.MULTILINE)
    assert "LOCK := deploy/constraints.txt" in makefile


# --- the builder stage, replayed without Docker ---------------------------------------------


def _rebase(text: str, root: Path) -> str:
    """The image's absolute paths (/src, /wheels, /opt/...) under ``root``."""
    return re.sub(r"(?<![\w./-])/(src|wheels|opt)\b", lambda m: f"{root}/{m.group(1)}", text)


def test_the_builder_stage_installs_exactly_the_lock(tmp_path: Path) -> None:
    """COPY and RUN of the builder, run here: Python 3.11 as in the base image; pip may
    reach PyPI (its cache makes a rerun fast). The result must be the pinned set."""
    builder = stages()["builder"]
    workdir = tmp_path / "src"
    script = ["set -euo pipefail"]
    for keyword, rest in builder.instructions:
        if keyword == "WORKDIR":
            workdir = Path(_rebase(rest, tmp_path))
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = rest.split()
            target = workdir / dest if not dest.startswith("/") else Path(_rebase(dest, tmp_path))
            for source in sources:
                path = ROOT / source
                if path.is_dir():
                    shutil.copytree(
                        path, target, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )  # fmt: skip
                else:
                    to = target / path.name if dest.endswith("/") else target
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, to)
        elif keyword == "RUN":
            script.append(_rebase(rest, tmp_path))
    interpreter = tmp_path / "bin"
    interpreter.mkdir()
    (interpreter / "python").symlink_to(sys.base_prefix + "/bin/python3.11")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
        **env_of(builder),
        "PATH": f"{interpreter}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    venv = tmp_path / "opt" / "ddp-relay"
    frozen = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # ``ddp-relay @ file:///...whl``: the wheel just built; everything else ``name==version``.
    lines = [line for line in frozen.splitlines() if not line.startswith("ddp-relay @ ")]
    installed = {
        canonicalize_name(name): Version(version)
        for name, _, version in (line.partition("==") for line in lines)
    }
    assert installed == pins()
    version = subprocess.run(
        [str(venv / "bin" / "ddp-relay"), "version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip() == f"ddp-relay {PYPROJECT['project']['version']}"
