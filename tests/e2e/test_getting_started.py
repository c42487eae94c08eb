"""``docs/getting-started.md``, followed literally on a fresh ``django-admin startproject``.

The end-to-end test reads the guide's fenced blocks (``tests/e2e/guide_blocks.py``) and
runs them in order in a temporary directory (``tests/e2e/guide_shell.py``): it makes the
project and the app, writes and appends the files the guide shows, installs ddp-relay,
migrates, runs ``ddp-relay check``, starts the project's own gunicorn, ``ddp-relay
serve`` and HAProxy with the guide's configuration, runs the guide's ``watch.py`` and
sees the product written from ``manage.py shell`` arrive as the guide's output says.
Then, through the proxy, it checks what the guide promises beyond that: the routing
(``/websocket`` and ``/sockjs/`` to the relay, the rest to Django, nothing of the site on
the relay), a write through the Django admin reaching a third-party DDP client
(PyPI ``python-ddp``) live, an edit that takes a product out of a filtered publication,
the session cookie of an admin login on the socket, and a Meteor password login over
DDP. The illustrative blocks are syntax-checked: ``node --check``, ``bash -n``, and for
the nginx variant balanced braces, plus ``nginx -t`` when nginx is installed (it is not
a dependency of the suite; HAProxy, which the test runs as the proxy, is).

What the test changes, and nothing else:

- addresses: ``DATABASE_URL`` points at a database of the session's PostgreSQL
  (``pg_server``), and the guide's ports 8000 (web), 8001 (relay) and 8080 (proxy) on
  127.0.0.1 become free ports;
- ``pip install ddp-relay`` installs this checkout, the guide's own alternative
  (``pip install /path/to/ddp-relay``). The "existing project's virtualenv" is a venv
  made here whose ``.pth`` file puts the repository venv's site-packages on its path
  (as a plain directory: the repository's editable install is not activated). So the
  dependencies are already there and nothing is downloaded, while ddp-relay itself is
  really built and installed from a copy of the checkout (copied so that pip's build
  writes nothing into the shared tree), with its real ``ddp-relay`` console script.
  Because the dependencies come from elsewhere, their console scripts are not in the new
  venv: ``django-admin`` and ``gunicorn`` are recreated there as ``python -m`` shims.
  ``PATH`` has that venv's ``bin`` first, as an activated venv does.

The other tests are pure: every block of the guide carries a mark, and the parser and
the rewrites agree with brute-force models (hypothesis).
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.cluster import ClusterError, find_haproxy
from devstack.embedded_postgres import EmbeddedPostgres
from devstack.launch import ROOT
from devstack.processes import free_port, http_status, wait_until_ready
from tests.e2e.guide_blocks import (
    Block,
    GuideError,
    install_from,
    parse_blocks,
    substitute_database_url,
    substitute_ports,
)
from tests.e2e.guide_shell import Background, GuideShell
from tests.fixtures.postgres import require_pg_bin, services_required

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GUIDE = ROOT / "docs" / "getting-started.md"
#: The guide's example ports on 127.0.0.1, by what listens there.
PORTS = {8000: "web", 8001: "relay", 8080: "proxy"}
BACKGROUND = {"web", "relay", "proxy", "watch"}
#: What the copy of the checkout leaves out (build output, caches, other venvs, data).
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    ".state",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "staticfiles",
)
READY_TIMEOUT_S = 90.0
LIVE_TIMEOUT_S = 20.0


def guide_blocks() -> list[Block]:
    return parse_blocks(GUIDE.read_text(encoding="utf-8"))


# --- the guide's conventions (pure) --------------------------------------------------------


def test_every_block_of_the_guide_is_marked_and_known() -> None:
    blocks = guide_blocks()
    unmarked = [b.describe() for b in blocks if b.kind is None]
    assert not unmarked, f"docs/getting-started.md: blocks without a mark: {unmarked}"
    kinds = {b.kind for b in blocks}
    assert {"run", "install", "background", "write", "append", "output"} <= kinds
    names = [b.attrs.get("name", "") for b in blocks if b.kind == "background"]
    assert sorted(names) == sorted(BACKGROUND), names
    outputs = {b.attrs["output"] for b in blocks if b.kind == "output"}
    assert outputs <= BACKGROUND
    shell = "".join(b.body for b in blocks if b.kind in ("run", "install"))
    assert substitute_database_url(shell, "postgresql://x/y")[1] == 1
    assert install_from(shell, "/src")[1] >= 1
    # Every address the test must move is one it knows: a new port would collide.
    runnable = "".join(b.body for b in blocks if b.kind != "illustrative")
    runnable, _ = substitute_database_url(runnable, "postgresql://the-test-database")
    assert {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", runnable)} <= set(PORTS)


_WORD = st.text(alphabet="abcdefghij./_-", min_size=1, max_size=8)
_LINE = st.text(alphabet="ab `#=\t.", max_size=12).filter(lambda s: not s.startswith("```"))


@st.composite
def _documents(draw: st.DrawFn) -> tuple[str, list[Block]]:
    """A markdown text of prose and fenced blocks, and the blocks it holds."""
    lines: list[str] = []
    blocks: list[Block] = []
    for _ in range(draw(st.integers(0, 5))):
        lines += draw(st.lists(_LINE, max_size=3))
        lang = draw(st.sampled_from(["", "sh", "python", "text", "js"]))
        flags = frozenset(draw(st.sets(st.sampled_from(["step", "illustrative", "install"]))))
        attrs = draw(st.dictionaries(st.sampled_from(["file", "name", "output"]), _WORD))
        if not lang:
            flags, attrs = frozenset(), {}
        fence = "`" * draw(st.integers(3, 5))
        marks = [*sorted(flags), *(f"{k}={v}" for k, v in attrs.items())]
        body_lines = draw(st.lists(_LINE, max_size=4))
        lines.append(fence + " ".join([lang, *marks]))
        body = "".join(f"{line}\n" for line in body_lines)
        blocks.append(Block(lang, body, len(lines), flags, attrs))
        lines += body_lines
        lines.append(fence + draw(st.sampled_from(["", "`", " "])))
    lines += draw(st.lists(_LINE, max_size=3))
    return "\n".join(lines), blocks


@given(_documents())
def test_parse_blocks_finds_exactly_the_blocks_written(doc: tuple[str, list[Block]]) -> None:
    text, expected = doc
    assert parse_blocks(text) == expected


def test_parse_blocks_refuses_what_a_renderer_would_misread() -> None:
    with pytest.raises(GuideError, match="never closed"):
        parse_blocks("text\n```sh step\nls\n")
    with pytest.raises(GuideError, match="repeated"):
        parse_blocks("```python file=a file=b\n```\n")
    with pytest.raises(GuideError, match="bad"):
        parse_blocks("```python file=\n```\n")
    # A shorter fence inside a longer one is content, not a close.
    [block] = parse_blocks("````md\n```sh\nls\n```\n````\n")
    assert block.body == "```sh\nls\n```\n"


def _ports_model(text: str, ports: dict[int, int]) -> str:
    """Brute force: at each position right after a ``127.0.0.1:`` (prefixes may overlap
    digits already read), read the digits there and rewrite them."""
    prefix = "127.0.0.1:"
    out, index = [], 0
    for position in range(len(text) + 1):
        if position < index or not text[:position].endswith(prefix):
            continue
        end = position
        while end < len(text) and text[end] in "0123456789":
            end += 1
        if end > position:
            out.append(text[index:position])
            digits = text[position:end]
            out.append(str(ports.get(int(digits), digits)))
            index = end
    out.append(text[index:])
    return "".join(out)


_PORT_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["127.0.0.1:", "127.0.0.1:8000", ":8001", "127.0.0.1:80800", "x"]),
        st.text(alphabet="0128:.x ", max_size=5),
    ),
    max_size=12,
).map("".join)


@given(
    _PORT_TEXT,
    st.dictionaries(st.sampled_from([8000, 8001, 8080, 1, 80800]), st.integers(1, 65535)),
)
def test_substitute_ports_agrees_with_a_scan(text: str, ports: dict[int, int]) -> None:
    assert substitute_ports(text, ports) == _ports_model(text, ports)


def test_the_install_and_database_rewrites() -> None:
    assert install_from("pip install ddp-relay\n", "/src") == ("pip install /src\n", 1)
    assert install_from("pip install 'ddp-relay[client]'", "/s d") == (
        "pip install '/s d[client]'",
        1,
    )
    assert install_from("pip install Django ddp-relay-x", "/src") == (
        "pip install Django ddp-relay-x",
        0,
    )
    assert install_from("echo ddp-relay", "/src") == ("echo ddp-relay", 0)
    text = "export A=1\nexport DATABASE_URL=postgresql://u:p@h/d\n"
    assert substitute_database_url(text, "postgresql://relay@127.0.0.1:5/x") == (
        "export A=1\nexport DATABASE_URL=postgresql://relay@127.0.0.1:5/x\n",
        1,
    )


# --- the guide, end to end ----------------------------------------------------------------


def _require(found: str | None, what: str) -> None:
    if found:
        return
    if services_required():
        pytest.fail(f"the getting-started test needs {what} (CI, RELAY_REQUIRE_SERVICES)")
    pytest.skip(f"GETTING-STARTED GUIDE NOT TESTED: no {what} (run `make deps`)")


def _haproxy() -> str | None:
    try:
        return find_haproxy()
    except ClusterError:
        return None


def make_reader_venv(base: Path) -> tuple[Path, Path]:
    """A venv seeing the repository venv's packages (not its ddp-relay), with shims for
    the console scripts of those packages; and a copy of the checkout to install."""
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "_ddp_relay_test_dependencies.pth").write_text(f"{purelib}\n")
    for script, module in (("django-admin", "django"), ("gunicorn", "gunicorn")):
        shim = venv / "bin" / script
        shim.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -m {module} "$@"\n')
        shim.chmod(0o755)
    source = base / "ddp-relay"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE, symlinks=True)
    return venv, source


def reader_env(venv: Path, home: Path) -> dict[str, str]:
    """This process's environment as a reader's terminal with ``venv`` activated: none of
    the test session's database, relay or Django variables, and ``home`` as ``HOME`` (what
    the reader's tools keep there, such as gunicorn's control socket, stays in the test)."""
    dropped = {"DATABASE_URL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "HOST", "PORT"}
    dropped |= {"PROMETHEUS_MULTIPROC_DIR", "HTTP_FORWARDED_COUNT"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in dropped and not k.startswith(("RELAY_", "DJANGO_", "DDP_", "PYTEST_"))
    }
    repo_venv = str(ROOT / ".venv")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and repo_venv not in p]
    path = [str(venv / "bin"), *path, *(p for p in ("/usr/sbin", "/usr/bin") if p not in path)]
    env.update(
        PATH=os.pathsep.join(path),
        VIRTUAL_ENV=str(venv),
        HOME=str(home),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
    )
    return env


def prepare(block: Block, ports: dict[int, int], database_url: str, source: Path) -> str:
    """The block's body as the test runs it (see the module docstring)."""
    body = substitute_ports(block.body, ports)
    if block.kind in ("run", "install"):
        body, _ = substitute_database_url(body, database_url)
    if block.kind == "install":
        body, _ = install_from(body, str(source))
    return body


