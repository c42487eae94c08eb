"""The throwaway PostgreSQL server: start, connect, create databases, restart, stop, recover.

These start their own servers (not the session's ``pg_server``) on free ports. To pay for
``initdb`` once, most share one cluster (module scope); each of those tests starts it and
leaves it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from devstack.embedded_postgres import EmbeddedPostgres, EmbeddedPostgresError, free_port
from tests.fixtures.postgres import require_pg_bin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_pg_bin()
    state = tmp_path_factory.mktemp("embedded") / "state"
    try:
        yield state
    finally:
        EmbeddedPostgres(state).destroy()


@pytest.fixture
def server(shared_state: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(shared_state)
    try:
        yield pg
    finally:
        pg.stop()


def _select_1(dsn: str) -> int:
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def _show(dsn: str, setting: str) -> str:
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SHOW {setting}")
            row = cur.fetchone()
            assert row is not None
            return str(row[0])
    finally:
        conn.close()


def test_start_connect_create_restart_stop(server: EmbeddedPostgres) -> None:
    server.start()
    assert server.port is not None
    assert server.dsn() == f"postgresql://relay@127.0.0.1:{server.port}/relay"
    assert (server.state_dir / "port").read_text().strip() == str(server.port)
    assert _select_1(server.dsn()) == 1
    assert _show(server.dsn(), "fsync") == "off"
    assert _show(server.dsn(), "listen_addresses") == "127.0.0.1"
    assert _show(server.dsn(), "max_connections") == "300"

    server.create_database("other")
    server.create_database("other")  # already exists: fine
    assert _select_1(server.dsn("other")) == 1

    conn = psycopg2.connect(server.dsn("other"))
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('é')")
    finally:
        conn.close()

    port = server.port
    server.restart()
    assert server.port == port
    conn = psycopg2.connect(server.dsn("other"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT upper(v) FROM kept")
            assert cur.fetchone() == ("É",)
    finally:
        conn.close()

    server.stop()
    assert not server.is_running()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(server.dsn(), connect_timeout=2).close()
    server.stop()  # twice is fine


def test_stop_before_start_is_a_no_op(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "never")
    pg.stop()
    pg.stop()
    assert not pg.is_running()
    assert pg.log_tail() == ""
    with pytest.raises(EmbeddedPostgresError):
        pg.dsn()


def test_context_manager_and_given_port(shared_state: Path) -> None:
    port = free_port()
    pg = EmbeddedPostgres(shared_state, port, fsync=True)
    with pg as running:
        assert running.port == port
        assert _show(running.dsn(), "fsync") == "on"
    assert not pg.is_running()


def test_start_after_crash_removes_stale_pid_file(server: EmbeddedPostgres) -> None:
    server.start()
    pid_file = server.data_dir / "postmaster.pid"
    pid = int(pid_file.read_text().splitlines()[0])
    os.kill(pid, signal.SIGKILL)  # the postmaster; its children notice and exit
    deadline = time.monotonic() + 10
    while server.is_running() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_file.exists()
    assert not server.is_running()

    server.start()
    assert _select_1(server.dsn()) == 1


def test_start_ignores_pid_file_naming_an_unrelated_live_process(
    server: EmbeddedPostgres,
) -> None:
    server.start()
    server.stop()
    # As after a crash in a container, where the old pid now belongs to someone else.
    (server.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n{server.data_dir}\n")
    assert not server.is_running()
    server.stop()
    server.start()
    assert _select_1(server.dsn()) == 1


def test_second_instance_adopts_running_server(server: EmbeddedPostgres) -> None:
    server.start()
    other = EmbeddedPostgres(server.state_dir)
    other.start()
    assert other.port == server.port
    assert _select_1(other.dsn()) == 1
    with pytest.raises(EmbeddedPostgresError, match="already runs"):
        EmbeddedPostgres(server.state_dir, free_port()).start()


def test_log_tail(server: EmbeddedPostgres) -> None:
    server.start()
    tail = server.log_tail(5)
    assert 0 < len(tail.splitlines()) <= 5
    assert "ready to accept connections" in server.log_tail(50)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack.embedded_postgres", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_command_line(shared_state: Path) -> None:
    state = str(shared_state)
    try:
        assert _cli("status", "--state-dir", state).returncode == 3
        started = _cli("start", "--state-dir", state)
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.strip()
        port = (shared_state / "port").read_text().strip()
        assert dsn == f"postgresql://relay@127.0.0.1:{port}/relay"
        assert _select_1(dsn) == 1  # still running after the command exited

        status = _cli("status", "--state-dir", state)
        assert (status.returncode, status.stdout.strip()) == (0, dsn)
        assert _cli("start", "--state-dir", state).stdout.strip() == dsn  # adopted

        assert _cli("stop", "--state-dir", state).returncode == 0
        assert _cli("stop", "--state-dir", state).returncode == 0
        assert _cli("status", "--state-dir", state).returncode == 3
    finally:
        _cli("stop", "--state-dir", state)


def test_destroy_removes_the_cluster(tmp_path: Path) -> None:
    require_pg_bin()
    pg = EmbeddedPostgres(tmp_path / "state")
    pg.start()
    cluster = pg.cluster_dir
    assert (cluster / "data" / "PG_VERSION").exists()
    destroyed = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack.embedded_postgres",
            "destroy",
            "--state-dir",
            str(pg.state_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert destroyed.returncode == 0, destroyed.stderr
    assert not pg.is_running()
    assert not cluster.exists()
    assert not (pg.state_dir / "pg").exists()
    assert pg.log_path.exists()  # the log stays
