"""``pip install .`` into an empty virtualenv gives a working relay (issue #12, "Done when").

A copy of the package's sources (what the sdist holds: pyproject.toml, README.md, LICENSE,
relay/, coordinator/, django_app/) is installed with pip into a new virtualenv without
system site packages; pip may reach PyPI (its cache makes reruns fast) and has ten minutes.
Then, with nothing of the checkout on the path (the children run in a scratch directory
with ``PYTHONPATH`` = the example project only), that virtualenv's ``ddp-relay``:

- says its version;
- migrates the example project and seeds it (``migrate``, ``manage seed_demo``) on the
  session's PostgreSQL;
- passes ``check``;
- refuses, with the extra to install, a ZooKeeper coordinator (kazoo is the ``zookeeper``
  extra, not installed here), in ``check`` and in ``serve``;
- serves the example (``serve``, all-in-one: ``RELAY_WSGI_APP=example.wsgi:application``):
  a DDP client subscribes, calls a method, and sees the method's write arrive live; the
  Django admin answers on the same port; SIGTERM stops it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT
from devstack.processes import free_port, http_status, spawn, stop_process_tree, wait_until_ready
from relay.client import DDPClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
SDIST_PARTS = ("pyproject.toml", "README.md", "LICENSE", "relay", "coordinator", "django_app")
BOOKS = "bookstore.book"
AUTHORS = "bookstore.author"
PIP_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with ``pip install <copy of the sources>`` and nothing else."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    source.mkdir()
    for part in SDIST_PARTS:
        path = ROOT / part
        if path.is_dir():
            shutil.copytree(path, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / part)
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    cfg = (env_dir / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    done = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        cwd=base,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return env_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the children run: not the checkout, whose ``relay/`` would shadow the
    installed package on ``python -m``'s path."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def database(pg_server: EmbeddedPostgres) -> str:
    pg_server.create_database("install")
    return pg_server.dsn("install")


def _env(venv: Path, database: str, **extra: str) -> dict[str, str]:
    """A clean environment: the venv's bin first, the example project on the path, and
    none of the developer's or the test runner's RELAY_*/Django settings."""
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT / "example"),
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "DJANGO_SECRET_KEY": "install-test-" + uuid.uuid4().hex * 2,
        "DATABASE_URL": database,
    }
    env.update(extra)
    return env


def _ddp_relay(
    venv: Path, workdir: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "ddp-relay"), *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_installed_package_is_the_one_that_runs(venv: Path, workdir: Path) -> None:
    done = _ddp_relay(venv, workdir, _env(venv, ""), "version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ddp-relay {VERSION}"
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import relay, django_app; print(relay.__file__)"],
        env=_env(venv, ""),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where
    # The zookeeper extra was not asked for.
    kazoo = subprocess.run([str(venv / "bin" / "python"), "-c", "import kazoo"], timeout=60)
    assert kazoo.returncode != 0


@pytest.fixture(scope="module")
def prepared(venv: Path, workdir: Path, database: str) -> dict[str, str]:
    env = _env(venv, database)
    for args in (("migrate", "-v", "0"), ("manage", "seed_demo")):
        done = _ddp_relay(venv, workdir, env, *args)
        assert done.returncode == 0, f"ddp-relay {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return env


def test_check_passes_and_refuses_zookeeper_without_its_extra(
    venv: Path, workdir: Path, prepared: dict[str, str]
) -> None:
    done = _ddp_relay(venv, workdir, prepared, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = [line.split()[0] for line in done.stdout.splitlines() if line[:1].isalpha()]
    assert "FAIL" not in statuses and statuses.count("ok") >= 4, done.stdout

    with_zk = {**prepared, "RELAY_ZOOKEEPER": f"127.0.0.1:{free_port()}"}
    done = _ddp_relay(venv, workdir, with_zk, "check")
    assert done.returncode == 1
    assert "pip install 'ddp-relay[zookeeper]'" in done.stdout
    done = _ddp_relay(venv, workdir, with_zk, "serve")
    assert done.returncode == 2
    assert "pip install 'ddp-relay[zookeeper]'" in done.stderr


@pytest.fixture
def served(
    venv: Path, workdir: Path, prepared: dict[str, str], tmp_path: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {
        **prepared,
        "RELAY_WSGI_APP": "example.wsgi:application",
        "RELAY_GRACEFUL_TIMEOUT": "5",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    (tmp_path / "metrics").mkdir()
    log = tmp_path / "serve.log"
    argv = [str(venv / "bin" / "ddp-relay"), "serve", "--bind", f"127.0.0.1:{port}"]
    proc = spawn([*argv, "--workers", "2"], log, env=env, cwd=workdir, new_session=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(
            proc, lambda: http_status(url + "/readyz") == 200, 90, name="relay", log_path=log
        )
        yield url, proc
    finally:
        stop_process_tree(proc, timeout=20)


def test_serve_runs_the_example_for_a_real_client(
    venv: Path, served: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, proc = served
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[0].decode().startswith(str(venv)) and b"gunicorn" in cmdline
    with urllib.request.urlopen(url + "/admin/login/", timeout=10) as resp:
        assert resp.status == 200 and b"csrfmiddlewaretoken" in resp.read()

    client = DDPClient(url.replace("http://", "ws://") + "/websocket", timeout=15)
    try:
        client.connect()
        client.subscribe("books.all")
        books, authors = client.docs(BOOKS), client.docs(AUTHORS)
        assert books and authors, "the seeded books and authors"
        title = f"installed {uuid.uuid4().hex[:8]}"
        author_id = sorted(authors)[0]
        book_id = client.call(
            "books.create", {"title": title, "authorId": author_id, "price": "9.50"}
        )
        client.wait_for(lambda: client.docs(BOOKS).get(book_id, {}).get("title") == title, 15)
        assert client.docs(BOOKS)[book_id]["authorId"] == author_id
    finally:
        client.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
