"""``loadtest.bench.eventwriter``: the writer child refuses what it cannot do with a clear
error and keeps serving, and the driver's handle turns its errors into ``BenchError``.

The child is real (``python -m loadtest.bench.eventwriter``, Django set up with the
example's settings) but its database is unreachable: every refusal here happens before
any query, and the one command that needs the database fails with the driver's error.
Publishing for real is in the events smoke (tests/e2e/test_bench_smoke.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from loadtest.bench.eventwriter import EventWriter
from loadtest.bench.stack import BenchError, Cleanup

pytestmark = pytest.mark.timeout(120)

#: Nothing listens on port 1: any query fails at once.
NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing"


@pytest.fixture(scope="module")
def writer() -> Iterator[EventWriter]:
    cleanup = Cleanup()
    handle = EventWriter(NOWHERE, cleanup)
    try:
        yield handle
    finally:
        cleanup.run()


def _publish(**changes: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {
        "cmd": "publish",
        "kind": "event",
        "book": "b",
        "prefix": "p ",
        "count": 3,
        "interval": 0.0,
        "batch": 1,
    }
    cmd.update(changes)
    return cmd


@pytest.mark.parametrize(
    ("cmd", "says"),
    [
        (_publish(kind="delete"), "kind must be event or rename"),
        (_publish(count=-1), "count must be an int from 0 to 1000000"),
        (_publish(count=10**9), "count must be an int from 0 to 1000000"),
        (_publish(count="3"), "count must be an int"),
        (_publish(count=True), "count must be an int"),
        (_publish(batch=0), "batch must be an int from 1 to 10000"),
        (_publish(interval=-1), "interval must be 0 to 3600 seconds"),
        ({"cmd": "explode"}, "not a command"),
        ({"no": "cmd"}, "not a command"),
        ([1, 2, 3], "not a command"),
    ],
)
def test_refusals_are_clear_errors(writer: EventWriter, cmd: Any, says: str) -> None:
    with pytest.raises(BenchError, match="the event writer failed: .*" + says):
        writer.request(cmd, "published", 30)


def test_a_line_that_is_not_json(writer: EventWriter) -> None:
    assert writer.proc.stdin is not None
    writer.proc.stdin.write("{not json\n")
    writer.proc.stdin.flush()
    with pytest.raises(BenchError, match="not a command"):
        writer._next("published", 30)


def test_a_huge_line_is_refused_too(writer: EventWriter) -> None:
    with pytest.raises(BenchError, match="not a command"):
        writer.request({"cmd": "x" * 1_000_000}, "published", 30)


def test_the_database_being_away_is_an_error_not_a_hang(writer: EventWriter) -> None:
    with pytest.raises(BenchError, match="OperationalError"):
        writer.book()
    # ...and the child still serves.
    with pytest.raises(BenchError, match="kind must be"):
        writer.request(_publish(kind="?"), "published", 30)


def test_it_exits_when_its_stdin_closes() -> None:
    cleanup = Cleanup()
    handle = EventWriter(NOWHERE, cleanup)
    handle.close()
    assert handle.proc.returncode == 0
    with pytest.raises(BenchError, match="is gone"):
        handle.request({"cmd": "cleanup"}, "cleaned", 5)
    cleanup.run()
