"""A throwaway local PostgreSQL server for ``make run``, the test suite and the local cluster.

Its job: given a state directory, create a private PostgreSQL cluster in it (``initdb`` on
first use), start it on 127.0.0.1 at a free (or given) port, hand out DSNs, create
databases, and stop it again, robustly: a second ``stop`` is a no-op, a server that died
leaves no stale ``postmaster.pid`` behind that blocks the next start, and a server that is
already running for the same state directory is adopted instead of started twice.

It is never for production. It trades durability for speed (``fsync=off``,
``synchronous_commit=off``, ``full_page_writes=off`` unless ``fsync=True``) and lets
anyone on the machine connect as the superuser ``relay`` without a password (``trust``),
which is only tolerable because it listens on 127.0.0.1 alone.

What it must not do:

- listen on anything but 127.0.0.1, or use the system's socket directory
  (``/var/run/postgresql``) or any cluster of the system's (``/etc/postgresql``,
  ``pg_ctlcluster``, the ``postgresql`` service);
- install anything (``make deps`` does that) or import anything beyond the standard
  library and ``devstack.processes`` (no Django, no gevent: ``python -m
  devstack.embedded_postgres`` must run on a bare interpreter);
- run the server as root (PostgreSQL refuses to): as root, ``initdb`` and ``pg_ctl`` run
  as the ``postgres`` OS user through ``runuser -u postgres --``;
- change the owner or mode of anything it did not create;
- let a stop signal sent to its caller's process group (a supervisor, GNU make, Ctrl-C)
  kill ``initdb``, ``pg_ctl`` or ``createdb`` halfway: they run in a session of their own,
  and the caller decides when the server stops.

Layout of a state directory ``S``::

    S/postgres.log     server log (initdb and pg_ctl output too), appended to
    S/port             the port of the last start
    S/pg/data          the cluster (PGDATA)
    S/pg/socket        the server's private Unix socket directory
    S/pg/initialized   written once initdb and the first database succeeded

As root, the ``postgres`` user must be able to reach ``S/pg``. When it cannot (``S`` is
under a directory like ``/root`` or ``/tmp/pytest-of-root`` that is closed to other
users) ``S/pg`` is instead a symlink to ``$TMPDIR/ddp-relay-pg-<hash of S>``, owned by
``postgres``; ``destroy()`` removes both. The log stays in ``S`` either way: the server
writes it through a file descriptor opened by this process, not by path.

Command line (stdout carries only the DSN, messages go to stderr)::

    python -m devstack.embedded_postgres start --state-dir DIR [--port N] [--fsync]
    python -m devstack.embedded_postgres stop --state-dir DIR
    python -m devstack.embedded_postgres status --state-dir DIR   # exit 0 running, 3 stopped
    python -m devstack.embedded_postgres destroy --state-dir DIR  # stop and delete the cluster
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from devstack.processes import free_port, log_tail

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "PostgresNotFound",
    "find_pg_bin",
    "free_port",
]

#: The Debian/Ubuntu package that provides initdb and pg_ctl.
APT_PACKAGE = "postgresql"
#: The OS user that runs the server when this process is root.
PG_OS_USER = "postgres"
#: The cluster's superuser role (trust auth on 127.0.0.1).
SUPERUSER = "relay"
#: The database created with the cluster; ``dsn()``'s default.
DEFAULT_DBNAME = "relay"

_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
# _OWN_SESSION: initdb, pg_ctl and createdb run in a session of their own. A stop signal
# sent to the caller's process group (a supervisor, GNU make forwarding SIGTERM, Ctrl-C)
# would otherwise kill pg_ctl halfway: a postmaster it already forked comes up after
# start() gave up (no postmaster.pid yet, so stop() saw nothing to stop), or keeps running
# after stop() gave up. The caller decides when the server stops, and it waits for that.
_START_TIMEOUT_S = 60
_LOG_ROTATE_BYTES = 5 * 1024 * 1024
# Unix socket paths are limited to 107 bytes; ".s.PGSQL.65535" plus a slash is 15.
_MAX_SOCKET_DIR_LEN = 90
# Client environment variables that would change what initdb/pg_ctl/createdb do.
_PG_ENV_VARS = (
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSFILE",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGTZ",
    "PGCLIENTENCODING",
)


class EmbeddedPostgresError(RuntimeError):
    """The throwaway PostgreSQL server could not be set up, started or stopped."""


class PostgresNotFound(EmbeddedPostgresError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def _version_key(path: Path) -> tuple[int, ...]:
    parts = re.findall(r"\d+", path.name)
    return tuple(int(p) for p in parts) if parts else (-1,)


def _is_bin_dir(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def find_pg_bin(major: str | None = None) -> Path:
    """The directory holding ``initdb``, ``pg_ctl``, ``createdb`` and ``psql``.

    Searches ``/usr/lib/postgresql/*/bin`` (Debian's layout), newest version first, then
    ``initdb``/``pg_ctl`` on ``PATH`` (symlinks resolved, so the client binaries next to
    them are found too). ``major`` (``"15"``) restricts the Debian search to that version,
    for an existing cluster whose ``PG_VERSION`` says so.
    """
    if _DEBIAN_PG_ROOT.is_dir():
        versions = sorted(_DEBIAN_PG_ROOT.iterdir(), key=_version_key, reverse=True)
        for version_dir in versions:
            if major is not None and version_dir.name != major:
                continue
            if _is_bin_dir(version_dir / "bin"):
                return version_dir / "bin"
    initdb = shutil.which("initdb")
    if initdb is not None:
        for candidate in (Path(initdb).resolve().parent, Path(initdb).parent):
            if _is_bin_dir(candidate):
                return candidate
    wanted = f"PostgreSQL {major} " if major else "PostgreSQL "
    raise PostgresNotFound(
        f"{wanted}server binaries (initdb, pg_ctl) not found in "
        f"{_DEBIAN_PG_ROOT}/*/bin or on PATH. Install them with "
        f"`apt-get install --no-install-recommends {APT_PACKAGE}` (Debian/Ubuntu; "
        f"`make deps` does it), or put initdb and pg_ctl on PATH."
    )


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Could PostgreSQL listen there? (It sets SO_REUSEADDR: TIME_WAIT does not count.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PG_ENV_VARS}
    # English, parseable messages ("already exists"), whatever the user's locale.
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env["TZ"] = "UTC"  # initdb writes the zone it sees (Django sets TZ) into the cluster
    env.pop("LANGUAGE", None)
    return env


