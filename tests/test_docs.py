"""Keep the documentation honest: what README.md, docs/, loadtest/ and helm/ say matches the code.

Checked: every setting and environment variable with its default, the close codes, the
system check ids; in every doc, (a) relative links reach a file and, for a markdown file,
a heading; (b) repository paths in code (`relay/stream/listener.py`,
`tests/e2e/test_chaos.py::test_chaos`, `docs/x.md`) exist, and so does every markdown file
a doc names; (c) dotted paths of our packages (`relay.x.Y`, `relay.server.app:create_app()`,
`from django_app import ...` in a python block) resolve, read from the source without
importing it; (d) commands: `make <target>` is a Makefile target, `python -m <module>` a
module, `.venv/bin/<tool>` a console script of a dependency pyproject.toml declares. The
README's Layout section must name every package. Helm values (`relay.workers`) are told
apart from modules by reading the chart's values.yaml.

Fast and static: no server, no database. Each test names the doc to fix when it fails.
Must not: import the modules it checks (``relay.server.worker`` would monkey-patch this
process), or pass vacuously (``test_the_checks_see_what_the_docs_show`` guards that).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from django_app import conf as ddp_conf
from relay import disconnect
from relay.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
ARCHITECTURE = DOCS / "architecture.md"
DJANGO_API = DOCS / "django-api.md"

#: Source files whose environment variables configuration.md must list.
ENV_SOURCES = [
    "relay/server/gunicorn_conf.py",
    "relay/cli.py",
    "devstack/devserver.py",
    "example/example/settings.py",
    "example/bookstore/management/commands/seed_demo.py",
]
#: ``os.environ.get("X"...)``, ``os.environ["X"]`` and the example's ``_env_*("X")`` helpers.
_ENV_READ = re.compile(
    r"""(?:environ\.get|_env_bool|_env_list)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
    r"""|environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
)
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _text(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    return path.read_text(encoding="utf-8")


def _mentions(text: str, name: str) -> bool:
    """Whether ``name`` appears as a whole identifier (``RELAY_X`` is not ``RELAY_XY``)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text) is not None


def _table_cell(text: str, name: str, column: int) -> str | None:
    """Cell ``column`` of the table row whose first cell is `name`, backticks stripped."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0] == f"`{name}`":
            return cells[column].replace("`", "") if len(cells) > column else None
    return None


def _relay_default(value: Any) -> str:
    """How configuration.md writes a relay default."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value in ("", ()):
        return "empty"
    return str(value)


RELAY_FIELDS = dataclasses.fields(Settings)


@pytest.mark.parametrize("field", RELAY_FIELDS, ids=[f.metadata["env"] for f in RELAY_FIELDS])
def test_every_relay_setting_is_documented_with_its_default(field: dataclasses.Field[Any]) -> None:
    env = field.metadata["env"]
    text = _text(CONFIGURATION)
    assert _mentions(text, env), f"docs/configuration.md does not mention {env}"
    documented = _table_cell(text, env, 1)
    assert documented is not None, f"docs/configuration.md has no table row for {env}"
    assert documented == _relay_default(field.default), (
        f"docs/configuration.md says {env} defaults to {documented!r}; "
        f"relay/config.py says {field.default!r}"
    )


def _ddp_setting_names() -> list[str]:
    source = Path(ddp_conf.__file__).read_text(encoding="utf-8")
    return sorted(set(ddp_conf.DEFAULTS) | set(re.findall(r"\bDDP_[A-Z][A-Z0-9_]*\b", source)))


@pytest.mark.parametrize("name", _ddp_setting_names())
def test_every_ddp_setting_is_documented(name: str) -> None:
    text = _text(CONFIGURATION)
    assert _mentions(text, name), f"docs/configuration.md does not mention {name}"
    if name in ddp_conf.DEFAULTS:
        documented = _table_cell(text, name, 1)
        expected = repr(ddp_conf.DEFAULTS[name]).replace("'", '"')
        assert documented == expected, (
            f"docs/configuration.md says {name} defaults to {documented!r}; "
            f"django_app/conf.py says {expected}"
        )


def _env_reads() -> list[tuple[str, str]]:
    found = set()
    for rel in ENV_SOURCES:
        source = (ROOT / rel).read_text(encoding="utf-8")
        for match in _ENV_READ.finditer(source):
            found.add((rel, match.group(1) or match.group(2)))
    return sorted(found)