def readiness(name: str, url: Callable[[int, str], str], shell: GuideShell) -> Callable[[], bool]:
    if name == "web":
        return lambda: http_status(url(8000, "/admin/login/")) == 200
    if name == "relay":
        # Every worker started, then ready: a first 200 from one worker's /readyz can
        # come before the others report (and a proxy's first health check then fails).
        return lambda: all(http_status(url(8001, p)) == 200 for p in ("/startupz", "/readyz"))
    if name == "proxy":
        # Both routes: the site, and DDP once HAProxy's health check has passed.
        return lambda: all(
            http_status(url(8080, p)) == 200 for p in ("/admin/login/", "/sockjs/info")
        )
    if name == "watch":
        return lambda: "subscribed to products.all" in shell.background["watch"].log()
    raise AssertionError(f"the guide starts {name!r}, which this test cannot wait for")


def printed_messages(log: str) -> list[Any]:
    out = []
    for line in log.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def document_pk(doc_id: Any) -> Any:
    """The primary key behind a DDP id: Meteor writes a number id 1 as ``"~1"``."""
    text = str(doc_id)
    return json.loads(text[1:]) if text.startswith("~") else text


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = LIVE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.1)


def expect_printed(job: Background, shown: str) -> None:
    """Wait until ``job`` has printed every JSON message of the guide's output block."""
    for expected in printed_messages(shown):

        def printed(expected: Any = expected) -> bool:
            return expected in printed_messages(job.log())

        wait_for(printed, f"{job.name} printing {json.dumps(expected)} as the guide shows")


