"""The ``ddp-relay`` console script (also ``python -m relay``): what a deploy runs.

Layer: the top, above ``relay.server``. Its job is to turn a short command into the right
process: ``serve`` (a relay: gunicorn with ``relay.server.gunicorn_conf``), ``web`` (the
web tier: gunicorn gthread workers serving ``RELAY_WSGI_APP``, the Django project),
``check`` (is this environment fit to serve: relay settings, Django's system checks with
the ``ddp.*`` ones, migrations applied, PostgreSQL and ZooKeeper reachable), ``migrate``,
``manage`` (``django-admin`` with the environment's ``DJANGO_SETTINGS_MODULE``) and
``version``. Options on the command line override the environment the servers read
(``--bind`` sets ``HOST``/``PORT``, ``--internal-bind`` ``RELAY_INTERNAL_HOST``/
``RELAY_INTERNAL_PORT``, ``--workers`` ``RELAY_WORKERS``), so the image, the chart and
compose say the same thing two ways without a second source of defaults.

``serve``, ``web``, ``migrate`` and ``manage`` replace this process (``exec``): signals
from Docker or Kubernetes reach gunicorn or Django directly, with no shell or Python
parent in between that could swallow them.

Must not: import Django (it is reached through ``python -m django`` in a child process,
so ``relay`` keeps its promise of never importing it), import gevent or monkey-patch at
module level (the gunicorn worker does that in its own process), serve anything in this
process, or print a secret (a DSN or a ZooKeeper digest is never echoed; errors are).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from relay.config import ConfigError, Settings

__all__ = [
    "Check",
    "Command",
    "CommandError",
    "build_parser",
    "check_environment",
    "main",
    "parse_bind",
    "plan",
    "version",
]

#: What ``relay.server.gunicorn_conf`` serves: the composition root, by gunicorn's syntax.
RELAY_APP = "relay.server.app:create_app()"
RELAY_GUNICORN_CONF = "python:relay.server.gunicorn_conf"
DEFAULT_BIND = "127.0.0.1:8000"
#: The web tier's defaults: Django views block on the database, so threads (gthread)
#: give each process concurrency without gevent's monkey-patching in the web tier.
DEFAULT_WEB_WORKERS = 2
DEFAULT_WEB_THREADS = 4
#: Bounds of the children ``check`` runs: a hung DNS lookup or firewall must not hang a
#: deploy pipeline.
CHECK_CHILD_TIMEOUT_S = 120.0
#: How long ``check`` waits for each service by default (``--timeout``).
SERVICE_TIMEOUT_S = 10.0


class CommandError(Exception):
    """A command cannot run as asked; its text is what the operator needs to fix."""


@dataclass(frozen=True)
class Command:
    """A process to become: ``argv`` with ``env`` (the full environment, not a delta)."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Check:
    """One line of ``ddp-relay check``: ``status`` is ``ok``, ``FAIL`` or ``skip``."""

    name: str
    status: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


# --- parsing ------------------------------------------------------------------------------


