"""Issue 9's acceptance, reduced to CI size: the hostile-client probe against a real stack.

``loadtest.probe`` starts what ``make run`` starts (``loadtest.bench.stack``: embedded
PostgreSQL, the example app, gunicorn with 2 relay workers) once for this module, then
runs, one at a time, with the honest client measuring from another address:

* ``queue`` with one client: ``books.slowRename`` (3 s here) and 40 messages of ~1 MiB
  behind it;
* ``fuzz``: 5,000 random and mutated frames on 4 connections (a few seconds).

Every check the probe makes but the timed ones must hold: no worker past 256 MiB, the
honest client's subscriptions never closed, no worker replaced; for the fuzz, every
well-formed frame answered and no traceback in the relay log. The honest client's
latencies (``connected`` and live updates within 250 ms) are measured by the full runs,
on a quiet machine, not asserted here: a test's timing on a shared CI box says more about
the box than about the relay. The full-size runs and
their figures are in docs/benchmarks.md ("Hostile clients: the probe"). A failing check's
message is the probe's own table, with the figures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench.stack import Cleanup
from loadtest.probe import attacks, cli, report
from tests.fixtures.postgres import require_pg_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def stack() -> Iterator[cli.Stack]:
    require_pg_bin()
    cleanup = Cleanup()
    workdir = Path(tempfile.mkdtemp(prefix="probe-smoke-"))
    try:
        yield cli.start_stack(workdir, cleanup, workers=2)
    finally:
        cleanup.run()


def options() -> cli.Options:
    return cli.Options(baseline=1.0, after=1.0, quiet=True, limits=report.Limits(fuzz_frames=5000))


def failed(result: dict[str, Any]) -> str:
    checks = [report.Check(**c) for c in result["checks"]]
    attacker = result["attacker"]
    lines = [
        report.checks_table(checks),
        "",
        report.workers_table(result["workers"]),
        f"attacker closes: {attacker.get('closes')}",
        f"relay log: {result['relay_log']['lines']} lines, first traceback: "
        + result["relay_log"]["first_traceback"][:800],
    ]
    for batch in result.get("evidence", [])[:2]:
        lines.append(f"unanswered in {batch['where']} (close {batch.get('code')}):")
        lines += [
            f"  {f['text'][:160]}" for f in batch.get("unanswered", batch.get("frames", []))[:4]
        ]
    return "\n".join(lines)


#: Checks that are latencies: reported, not asserted (see the module docstring).
TIMED = ("honest connected", "honest live update")


def assert_holds(result: dict[str, Any]) -> None:
    missed = [
        c["name"]
        for c in result["checks"]
        if c["holds"] is False and not c["name"].startswith(TIMED)
    ]
    assert not missed, f"{missed} missed:\n{failed(result)}"


def test_queue_one_client(stack: cli.Stack) -> None:
    config = attacks.QueueConfig(
        stack.relay.ws_url, messages=40, slow_ms=3000, book_id=stack.book_ids[1], seconds=20
    )
    result = cli.run_probe(stack, "queue", config, options())
    assert result["attacker"]["sent"] == 40
    honest = result["honest"]
    assert honest["attack"]["live"]["n"] + honest["after"]["live"]["n"] > 0
    assert_holds(result)


def test_fuzz_5000_frames(stack: cli.Stack) -> None:
    config = attacks.FuzzConfig(
        stack.relay.ws_url,
        frames=5000,
        connections=4,
        seconds=30,
        book_ids=tuple(stack.book_ids[1:]),
        author_ids=tuple(stack.author_ids),
    )
    result = cli.run_probe(stack, "fuzz", config, options())
    assert result["attacker"]["connected"]["required"] > 2000
    assert_holds(result)