def check_illustrative(block: Block, scratch: Path) -> None:
    """The cheap checks of a block the test does not run."""
    scratch.mkdir(parents=True, exist_ok=True)
    if block.lang in ("js", "javascript"):
        source = scratch / f"block{block.line}.mjs"
        source.write_text(block.body)
        proc = subprocess.run(["node", "--check", str(source)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{block.describe()} is not valid JavaScript:\n{proc.stderr}"
    elif block.lang in ("sh", "bash"):
        proc = subprocess.run(["bash", "-n", "-c", block.body], capture_output=True, text=True)
        assert proc.returncode == 0, f"{block.describe()} is not valid shell:\n{proc.stderr}"
    elif block.lang == "nginx":
        depth = 0
        for char in block.body:
            depth += {"{": 1, "}": -1}.get(char, 0)
            assert depth >= 0, f"{block.describe()}: a '}}' closes nothing"
        assert depth == 0, f"{block.describe()}: unbalanced braces"
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if nginx is not None:  # not a dependency of the suite: checked when it is there
            check_nginx_config(nginx, block, scratch / f"nginx{block.line}")


def check_nginx_config(nginx: str, block: Block, prefix: Path) -> None:
    """``nginx -t`` on the guide's snippet inside ``http { }``, everything under ``prefix``."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    temp = " ".join(
        f"{kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'logs' / 'error.log'};\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{temp}\n{block.body}}}\n"
    )
    proc = subprocess.run(
        [nginx, "-t", "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"{block.describe()}: nginx -t refuses it:\n{proc.stderr}"


class Browser:
    """A cookie-keeping HTTP client for the Django admin behind the proxy."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=15) as resp:
            return str(resp.read().decode())

    def submit(self, path: str, fields: dict[str, str]) -> str:
        """GET the form at ``path`` for its CSRF token, POST ``fields``; the final URL."""
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', self.get(path))
        assert token is not None, f"no CSRF token in {path}"
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": token.group(1)})
        with self.opener.open(self.base + path, data=data.encode(), timeout=15) as resp:
            return str(resp.geturl())

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)


class PythonDDP:
    """PyPI ``python-ddp`` (module ``DDPClient``): a third-party client's view of the
    documents, kept from its ``added``, ``changed`` and ``removed`` events."""

    def __init__(self, url: str) -> None:
        from DDPClient import DDPClient

        self.client = DDPClient(url, auto_reconnect=False)
        self.docs: dict[str, dict[Any, dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client.on("connected", self.connected.set)
        self.client.on("added", self._added)
        self.client.on("changed", self._changed)
        self.client.on("removed", self._removed)

    def _added(self, collection: str, doc_id: Any, fields: dict[str, Any]) -> None:
        with self.lock:
            self.docs.setdefault(collection, {})[doc_id] = dict(fields)

    def _changed(self, collection: str, doc_id: Any, fields: Any, cleared: Any) -> None:
        with self.lock:
            doc = self.docs.setdefault(collection, {}).setdefault(doc_id, {})
            doc.update(fields or {})
            for name in cleared or []:
                doc.pop(name, None)

    def _removed(self, collection: str, doc_id: Any) -> None:
        with self.lock:
            self.docs.get(collection, {}).pop(doc_id, None)

    def by_name(self, collection: str) -> dict[str, tuple[Any, dict[str, Any]]]:
        with self.lock:
            docs = dict(self.docs.get(collection, {}))
        return {str(f.get("name")): (i, f) for i, f in docs.items()}

    def subscribe(self, name: str) -> None:
        done = threading.Event()
        box: list[Any] = []

        def callback(error: Any, sub_id: Any) -> None:
            box.append(error)
            done.set()

        self.client.subscribe(name, [], callback)
        assert done.wait(10) and box == [None], f"subscribe {name}: {box}"

    def __enter__(self) -> PythonDDP:
        self.client.connect()
        self._sock = self.client.ddpsocket.sock
        assert self.connected.wait(10), "python-ddp: no connected"
        return self

    def __exit__(self, *exc: object) -> None:
        # As in tests/e2e/test_python_ddp.py: ws4py may drop its socket without closing it.
        self.client.close()
        self.client.ddpsocket.close_connection()
        if self._sock is not None:
            self._sock.close()


@pytest.fixture
def guide_database(pg_server: EmbeddedPostgres) -> str:
    name = f"getting_started_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    return pg_server.dsn(name)


@dataclass
class Reader:
    """Someone following the guide: their terminal, and the checkout they install."""

    shell: GuideShell
    source: Path


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    require_pg_bin()
    _require(_haproxy(), "haproxy (apt: haproxy)")
    _require(shutil.which("node"), "node (apt: nodejs)")
    pytest.importorskip("DDPClient")
    venv, source = make_reader_venv(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    shell = GuideShell(home, reader_env(venv, home), tmp_path / "logs")
    try:
        yield Reader(shell, source)
    finally:
        shell.close()


def test_the_guide_works_as_written(reader: Reader, guide_database: str) -> None:
    shell = reader.shell
    ports = {port: free_port() for port in PORTS}

    def url(port: int, path: str) -> str:
        return f"http://127.0.0.1:{ports[port]}{path}"

    try:
        follow_the_guide(shell, ports, guide_database, reader.source, url)
        check_the_promises(shell, url)
    except (AssertionError, TimeoutError, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n{shell.diagnostics()}") from exc


def follow_the_guide(
    shell: GuideShell,
    ports: dict[int, int],
    database_url: str,
    source: Path,
    url: Callable[[int, str], str],
) -> None:
    for block in guide_blocks():
        body = prepare(block, ports, database_url, source)
        if block.kind in ("run", "install"):
            shell.run(body, label=block.describe())
        elif block.kind in ("write", "append"):
            target = block.attrs.get("file") or block.attrs["append"]
            shell.write(target, body, append=block.kind == "append")
        elif block.kind == "background":
            name = block.attrs["name"]
            if name == "relay":
                assert shutil.which("ddp-relay", path=shell.env["PATH"]), (
                    "`pip install ddp-relay` gave no `ddp-relay` console script"
                )
            job = shell.start(name, body)
            wait_until_ready(
                job.proc,
                readiness(name, url, shell),
                READY_TIMEOUT_S,
                name=f"the guide's {name!r} ({block.describe()})",
                log_path=job.log_path,
            )
        elif block.kind == "output":
            expect_printed(shell.background[block.attrs["output"]], block.body)
        elif block.kind == "illustrative":
            check_illustrative(block, shell.log_dir / "illustrative")
        else:
            raise AssertionError(f"{block.describe()}: no mark, so the test cannot follow it")


def check_the_promises(shell: GuideShell, url: Callable[[int, str], str]) -> None:
    from relay.client import DDPClient, DDPClientError

    # Routing: the site through the proxy, DDP and SockJS to the relay, no site on the relay.
    assert (
        "Django" in urllib.request.urlopen(url(8080, "/admin/login/"), timeout=10).read().decode()
    )
    assert http_status(url(8001, "/admin/login/")) == 404
    assert http_status(url(8000, "/readyz")) == 404  # Django's 404: not a relay
    with urllib.request.urlopen(url(8080, "/sockjs/info"), timeout=10) as resp:
        assert json.loads(resp.read())["websocket"] is True
    ws = url(8080, "/websocket").replace("http://", "ws://")

    admin = Browser(url(8080, ""))
    password = re.search(r"DJANGO_SUPERUSER_PASSWORD=(\S+)", GUIDE.read_text())
    assert password is not None, "the guide creates no superuser with a known password"
    landed = admin.submit(
        "/admin/login/?next=/admin/",
        {"username": "admin", "password": password.group(1), "next": "/admin/"},
    )
    assert urllib.parse.urlsplit(landed).path == "/admin/", f"admin login failed: {landed}"
    session = admin.cookie("sessionid")
    assert session

    with PythonDDP(ws) as third_party:
        third_party.subscribe("products.inStock")
        wait_for(lambda: "Green tea" in third_party.by_name("shop.product"), "Green tea")
        # A write through the site (the admin, behind the proxy) reaches the socket live.
        changelist = "/admin/shop/product/"
        saved = admin.submit(
            "/admin/shop/product/add/",
            {"name": "Oolong", "price": "6.20", "in_stock": "on", "_save": "Save"},
        )
        assert urllib.parse.urlsplit(saved).path == changelist, f"the admin refused: {saved}"
        wait_for(lambda: "Oolong" in third_party.by_name("shop.product"), "Oolong (admin)")
        doc_id, fields = third_party.by_name("shop.product")["Oolong"]
        assert fields == {"name": "Oolong", "price": "6.20", "inStock": True}
        # Out of stock: it leaves products.inStock, decided by the relay in memory.
        saved = admin.submit(
            f"/admin/shop/product/{document_pk(doc_id)}/change/",
            {"name": "Oolong", "price": "6.20", "_save": "Save"},
        )
        assert urllib.parse.urlsplit(saved).path == changelist, f"the admin refused: {saved}"
        wait_for(lambda: "Oolong" not in third_party.by_name("shop.product"), "Oolong removed")
        watched = shell.background["watch"]
        wait_for(
            lambda: any(
                m.get("msg") == "changed" and m.get("fields") == {"inStock": False}
                for m in printed_messages(watched.log())
            ),
            "watch.py printing the admin's change",
        )

        # Logged out, the method refuses; the admin's session cookie logs the socket in.
        anonymous = DDPClient(ws)
        anonymous.connect()
        try:
            with pytest.raises(DDPClientError) as refused:
                anonymous.call("products.add", "Sencha", "5.00")
            assert refused.value.error == "not-authorized"
            # Meteor's accounts: the password's SHA-256 digest, checked against Django's hash.
            digest = hashlib.sha256(password.group(1).encode()).hexdigest()
            login = anonymous.call(
                "login",
                {
                    "user": {"username": "admin"},
                    "password": {"digest": digest, "algorithm": "sha-256"},
                },
            )
            assert isinstance(login.get("token"), str)
            assert isinstance(anonymous.call("products.add", "Sencha", "5.00"), int)
        finally:
            anonymous.close()
        cookie = DDPClient(ws, headers=[f"Cookie: sessionid={session}"])
        cookie.connect()
        try:
            new_id = cookie.call("products.add", "Rooibos", "3.10")
        finally:
            cookie.close()
        wait_for(lambda: "Rooibos" in third_party.by_name("shop.product"), "Rooibos (cookie)")
        wait_for(lambda: "Sencha" in third_party.by_name("shop.product"), "Sencha (login)")
        assert document_pk(third_party.by_name("shop.product")["Rooibos"][0]) == new_id