def parse_bind(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::]:8000`` for IPv6) as ``(host, port)``; ValueError otherwise.

    The host is a name or IPv4 address (no ``:``, brackets or spaces), or an IPv6 address
    in brackets; it is kept as written, because gunicorn's ``bind`` is rebuilt from it as
    ``HOST:PORT``. The port is ASCII digits within 1..65535.
    """
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    inner = host[1:-1] if host.startswith("[") and host.endswith("]") else None
    if inner is not None:
        if not inner or any(c.isspace() or c in "[]" for c in inner):
            raise ValueError(f"not an IPv6 host in brackets: {value!r}")
    elif any(c.isspace() or c in ":[]" for c in host):
        raise ValueError(
            f"a host has no spaces, and an IPv6 one goes in brackets ([::]:8000): {value!r}"
        )
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"the port is not a number: {value!r}")
    # Leading zeros aside, a port has at most five digits; int() of thousands of digits
    # is refused by Python itself, with a message that would not say "port".
    port = int(port_text.lstrip("0")[:6] or "0")
    if not 1 <= port <= 65535:
        raise ValueError(f"the port must be within 1..65535: {value!r}")
    return host, port


def _bind_arg(value: str) -> tuple[str, int]:
    try:
        return parse_bind(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {number})")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddp-relay",
        description="Meteor's DDP server for Django and PostgreSQL: run a relay, the web "
        "tier, or the checks and management tasks of a deploy. Configuration comes from "
        "the environment (RELAY_*, DJANGO_SETTINGS_MODULE, DATABASE_URL; see "
        "docs/configuration.md); options below override it.",
    )
    parser.add_argument("--version", action="version", version=f"ddp-relay {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="run a relay (DDP, health and metrics) under gunicorn",
        description="Run a relay: gunicorn with relay.server.gunicorn_conf and gevent "
        "workers. Serves /websocket and /sockjs, RELAY_WSGI_APP for other paths (empty: "
        "DDP only, behind a separate web tier), and health and metrics on the internal "
        "port when one is set.",
    )
    serve.add_argument(
        "--bind",
        type=_bind_arg,
        metavar="HOST:PORT",
        help="public listener (default: $HOST:$PORT, else 127.0.0.1:8000)",
    )
    serve.add_argument(
        "--internal-bind",
        type=_bind_arg,
        metavar="HOST:PORT",
        help="internal listener for /metrics, /livez, /readyz, /startupz "
        "(default: $RELAY_INTERNAL_HOST:$RELAY_INTERNAL_PORT; port 0 or unset: none)",
    )
    serve.add_argument(
        "--workers", type=_positive, metavar="N", help="gevent worker processes ($RELAY_WORKERS)"
    )

    web = sub.add_parser(
        "web",
        help="run the web tier: gunicorn gthread workers serving RELAY_WSGI_APP",
        description="Run the write-side Django project (RELAY_WSGI_APP, e.g. "
        "mysite.wsgi:application) under gunicorn with threaded workers, beside DDP-only "
        "relays. Arguments after -- go to gunicorn as they are.",
    )
    web.add_argument(
        "--bind",
        type=_bind_arg,
        metavar="HOST:PORT",
        help="listener (default: $HOST:$PORT, else 127.0.0.1:8000)",
    )
    web.add_argument(
        "--workers",
        type=_positive,
        default=DEFAULT_WEB_WORKERS,
        metavar="N",
        help=f"worker processes (default {DEFAULT_WEB_WORKERS})",
    )
    web.add_argument(
        "--threads",
        type=_positive,
        default=DEFAULT_WEB_THREADS,
        metavar="N",
        help=f"threads per worker (default {DEFAULT_WEB_THREADS})",
    )
    web.add_argument("gunicorn_args", nargs="*", metavar="-- GUNICORN_ARG", help=argparse.SUPPRESS)

    check = sub.add_parser(
        "check",
        help="check this environment can serve; non-zero exit on any failure",
        description="Relay settings, Django's system checks (ddp.* included), migrations "
        "applied, PostgreSQL reachable for the change stream, and ZooKeeper reachable "
        "when RELAY_ZOOKEEPER is set. Exits 1 when any check fails.",
    )
    check.add_argument("--deploy", action="store_true", help="also run Django's deployment checks")
    check.add_argument(
        "--timeout",
        type=_timeout,
        default=SERVICE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for PostgreSQL and for ZooKeeper (default {SERVICE_TIMEOUT_S:g})",
    )

    migrate = sub.add_parser(
        "migrate",
        help="apply migrations (django-admin migrate --noinput)",
        description="django-admin migrate --noinput; more arguments go to migrate.",
    )
    migrate.add_argument("args", nargs="*", help=argparse.SUPPRESS)

    manage = sub.add_parser(
        "manage",
        help="django-admin with the project's settings (e.g. `manage createsuperuser`)",
        description="python -m django ARGS... with this environment's DJANGO_SETTINGS_MODULE.",
    )
    manage.add_argument("args", nargs="*", metavar="ARGS")

    sub.add_parser("version", help="print the installed version")
    return parser


# --- planning: what each command becomes (pure, given the environment) ---------------------


def version() -> str:
    """The installed distribution's version (the checkout's when it is not installed)."""
    try:
        return importlib.metadata.version("ddp-relay")
    except importlib.metadata.PackageNotFoundError:
        from relay import __version__

        return __version__


def _settings(env: Mapping[str, str]) -> Settings:
    try:
        return Settings.from_env(env)
    except ConfigError as exc:
        raise CommandError(f"invalid relay setting: {exc}") from None


def _require_django_settings(env: Mapping[str, str], what: str) -> None:
    if not env.get("DJANGO_SETTINGS_MODULE", "").strip():
        raise CommandError(
            f"{what} needs DJANGO_SETTINGS_MODULE (e.g. mysite.settings), and PYTHONPATH "
            "pointing at the project when it is not installed"
        )


def _require_kazoo(settings: Settings) -> None:
    if settings.zookeeper and importlib.util.find_spec("kazoo") is None:
        raise CommandError(
            "RELAY_ZOOKEEPER is set but kazoo is not installed: pip install 'ddp-relay[zookeeper]'"
        )


def _gunicorn_supports(setting: str) -> bool:
    """Whether the installed gunicorn knows ``setting`` (older ones refuse unknown flags)."""
    import gunicorn.config

    return any(s.name == setting for s in gunicorn.config.KNOWN_SETTINGS)


def _python() -> str:
    # This interpreter, not a `gunicorn` found on PATH: the one whose site-packages hold
    # this relay (a venv's bin is often not on PATH in images and systemd units).
    return sys.executable


def _plan_serve(args: argparse.Namespace, environ: Mapping[str, str]) -> Command:
    env = dict(environ)
    if args.bind is not None:
        env["HOST"], port = args.bind
        env["PORT"] = str(port)
    if args.internal_bind is not None:
        env["RELAY_INTERNAL_HOST"], internal = args.internal_bind
        env["RELAY_INTERNAL_PORT"] = str(internal)
    if args.workers is not None:
        env["RELAY_WORKERS"] = str(args.workers)
    settings = _settings(env)
    if settings.backend.startswith("django_app."):
        _require_django_settings(env, "the relay's default backend (RELAY_BACKEND)")
    if settings.wsgi_app:
        _require_django_settings(env, f"RELAY_WSGI_APP={settings.wsgi_app}")
    _require_kazoo(settings)
    argv = [_python(), "-m", "gunicorn", "-c", RELAY_GUNICORN_CONF, RELAY_APP]
    return Command(argv, env)


def _plan_web(args: argparse.Namespace, environ: Mapping[str, str]) -> Command:
    env = dict(environ)
    settings = _settings(env)
    if not settings.wsgi_app:
        raise CommandError(
            "RELAY_WSGI_APP is empty: the web tier serves the Django project's WSGI app; "
            "set it to module:attribute (e.g. mysite.wsgi:application)"
        )
    _require_django_settings(env, "the web tier")
    if args.bind is not None:
        host, port = args.bind
    else:
        host, port = env.get("HOST") or "127.0.0.1", _env_port(env)
    argv = [
        *(_python(), "-m", "gunicorn", "--worker-class", "gthread"),
        *("--workers", str(args.workers), "--threads", str(args.threads)),
        *("--bind", f"{host}:{port}"),
        *("--graceful-timeout", env.get("RELAY_GRACEFUL_TIMEOUT") or "30"),
        *("--log-level", env.get("RELAY_LOG_LEVEL") or "info"),
    ]
    if env.get("RELAY_ACCESS_LOG"):
        argv += ["--access-logfile", env["RELAY_ACCESS_LOG"]]
    if _gunicorn_supports("control_socket_disable"):
        # As for the relays (gunicorn_conf): a machine-wide control socket path would be
        # fought over by several servers on one host, and nothing here uses it.
        argv.append("--no-control-socket")
    # The project behind relay.server.web's health path, which answers a load balancer's
    # check whatever its Host (Django's ALLOWED_HOSTS would refuse the pod's IP).
    env["RELAY_WSGI_APP"] = settings.wsgi_app
    argv += [*args.gunicorn_args, "relay.server.web:create_app()"]
    return Command(argv, env)


def _timeout(raw: str) -> float:
    """A ``--timeout``: finite seconds, at least 1 (argparse turns ValueError into usage)."""
    value = float(raw)
    if not 1 <= value <= 3600:  # also refuses nan and inf
        raise ValueError(raw)
    return value


def _env_port(env: Mapping[str, str]) -> int:
    raw = env.get("PORT") or "8000"
    try:
        return parse_bind(f"x:{raw}")[1]
    except ValueError:
        raise CommandError(f"PORT is not a port number: {raw!r}") from None


def _plan_django(what: str, django_args: Sequence[str], environ: Mapping[str, str]) -> Command:
    _require_django_settings(environ, what)
    return Command([_python(), "-m", "django", *django_args], dict(environ))


def plan(argv: Sequence[str], environ: Mapping[str, str]) -> Command | None:
    """The process ``ddp-relay argv...`` becomes, or None for the commands that run here
    (``check``, ``version``). CommandError when it cannot run as asked; SystemExit (2)
    from argparse for unusable arguments."""
    argv = list(argv)
    if argv[:1] in (["migrate"], ["manage"]):
        # Everything after the command is Django's, options included (argparse's
        # REMAINDER would refuse a leading option such as `-v 0`).
        extra = argv[2:] if argv[1:2] == ["--"] else argv[1:]
        if argv[0] == "migrate":
            return _plan_django("migrate", ["migrate", "--noinput", *extra], environ)
        if not extra:
            raise CommandError("manage needs a django-admin command, e.g. `manage shell`")
        return _plan_django("manage", extra, environ)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _plan_serve(args, environ)
    if args.command == "web":
        return _plan_web(args, environ)
    return None


# --- check --------------------------------------------------------------------------------

#: Runs a child for ``check`` (a parameter, so that tests can watch what is run).
Runner = Callable[[Sequence[str], Mapping[str, str]], "subprocess.CompletedProcess[str]"]


def _django_check(
    name: str, django_args: Sequence[str], env: Mapping[str, str], run: Runner
) -> Check:
    try:
        proc = run([_python(), "-m", "django", *django_args], env)
    except subprocess.TimeoutExpired:
        return Check(name, "FAIL", f"no answer in {CHECK_CHILD_TIMEOUT_S:.0f} s")
    if proc.returncode == 0:
        return Check(name, "ok")
    return Check(name, "FAIL", _last_lines(proc.stdout + proc.stderr))


def _last_lines(text: str, count: int = 8) -> str:
    """The end of a child's output; of a traceback, only the exception it ended with."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        starts = [i for i, line in enumerate(lines) if not line[:1].isspace()]
        lines = lines[starts[-1] :]
    return "\n".join(lines[-count:]) or "failed without a message"


