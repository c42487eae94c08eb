"""Which relay code a benchmark runs: this checkout, or the tree of an earlier commit.

A ``Tree`` is a source tree of the project (``relay/``, ``django_app/``, ``example/``) plus
a bench-only overlay: a settings module that imports the tree's ``example.settings`` and
adds the app ``ddp_bench``, whose ``ddp.py`` registers what the window benchmark
subscribes and the tree may lack:

- ``books.latest`` [n] (only when the example does not register it already): the newest
  ``published`` first, undated last, ties by id. With a ``Cursor`` that can be sorted
  and sliced (``Cursor(Book).order_by("-published")[:n]``) that is a live window; before
  that API existed, a user wrote ``Book.objects.order_by(F("published").desc(
  nulls_last=True), "id")[:n]``, which such a relay cannot route (it re-runs the
  publication per subscriber on every commit to books);
- ``bench.latest`` [n, key]: the same window; ``key`` changes nothing but the
  subscription's parameters, so sessions with distinct keys hold distinct queries of
  the same cost (``window --distinct``);

and a management command ``ddp_bench_info`` that says which of those the tree got.

``current_tree`` is this checkout; ``tree_at`` extracts a commit with ``git archive``
(read only: no worktree, nothing in ``.git`` changes) into the benchmark's workdir. A
tree's children (``manage.py``, gunicorn) get its directories first on ``PYTHONPATH``
and run from its root, so they import its ``relay`` and ``django_app``, not the
checkout's editable install (whose finder comes after the path).

Must not: touch the checkout's files or git state, or import Django (children do).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.launch import ROOT, example_env
from loadtest.bench.stack import BenchError

__all__ = ["OVERLAY_APP", "OVERLAY_SETTINGS", "Tree", "TreeInfo", "current_tree", "tree_at"]

#: The default ``--before`` revision: main before issue #10's shared live queries.
BEFORE_DEFAULT = "49143b3"
OVERLAY_SETTINGS = "ddp_bench_settings"
OVERLAY_APP = "ddp_bench"
#: What ``git archive`` extracts: the code a relay and ``manage.py`` import.
TREE_PATHS = ("relay", "django_app", "example", "coordinator")

_SETTINGS = '''"""Bench-only settings: the tree's example project plus the ddp_bench app."""

from example.settings import *  # noqa: F403
from example.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "ddp_bench"]
'''

_DDP = '''"""Bench-only publications (loadtest/bench/trees.py): books.latest when the example
lacks it, and bench.latest [n, key], the same window under distinct parameters."""

from __future__ import annotations

from typing import Any

from django.db.models import F

from bookstore.models import Book
from django_app import Cursor, publish, registry

#: "cursor": a sortable, sliceable Cursor (a live window); "queryset": the sliced
#: queryset a user had to write before it existed (unroutable: re-run per subscriber).
WINDOW = "cursor" if hasattr(Cursor, "order_by") else "queryset"
LATEST_FROM = "example" if registry.has_publication("books.latest") else "ddp_bench"


def window(n: int) -> Any:
    if WINDOW == "cursor":
        return Cursor(Book).order_by("-published")[:n]
    return Book.objects.order_by(F("published").desc(nulls_last=True), "id")[:n]


if LATEST_FROM == "ddp_bench":

    @publish("books.latest")
    def books_latest(ctx: Any, n: int) -> Any:
        return window(n)


@publish("bench.latest")
def bench_latest(ctx: Any, n: int, key: int) -> Any:
    return window(n)
'''

_INFO = '''"""``manage.py ddp_bench_info``: what ddp_bench registered, as one JSON line."""

import json

import django_app
import relay
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    def handle(self, *args: object, **options: object) -> None:
        from ddp_bench import ddp

        self.stdout.write(
            json.dumps(
                {
                    "window": ddp.WINDOW,
                    "books_latest_from": ddp.LATEST_FROM,
                    "relay": relay.__file__,
                    "django_app": django_app.__file__,
                }
            )
        )
