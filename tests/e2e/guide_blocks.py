"""The fenced blocks of a markdown guide, read as steps, and the few rewrites a test run
makes to them.

Its job, for ``tests/e2e/test_getting_started.py`` (which follows
``docs/getting-started.md`` literally): split a markdown text into its top-level fenced
blocks (``parse_blocks``), each with its language and the marks after it in the info
string (``sh step``, ``python file=shop/ddp.py``, ``sh background name=relay``...), tell
what each block asks for (``Block.kind``), and rewrite what a test must change: the
example ports (``substitute_ports``), the ``DATABASE_URL`` the guide exports
(``substitute_database_url``) and ``pip install ddp-relay`` as an install of a checkout
(``install_from``).

Pure: no files, no processes (``tests/e2e/guide_shell.py`` runs the blocks). Must not:
understand more markdown than fences at the start of a line (the guide keeps its blocks
unindented), or change anything in a block but what the three rewrites name.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Block",
    "GuideError",
    "Kind",
    "install_from",
    "parse_blocks",
    "substitute_database_url",
    "substitute_ports",
]

Kind = Literal["run", "install", "background", "write", "append", "output", "illustrative"]

_OPEN = re.compile(r"^(?P<fence>`{3,})(?P<info>[^`\n]*)$")
# The example addresses of the guide: the web server, the relay, the proxy.
_PORT = re.compile(r"(?<=127\.0\.0\.1:)(?P<port>\d+)(?!\d)")
_DATABASE_URL = re.compile(r"^(?P<head>export DATABASE_URL=)\S+$", re.MULTILINE)
_PIP_INSTALL = re.compile(r"^(?P<cmd>\s*(?:python -m )?pip install )(?P<args>.*)$", re.MULTILINE)
_PACKAGE = "ddp-relay"


class GuideError(ValueError):
    """The guide does not follow the block conventions this module reads."""


@dataclass(frozen=True)
class Block:
    """One fenced block: ``lang`` (the first word of the info string), bare ``flags`` and
    ``key=value`` ``attrs`` (the rest), its ``body`` (ends with a newline unless empty) and
    the 1-based ``line`` of its opening fence."""

    lang: str
    body: str
    line: int
    flags: frozenset[str] = frozenset()
    attrs: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> Kind | None:
        """What the block asks a reader (and the test) to do; None when it is unmarked."""
        if "illustrative" in self.flags:
            return "illustrative"
        if "step" in self.flags:
            return "run"
        if "install" in self.flags:
            return "install"
        if "background" in self.flags:
            return "background"
        if "file" in self.attrs:
            return "write"
        if "append" in self.attrs:
            return "append"
        if "output" in self.attrs:
            return "output"
        return None

    def describe(self) -> str:
        marks = [*sorted(self.flags), *(f"{k}={v}" for k, v in sorted(self.attrs.items()))]
        return f"line {self.line}: ```{' '.join([self.lang, *marks])}"


def _parse_info(info: str, line: int) -> tuple[str, frozenset[str], dict[str, str]]:
    try:
        words = shlex.split(info)
    except ValueError as exc:
        raise GuideError(f"line {line}: unreadable info string {info!r}: {exc}") from None
    if not words:
        return "", frozenset(), {}
    flags: set[str] = set()
    attrs: dict[str, str] = {}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if not eq:
            flags.add(word)
        elif not key or not value or key in attrs:
            raise GuideError(f"line {line}: bad or repeated mark {word!r}")
        else:
            attrs[key] = value
    return words[0].lower(), frozenset(flags), attrs


def parse_blocks(text: str) -> list[Block]:
    """Every top-level fenced block of ``text``, in order. A fence opens with three or
    more backticks at the start of a line and closes with at least as many; an unclosed
    fence is a GuideError (a renderer would swallow the rest of the page)."""
    blocks: list[Block] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        opening = _OPEN.match(lines[index])
        if opening is None:
            index += 1
            continue
        start = index + 1
        fence = opening.group("fence")
        lang, flags, attrs = _parse_info(opening.group("info"), start)
        closing = re.compile(rf"^`{{{len(fence)},}}[ \t]*$")
        end = start
        while end < len(lines) and closing.match(lines[end]) is None:
            end += 1
        if end == len(lines):
            raise GuideError(f"line {start}: the fence is never closed")
        body = "".join(f"{line}\n" for line in lines[start:end])
        blocks.append(Block(lang, body, start, flags, attrs))
        index = end + 1
    return blocks


def substitute_ports(text: str, ports: Mapping[int, int]) -> str:
    """``text`` with each ``127.0.0.1:<port>`` of ``ports`` moved to its new port; other
    addresses and numbers are left alone."""

    def move(match: re.Match[str]) -> str:
        return str(ports.get(int(match.group("port")), match.group("port")))

    return _PORT.sub(move, text)


def substitute_database_url(text: str, url: str) -> tuple[str, int]:
    """``text`` with the value of each ``export DATABASE_URL=...`` line replaced by
    ``url`` (quoted for the shell), and how many lines were replaced."""
    return _DATABASE_URL.subn(lambda m: m.group("head") + shlex.quote(url), text)


def install_from(text: str, source: str) -> tuple[str, int]:
    """``text`` with the package ``ddp-relay`` of each ``pip install`` line read as the
    checkout at ``source`` (extras kept: ``'ddp-relay[client]'`` becomes
    ``'<source>[client]'``), and how many were replaced."""
    count = 0

    def rewrite(match: re.Match[str]) -> str:
        nonlocal count
        words = shlex.split(match.group("args"))
        out = []
        for word in words:
            name, bracket, extras = word.partition("[")
            if name == _PACKAGE:
                word = source + bracket + extras
                count += 1
            out.append(shlex.quote(word))
        return match.group("cmd") + " ".join(out)

    return _PIP_INSTALL.sub(rewrite, text), count
