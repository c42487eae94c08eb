"""A shell session that runs a guide's blocks as a reader would type them.

Its job, for ``tests/e2e/test_getting_started.py``: run each ``sh step`` block in bash
with the working directory and exported variables the earlier blocks left (a reader's
terminal: ``cd mysite`` and ``export X=...`` carry over), write and append the files the
guide shows, start the long-running commands (``sh background``) each in a process group
of its own with its output in a log, and stop them all, in reverse order, at the end.

Must not: interpret the commands (bash does; this only carries ``pwd`` and ``env`` from
one block to the next), leave a process behind (``close`` stops every group it started,
SIGTERM then SIGKILL), or write outside the directory it was given.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devstack.processes import log_tail, spawn, stop_process_group

__all__ = ["Background", "GuideShell", "StepFailed"]

#: Seconds one foreground block may take (pip install, migrate, ``ddp-relay check``).
STEP_TIMEOUT_S = 300.0
#: Seconds a background command has after SIGTERM before its group is killed.
STOP_TIMEOUT_S = 15.0
# Variables bash sets by itself: carrying them to the next block would be noise.
_SHELL_OWN = {"_", "SHLVL", "OLDPWD", "PWD"}


class StepFailed(AssertionError):
    """A block of the guide failed as a reader would see it fail."""


@dataclass
class Background:
    """A long-running command of the guide: its process group leader and its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return log_tail(self.log_path)


class GuideShell:
    """Runs blocks in ``home`` (the reader's starting directory) with ``env``."""

    def __init__(self, home: Path, env: Mapping[str, str], log_dir: Path) -> None:
        self.cwd = home
        self.root = home
        self.env = dict(env)
        self.log_dir = log_dir
        self.background: dict[str, Background] = {}
        self.transcript: list[str] = []
        self._count = 0

    def path(self, relative: str) -> Path:
        """``relative`` under the current directory; never outside the session's root."""
        target = (self.cwd / relative).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise StepFailed(f"{relative!r} leaves the guide's directory {self.root}")
        return target

    def run(self, body: str, *, label: str) -> str:
        """Run ``body`` in bash (``set -euo pipefail``); return its output. Afterwards
        the session is in the directory and environment the block left."""
        self._count += 1
        state = self.log_dir / f"step{self._count}"
        state.mkdir(parents=True, exist_ok=True)
        script = state / "script.sh"
        script.write_text(
            f'set -euo pipefail\n{body}\npwd > "{state / "cwd"}"\nenv -0 > "{state / "env"}"\n'
        )
        try:
            proc = subprocess.run(
                ["bash", str(script)],
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StepFailed(f"{label} took over {STEP_TIMEOUT_S:g} s:\n{body}") from exc
        self.transcript.append(f"$ {body.strip()}\n{proc.stdout}")
        if proc.returncode != 0:
            raise StepFailed(
                f"{label} failed with status {proc.returncode} in {self.cwd}:\n"
                f"{body}\n--- output ---\n{proc.stdout[-6000:]}"
            )
        self.cwd = Path((state / "cwd").read_text().strip())
        pairs = (item.partition("=") for item in (state / "env").read_text().split("\0") if item)
        self.env = {k: v for k, _, v in pairs if k not in _SHELL_OWN}
        return proc.stdout

    def write(self, relative: str, body: str, *, append: bool = False) -> Path:
        """Write (or append) ``body`` to ``relative``, as the guide shows it."""
        target = self.path(relative)
        if append:
            if not target.is_file():
                raise StepFailed(f"the guide appends to {relative}, which does not exist")
            with target.open("a", encoding="utf-8") as handle:
                handle.write(body)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body, encoding="utf-8")
        return target

    def start(self, name: str, body: str) -> Background:
        """Start ``body`` in bash, in a process group of its own, in the current
        directory and environment; its output goes to ``<log_dir>/<name>.log``."""
        if name in self.background:
            raise StepFailed(f"two background blocks are named {name!r}")
        log_path = self.log_dir / f"{name}.log"
        proc = spawn(["bash", "-c", body], log_path, env=self.env, cwd=self.cwd)
        job = Background(name, proc, log_path)
        self.background[name] = job
        return job

    def close(self) -> None:
        """Stop every background command, the last started first."""
        for job in reversed(list(self.background.values())):
            stop_process_group(job.proc, timeout=STOP_TIMEOUT_S)

    def diagnostics(self) -> str:
        """The transcript's end and each background command's log tail."""
        parts = ["--- transcript (last steps) ---", *self.transcript[-4:]]
        for job in self.background.values():
            parts.append(f"--- {job.name} (exit {job.proc.poll()}) {job.log_path} ---")
            parts.append(job.tail())
        return "\n".join(parts)
