"""``loadtest.bench.trees``: the overlay, a tree's environment, extracting an earlier commit
with ``git archive``, and asking a tree (through its own ``manage.py``) what it registered.

``info`` runs Django in a child (no database connection is made), so these take a few
seconds; the relays and databases of the trees are exercised by tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.launch import ROOT
from loadtest.bench import trees
from loadtest.bench.trees import Tree, TreeError, current_tree, tree_at, write_overlay

#: No server listens there: ``ddp_bench_info`` must not need the database.
NO_DATABASE = "postgresql://nobody@127.0.0.1:9/none"


def test_overlay_is_importable_python(tmp_path: Path) -> None:
    overlay = write_overlay(tmp_path)
    files = sorted(p.relative_to(overlay).as_posix() for p in overlay.rglob("*.py"))
    assert files == [
        "ddp_bench/__init__.py",
        "ddp_bench/ddp.py",
        "ddp_bench/management/__init__.py",
        "ddp_bench/management/commands/__init__.py",
        "ddp_bench/management/commands/ddp_bench_info.py",
        "ddp_bench_settings.py",
    ]
    for path in overlay.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_env_puts_the_tree_first(tmp_path: Path) -> None:
    tree = Tree("x", tmp_path / "root", tmp_path / "overlay")
    env = tree.env("postgresql://a@b/c", {"EXTRA": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [
        str(tmp_path / "overlay"),
        str(tmp_path / "root" / "example"),
        str(tmp_path / "root"),
    ]
    assert env["DJANGO_SETTINGS_MODULE"] == trees.OVERLAY_SETTINGS
    assert env["DATABASE_URL"] == "postgresql://a@b/c" and env["EXTRA"] == "1"
    assert tree.manage_argv("migrate")[1:] == [
        str(tmp_path / "root" / "example" / "manage.py"),
        "migrate",
    ]


def test_current_tree_is_the_checkout(tmp_path: Path) -> None:
    tree = current_tree(tmp_path)
    assert (tree.root, tree.revision, tree.label) == (ROOT, None, "after")
    info = tree.info(NO_DATABASE)
    assert info.window == "cursor"  # the relay keeps sorted, sliced cursors as windows
    assert info.books_latest_from in {"example", "ddp_bench"}
    assert Path(info.relay).is_relative_to(ROOT)


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_an_earlier_commit_runs_its_own_code(tmp_path: Path) -> None:
    tree = tree_at(trees.BEFORE_DEFAULT, tmp_path)
    assert tree.revision is not None and tree.revision.startswith(trees.BEFORE_DEFAULT)
    assert tree.root.is_relative_to(tmp_path)
    for package in trees.TREE_PATHS:
        assert (tree.root / package).is_dir()
    info = tree.info(NO_DATABASE)
    # Before shared live queries: no sliceable Cursor, no books.latest in the example.
    assert (info.window, info.books_latest_from) == ("queryset", "ddp_bench")
    assert Path(info.relay).is_relative_to(tree.root)
    again = tree_at(trees.BEFORE_DEFAULT, tmp_path)  # extracted once, then reused
    assert again.root == tree.root


def test_an_unknown_revision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TreeError, match="not a commit"):
        tree_at("no-such-revision-anywhere", tmp_path)


def test_a_tree_that_imports_the_checkout_is_refused(tmp_path: Path) -> None:
    """A tree without its own relay/ would silently run the checkout's: refused."""
    root = tmp_path / "root"
    shutil.copytree(
        ROOT / "example", root / "example", ignore=shutil.ignore_patterns("__pycache__")
    )
    tree = Tree("broken", root, write_overlay(tmp_path / "overlay"))
    with pytest.raises(TreeError, match="not the tree's own code"):
        tree.info(NO_DATABASE)


def test_a_failing_tree_says_so(tmp_path: Path) -> None:
    tree = Tree("empty", tmp_path / "nothing", write_overlay(tmp_path / "overlay"))
    (tmp_path / "nothing" / "example").mkdir(parents=True)
    with pytest.raises(TreeError, match=r"empty: manage\.py ddp_bench_info failed"):
        tree.info(NO_DATABASE)


def test_extraction_leaves_the_repository_alone(tmp_path: Path) -> None:
    """``git archive`` only reads: no worktree is registered."""
    before = _worktrees()
    tree_at(trees.BEFORE_DEFAULT, tmp_path)
    assert _worktrees() == before


def _worktrees() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