def test_env_sources_are_read() -> None:
    # Guards the regex: if it stopped matching, the test below would pass vacuously.
    names = {name for _, name in _env_reads()}
    assert {"RELAY_WORKERS", "PORT", "DATABASE_URL", "DEMO_ADMIN_PASSWORD"} <= names


@pytest.mark.parametrize(("source", "name"), _env_reads(), ids=lambda v: str(v))
def test_every_environment_variable_is_documented(source: str, name: str) -> None:
    assert _mentions(_text(CONFIGURATION), name), (
        f"{source} reads {name}, which docs/configuration.md does not mention"
    )


CLOSES = sorted(
    (v for v in vars(disconnect).values() if isinstance(v, disconnect.Disconnect)),
    key=lambda d: d.name,
)


@pytest.mark.parametrize("reason", CLOSES, ids=[d.name for d in CLOSES])
def test_close_code_table_matches_relay_disconnect(reason: disconnect.Disconnect) -> None:
    text = _text(ARCHITECTURE)
    assert _table_cell(text, reason.name, 1) == str(reason.code), (
        f"docs/architecture.md: the close-code row of {reason.name} does not say {reason.code}"
    )
    assert _table_cell(text, reason.name, 2) == reason.reason, (
        f"docs/architecture.md: the close-code row of {reason.name} does not say {reason.reason!r}"
    )


def test_every_system_check_id_is_documented() -> None:
    source = (ROOT / "django_app" / "checks.py").read_text(encoding="utf-8")
    ids = sorted(set(re.findall(r"\bddp\.[EW]\d{3}\b", source)))
    assert ids, "no check ids found in django_app/checks.py"
    text = _text(DJANGO_API)
    missing = [check_id for check_id in ids if f"`{check_id}`" not in text]
    assert not missing, f"docs/django-api.md does not list the system checks {missing}"


def _markdown_files() -> list[Path]:
    """README.md, docs/*.md, loadtest/**/*.md and helm/**/*.md."""
    found = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    found += sorted((ROOT / "loadtest").rglob("*.md")) + sorted((ROOT / "helm").rglob("*.md"))
    return [p for p in found if "node_modules" not in p.parts]


def _relative_links(text: str) -> list[str]:
    """Link targets that name a file in this repository (no URL, no bare #anchor)."""
    prose = _INLINE_CODE.sub("", _FENCE.sub("", text))
    targets = [m.group(1) for m in _INLINE_LINK.finditer(prose)]
    targets += [m.group(1) for m in _REFERENCE_LINK.finditer(prose)]
    return [t for t in targets if not _SCHEME.match(t) and not t.startswith(("#", "//"))]