class EmbeddedPostgres:
    """One private PostgreSQL cluster in ``state_dir``, on 127.0.0.1.

    ``port=None`` picks a free port at start (the previous start's port when it is still
    free, so a restarted ``make run`` keeps its DSN). Use as a context manager, or call
    ``start()``/``stop()``; ``destroy()`` also deletes the cluster.
    """

    def __init__(self, state_dir: Path, port: int | None = None, *, fsync: bool = False) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.port: int | None = port
        self.fsync = fsync
        self._requested_port = port
        self._bin_dir: Path | None = None
        self._as_root = hasattr(os, "geteuid") and os.geteuid() == 0

    # -- paths ------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.state_dir / "postgres.log"

    @property
    def port_file(self) -> Path:
        return self.state_dir / "port"

    @property
    def cluster_dir(self) -> Path:
        """Where the cluster lives: ``state_dir/pg``, or the target of that symlink."""
        link = self.state_dir / "pg"
        if link.is_symlink():
            return Path(os.readlink(link))
        return link

    @property
    def data_dir(self) -> Path:
        return self.cluster_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.cluster_dir / "socket"

    @property
    def _initialized_marker(self) -> Path:
        return self.cluster_dir / "initialized"

    @property
    def bin_dir(self) -> Path:
        """The PostgreSQL binaries used; matches an existing cluster's major version."""
        if self._bin_dir is None:
            major: str | None = None
            with contextlib.suppress(OSError):
                major = (self.data_dir / "PG_VERSION").read_text().strip() or None
            try:
                self._bin_dir = find_pg_bin(major)
            except PostgresNotFound:
                if major is None:
                    raise
                raise PostgresNotFound(
                    f"the cluster in {self.data_dir} was made by PostgreSQL {major}, whose "
                    f"binaries are not installed; delete it (`python -m "
                    f"devstack.embedded_postgres destroy --state-dir {self.state_dir}` or `make "
                    f"clean`) to start afresh"
                ) from None
        return self._bin_dir

    # -- public API ---------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if new, then start it (or adopt it if already running)."""
        self.bin_dir  # noqa: B018  (fail early and clearly when PostgreSQL is missing)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_cluster_dir()

        running = self.running_pid()
        if running is not None:
            self._adopt(running)
            return
        self._remove_stale_files()

        if not self._initialized_marker.exists():
            self._initdb()
            fresh = True
        else:
            fresh = False

        auto_port = self._requested_port is None
        port = self._choose_port()
        for attempt in range(5 if auto_port else 1):
            offset = self._log_size()
            if self._pg_ctl_start(port):
                break
            new_output = self._log_since(offset)
            port_taken = "could not bind" in new_output or "already in use" in new_output
            if auto_port and port_taken and attempt < 4:
                self._remove_stale_files()
                port = free_port()
                continue
            raise EmbeddedPostgresError(
                f"PostgreSQL did not start on 127.0.0.1:{port} (data {self.data_dir}); "
                f"log {self.log_path}:\n{self.log_tail()}"
            )
        self.port = port
        self.port_file.write_text(f"{port}\n")
        if fresh:
            self.create_database(DEFAULT_DBNAME)
            self._initialized_marker.write_text("ok\n")

    def stop(self) -> None:
        """Stop the server (``pg_ctl -m fast``). A no-op when it is not running."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        if self.running_pid() is None:
            self._remove_stale_files()
            return
        result = self._run_pg_ctl_stop("fast")
        if result.returncode == 0 or self.running_pid() is None:
            self._remove_stale_files()
            return
        result = self._run_pg_ctl_stop("immediate")
        if self.running_pid() is None:
            self._remove_stale_files()
            return
        raise EmbeddedPostgresError(
            f"could not stop PostgreSQL (data {self.data_dir}): {result.stdout.strip()}"
        )

    def restart(self) -> None:
        """Stop and start again, on the same port when it is still free."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete the cluster (the log and state_dir itself stay)."""
        self.stop()
        link = self.state_dir / "pg"
        target = self.cluster_dir
        if target.exists():
            shutil.rmtree(target)
        if link.is_symlink():
            link.unlink()
        self.port_file.unlink(missing_ok=True)

    def is_running(self) -> bool:
        return self.running_pid() is not None

    def running_port(self) -> int | None:
        """The port of the server running on this state dir (any process's), else None."""
        if self.running_pid() is None:
            return None
        lines = self._read_pid_file() or []
        try:
            return int(lines[3])
        except (IndexError, ValueError):
            return None

    def dsn(self, dbname: str = DEFAULT_DBNAME) -> str:
        """``postgresql://relay@127.0.0.1:PORT/DBNAME`` (no password: trust on loopback)."""
        if self.port is None:
            raise EmbeddedPostgresError("no port yet: start() the server first")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` owned by ``relay``; an existing one is left alone."""
        if self.port is None:
            raise EmbeddedPostgresError("no port yet: start() the server first")
        result = subprocess.run(
            [
                str(self.bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "--",
                name,
            ],
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # see _OWN_SESSION
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise EmbeddedPostgresError(
                f"createdb {name!r} failed: {(result.stdout + result.stderr).strip()}"
            )

    def log_tail(self, n: int = 50) -> str:
        """The last ``n`` lines of the server log ('' if there is none yet)."""
        return log_tail(self.log_path, n)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(state_dir={str(self.state_dir)!r}, port={self.port})"

    # -- internals ----------------------------------------------------------------------

    def _pg_command(self, args: list[str]) -> list[str]:
        """Run as the postgres OS user when we are root (the server refuses root)."""
        if self._as_root:
            return ["runuser", "-u", PG_OS_USER, "--", *args]
        return args

    def _postgres_ids(self) -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise EmbeddedPostgresError(
                f"running as root, but there is no {PG_OS_USER!r} OS user to run PostgreSQL "
                f"as (it refuses to run as root). Install the {APT_PACKAGE!r} package (it "
                f"creates that user) or run as a non-root user."
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _postgres_can_use(self, path: Path) -> bool:
        result = subprocess.run(
            self._pg_command(
                ["test", "-d", str(path), "-a", "-w", str(path), "-a", "-x", str(path)]
            ),
            cwd="/",
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # see _OWN_SESSION
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _make_dir(self, path: Path, mode: int = 0o700) -> None:
        """Create ``path`` (one level) for the server's user; leave an existing one alone."""
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            return
        if self._as_root:
            uid, gid = self._postgres_ids()
            os.chown(path, uid, gid)

    def _prepare_cluster_dir(self) -> None:
        link = self.state_dir / "pg"
        if link.is_symlink():
            self._make_fallback_dir(Path(os.readlink(link)))
        elif not link.exists():
            self._make_dir(link)
            if self._as_root and not self._postgres_can_use(link):
                # postgres cannot reach state_dir (e.g. it is under /root): keep the
                # cluster in a postgres-owned directory under $TMPDIR instead.
                link.rmdir()
                digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
                target = Path(tempfile.gettempdir()).resolve() / f"ddp-relay-pg-{digest}"
                self._make_fallback_dir(target)
                link.symlink_to(target)
        if self._as_root and not self._postgres_can_use(self.cluster_dir):
            raise EmbeddedPostgresError(
                f"the {PG_OS_USER!r} OS user cannot use {self.cluster_dir}; remove it "
                f"(`python -m devstack.embedded_postgres destroy --state-dir {self.state_dir}`)"
            )
        self._make_dir(self.socket_dir, 0o755)

    def _make_fallback_dir(self, target: Path) -> None:
        self._make_dir(target)
        info = target.lstat()
        expected_uid = self._postgres_ids()[0] if self._as_root else os.getuid()
        if not target.is_dir() or target.is_symlink() or info.st_uid != expected_uid:
            raise EmbeddedPostgresError(
                f"{target} exists but is not a directory owned by uid {expected_uid}; "
                f"refusing to use it for the cluster"
            )

    def _read_pid_file(self) -> list[str] | None:
        try:
            return (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return None

    def running_pid(self) -> int | None:
        """The postmaster's pid if one is really running on our data dir, else None.

        ``pg_ctl status`` alone is not enough: after a crash the pid in ``postmaster.pid``
        may belong to an unrelated process by now (pids restart low in containers).
        """
        lines = self._read_pid_file()
        if not lines:
            return None
        try:
            pid = int(lines[0].strip())
        except ValueError:
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, but someone else's; /proc decides below
        proc = Path("/proc") / str(pid)
        if proc.is_dir():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                return None
            if b"postgres" not in cmdline:
                return None
            try:
                cwd = os.readlink(proc / "cwd")
            except OSError:
                return pid  # not ours to inspect; the command line matched
            if Path(cwd) != self.data_dir.resolve():
                return None
        return pid

    def _remove_stale_files(self) -> None:
        """Remove a dead server's pid file and socket lock files (they block a start)."""
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        if self.socket_dir.is_dir():
            for stale in self.socket_dir.glob(".s.PGSQL.*"):
                stale.unlink(missing_ok=True)

    def _adopt(self, pid: int) -> None:
        lines = self._read_pid_file() or []
        try:
            port = int(lines[3])
        except (IndexError, ValueError):
            raise EmbeddedPostgresError(
                f"a server (pid {pid}) is running on {self.data_dir}, but its port is "
                f"unknown; stop it with `python -m devstack.embedded_postgres stop "
                f"--state-dir {self.state_dir}`"
            ) from None
        if self._requested_port is not None and port != self._requested_port:
            raise EmbeddedPostgresError(
                f"a server (pid {pid}) already runs on {self.data_dir} at port {port}, "
                f"not {self._requested_port}; stop it first"
            )
        self.port = port
        self.port_file.write_text(f"{port}\n")

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            return self._requested_port
        candidates: list[int] = []
        if self.port is not None:
            candidates.append(self.port)
        with contextlib.suppress(OSError, ValueError):
            candidates.append(int(self.port_file.read_text().strip()))
        for port in candidates:
            if 0 < port < 65536 and _port_is_free(port):
                return port
        return free_port()

    def _log_file(self) -> IO[bytes]:
        """Append handle on the log; inherited by initdb, pg_ctl and the postmaster."""
        with contextlib.suppress(OSError):
            if self.log_path.stat().st_size > _LOG_ROTATE_BYTES:
                self.log_path.replace(self.log_path.with_name("postgres.log.1"))
        return self.log_path.open("ab")

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _run_logged(self, args: list[str], timeout: float, *, quiet: bool = False) -> int:
        """Run a server-side binary with its output in the log.

        ``quiet``: log the output only when the command fails (for chatty initdb). Not for
        ``pg_ctl start``: the postmaster inherits stdout, and a pipe would never close.
        """
        with self._log_file() as log:
            log.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(args)}\n".encode())
            log.flush()
            result = subprocess.run(
                self._pg_command(args),
                cwd="/",
                env=_clean_env(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # see _OWN_SESSION
                stdout=subprocess.PIPE if quiet else log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            if quiet:
                log.write(result.stdout if result.returncode else b"(ok)\n")
        return result.returncode

    def _initdb(self) -> None:
        if self.data_dir.exists():
            # A half-made cluster from an interrupted first start: it holds nothing.
            shutil.rmtree(self.data_dir)
        base = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        # C.UTF-8 sorts like C but knows Unicode case (upper('é')); not every libc has it.
        for locale_args in (["--locale=C.UTF-8"], ["--no-locale"]):
            if self._run_logged([*base, *locale_args], timeout=300, quiet=True) == 0:
                return
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
        raise EmbeddedPostgresError(
            f"initdb failed for {self.data_dir}; log {self.log_path}:\n{self.log_tail()}"
        )

    def _server_options(self, port: int) -> list[str]:
        socket_dir = str(self.socket_dir)
        if len(socket_dir) > _MAX_SOCKET_DIR_LEN or any(c in socket_dir for c in ',"\\'):
            socket_dir = ""  # no Unix socket at all; clients use TCP on 127.0.0.1
        options = [
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={socket_dir}",
            "-c",
            "max_connections=300",
        ]
        if not self.fsync:
            options += [
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        return options

    def _pg_ctl_start(self, port: int) -> bool:
        args = [
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-o",
            shlex.join(self._server_options(port)),
            "start",
        ]
        # No -l: the postmaster inherits our handle on state_dir/postgres.log, which the
        # postgres user need not be able to open by path.
        return self._run_logged(args, timeout=_START_TIMEOUT_S + 30) == 0

    def _run_pg_ctl_stop(self, mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._pg_command(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(_START_TIMEOUT_S),
                    "stop",
                ]
            ),
            cwd="/",
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # see _OWN_SESSION
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_START_TIMEOUT_S + 30,
            check=False,
        )


# -- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.embedded_postgres",
        description="A throwaway local PostgreSQL server (never for production).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("start", "start (creating it if new) and print the DSN; leaves the server running"),
        ("stop", "stop the server (no-op if not running)"),
        ("status", "print the DSN and exit 0 if running, else exit 3"),
        ("destroy", "stop the server and delete its cluster"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--state-dir", type=Path, required=True, help="the state directory")
        if name == "start":
            sub.add_argument("--port", type=int, default=None, help="default: a free port")
            sub.add_argument("--fsync", action="store_true", help="keep fsync on (slower)")
    args = parser.parse_args(argv)

    server = EmbeddedPostgres(
        args.state_dir, getattr(args, "port", None), fsync=getattr(args, "fsync", False)
    )
    try:
        if args.command == "start":
            server.start()
            print(server.dsn(), flush=True)
            print(f"PostgreSQL running; log: {server.log_path}", file=sys.stderr)
        elif args.command == "stop":
            server.stop()
        elif args.command == "destroy":
            server.destroy()
        else:
            if not server.is_running():
                print("stopped")
                return 3
            server.port = server.running_port()
            print(server.dsn() if server.port else "running (port unknown)")
    except EmbeddedPostgresError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
