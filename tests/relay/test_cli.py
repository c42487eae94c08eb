"""``relay.cli``: the ``ddp-relay`` console script.

Pure parts first (``parse_bind`` against a brute-force model, what each command plans to
``exec`` for a given environment, refusals), then the real thing in subprocesses: the
installed ``ddp-relay`` script, ``check`` and ``migrate`` against the session's PostgreSQL
and ZooKeeper (and dead ones), ``serve`` and ``web`` as real gunicorn servers a DDP client
and an HTTP client talk to. Nothing is mocked: the checks run the children they run in
production (``python -m django``), and ``serve`` is checked to have become gunicorn.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT, example_env
from devstack.processes import free_port, http_status, spawn, stop_process_tree, wait_until_ready
from relay import cli
from relay.client import DDPClient
from relay.client.errors import DDPClientError

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPT = Path(sys.executable).parent / "ddp-relay"
EXAMPLE_ENV = {
    "PYTHONPATH": f"{ROOT / 'example'}{os.pathsep}{ROOT}",
    "DJANGO_SETTINGS_MODULE": "example.settings",
    "DJANGO_SECRET_KEY": "test-cli-secret-key-not-for-production-0123456789",
}


def _ddp_relay(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RELAY_*/Django setting of the developer's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "DJANGO_", "DATABASE_URL", "PROMETHEUS_"))
    }
    env.update(extra)
    return env


# --- parse_bind ---------------------------------------------------------------------------

_MODEL = re.compile(r"(\[[^\[\]\s]+\]|[^\[\]:\s]+):([0-9]+)")


def _model(value: str) -> tuple[str, int] | None:
    """The rule, said as a regular expression: a host without ``:[]`` or spaces, or a
    bracketed one without brackets or spaces inside; ASCII digits; a port 1..65535."""
    match = _MODEL.fullmatch(value.strip())
    if match is None or not 1 <= int(match.group(2)) <= 65535:
        return None
    return match.group(1), int(match.group(2))


@given(st.text(alphabet="ab1.:[]0 9\t٣x", max_size=14))
def test_parse_bind_agrees_with_the_model(value: str) -> None:
    expected = _model(value)
    if expected is None:
        with pytest.raises(ValueError):
            cli.parse_bind(value)
    else:
        assert cli.parse_bind(value) == expected


@given(
    st.one_of(
        st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
    ),
    st.integers(1, 65535),
)
def test_parse_bind_round_trips_every_valid_address(host: str, port: int) -> None:
    assert cli.parse_bind(f"{host}:{port}") == (host, port)


@pytest.mark.parametrize(
    "value", ["", ":8000", "8000", "host:", "host:0", "host:65536", "::1:80", "a b:80",
              "host:8O", "host:" + "9" * 5000, "x" * 10_000]
)  # fmt: skip
def test_parse_bind_refuses_with_a_message(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port|host"):
        cli.parse_bind(value)


# --- plan: what each command becomes ------------------------------------------------------


def test_serve_execs_gunicorn_with_the_relay_config_and_flags_override_the_env() -> None:
    env = {**EXAMPLE_ENV, "HOST": "127.0.0.1", "PORT": "1234", "RELAY_WORKERS": "9"}
    command = cli.plan(
        ["serve", "--bind", "0.0.0.0:8000", "--internal-bind", "[::]:9000", "--workers", "3"],
        env,
    )
    assert command is not None
    assert command.argv == [
        sys.executable, "-m", "gunicorn", "-c", "python:relay.server.gunicorn_conf",
        "relay.server.app:create_app()",
    ]  # fmt: skip
    assert command.env["HOST"] == "0.0.0.0" and command.env["PORT"] == "8000"
    assert command.env["RELAY_INTERNAL_HOST"] == "[::]"
    assert command.env["RELAY_INTERNAL_PORT"] == "9000"
    assert command.env["RELAY_WORKERS"] == "3"
    assert command.env["DJANGO_SETTINGS_MODULE"] == "example.settings"


def test_serve_without_flags_keeps_the_environment() -> None:
    env = {**EXAMPLE_ENV, "PORT": "1234", "RELAY_INTERNAL_PORT": "9100"}
    command = cli.plan(["serve"], env)
    assert command is not None and command.env == env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY_MAX_MESSAGE_BYTES": "lots"}, "RELAY_MAX_MESSAGE_BYTES"),
        ({"RELAY_HEARTBEAT_INTERVAL": "nan"}, "RELAY_HEARTBEAT_INTERVAL"),
        ({"RELAY_BACKEND": "no-colon"}, "RELAY_BACKEND"),
        ({"DJANGO_SETTINGS_MODULE": ""}, "DJANGO_SETTINGS_MODULE"),
    ],
)
def test_serve_refuses_a_broken_environment_before_starting(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(cli.CommandError, match=message):
        cli.plan(["serve"], {**EXAMPLE_ENV, **env})


def test_serve_with_another_backend_needs_no_django() -> None:
    command = cli.plan(["serve"], {"RELAY_BACKEND": "mybackend:Backend"})
    assert command is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--workers", "0"],
        ["serve", "--workers", "many"],
        ["serve", "--bind", "nowhere"],
        ["serve", "--internal-bind", "127.0.0.1:99999"],
        ["serve", "--unknown"],
        ["web", "--threads", "-1"],
        ["check", "--timeout", "0"],
        ["check", "--timeout", "nan"],
        ["check", "--timeout", "1e400"],
        ["frobnicate"],
        [],
    ],
)
def test_unusable_arguments_exit_2_with_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.plan(argv, EXAMPLE_ENV)
    assert exited.value.code == 2
    assert "usage: ddp-relay" in capsys.readouterr().err


def test_web_serves_the_wsgi_app_with_threaded_workers() -> None:
    env = {**EXAMPLE_ENV, "RELAY_WSGI_APP": "example.wsgi:application", "PORT": "8100"}
    command = cli.plan(["web", "--workers", "3", "--threads", "8", "--", "--timeout", "60"], env)
    assert command is not None
    argv = command.argv
    assert argv[:3] == [sys.executable, "-m", "gunicorn"]
    assert argv[argv.index("--worker-class") + 1] == "gthread"
    assert argv[argv.index("--workers") + 1] == "3"
    assert argv[argv.index("--threads") + 1] == "8"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:8100"
    assert argv[-3:] == ["--timeout", "60", "relay.server.web:create_app()"]
    assert command.env["RELAY_WSGI_APP"] == "example.wsgi:application"
    command = cli.plan(["web", "--bind", "0.0.0.0:8000"], env)
    assert command is not None
    assert command.argv[command.argv.index("--bind") + 1] == "0.0.0.0:8000"


@pytest.mark.parametrize("wsgi_app", [None, ""])
def test_web_refuses_without_a_wsgi_app(wsgi_app: str | None) -> None:
    env = dict(EXAMPLE_ENV)
    if wsgi_app is not None:
        env["RELAY_WSGI_APP"] = wsgi_app
    with pytest.raises(cli.CommandError, match="RELAY_WSGI_APP is empty"):
        cli.plan(["web"], env)


def test_web_refuses_a_port_that_is_not_one() -> None:
    env = {**EXAMPLE_ENV, "RELAY_WSGI_APP": "example.wsgi:application", "PORT": "http"}
    with pytest.raises(cli.CommandError, match="PORT"):
        cli.plan(["web"], env)


def test_migrate_and_manage_run_django_admin() -> None:
    migrate = cli.plan(["migrate", "bookstore", "zero"], EXAMPLE_ENV)
    assert migrate is not None
    assert migrate.argv == [
        sys.executable,
        "-m",
        "django",
        "migrate",
        "--noinput",
        "bookstore",
        "zero",
    ]
    migrate = cli.plan(["migrate", "-v", "0"], EXAMPLE_ENV)
    assert migrate is not None and migrate.argv[-3:] == ["--noinput", "-v", "0"]
    manage = cli.plan(["manage", "--", "shell", "-c", "print(1)"], EXAMPLE_ENV)
    assert manage is not None
    assert manage.argv == [sys.executable, "-m", "django", "shell", "-c", "print(1)"]
    with pytest.raises(cli.CommandError, match="manage needs"):
        cli.plan(["manage"], EXAMPLE_ENV)
    with pytest.raises(cli.CommandError, match="DJANGO_SETTINGS_MODULE"):
        cli.plan(["migrate"], {})


def test_check_and_version_run_in_this_process() -> None:
    assert cli.plan(["check"], EXAMPLE_ENV) is None
    assert cli.plan(["version"], EXAMPLE_ENV) is None


def test_check_stops_at_invalid_settings_without_running_anything() -> None:
    ran: list[list[str]] = []

    def run(argv: object, env: object) -> subprocess.CompletedProcess[str]:
        ran.append(list(argv))  # type: ignore[call-overload]
        raise AssertionError("nothing should run")

    results = cli.check_environment({"RELAY_RESUME_WINDOW": "-1"}, run=run)
    assert [(r.status, r.name) for r in results] == [("FAIL", "relay settings (RELAY_*)")]
    assert "RELAY_RESUME_WINDOW" in results[0].detail
    assert ran == []


# --- the real script ----------------------------------------------------------------------


def test_the_console_script_is_installed_and_prints_the_version() -> None:
    """``[project.scripts]`` names ``relay.cli:main``, and the installed script runs it."""
    assert PYPROJECT["project"]["scripts"] == {"ddp-relay": "relay.cli:main"}
    assert SCRIPT.is_file(), f"{SCRIPT} missing: pip install -e . again"
    expected = importlib.metadata.version("ddp-relay")
    assert expected == PYPROJECT["project"]["version"]
    for argv in ([str(SCRIPT), "version"], [str(SCRIPT), "--version"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"ddp-relay {expected}"


def test_help_names_every_command() -> None:
    done = _ddp_relay("--help")
    assert done.returncode == 0, done.stderr
    for command in ("serve", "web", "check", "migrate", "manage", "version"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command
    for command in ("serve", "web", "check"):
        sub = _ddp_relay(command, "--help")
        assert sub.returncode == 0 and "usage: ddp-relay " + command in sub.stdout


def test_refusals_exit_2_on_stderr_and_start_nothing() -> None:
    done = _ddp_relay("web", env=_clean_env(**EXAMPLE_ENV))
    assert done.returncode == 2
    assert "ddp-relay: RELAY_WSGI_APP is empty" in done.stderr
    done = _ddp_relay("serve", env=_clean_env(RELAY_SEND_BUFFER_BYTES="-5"))
    assert done.returncode == 2
    assert "RELAY_SEND_BUFFER_BYTES" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def database(pg_server: EmbeddedPostgres) -> str:
    """A database of its own, not yet migrated."""
    pg_server.create_database("cli")
    return pg_server.dsn("cli")


def _lines(stdout: str) -> dict[str, str]:
    """``{check name: status}`` from ``ddp-relay check``'s output."""
    found = {}
    for line in stdout.splitlines():
        status, _, name = line.partition(" ")
        if status in ("ok", "FAIL", "skip"):
            found[name.strip()] = status
    return found