def test_link_extraction() -> None:
    text = (
        'See [a](docs/a.md), ![img](img/x.png "t"), [web](https://x.org), [top](#top),\n'
        "`[code](nope.md)` and [sec](b.md#part).\n\n```\n[fenced](nope2.md)\n```\n"
        "[ref]: ./c.md\n"
    )
    assert _relative_links(text) == ["docs/a.md", "img/x.png", "b.md#part", "./c.md"]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    broken = []
    for target in _relative_links(_text(path)):
        file_part = target.split("#", 1)[0].split("?", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


# -- paths, modules and commands the docs name --------------------------------------------

#: Top-level entries of the repository: a backticked ``x/...`` with one of these first is a
#: repository path (``.state/...``, ``node_modules/...`` or ``bookstore/ddp.py`` are not).
REPO_TOP = {
    "relay",
    "coordinator",
    "django_app",
    "example",
    "loadtest",
    "tests",
    "docs",
    "helm",
    "deploy",
}
#: Packages whose dotted paths (``relay.x.Y``, ``python -m loadtest.bench``) must resolve.
OUR_PACKAGES = ("relay", "coordinator", "django_app", "loadtest", "tests")
#: What ``.venv/bin/`` holds without being declared: the venv's own interpreter and pip.
VENV_BUILTINS = {"python", "python3", "python3.11", "pip", "pip3"}
#: Languages of fenced blocks that hold commands (or plain text, like the README's maps).
_COMMAND_FENCES = {"", "sh", "bash", "shell", "console", "text"}

#: Known problems in docs that are not fixed here: (check, doc, what it says) -> why. Each
#: entry must still be found; once the doc is fixed, the entry must go too.
PENDING: dict[tuple[str, str, str], str] = {}

_FENCED_BLOCK = re.compile(r"^(```|~~~)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[^\n]*$", re.M | re.S)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_PATH_TOKEN = re.compile(r"^(?:\./|\.\./)*[\w.-]+(?:/[\w.-]+)*/?$")
_DOTTED = re.compile(
    r"^(?:python:)?(?P<module>(?:"
    + "|".join(OUR_PACKAGES)
    + r")(?:\.[A-Za-z_]\w*)+)(?::(?P<attr>[A-Za-z_][\w.]*))?(?:\(.*\))?$"
)
_PYTHON_M = re.compile(r"\bpython[\w.]*\s+(?:-[A-Za-z]+\s+)*-m\s+([A-Za-z_][\w.]*)")
_VENV_BIN = re.compile(r"(?<![\w/])\.venv/bin/([\w.-]+)")
_MAKE = re.compile(r"(?:^|[;&|(]\s*)(?:[A-Z_][A-Z0-9_]*=\S*\s+)*make\s+([^\n;&|#]*)", re.M)


@dataclasses.dataclass(frozen=True)
class Doc:
    """One markdown file: its prose, inline code spans, command text and code blocks."""

    path: Path
    text: str

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    def spans(self) -> list[str]:
        """Inline code spans outside fenced blocks, backticks stripped."""
        return [m.group(0)[1:-1] for m in _INLINE_CODE.finditer(_FENCE.sub("", self.text))]

    def blocks(self) -> list[tuple[str, str]]:
        """(language, body) of each fenced block."""
        return [(m.group(2).lower(), m.group(3)) for m in _FENCED_BLOCK.finditer(self.text)]

    def command_text(self) -> list[str]:
        """Where commands are shown: inline spans, shell/plain fenced blocks and indented
        (4-space) code lines."""
        out = self.spans()
        out += [body for lang, body in self.blocks() if lang in _COMMAND_FENCES]
        prose = _FENCE.sub("", self.text)
        out += [line.strip() for line in prose.splitlines() if line.startswith("    ")]
        return out


def _all_docs() -> list[Path]:
    return _markdown_files()


def _doc_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _check(check: str, doc: Doc, problems: list[str]) -> None:
    """Fail with ``problems`` of ``doc`` except the pending ones; a pending entry that is no
    longer found fails too, so the list shrinks as docs are fixed."""
    pending = {what for (kind, rel, what) in PENDING if (kind, rel) == (check, doc.rel)}
    unexpected = sorted(set(problems) - pending)
    stale = sorted(pending - set(problems))
    assert not unexpected, f"{doc.rel}: " + "; ".join(unexpected)
    assert not stale, f"{doc.rel} is fixed: remove {stale} from PENDING in tests/test_docs.py"


# ---- anchors (a) --------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    """Every heading anchor of a markdown text (a repeated heading gets -1, -2...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        slug = _slug(match.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_slugs_follow_github() -> None:
    assert _slug("Session resumption") == "session-resumption"
    assert _slug("Declaring what clients see: `ddp.py`") == "declaring-what-clients-see-ddppy"
    assert _slug("Live updates: the change stream") == "live-updates-the-change-stream"
    assert _slug("`python -m loadtest.bench`: one relay") == "python--m-loadtestbench-one-relay"


def _anchor_problems(doc: Doc) -> list[str]:
    prose = _INLINE_CODE.sub("", _FENCE.sub("", doc.text))
    targets = [m.group(1) for m in _INLINE_LINK.finditer(prose)]
    targets += [m.group(1) for m in _REFERENCE_LINK.finditer(prose)]
    problems = []
    for target in targets:
        if _SCHEME.match(target) or target.startswith("//") or "#" not in target:
            continue
        file_part, anchor = target.split("#", 1)
        if not file_part:
            headings = _anchors(doc.text)
        else:
            linked = (doc.path.parent / file_part).resolve()
            if linked.suffix != ".md" or not linked.is_file():
                continue  # a missing file is test_relative_links_point_to_existing_files'
            headings = _anchors(linked.read_text(encoding="utf-8"))
        if anchor not in headings:
            problems.append(f"link {target}: no heading with anchor #{anchor}")
    return problems


def test_anchor_detection() -> None:
    doc = Doc(
        DOCS / "x.md",
        "# Top\n[a](architecture.md#close-codes) [b](architecture.md#nope) [c](#top) [d](#gone)",
    )
    assert _anchor_problems(doc) == [
        "link architecture.md#nope: no heading with anchor #nope",
        "link #gone: no heading with anchor #gone",
    ]


@pytest.mark.parametrize("path", _all_docs(), ids=_doc_id)
def test_link_anchors_exist(path: Path) -> None:
    doc = Doc(path, _text(path))
    _check("anchors", doc, _anchor_problems(doc))


# ---- repository paths (b) ------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Whitespace-separated words of code, without quotes, sentence punctuation and
    brackets that open or close around them (``(coordinator/zk.py):`` is a path,
    ``create_app()`` keeps its call)."""
    words = []
    for word in text.split():
        previous = None
        while word != previous:
            previous = word
            word = word.strip("'\",;:[]")
            if word.startswith("(") and word.endswith(")"):
                word = word[1:-1]
            if word.startswith("(") and word.count("(") > word.count(")"):
                word = word[1:]
            if word.endswith(")") and word.count(")") > word.count("("):
                word = word[:-1]
            word = word.rstrip(".") if not word.endswith("..") else word
        words.append(word)
    return words


def test_tokens() -> None:
    assert _tokens("(coordinator/zk.py): 'relay.server.app:create_app()' x.py, docs/a.md.") == [
        "coordinator/zk.py",
        "relay.server.app:create_app()",
        "x.py",
        "docs/a.md",
    ]


def _path_problem(doc: Doc, token: str) -> str | None:
    """What is wrong with ``token`` if it names a repository path; None otherwise."""
    token = token.rstrip(".:")
    if any(c in token for c in "<>*{}$") or "..." in token:
        return None  # a pattern or a placeholder, not a path
    if "/" not in token and not token.endswith(".md"):
        return None
    path_part, _, test_name = token.partition("::")
    path_part = re.sub(r":\d+$", "", path_part)
    if not _PATH_TOKEN.match(path_part):
        return None
    first = path_part.lstrip("./").split("/", 1)[0]
    from_root = path_part.startswith(("./", "../")) is False and first in REPO_TOP
    if not (from_root or path_part.endswith(".md")):
        return None
    bases = [ROOT] if from_root else [doc.path.parent, ROOT]
    for base in bases:
        target = (base / path_part).resolve()
        if target.is_relative_to(ROOT) and target.exists():
            if test_name:
                func = test_name.split("[", 1)[0]
                source = target.read_text(encoding="utf-8")
                if not re.search(rf"^\s*def {re.escape(func)}\(", source, re.M):
                    return f"`{token}`: {path_part} has no {func}"
            return None
    return f"`{token}` is not a file of this repository"


def _path_problems(doc: Doc) -> list[str]:
    problems = []
    for text in doc.command_text():
        for token in _tokens(text):
            problem = _path_problem(doc, token)
            if problem and problem not in problems:
                problems.append(problem)
    return problems


def test_path_detection() -> None:
    doc = Doc(ROOT / "docs" / "x.md", "")
    assert _path_problem(doc, "relay/server/app.py") is None
    assert _path_problem(doc, "relay/nowhere.py") is not None
    assert _path_problem(doc, "tests/e2e/test_resume.py::test_nope[x]") is not None
    assert (
        _path_problem(doc, "tests/e2e/test_resume.py::test_no_exact_resume_means_a_new_session")
        is None
    )
    assert _path_problem(doc, "architecture.md") is None  # next to the doc
    assert _path_problem(doc, "../shared/DESIGN.md") is not None  # outside the repository
    assert _path_problem(doc, "bookstore/ddp.py") is None  # not a repository path: unchecked
    assert _path_problem(doc, ".state/cluster") is None
    assert _path_problem(doc, "docs/bench/<date>-<name>") is None


@pytest.mark.parametrize("path", _all_docs(), ids=_doc_id)
def test_named_repository_paths_exist(path: Path) -> None:
    doc = Doc(path, _text(path))
    _check("paths", doc, _path_problems(doc))


# ---- dotted module paths (c) -------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    """The source of one of our modules, found without importing it (importing
    ``relay.server.worker`` would monkey-patch this process, ``django_app.models`` needs
    the app registry)."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(tree: ast.AST, name: str) -> ast.AST | bool | None:
    """The node that defines ``name`` in a module or class body: True for a name bound
    some other way (an import, an assignment, ``self.name = ...`` in a method, a lazy
    export listed in ``__all__``), False when it is not there."""
    for node in _body(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == name:
                return node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name or alias.name == "*":
                    return True
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {leaf.id for t in targets for leaf in ast.walk(t) if isinstance(leaf, ast.Name)}
            if name in names:
                return True
            # PEP 562 packages (relay.client, django_app) export lazily what __all__ lists.
            listed = isinstance(node.value, ast.List | ast.Tuple) and any(
                isinstance(e, ast.Constant) and e.value == name for e in node.value.elts
            )
            if "__all__" in names and listed:
                return True
    if isinstance(tree, ast.ClassDef):
        for leaf in ast.walk(tree):
            if (
                isinstance(leaf, ast.Attribute)
                and leaf.attr == name
                and isinstance(leaf.value, ast.Name)
                and leaf.value.id == "self"
                and isinstance(leaf.ctx, ast.Store)
            ):
                return True
    return False


def _body(tree: ast.AST) -> Iterator[ast.stmt]:
    """The statements of a module or class, those under ``if``/``try`` included."""
    for node in getattr(tree, "body", []):
        yield node
        if isinstance(node, ast.If | ast.Try):
            for branch in (node.body, node.orelse, getattr(node, "finalbody", [])):
                yield from _body(ast.Module(body=branch, type_ignores=[]))


def _dotted_problem(module: str, attr: str | None) -> str | None:
    """None when ``module`` (with ``attr``, dotted) resolves; else why not. With no
    ``attr``, the longest importable prefix is the module and the rest its attribute."""
    parts = module.split(".")
    if attr is None:
        for cut in range(len(parts), 0, -1):
            if _module_file(".".join(parts[:cut])) is not None:
                module, rest = ".".join(parts[:cut]), parts[cut:]
                break
        else:
            return f"no module {module}"
    else:
        rest = attr.split(".")
    source = _module_file(module)
    if source is None:
        return f"no module {module}"
    node: ast.AST | bool | None = ast.parse(source.read_text(encoding="utf-8"))
    for index, name in enumerate(rest):
        if node is True:  # bound by an import or assignment: its attributes are not checked
            return None
        assert isinstance(node, ast.AST)
        node = _defines(node, name)
        if node is False:
            # ``relay.client.connection`` where ``connection`` is a submodule
            if index == 0 and _module_file(f"{module}.{name}") is not None:
                return _dotted_problem(".".join([module, *rest]), None)
            return f"{module} has no {'.'.join(rest[: index + 1])}"
    return None


def _chart_values() -> set[str]:
    """Every key path of the Helm chart's values (``relay.workers``, ``coordinator``...):
    docs name them like modules, and they are checked against values.yaml instead."""
    values = yaml.safe_load((ROOT / "helm" / "ddp-relay" / "values.yaml").read_text())
    paths: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.add(f"{prefix}{key}")
                walk(value, f"{prefix}{key}.")

    walk(values, "")
    return paths


def _dotted_refs(doc: Doc) -> list[tuple[str, str | None, str]]:
    """(module, attribute or None, as written) for each dotted path of ours in code."""
    refs = []
    for text in doc.command_text():
        for token in _tokens(text):
            match = _DOTTED.match(token.rstrip(".,:"))
            if match:
                refs.append((match.group("module"), match.group("attr"), token))
    for lang, body in doc.blocks():
        if lang != "python":
            continue
        for node in ast.walk(ast.parse(body)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                OUR_PACKAGES
            ):
                for alias in node.names:
                    refs.append((str(node.module), alias.name, f"from {node.module} import"))
    return refs


def test_dotted_path_resolution() -> None:
    assert _dotted_problem("relay.server.app", "create_app") is None
    assert _dotted_problem("relay.config.Settings.from_env", None) is None
    assert _dotted_problem("relay.client.DDPClient", None) is None  # re-exported
    assert _dotted_problem("devstack.cluster.Cluster.supervise", None) is None
    assert _dotted_problem("devstack.cluster.Cluster.relays", None) is None  # self.relays
    assert _dotted_problem("relay.server.app", "nope") is not None
    assert _dotted_problem("relay.nowhere", None) is not None
    assert _dotted_problem("relay.config.Settings.nope", None) is not None


@pytest.mark.parametrize("path", _all_docs(), ids=_doc_id)
def test_named_modules_and_attributes_exist(path: Path) -> None:
    doc = Doc(path, _text(path))
    chart_values = _chart_values()
    problems = []
    for module, attr, written in _dotted_refs(doc):
        if attr is None and module in chart_values:
            continue
        problem = _dotted_problem(module, attr)
        if problem:
            problems.append(f"`{written}`: {problem}")
    _check("modules", doc, problems)


# ---- commands (d) ------------------------------------------------------------------------


def _make_targets() -> set[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z][\w.-]*(?:[ \t]+[A-Za-z][\w.-]*)*)[ \t]*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets - {"PHONY"}


def _declared_distributions() -> set[str]:
    """Normalised names of every distribution pyproject.toml declares (all extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {_normalise(re.match(r"[A-Za-z0-9._-]+", spec).group(0)) for spec in specs}  # type: ignore[union-attr]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _script_distribution(tool: str) -> str | None:
    """The installed distribution whose console script is ``tool``."""
    for entry in importlib.metadata.entry_points(group="console_scripts", name=tool):
        if entry.dist is not None:
            return _normalise(entry.dist.name)
    return None


def _module_exists(module: str) -> bool:
    if module.split(".")[0] in OUR_PACKAGES:
        return _module_file(module) is not None
    # Third-party: the top-level package is looked up without importing anything.
    return importlib.util.find_spec(module.split(".")[0]) is not None


def _command_problems(doc: Doc, targets: set[str], declared: set[str]) -> list[str]:
    problems = []
    for text in doc.command_text():
        for match in _MAKE.finditer(text):
            for word in shlex.split(match.group(1)):
                if word.startswith("-") or "=" in word:  # options and variables
                    continue
                if word not in targets:
                    problems.append(f"`make {word}`: no such target in the Makefile")
        for module in _PYTHON_M.findall(text):
            if not _module_exists(module):
                problems.append(f"`python -m {module}`: no such module")
        for tool in _VENV_BIN.findall(text):
            if tool in VENV_BUILTINS:
                continue
            dist = _script_distribution(tool)
            if dist is None or dist not in declared:
                problems.append(
                    f"`.venv/bin/{tool}`: not a console script of a pyproject.toml dependency"
                )
    return sorted(set(problems))


def test_command_detection() -> None:
    doc = Doc(
        ROOT / "x.md",
        '`PORT=9000 make run`, `make test PYTEST_ARGS="-x"`, `make nope`,\n'
        "`.venv/bin/python -m loadtest.bench all`, `python -m relay.nope`,\n"
        "`.venv/bin/pytest -q`, `.venv/bin/nope`\n\n```sh\nmake cluster   # comment\n```\n",
    )
    problems = _command_problems(doc, {"run", "test", "cluster"}, {"pytest"})
    assert problems == [
        "`.venv/bin/nope`: not a console script of a pyproject.toml dependency",
        "`make nope`: no such target in the Makefile",
        "`python -m relay.nope`: no such module",
    ]


@pytest.mark.parametrize("path", _all_docs(), ids=_doc_id)
def test_commands_name_what_exists(path: Path) -> None:
    doc = Doc(path, _text(path))
    _check("commands", doc, _command_problems(doc, _make_targets(), _declared_distributions()))


def test_the_checks_see_what_the_docs_show() -> None:
    """Guards the extraction: if it stopped matching, the checks above would pass vacuously."""
    readme = Doc(ROOT / "README.md", _text(ROOT / "README.md"))
    commands = "\n".join(readme.command_text())
    assert {"run", "test", "cluster"} <= {
        w for m in _MAKE.finditer(commands) for w in m.group(1).split()
    }
    tokens = {t.rstrip(".:") for text in readme.command_text() for t in _tokens(text)}
    assert {"relay/", "tests/e2e/test_chaos.py", "coordinator/zk.py"} <= tokens
    configuration = Doc(CONFIGURATION, _text(CONFIGURATION))
    assert ("relay.server.app", "create_app", "relay.server.app:create_app()") in (
        _dotted_refs(configuration)
    )
    loadtest = Doc(ROOT / "loadtest" / "README.md", _text(ROOT / "loadtest" / "README.md"))
    assert "locust" in _VENV_BIN.findall("\n".join(loadtest.command_text()))


def _layout_block() -> str:
    text = _text(ROOT / "README.md")
    section = text.split("## Layout", 1)[1]
    blocks = [body for _, body in Doc(ROOT / "README.md", section).blocks()]
    assert blocks, "README.md: the Layout section has no code block"
    return blocks[0]


def test_readme_layout_names_every_package() -> None:
    layout = _layout_block()
    packages = ["relay", "coordinator", "django_app", "example", "loadtest", "tests", "docs"]
    subpackages = sorted(
        p.parent.name
        for p in (ROOT / "relay").glob("*/__init__.py")
        if p.parent.name != "__pycache__"
    )
    missing = [f"{p}/" for p in packages if not re.search(rf"^{p}/", layout, re.M)]
    missing += [f"relay/{p}/" for p in subpackages if not re.search(rf"^\s+{p}/", layout, re.M)]
    assert not missing, f"README.md's Layout section does not describe {missing}"
