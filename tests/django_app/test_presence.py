"""Presence on the write side: a subscription holds its member present, the member leaves
with its last hold, a dead worker's holds go when its lease expires, and concurrent joins
and leaves of one member on many connections never leave the row wrong.

These tests commit for real (``transaction=True``): presence rows are what relays read.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection

from django_app import presence
from django_app.backend import DjangoBackend
from django_app.context import SubscriptionContext
from django_app.exceptions import DDPError
from django_app.models import Presence, PresenceHold, PresenceLease
from django_app.publications import Publication
from django_app.registries import registry as default_registry
from relay.backend import CallContext, Handshake, Identity
from tests.django_app.publishing import RecordingSink, subscribe

pytestmark = pytest.mark.django_db(transaction=True)

TOPIC = "room:1"
HANDSHAKE = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")


@pytest.fixture(autouse=True)
def _fresh_worker() -> Iterator[None]:
    """Each test is a worker of its own: the holds an earlier test left in this
    process's registry are not this database's (it was emptied)."""
    presence._live.clear()
    presence._unreleased.clear()
    presence._renewed_at = 0.0
    yield
    presence._live.clear()
    presence._unreleased.clear()


def ctx_for(session: str, user_id: str | None = None) -> SubscriptionContext:
    """A publication's context with no relay behind it (joins happen at once; its stop
    callbacks are never run)."""
    return Stoppable(session, user_id).ctx


def members(topic: str = TOPIC) -> dict[str, str | None]:
    return {p.id: p.user_id for p in Presence.objects.filter(topic=topic)}


class Stoppable:
    """A context whose on_stop callbacks a test runs (the relay runs them at stop)."""

    def __init__(self, session: str, user_id: str | None = None) -> None:
        self.sink = RecordingSink()
        self.ctx = SubscriptionContext(user=None, user_id=user_id, session_id=session)
        self.ctx.on_stop = self.sink.on_stop  # type: ignore[method-assign]

    def stop(self) -> None:
        for callback in self.sink.stop_callbacks:
            callback()
        self.sink.stop_callbacks.clear()


def test_a_member_is_present_while_any_of_its_holds_runs() -> None:
    tab1, tab2, anon = Stoppable("s1", "7"), Stoppable("s2", "7"), Stoppable("s3")
    cursor = presence.present(tab1.ctx, TOPIC)
    presence.present(tab2.ctx, TOPIC)
    presence.present(anon.ctx, TOPIC)
    assert sorted(members().values(), key=str) == ["7", None]  # one per user, one anonymous
    assert {p.pk for p in cursor.queryset} == set(members())
    tab1.stop()
    assert sorted(members().values(), key=str) == ["7", None]  # the other tab holds it
    tab2.stop()
    anon.stop()
    assert members() == {} and not PresenceHold.objects.exists()


def test_no_session_id_reaches_the_published_row() -> None:
    presence.present(ctx_for("secret-session-id"), TOPIC)
    (row,) = Presence.objects.all()
    assert "secret-session-id" not in repr(list(Presence.objects.values()))
    assert row.user_id is None and row.topic == TOPIC


@pytest.mark.parametrize("topic", ["", "x" * 201, 7, None])
def test_bad_topics_are_refused(topic: Any) -> None:
    with pytest.raises(DDPError) as info:
        presence.present(ctx_for("s"), topic)
    assert info.value.error == 400
    assert not PresenceHold.objects.exists()


def test_a_stop_during_the_join_still_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay may stop a subscription (its socket closed) while its join is being
    written: the hold is released once the join is in, never left behind."""
    hold = presence._Hold(presence._presence_id(TOPIC, "s:s1"), TOPIC, None)
    states: list[str] = []
    original = presence.timezone.now

    def now_and_stop() -> Any:
        # The stop arrives while the join's transaction is open.
        presence._release(hold, "default")
        states.append(hold.state)
        return original()

    monkeypatch.setattr(presence.timezone, "now", now_and_stop)
    presence._join(hold, "default")
    assert states == ["stopping"]  # the release waited for the join
    assert hold.state == "released"
    assert members() == {} and not PresenceHold.objects.exists()
    assert hold.token not in presence._live