def _status(results: dict[str, str], prefix: str) -> str:
    (status,) = [s for name, s in results.items() if name.startswith(prefix)]
    return status


@pytest.mark.pg
def test_check_fails_before_migrate_and_passes_after(database: str, zk_server: str) -> None:
    env = _clean_env(**EXAMPLE_ENV, DATABASE_URL=database, RELAY_ZOOKEEPER=zk_server)
    before = _ddp_relay("check", env=env)
    assert before.returncode == 1, before.stdout + before.stderr
    results = _lines(before.stdout)
    assert _status(results, "migrations applied") == "FAIL", before.stdout
    assert _status(results, "Django system checks") == "ok"
    assert _status(results, "PostgreSQL") == "ok"
    assert _status(results, "ZooKeeper") == "ok"

    migrated = _ddp_relay("migrate", "-v", "0", env=env)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    after = _ddp_relay("check", env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert set(_lines(after.stdout).values()) == {"ok"}, after.stdout
    assert after.stdout.rstrip().endswith("ddp-relay check: all passed")

    shown = _ddp_relay("manage", "showmigrations", "ddp", env=env)
    assert shown.returncode == 0 and "[X]" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.pg
def test_check_reports_each_unreachable_service(database: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = _clean_env(
        **EXAMPLE_ENV,
        DATABASE_URL=database,
        RELAY_DATABASE_URL=f"postgresql://relay:s3cret-pw@{dead}/relay",
        RELAY_ZOOKEEPER=dead,
    )
    started = time.monotonic()
    done = _ddp_relay("check", "--timeout", "2", env=env)
    assert time.monotonic() - started < 20  # bounded by --timeout, not the 10 s default
    assert done.returncode == 1
    results = _lines(done.stdout)
    assert _status(results, "PostgreSQL") == "FAIL"
    assert _status(results, "ZooKeeper") == "FAIL"
    assert "no session within 2 s" in done.stdout
    assert "s3cret-pw" not in done.stdout + done.stderr

    no_django = _ddp_relay("check", env=_clean_env(DATABASE_URL=database))
    assert no_django.returncode == 1
    assert _status(_lines(no_django.stdout), "Django project") == "FAIL"
    assert "DJANGO_SETTINGS_MODULE is not set" in no_django.stdout

    # A project whose settings module cannot be imported fails the Django checks.
    env_bad = _clean_env(**{**EXAMPLE_ENV, "DJANGO_SETTINGS_MODULE": "no_such.settings"})
    bad = _ddp_relay("check", env={**env_bad, "DATABASE_URL": database})
    assert bad.returncode == 1
    assert _status(_lines(bad.stdout), "Django system checks") == "FAIL"
    assert "No module named 'no_such'" in bad.stdout
    assert _status(_lines(bad.stdout), "migrations applied") == "skip"


# --- serve and web, for real --------------------------------------------------------------


@pytest.fixture
def migrated(database: str) -> str:
    done = _ddp_relay("migrate", "-v", "0", env=_clean_env(**EXAMPLE_ENV, DATABASE_URL=database))
    assert done.returncode == 0, done.stdout + done.stderr
    return database


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            stop_process_tree(proc, timeout=15)


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.mark.e2e
def test_serve_becomes_a_relay_that_speaks_ddp(
    migrated: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    env = example_env(
        migrated, {**EXAMPLE_ENV, "RELAY_WSGI_APP": "", "RELAY_GRACEFUL_TIMEOUT": "3"}
    )
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "relay", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    proc = spawn(argv, log, env=env, cwd=ROOT, new_session=False)
    launched.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(
        proc, lambda: http_status(url + "/readyz") == 200, 60, name="serve", log_path=log
    )
    # exec: the process started is gunicorn itself, with no Python parent in between.
    assert "gunicorn" in _cmdline(proc.pid) and "relay.server.app:create_app()" in _cmdline(
        proc.pid
    )
    assert http_status(url + "/admin/login/") == 404  # RELAY_WSGI_APP="": DDP only
    client = DDPClient(f"ws://127.0.0.1:{port}/websocket", timeout=10)
    try:
        client.connect()
        client.subscribe("authors.all")
        assert client.docs("authors") == {}  # migrated, not seeded
        with pytest.raises(DDPClientError, match="not-allowed"):
            client.call("books.fail")
    finally:
        client.close()


@pytest.mark.e2e
def test_web_serves_the_django_project(
    migrated: str, tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()
    env = example_env(migrated, {**EXAMPLE_ENV, "RELAY_WSGI_APP": "example.wsgi:application"})
    log = tmp_path / "web.log"
    argv = [sys.executable, "-m", "relay", "web", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    proc = spawn(argv, log, env=env, cwd=ROOT, new_session=False)
    launched.append(proc)
    url = f"http://127.0.0.1:{port}/admin/login/"
    wait_until_ready(proc, lambda: http_status(url) == 200, 60, name="web", log_path=log)
    assert "gthread" in _cmdline(proc.pid)
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert b"csrfmiddlewaretoken" in resp.read()
    # The web tier serves no DDP: the upgrade path is Django's 404.
    assert http_status(f"http://127.0.0.1:{port}/websocket") == 404
    # Its health path answers whatever the Host: a load balancer's check carries the pod's
    # IP, which ALLOWED_HOSTS refuses (400) on every path of the project.
    assert _status_as(f"http://127.0.0.1:{port}/admin/login/", host="10.1.2.3") == 400
    assert _status_as(f"http://127.0.0.1:{port}/livez", host="10.1.2.3") == 200


def _status_as(url: str, *, host: str) -> int:
    """The status ``url`` answers a request whose ``Host`` header is ``host``."""
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
