"""The Meteor client bundles of the demo page, served as static files from ``node_modules``.

Job: a staticfiles finder (``STATICFILES_FINDERS``) that exposes exactly the bundle files
the page loads (``VENDOR_FILES``) under ``demo/vendor/``, read from where ``npm ci`` in
``example/demo`` put them (``make run``, ``make cluster`` and ``make test`` run it). So
``/static/demo/vendor/meteor-client-side.bundle.min.js`` works with the example's demo
static view and ``collectstatic`` copies the three files, not the whole ``node_modules``.
When they are missing it says so (a system check warning, ``demo.W001``) instead of
letting the page fail in the browser without a word.

Must not: fetch anything (the page never loads a client from a CDN), expose any other
file of ``node_modules``, or import models (finders load before the app registry).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, overload

from django.contrib.staticfiles.finders import BaseFinder
from django.contrib.staticfiles.utils import matches_patterns
from django.core.checks import CheckMessage, Warning
from django.core.files.storage import FileSystemStorage, Storage

__all__ = ["NODE_MODULES", "PREFIX", "VENDOR_FILES", "VendorFinder", "missing_vendor_files"]

#: Where ``npm ci`` in example/demo installs the packages of its package.json.
NODE_MODULES = Path(__file__).resolve().parent / "node_modules"
#: The static path the bundles are served under (``{% static 'demo/vendor/...' %}``).
PREFIX = "demo/vendor"
#: Static file name -> its path under ``node_modules``, in the order the page loads them:
#: Meteor 1.3's client (DDP, Minimongo, SockJS, Tracker...), then accounts-base (Meteor
#: 1.2's, the only client build of it on npm) and accounts-password (Meteor 1.3's), which
#: together give ``Meteor.loginWithPassword``.
VENDOR_FILES: dict[str, str] = {
    "meteor-client-side.bundle.min.js": (
        "meteor-client-side/dist/meteor-client-side.bundle.min.js"
    ),
    "accounts-base-client-side.bundle.min.js": (
        "accounts-base-client-side/dist/accounts-base-client-side.bundle.min.js"
    ),
    "accounts-password-client-side.bundle.min.js": (
        "accounts-password-client-side/dist/accounts-password-client-side.bundle.min.js"
    ),
}


def missing_vendor_files(node_modules: Path = NODE_MODULES) -> list[str]:
    """The entries of ``VENDOR_FILES`` whose file is not installed under ``node_modules``."""
    return [name for name, rel in VENDOR_FILES.items() if not (node_modules / rel).is_file()]


class _PrefixedStorage(FileSystemStorage):
    # collectstatic writes a listed file at ``storage.prefix/path`` (FileSystemFinder's
    # convention), so the bundles land under demo/vendor/ like the view serves them.
    prefix: str = PREFIX


class VendorFinder(BaseFinder):
    """Finds ``demo/vendor/<name>`` for each ``name`` of ``VENDOR_FILES``, and nothing else."""

    def __init__(self, node_modules: Path = NODE_MODULES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node_modules = node_modules

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        missing = missing_vendor_files(self.node_modules)
        if not missing:
            return []
        return [
            Warning(
                f"The demo page's Meteor client bundles are not installed: {', '.join(missing)}.",
                hint=f"Run `npm ci` in {self.node_modules.parent} (`make run` does).",
                id="demo.W001",
            )
        ]

    @overload
    def find(self, path: str, find_all: Literal[False] = False) -> str | list[str]: ...
    @overload
    def find(self, path: str, find_all: Literal[True]) -> list[str]: ...
    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        # Not found is [] either way, as Django's own finders answer: its ``find()`` gathers
        # every finder's result into a list, and a None there would come back as a match.
        found = self._path_of(path)
        if found is None:
            return []
        return [found] if find_all else found

    def list(self, ignore_patterns: Iterable[str] | None) -> Iterator[tuple[str, Storage]]:
        for name, rel in VENDOR_FILES.items():
            source = self.node_modules / rel
            if not source.is_file() or matches_patterns(name, list(ignore_patterns or ())):
                continue
            # One storage per file: its directory is the package's dist/, its name the
            # static name (they are the same: the bundles keep their npm file names).
            yield source.name, _PrefixedStorage(location=str(source.parent))

    def _path_of(self, path: str) -> str | None:
        head, _, name = path.replace("\\", "/").rpartition("/")
        if head != PREFIX or name not in VENDOR_FILES:
            return None
        source = self.node_modules / VENDOR_FILES[name]
        return str(source) if source.is_file() else None
