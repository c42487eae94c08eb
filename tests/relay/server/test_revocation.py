"""The credential watch: a tripwire on the credential's row, through real channel streams."""

from __future__ import annotations

from relay.backend import Condition, Route
from relay.protocol.changestream import Change
from relay.server.revocation import CredentialWatch
from tests.relay.server.helpers import TOKENS, FakeContext


def _watch(ctx: FakeContext, token: str) -> tuple[CredentialWatch, list[str]]:
    events: list[str] = []
    watch = CredentialWatch(token, lambda: events.append("revoked"), lambda: events.append("lost"))
    route = Route(TOKENS, "tokens", (Condition("id", "exact", token),), fields=())
    ctx.streams.attach(watch, route, (1, "E"))
    return watch, events


def test_only_the_credentials_own_delete_trips_it_and_only_once() -> None:
    ctx = FakeContext()
    watch, events = _watch(ctx, "t1")
    ctx.streams.deliver(TOKENS, 2, "E", 1, [Change("i", "t1", {}), Change("u", "t1", {})])
    ctx.streams.deliver(TOKENS, 3, "E", 2, [Change("d", "t2", {}), Change("i", "t3", {})])
    assert events == [] and not watch.closed
    ctx.streams.deliver(TOKENS, 4, "E", 3, [Change("d", "t1", {})])
    ctx.streams.deliver(TOKENS, 5, "E", 4, [Change("d", "t1", {})])
    assert events == ["revoked"] and watch.closed


def test_lost_history_asks_for_a_check_not_a_close() -> None:
    ctx = FakeContext()
    _, events = _watch(ctx, "t1")
    ctx.streams.lost_history(TOKENS, 9, "E2")
    assert events == ["lost"]
