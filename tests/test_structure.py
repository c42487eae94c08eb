"""Keep the house in order: no import cycles, tests that stand alone, a wheel without tools.

The layer contracts themselves (what may import what) are import-linter's, run by `make
imports` from ``[tool.importlinter]`` in pyproject.toml. What they cannot say is checked
here: no package has modules that import each other in a circle (function-level imports
included: a circle held together by imports inside functions is still a circle), no test
module imports another test module (shared helpers live in helper or fixture modules),
and the wheel users install carries the runtime only (``devstack`` is local tooling).

Fast and static except the wheel build (a few seconds, no network: the build backend is
the one in the virtualenv).
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_PACKAGES = ("relay", "coordinator", "django_app")


def strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_strongly_connected_finds_a_circle_and_nothing_else() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_runtime() -> None:
    """Function-level imports count: ``grimp`` reads every import statement of a module."""
    graph = grimp.build_graph(*RUNTIME_PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    cycles = strongly_connected(edges)
    assert cycles == [], "modules importing each other in a circle: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def _test_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py") if "node_modules" not in p.parts)


def test_no_test_module_imports_another_test_module() -> None:
    """A test module is run by pytest, not imported: helpers shared by several test modules
    live in helper modules (``tests/**/helpers.py``, ``util.py``) or fixture plugins
    (``tests/fixtures/``)."""
    offenders = []
    for path in _test_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_tests_mirror_the_source_tree() -> None:
    """Each runtime package has its test folder: ``relay/stream`` -> ``tests/relay/stream``."""
    missing = []
    for package in RUNTIME_PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            folder = init.parent.relative_to(ROOT)
            if "migrations" in folder.parts or "management" in folder.parts:
                continue
            if not (ROOT / "tests" / folder).is_dir():
                missing.append(str(folder))
    assert missing == [], f"no tests/<package> folder for: {missing}"


#: What a wheel is not built from (and what is too large or too many files to copy).
_NOT_SOURCE = (".git", ".venv", ".state", "build", "node_modules", "__pycache__", "*.egg-info")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools builds in ``<source>/build``, and what an earlier build
    # left there (a module since removed) would end up in this wheel too.
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--disable-pip-version-check", "-w", str(out), str(source)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("ddp_relay-*.whl")
    return zipfile.ZipFile(built)


def test_wheel_carries_the_runtime_and_no_local_tooling(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert {"relay", "relay/protocol", "relay/server", "relay/stream"} <= packages
    assert {"relay/transport", "relay/resume", "relay/client", "coordinator"} <= packages
    assert "django_app" in packages and "django_app/migrations" in packages
    assert [n for n in names if n.startswith("devstack/")] == []
    assert [n for n in names if n.startswith(("tests/", "example/", "loadtest/"))] == []


def test_wheel_is_typed_licensed_and_has_the_console_script(wheel: zipfile.ZipFile) -> None:
    """PEP 561 markers in each package, the LICENSE and its classifier in the metadata,
    and ``ddp-relay = relay.cli:main`` as a console script."""
    names = set(wheel.namelist())
    for package in RUNTIME_PACKAGES:
        assert f"{package}/py.typed" in names, package
    (dist_info,) = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    licenses = [n for n in names if n.startswith(dist_info) and n.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses, f"no LICENSE in {dist_info}"
    assert wheel.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
    assert b"MIT License" in wheel.read(licenses[0])
    metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert "Classifier: License :: OSI Approved :: MIT License" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Provides-Extra: zookeeper" in metadata
    assert re.search(r"^Requires-Dist: kazoo>=[\d.]+; extra == \"zookeeper\"$", metadata, re.M)
    entry_points = wheel.read(f"{dist_info}/entry_points.txt").decode()
    assert re.search(r"^\[console_scripts\]\s*\nddp-relay = relay\.cli:main$", entry_points, re.M)


def test_image_build_context_leaves_out_the_local_tooling() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "devstack" in ignored