def _postgres_check(settings: Settings, timeout: float) -> Check:
    name = "PostgreSQL for the change stream (RELAY_DATABASE_URL or DATABASE_URL)"
    if not settings.database_url:
        return Check(name, "FAIL", "neither is set: the relay would send no live updates")
    import psycopg2

    try:
        conn = psycopg2.connect(
            settings.database_url,
            connect_timeout=max(1, round(timeout)),
            application_name="ddp-relay check",
        )
    except psycopg2.Error as exc:
        # psycopg2's message names host and port, never the password.
        return Check(name, "FAIL", f"cannot connect: {str(exc).strip()}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version')")
            row = cur.fetchone()
    except psycopg2.Error as exc:
        return Check(name, "FAIL", f"connected, but a query failed: {str(exc).strip()}")
    finally:
        conn.close()
    return Check(name, "ok", f"PostgreSQL {row[0] if row else '?'}")


def _zookeeper_check(settings: Settings, timeout: float) -> Check:
    name = "ZooKeeper (RELAY_ZOOKEEPER)"
    if not settings.zookeeper:
        where = (
            "SQLite file RELAY_COORDINATOR_PATH (one node)"
            if settings.coordinator_path
            else "in-process (one worker)"
        )
        return Check(name, "skip", f"not set: sessions resume through the {where} only")
    try:
        _require_kazoo(settings)
    except CommandError as exc:
        return Check(name, "FAIL", str(exc))
    # The relay's own construction path, so TLS and digest options apply here as there.
    from relay.resume.resumer import build_coordinator

    try:
        coordinator = build_coordinator(settings)
    except Exception as exc:  # a bad option: its message is the diagnosis
        return Check(name, "FAIL", f"cannot build the coordinator: {exc}")
    try:
        connected = coordinator.start(timeout=timeout)
    except Exception as exc:
        return Check(name, "FAIL", f"cannot connect: {exc}")
    finally:
        coordinator.stop()
    if not connected:
        return Check(name, "FAIL", f"no session within {timeout:g} s")
    return Check(name, "ok")


