"""The shared fence helpers in ``coordinator.base`` that every backend calls."""

from __future__ import annotations

import logging

import pytest

from coordinator.base import SessionRecord, call_quietly, check_owner, claimed
from coordinator.errors import FencedError

PARKED = SessionRecord("s1", "relay-a", 3, cursor=7, parked=True, expires_at=99.0, facts=b"f")


def test_check_owner_passes_the_owner_at_its_epoch_and_fences_the_rest() -> None:
    assert check_owner(PARKED, "relay-a", 3) is PARKED
    fenced = "session s1 is owned by relay-a at epoch 3, not relay-b at 3"
    with pytest.raises(FencedError, match=fenced):
        check_owner(PARKED, "relay-b", 3)
    with pytest.raises(FencedError, match="not relay-a at 2"):
        check_owner(PARKED, "relay-a", 2)


def test_claimed_moves_owner_and_epoch_and_keeps_cursor_and_facts() -> None:
    record = claimed(PARKED, "relay-b", 3, require_parked=True)
    assert record == SessionRecord("s1", "relay-b", 4, cursor=7, parked=False, facts=b"f")
    with pytest.raises(FencedError, match="session s1: epoch is 3, expected 2"):
        claimed(PARKED, "relay-b", 2, require_parked=False)
    with pytest.raises(FencedError, match="session s1 is not parked"):
        claimed(record, "relay-c", 4, require_parked=True)
    with pytest.raises(ValueError):
        claimed(PARKED, "bad/owner", 3, require_parked=False)


def test_call_quietly_logs_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    log = logging.getLogger("coordinator.test")
    call_quietly(log, seen.append, 1)

    def fail(_: int) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="coordinator.test"):
        call_quietly(log, fail, 2)
    assert seen == [1]
    assert "coordinator callback" in caplog.text and "boom" in caplog.text