def test_a_stop_before_the_join_writes_nothing() -> None:
    """A publication that stops itself (or errs) after ``present``: the relay runs its
    stop callbacks before the join, which then writes nothing."""
    holder = Stoppable("s1")
    deferred: list[Any] = []
    holder.ctx.after_snapshot = deferred.append  # type: ignore[method-assign]
    presence.present(holder.ctx, TOPIC)
    holder.stop()
    for join in deferred:
        join()
    assert members() == {} and not PresenceHold.objects.exists()


def test_a_dead_workers_holds_are_swept_when_its_lease_expires() -> None:
    presence.present(ctx_for("mine"), TOPIC)
    # Another worker that died: a lease in the past, holds on it, one member shared.
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
    PresenceLease.objects.create(owner="deadworker", expires_at=past)
    dead_only = presence._presence_id(TOPIC, "s:theirs")
    shared = presence._presence_id(TOPIC, "u:5")
    now = dt.datetime.now(dt.UTC)
    Presence.objects.create(id=dead_only, topic=TOPIC, user_id=None, since=now)
    Presence.objects.create(id=shared, topic=TOPIC, user_id="5", since=now)
    PresenceHold.objects.create(token="d1", presence_id=dead_only, owner="deadworker")
    PresenceHold.objects.create(token="d2", presence_id=shared, owner="deadworker")
    presence.present(ctx_for("alive", "5"), TOPIC)  # user 5 is also here, on a live worker
    assert len(members()) == 3
    presence.keepalive()
    assert set(members()) == {presence._presence_id(TOPIC, "s:mine"), shared}
    assert not PresenceLease.objects.filter(owner="deadworker").exists()
    assert PresenceLease.objects.get(owner=presence.OWNER).expires_at > now


def test_orphan_holds_without_a_lease_are_swept_by_housekeeping() -> None:
    pid = presence._presence_id(TOPIC, "s:orphan")
    Presence.objects.create(id=pid, topic=TOPIC, since=dt.datetime.now(dt.UTC))
    PresenceHold.objects.create(token="o1", presence_id=pid, owner="neverleased")
    presence.housekeeping()
    assert members() == {}


def test_release_all_clears_this_worker() -> None:
    presence.present(ctx_for("a"), TOPIC)
    presence.present(ctx_for("b", "1"), "room:2")
    presence.release_all()
    assert not Presence.objects.exists() and not PresenceHold.objects.exists()


def test_failed_releases_are_retried_by_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    holder = Stoppable("s1")
    presence.present(holder.ctx, TOPIC)
    real = presence._absent

    def broken(cursor: Any, ids: Any) -> None:
        raise RuntimeError("database away")

    monkeypatch.setattr(presence, "_absent", broken)
    holder.stop()
    assert len(members()) == 1 and presence._unreleased
    monkeypatch.setattr(presence, "_absent", real)
    presence.keepalive()
    assert members() == {} and not presence._unreleased


def test_concurrent_joins_and_leaves_of_one_member_end_right() -> None:
    """Four connections join and leave user 9 on one topic at random: after each
    thread's last step, the row exists exactly when a hold does."""
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        held: list[Stoppable] = []
        try:
            for i in range(40):
                if held and rng.random() < 0.5:
                    held.pop(rng.randrange(len(held))).stop()
                else:
                    h = Stoppable(f"s{seed}-{i}", "9")
                    presence.present(h.ctx, TOPIC)
                    held.append(h)
            for h in held[seed % 2 :]:
                h.stop()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    holds = PresenceHold.objects.count()
    assert (len(members()) == 1) == (holds > 0)


def test_the_example_publication_joins_after_its_snapshot(
    backend: DjangoBackend, seeded: str, make_ctx: Any
) -> None:
    from bookstore.models import Book

    book = Book.objects.order_by("pk").first()
    assert book is not None
    ctx: CallContext = make_ctx(identity=Identity(user_id=None))
    sub = subscribe(backend, ctx, "presence.book", [book.pk])
    # The join was written after the read-only snapshot and before the fetch: the first
    # documents already hold the subscriber.
    assert [d.collection for d in sub.documents] == ["presence"]
    assert sub.documents[0].fields == {"topic": f"book:{book.pk}", "userId": None}
    assert sub.plan.auto_ready
    (callback,) = sub.sink.stop_callbacks
    callback()
    assert not Presence.objects.exists()
    with pytest.raises(DDPError):
        subscribe(backend, ctx, "presence.book", ["no such book"])