def _run_child(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=CHECK_CHILD_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def check_environment(
    environ: Mapping[str, str],
    *,
    deploy: bool = False,
    timeout: float = SERVICE_TIMEOUT_S,
    run: Runner = _run_child,
) -> list[Check]:
    """Every check of ``ddp-relay check``, in order; later ones are skipped when they
    cannot mean anything (no settings, no Django project)."""
    results: list[Check] = []
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        return [Check("relay settings (RELAY_*)", "FAIL", str(exc))]
    results.append(Check("relay settings (RELAY_*)", "ok"))
    if environ.get("DJANGO_SETTINGS_MODULE", "").strip():
        module = environ["DJANGO_SETTINGS_MODULE"]
        django_check = ["check", "--fail-level", "ERROR", *(["--deploy"] if deploy else [])]
        system = _django_check(f"Django system checks ({module})", django_check, environ, run)
        results.append(system)
        if system.failed:
            results.append(Check("migrations applied", "skip", "the system checks failed"))
        else:
            results.append(
                _django_check(
                    "migrations applied (the database Django uses)",
                    ["migrate", "--check", "--plan"],
                    environ,
                    run,
                )
            )
    else:
        results.append(
            Check(
                "Django project", "FAIL", "DJANGO_SETTINGS_MODULE is not set (e.g. mysite.settings)"
            )
        )
    results.append(_postgres_check(settings, timeout))
    results.append(_zookeeper_check(settings, timeout))
    return results


def _print_checks(results: Sequence[Check]) -> None:
    for result in results:
        print(f"{result.status:<5} {result.name}", flush=True)
        for line in result.detail.splitlines():
            print(f"      {line}", flush=True)


# --- entry point --------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    print(f"ddp-relay: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """``ddp-relay ...``; ``exec``s the planned process, or returns an exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        command = plan(args_list, os.environ)
    except CommandError as exc:
        _fail(str(exc))
    if command is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(command.argv[0], command.argv, command.env)
    args = build_parser().parse_args(args_list)
    if args.command == "version":
        print(f"ddp-relay {version()}")
        return 0
    results = check_environment(os.environ, deploy=args.deploy, timeout=args.timeout)
    _print_checks(results)
    failed = [r.name for r in results if r.failed]
    if failed:
        print(f"ddp-relay check: {len(failed)} failed", file=sys.stderr)
        return 1
    print("ddp-relay check: all passed")
    return 0
