"""The example's demo page (``example/demo``) on the server side: the finder that serves
exactly the Meteor client bundles from ``node_modules`` (and nothing else of it), its
system check, and the view that loads them or says how to install them.

What the page does in a browser is ``tests/e2e/test_browser.py``'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from demo import views
from demo.finders import NODE_MODULES, PREFIX, VENDOR_FILES, VendorFinder, missing_vendor_files
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

SERVED = [f"{PREFIX}/{name}" for name in VENDOR_FILES]


def installed(root: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A fake ``node_modules`` under ``root`` with the vendor files (but ``skip``) and
    neighbours that must never be served."""
    modules = root / "node_modules"
    for name, rel in VENDOR_FILES.items():
        package = modules / rel.split("/")[0]
        package.mkdir(parents=True, exist_ok=True)
        (package / "package.json").write_text("{}")
        if name not in skip:
            (modules / rel).parent.mkdir(parents=True, exist_ok=True)
            (modules / rel).write_text(f"/* {name} */")
    return modules


def test_every_vendor_file_is_found_under_its_static_name(tmp_path: Path) -> None:
    modules = installed(tmp_path)
    finder = VendorFinder(modules)
    for name, rel in VENDOR_FILES.items():
        assert finder.find(f"{PREFIX}/{name}") == str(modules / rel)
        assert finder.find(f"{PREFIX}/{name}", find_all=True) == [str(modules / rel)]
    assert finder.check() == []


@pytest.mark.parametrize(
    "path",
    [
        f"{PREFIX}/package.json",
        f"{PREFIX}/../node_modules/meteor-client-side/package.json",
        f"{PREFIX}/meteor-client-side/dist/meteor-client-side.bundle.min.js",
        "meteor-client-side/dist/meteor-client-side.bundle.min.js",
        "meteor-client-side.bundle.min.js",
        f"other/{next(iter(VENDOR_FILES))}",
        f"{PREFIX}/",
        "",
    ],
)
def test_nothing_else_of_node_modules_is_found(tmp_path: Path, path: str) -> None:
    finder = VendorFinder(installed(tmp_path))
    assert finder.find(path) == []
    assert finder.find(path, find_all=True) == []


@pytest.fixture(scope="module")
def fake_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return installed(tmp_path_factory.mktemp("demo"))


def _near_misses() -> st.SearchStrategy[str]:
    """Served paths bent a little: case, slashes, dots, affixes."""
    return st.builds(
        lambda path, before, after, upper: (
            (before + path + after).upper() if upper else before + path + after
        ),
        st.sampled_from(SERVED),
        st.sampled_from(["", "/", "./", "x", "demo/", "../"]),
        st.sampled_from(["", "/", ".map", "x", "?v=1", "/.."]),
        st.booleans(),
    )


@given(path=st.one_of(st.sampled_from(SERVED), _near_misses(), st.text(max_size=80)))
def test_found_exactly_when_the_path_is_a_served_name(fake_modules: Path, path: str) -> None:
    """Against the brute-force model: a path is found iff it is one of the served names,
    and then it is that name's file."""
    model = {f"{PREFIX}/{name}": str(fake_modules / rel) for name, rel in VENDOR_FILES.items()}
    finder = VendorFinder(fake_modules)
    assert finder.find(path) == model.get(path, [])
    assert finder.find(path, find_all=True) == ([model[path]] if path in model else [])
    # Nothing installed: nothing found, whatever the path.
    assert VendorFinder(fake_modules / "missing").find(path) == []


def test_a_missing_bundle_is_a_check_warning_naming_it(tmp_path: Path) -> None:
    missing = next(iter(VENDOR_FILES))
    finder = VendorFinder(installed(tmp_path, skip=(missing,)))
    [warning] = finder.check()
    assert warning.id == "demo.W001" and missing in warning.msg
    assert "npm ci" in str(warning.hint)
    assert finder.find(f"{PREFIX}/{missing}") == []
    assert [path for path, _ in finder.list(None)] == [n for n in VENDOR_FILES if n != missing]


def test_collectstatic_gets_the_bundles_under_the_prefix_only(tmp_path: Path) -> None:
    finder = VendorFinder(installed(tmp_path))
    listed = {
        f"{storage.prefix}/{path}": Path(storage.path(path))  # type: ignore[attr-defined]
        for path, storage in finder.list(None)
    }
    assert sorted(listed) == sorted(SERVED)
    assert all(p.read_text() == f"/* {p.name} */" for p in listed.values())
    ignored = next(iter(VENDOR_FILES))
    assert ignored not in [path for path, _ in finder.list([ignored])]


def test_the_page_loads_the_bundles_then_its_scripts_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(views, "missing_vendor_files", lambda: [])
    response = Client().get("/", HTTP_HOST="localhost")
    assert response.status_code == 200
    html = response.content.decode()
    scripts = [f"/static/{path}" for path in SERVED] + [
        "/static/demo/demo.js",
        "/static/demo/resume.js",
    ]
    positions = [html.index(f'src="{src}"') for src in scripts]
    assert positions == sorted(positions)
    assert 'id="setup-error"' not in html
    assert "DDP_DEFAULT_CONNECTION_URL: window.location.origin" in html


def test_without_the_bundles_the_page_says_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = next(iter(VENDOR_FILES))
    monkeypatch.setattr(views, "missing_vendor_files", lambda: [name])
    html = Client().get("/", HTTP_HOST="localhost").content.decode()
    assert 'id="setup-error"' in html and "npm ci" in html and name in html
    assert "<script src=" not in html  # nothing that would fail in the console instead


def test_missing_vendor_files_reads_the_real_node_modules_by_default() -> None:
    assert missing_vendor_files() == missing_vendor_files(NODE_MODULES)
    assert set(missing_vendor_files(NODE_MODULES / "nowhere")) == set(VENDOR_FILES)


def test_the_page_is_read_only() -> None:
    assert Client().post("/", HTTP_HOST="localhost").status_code == 405
