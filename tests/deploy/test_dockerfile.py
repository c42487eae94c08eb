"""The Dockerfile and .dockerignore, read statically (no Docker engine to build with here)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex

from tests.deploy.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def env_values() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_base_image_user_and_command() -> None:
    parsed = instructions()
    assert parsed[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in parsed if keyword == "USER"]
    assert users, "the image must not run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot checks it)"
    (cmd,) = [rest for keyword, rest in parsed if keyword == "CMD"]
    assert json.loads(cmd) == [
        "gunicorn", "-c", "python:relay.server.gunicorn_conf", "relay.server.app:create_app()",
    ]  # fmt: skip
    env = env_values()
    assert env["HOST"] == "0.0.0.0"
    assert env["DJANGO_SETTINGS_MODULE"] == "example.settings"
    assert env["RELAY_WSGI_APP"] == "example.wsgi:application"
    assert any(k == "RUN" and "pip install" in rest for k, rest in parsed)


def test_copied_sources_exist_and_are_not_dockerignored() -> None:
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions():
        if keyword != "COPY":
            continue
        *sources, _dest = rest.split()
        for source in sources:
            if "*" in source:  # optional files (README.md*)
                continue
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    for heavy in (".git", ".venv", ".state", "node_modules"):
        assert heavy in ignored, heavy
