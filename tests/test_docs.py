"""Keep the documentation honest: settings, close codes, check ids and links match the code.

Fast and static: no server, no database. Each test names the doc to fix when it fails.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

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
    "relay/dev/devserver.py",
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
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


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