'''


@dataclass(frozen=True)
class TreeInfo:
    """What ``ddp_bench_info`` reported of a tree (see ``Tree.info``)."""

    #: "cursor" (a live window) or "queryset" (a sliced queryset, unroutable).
    window: str
    #: "example" (the example registers books.latest) or "ddp_bench" (the overlay does).
    books_latest_from: str
    relay: str
    django_app: str


@dataclass(frozen=True)
class Tree:
    """A source tree and its overlay; ``label`` names it in the tables ("after", ...)."""

    label: str
    root: Path
    overlay: Path
    #: The commit it was extracted from (None: this checkout, with its uncommitted edits).
    revision: str | None = None

    @property
    def example(self) -> Path:
        return self.root / "example"

    def env(self, database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a child of this tree: the example's, with the overlay's
        settings and this tree's directories first on the path."""
        env = example_env(database_url, {"DJANGO_SETTINGS_MODULE": OVERLAY_SETTINGS})
        env["PYTHONPATH"] = os.pathsep.join([str(self.overlay), str(self.example), str(self.root)])
        env.update(extra or {})
        return env

    def manage_argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.example / "manage.py"), *args]

    def gunicorn_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:relay.server.gunicorn_conf",
            "relay.server.app:create_app()",
        ]

    def info(self, database_url: str) -> TreeInfo:
        """Ask the tree (``manage.py ddp_bench_info``) what the overlay registered, and
        check that its children import its own code."""
        proc = subprocess.run(
            self.manage_argv("ddp_bench_info"),
            env=self.env(database_url),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise TreeError(
                f"{self.label}: manage.py ddp_bench_info failed:\n{proc.stderr[-3000:]}"
            )
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        info = TreeInfo(**{key: str(data[key]) for key in TreeInfo.__dataclass_fields__})
        for package in (info.relay, info.django_app):
            if not Path(package).resolve().is_relative_to(self.root.resolve()):
                raise TreeError(
                    f"{self.label}: its children import {package}, not the tree's own code "
                    f"under {self.root}"
                )
        return info


class TreeError(BenchError):
    """A tree could not be made or does not import its own code."""


def write_overlay(directory: Path) -> Path:
    """The overlay (settings module, ``ddp_bench`` app) in ``directory``; returns it."""
    app = directory / OVERLAY_APP
    commands = app / "management" / "commands"
    commands.mkdir(parents=True, exist_ok=True)
    (directory / f"{OVERLAY_SETTINGS}.py").write_text(_SETTINGS)
    for package in (app, app / "management", commands):
        (package / "__init__.py").write_text("")
    (app / "ddp.py").write_text(_DDP)
    (commands / "ddp_bench_info.py").write_text(_INFO)
    return directory


def current_tree(workdir: Path) -> Tree:
    """This checkout (as it is on disk, uncommitted edits included)."""
    return Tree("after", ROOT, write_overlay(workdir / "trees" / "after-overlay"))


def tree_at(revision: str, workdir: Path, label: str = "before") -> Tree:
    """The tree of ``revision``, extracted under ``workdir`` (``git archive``: the
    repository is only read)."""
    git = shutil.which("git")
    if git is None:
        raise TreeError("--before needs git on PATH")
    resolved = subprocess.run(
        [git, "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if resolved.returncode != 0:
        raise TreeError(f"--before {revision}: not a commit of {ROOT}")
    commit = resolved.stdout.strip()
    base = workdir / "trees" / f"{label}-{commit[:12]}"
    root = base / "src"
    if not (root / "relay" / "__init__.py").is_file():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        archive = base / "tree.tar"
        with open(archive, "wb") as out:
            proc = subprocess.run(
                [git, "-C", str(ROOT), "archive", "--format=tar", commit, *TREE_PATHS],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
        if proc.returncode != 0:
            raise TreeError(f"git archive {commit} failed: {proc.stderr.decode()[-2000:]}")
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
        archive.unlink()
    return Tree(label, root, write_overlay(base / "overlay"), revision=commit)