# -- what the relay does around a publication ------------------------------------------


class RunLikeSink(RecordingSink):
    """What ``relay.server.subscriptions.PublicationRun`` does with ``stop``/``on_stop``:
    ``stop()`` finishes the run and starts its stop callbacks (spawned greenlets, which
    get the CPU at the pool greenlet's first database wait: the snapshot's COMMIT, before
    the after-snapshot join); ``on_stop`` on a stopped run starts the callback at once.
    Here each runs at once on a thread of its own (its own connection, as another pool
    greenlet has), and is waited for: the order the relay gives them under gevent."""

    def stop(self) -> None:
        super().stop()
        callbacks, self.stop_callbacks = self.stop_callbacks, []
        for callback in callbacks:
            _elsewhere(callback)

    def on_stop(self, callback: Callable[[], None]) -> None:
        if self.stopped:
            _elsewhere(callback)
        else:
            super().on_stop(callback)


def _elsewhere(callback: Callable[[], None]) -> None:
    def run() -> None:
        try:
            callback()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()


def test_a_publication_that_stops_itself_after_present_holds_nothing() -> None:
    """``present(ctx, topic)`` then ``ctx.stop()`` (or ``ctx.error(...)``: a publication
    refusing after it joined). The relay runs the stop callbacks before the join that
    ``backend.subscribe`` runs after the snapshot: the join must then write nothing."""

    def present_then_stop(ctx: SubscriptionContext) -> Any:
        cursor = presence.present(ctx, TOPIC)
        ctx.stop()
        return cursor

    with default_registry.isolated() as registry:
        Publication("review.presentThenStop", func=present_then_stop, registry=registry)
        backend = DjangoBackend(registry=registry)
        ctx = CallContext("session-review", Identity(user_id=None), HANDSHAKE)
        sink = RunLikeSink()
        backend.subscribe(ctx, "review.presentThenStop", [], sink)
    assert sink.stopped
    assert not PresenceHold.objects.exists(), "a stopped subscription still holds presence"
    assert not Presence.objects.filter(topic=TOPIC).exists()


def test_a_live_worker_whose_lease_lapsed_writes_its_holds_again() -> None:
    """Worker A's keepalive is late past ``DDP_PRESENCE_LEASE`` (a database stall, a
    blocked hub). Worker B sweeps A's holds. A's next renewal finds its lease had lapsed
    and writes the holds of its running subscriptions again."""
    holder = SubscriptionContext(user=None, user_id="7", session_id="alive")
    holder.on_stop = RecordingSink().on_stop  # type: ignore[method-assign]
    presence.keepalive()  # this worker's lease exists
    presence.present(holder, TOPIC)  # joins at once (no relay hooks)
    assert Presence.objects.filter(topic=TOPIC).count() == 1
    mine = presence.OWNER
    PresenceLease.objects.filter(owner=mine).update(
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    # Worker B's keepalive (another process: another OWNER).
    original = presence.OWNER
    try:
        presence.OWNER = "otherworker0000000000000"  # type: ignore[misc]
        presence.keepalive()
    finally:
        presence.OWNER = original  # type: ignore[misc]
    # Worker A comes back: its keepalive renews, its subscription is still running.
    presence.keepalive()
    assert PresenceLease.objects.filter(owner=mine).exists()
    assert Presence.objects.filter(topic=TOPIC).count() == 1, (
        "the subscriber of a live worker is no longer present"
    )


def test_a_join_right_after_release_all_writes_a_lease_first() -> None:
    """``release_all`` (the work pool's exit hook: a Node stopped in a process that goes
    on) deletes this worker's lease; the next join must write one again, or another
    worker's ``housekeeping`` would delete its hold as an orphan."""
    presence.keepalive()
    first = SubscriptionContext(user=None, user_id=None, session_id="before")
    first.on_stop = RecordingSink().on_stop  # type: ignore[method-assign]
    presence.present(first, TOPIC)
    presence.release_all()
    again = SubscriptionContext(user=None, user_id=None, session_id="after")
    again.on_stop = RecordingSink().on_stop  # type: ignore[method-assign]
    presence.present(again, TOPIC)
    assert PresenceHold.objects.filter(owner=presence.OWNER).exists()
    assert PresenceLease.objects.filter(owner=presence.OWNER).exists(), "a hold without a lease"
