"""relay.limits stays pure: it imports the standard library and relay.protocol only, and
never reads a clock (every decision takes ``now``), so its tests drive time by hand.

import-linter's contract (pyproject.toml) forbids the project's I/O layers; this test also
keeps out the clock and any third-party library, which a forbidden-list cannot name.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import relay.limits

PACKAGE = Path(relay.limits.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))

#: Standard library modules that read a clock or do I/O.
CLOCKS_AND_IO = {"time", "datetime", "socket", "select", "threading", "asyncio", "os", "io"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return found


def test_the_package_has_the_modules_this_test_reads() -> None:
    assert {p.name for p in MODULES} == {
        "__init__.py",
        "address.py",
        "budget.py",
        "ratelimit.py",
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_imports_only_the_standard_library_and_the_protocol(path: Path) -> None:
    outside = set()
    for module in imports_of(path):
        top = module.split(".")[0]
        if module.startswith(("relay.protocol", "relay.limits")) or module == "__future__":
            continue
        if top not in sys.stdlib_module_names or top in CLOCKS_AND_IO:
            outside.add(module)
    assert outside == set()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_each_module_says_its_job_and_what_it_must_not_do(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "Must not" in docstring
