"""The example's SECRET_KEY: where it comes from (``example/example/secret_key.py``), what
the settings do with it in a fresh interpreter, and the key ``make run`` keeps
(``devstack/launch.py``, ``devstack/devserver.py``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from example.secret_key import (
    ENV_FILE,
    ENV_KEY,
    MAX_KEY_FILE_BYTES,
    inspection_only,
    read_key_file,
    resolve_secret_key,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack import devserver, launch

ROOT = Path(__file__).resolve().parents[2]

#: What an environment variable can hold (no NUL) and is not blank.
env_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
).filter(str.strip)
#: What a key file can hold: a key without surrounding whitespace.
file_keys = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]),
    min_size=1,
    max_size=200,
)
padding = st.sampled_from(["", "\n", " \n", "\t", "\r\n\n"])


# -- resolve_secret_key, pure ---------------------------------------------------------


@given(key=env_values, debug=st.booleans(), inspecting=st.booleans())
def test_the_environment_wins_verbatim(key: str, debug: bool, inspecting: bool) -> None:
    environ = {ENV_KEY: key, ENV_FILE: "/nonexistent/never/read"}
    resolved = resolve_secret_key(environ, debug=debug, inspecting=inspecting)
    assert (resolved.value, resolved.source) == (key, "environment")


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=file_keys, before=padding, after=padding, debug=st.booleans())
def test_a_key_file_is_read_and_stripped(
    tmp_path: Path, key: str, before: str, after: str, debug: bool
) -> None:
    path = tmp_path / "key"
    path.write_text(before + key + after, encoding="utf-8")
    for blank in ("", "  "):
        resolved = resolve_secret_key({ENV_KEY: blank, ENV_FILE: str(path)}, debug=debug)
        assert (resolved.value, resolved.source) == (key, "file")


@pytest.mark.parametrize("debug", [False, True])
def test_a_named_key_file_that_is_unusable_refuses_even_with_debug(
    tmp_path: Path, debug: bool
) -> None:
    empty = tmp_path / "empty"
    empty.write_text(" \n", encoding="utf-8")
    huge = tmp_path / "huge"
    huge.write_text("k" * (MAX_KEY_FILE_BYTES + 1), encoding="utf-8")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00key")
    cases = {
        tmp_path / "missing": "cannot read it",
        tmp_path: "cannot read it",  # a directory
        empty: "is empty",
        huge: "not a key file",
        binary: "not UTF-8",
    }
    for path, message in cases.items():
        with pytest.raises(ImproperlyConfigured, match=message) as info:
            resolve_secret_key({ENV_FILE: str(path)}, debug=debug, inspecting=True)
        assert str(path) in str(info.value)


def test_a_key_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("k" * MAX_KEY_FILE_BYTES, encoding="utf-8")
    assert read_key_file(path) == "k" * MAX_KEY_FILE_BYTES


@given(blank=st.sampled_from(["", " ", "\t\n"]))
def test_nothing_configured_refuses_to_start(blank: str) -> None:
    for environ in ({}, {ENV_KEY: blank}, {ENV_FILE: blank}, {ENV_KEY: blank, ENV_FILE: blank}):
        with pytest.raises(ImproperlyConfigured, match="No SECRET_KEY") as info:
            resolve_secret_key(environ, debug=False, inspecting=False)
        assert ENV_KEY in str(info.value) and ENV_FILE in str(info.value)


@pytest.mark.parametrize(("debug", "inspecting"), [(True, False), (False, True), (True, True)])
def test_debug_or_inspection_gets_a_random_key(debug: bool, inspecting: bool) -> None:
    keys = {resolve_secret_key({}, debug=debug, inspecting=inspecting).value for _ in range(20)}
    assert len(keys) == 20  # never a fixed key
    for key in keys:
        assert len(key) >= 50 and len(set(key)) >= 5  # Django's check --deploy thresholds
    assert resolve_secret_key({}, debug=debug, inspecting=inspecting).source == "ephemeral"


def test_inspection_means_pytest_or_mypy_was_imported() -> None:
    assert inspection_only(sys.modules)  # this very process
    assert inspection_only({"mypy"}) and inspection_only({"pytest", "django"})
    assert not inspection_only({"django", "gunicorn", "gevent", "example.settings"})


# -- the settings module in a fresh interpreter -----------------------------------------

_PROBE = """
import json, os, warnings
warnings.simplefilter("always")
import example.settings as s
print(json.dumps({"key": s.SECRET_KEY, "exported": os.environ.get("DJANGO_SECRET_KEY"),
                  "hosts": s.ALLOWED_HOSTS, "forwarded": s.HTTP_FORWARDED_COUNT}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without any DJANGO_* or DEMO_* of this process (pytest exported a
    key of its own), plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DEMO_", "HTTP_FORWARDED"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "example"), str(ROOT)])
    env.update(extra)
    return env


def probe_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import the example's settings in a new interpreter, as a server would (no pytest)."""
    return subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def probed(env: dict[str, str]) -> tuple[dict[str, Any], str]:
    proc = probe_settings(env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def test_settings_refuse_to_start_without_a_key() -> None:
    proc = probe_settings(clean_env())
    assert proc.returncode != 0
    assert "ImproperlyConfigured: No SECRET_KEY" in proc.stderr
    off = probe_settings(clean_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=" "))
    assert off.returncode != 0 and "No SECRET_KEY" in off.stderr


def test_settings_take_the_environment_key() -> None:
    values, stderr = probed(clean_env(DJANGO_SECRET_KEY="from-the-environment-" + "x" * 40))
    assert values["key"] == "from-the-environment-" + "x" * 40
    assert "random SECRET_KEY" not in stderr


def test_settings_read_the_key_file(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("a-kept-key-" + "y" * 50 + "\n", encoding="utf-8")
    values, _ = probed(clean_env(DJANGO_SECRET_KEY_FILE=str(path)))
    assert values["key"] == "a-kept-key-" + "y" * 50
    assert values["exported"] is None  # a kept key is not copied into the environment
    broken = probe_settings(clean_env(DJANGO_SECRET_KEY_FILE=str(tmp_path / "gone")))
    assert broken.returncode != 0 and "cannot read it" in broken.stderr


def test_settings_with_debug_use_a_random_key_and_say_so() -> None:
    first, stderr = probed(clean_env(DJANGO_DEBUG="1"))
    second, _ = probed(clean_env(DJANGO_DEBUG="1"))
    assert first["key"] != second["key"] and len(first["key"]) >= 50
    # Exported, so runserver's autoreloader child and launched relays share it.
    assert first["exported"] == first["key"]
    assert "RuntimeWarning" in stderr and "random SECRET_KEY" in stderr


def test_this_test_run_exported_its_key_for_the_processes_it_starts() -> None:
    from django.conf import settings as django_settings

    assert os.environ.get(ENV_KEY) == django_settings.SECRET_KEY
    assert launch.example_env("postgresql://x/y")[ENV_KEY] == django_settings.SECRET_KEY


# -- the launcher: make run's kept key file, everyone else's shared throwaway key -------


def test_ensure_secret_key_file_creates_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / "secret_key"
    assert launch.ensure_secret_key_file(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)
    assert len(key) >= 50
    assert launch.ensure_secret_key_file(path) == path
    assert read_key_file(path) == key  # kept
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary left


def test_ensure_secret_key_file_narrows_a_loose_mode_and_keeps_the_key(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("an-operator-key\n", encoding="utf-8")
    path.chmod(0o644)
    launch.ensure_secret_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == "an-operator-key"


def test_ensure_secret_key_file_replaces_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    path.write_text("\n", encoding="utf-8")
    launch.ensure_secret_key_file(path)
    assert len(read_key_file(path)) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_launchers_started_together_agree_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "secret_key"
    barrier = threading.Barrier(16)
    keys: list[str] = []

    def launcher() -> None:
        barrier.wait()
        launch.ensure_secret_key_file(path)
        keys.append(read_key_file(path))

    threads = [threading.Thread(target=launcher) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 16 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


@pytest.fixture
def no_caller_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher whose caller set no key (monkeypatch restores this process's after)."""
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_FILE, raising=False)


@pytest.mark.usefixtures("no_caller_key")
def test_example_env_uses_the_key_file_it_is_given(tmp_path: Path) -> None:
    env = launch.example_env("postgresql://x/y", secret_key_file=tmp_path / "secret_key")
    assert env[ENV_FILE] == str(tmp_path / "secret_key") and ENV_KEY not in env
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    # And the settings of the example read exactly that key.
    values, _ = probed(clean_env(**{ENV_FILE: env[ENV_FILE]}))
    assert values["key"] == read_key_file(tmp_path / "secret_key")


@pytest.mark.usefixtures("no_caller_key")
def test_example_env_shares_one_throwaway_key_per_launcher() -> None:
    first = launch.example_env("postgresql://x/y")
    second = launch.example_env("postgresql://x/z", {"PORT": "1"})
    assert first[ENV_KEY] == second[ENV_KEY] == os.environ[ENV_KEY]
    assert len(first[ENV_KEY]) >= 50 and ENV_FILE not in first


@pytest.mark.usefixtures("no_caller_key")
def test_example_env_keeps_a_key_the_caller_or_extra_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unused = tmp_path / "unused"
    env = launch.example_env("postgresql://x/y", {ENV_KEY: "given"}, secret_key_file=unused)
    assert env[ENV_KEY] == "given" and ENV_FILE not in env
    monkeypatch.setenv(ENV_FILE, "/run/secrets/django")
    env = launch.example_env("postgresql://x/y", keep_caller_settings=True, secret_key_file=unused)
    assert env[ENV_FILE] == "/run/secrets/django" and ENV_KEY not in env
    assert not unused.exists()


@pytest.mark.usefixtures("no_caller_key")
def test_make_run_keeps_its_key_in_the_state_directory(tmp_path: Path) -> None:
    env = devserver._env("postgresql://x/y", tmp_path)
    assert env[ENV_FILE] == str(tmp_path / devserver.SECRET_KEY_FILE)
    key = read_key_file(tmp_path / devserver.SECRET_KEY_FILE)
    assert read_key_file(Path(devserver._env("postgresql://x/y", tmp_path)[ENV_FILE])) == key
