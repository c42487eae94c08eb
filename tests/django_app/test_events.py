"""Event streams on the write side: ``publish_event`` commits with its transaction, rides
its key's channel in commit order, and a subscription reads the key's history back.

These tests commit for real (``transaction=True``): an event is a changelog row.
"""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction

from django_app import events
from django_app.backend import DjangoBackend
from django_app.registries import AlreadyRegistered, registry
from django_app.streams import MAX_HISTORY, Stream, stream_name_of
from relay.backend import ClientError
from relay.protocol.changestream import loads_payload, parse_changes
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def news() -> Any:
    with registry.isolated():
        yield registry.add_stream(Stream("news", collection="headlines", history=3))


def changelog_events(channel: str) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT changes::text FROM ddp_changelog WHERE channel = %s ORDER BY seq", [channel]
        )
        rows = cursor.fetchall()
    return [
        {"id": c.pk, **c.values} for (text,) in rows for c in parse_changes(loads_payload(text))
    ]


def test_an_event_leaves_at_commit_and_never_on_rollback(news: Stream) -> None:
    channel = news.channel("world")
    with transaction.atomic():
        kept = events.publish_event(news, {"title": "kept"}, key="world")
        assert changelog_events(channel) == []  # not before the commit
    with pytest.raises(RuntimeError), transaction.atomic():
        events.publish_event(news, {"title": "rolled back"}, key="world")
        raise RuntimeError("abort")
    assert changelog_events(channel) == [{"id": kept, "title": "kept"}]


def test_events_of_one_transaction_share_one_changelog_row_in_order(news: Stream) -> None:
    with transaction.atomic():
        ids = [events.publish_event("news", {"n": i}, key=7) for i in range(5)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ddp_changelog WHERE channel = %s", [news.channel(7)])
        assert cursor.fetchone() == (1,)
    assert [e["id"] for e in changelog_events(news.channel(7))] == ids
    # The key's channel is its own: another key's events are elsewhere.
    assert news.channel(7) != news.channel(8) and news.channel(7) == news.channel("7")


def test_payload_types_survive_the_stream(news: Stream) -> None:
    when = dt.datetime(2026, 12, 7, 12, 30, 15, 123000, tzinfo=dt.UTC)
    payload = {
        "at": when,
        "price": Decimal("12.50"),
        "ratio": 0.25,
        "blob": b"\x00\xff",
        "tags": ["a", {"deep": [1, 2.5]}],
        "none": None,
    }
    events.publish_event(news, payload, key="types")
    docs = events.history(news.cursor("types"))
    assert [d.fields for d in docs] == [payload]
    assert isinstance(docs[0].fields["ratio"], float)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"_id": "x"}, ValueError),
        ({"$set": 1}, ValueError),
        ({"": 1}, ValueError),
        ({1: "x"}, ValueError),
        (["not", "a", "mapping"], TypeError),
        ({"big": "x" * 70_000}, ValueError),
        ({"obj": object()}, TypeError),
    ],
)
def test_unsendable_payloads_are_refused_and_nothing_is_queued(
    news: Stream, payload: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        events.publish_event(news, payload, key="bad")
    assert changelog_events(news.channel("bad")) == []


def test_unknown_stream_and_bad_keys() -> None:
    with pytest.raises(LookupError):
        events.publish_event("nope", {"a": 1})
    stream = Stream("keys")
    for key in (None, 1.5, True, "k" * 201, ["a"]):
        with pytest.raises(ValueError):
            stream.channel(key)


def test_declarations_are_checked() -> None:
    for name in ("", "Chat", "1chat", "chat-room", "c" * 31, "ch at"):
        with pytest.raises(ValueError):
            Stream(name)
    for history in (0, MAX_HISTORY + 1, True, 2.0):
        with pytest.raises(ValueError):
            Stream("ok", history=history)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Stream("ok", history=5).cursor("k", history=6)
    with registry.isolated():
        registry.add_stream(Stream("dup"))
        with pytest.raises(AlreadyRegistered):
            registry.add_stream(Stream("dup"))
        with pytest.raises(AlreadyRegistered):  # the collection name of a model
            registry.add_stream(Stream("other", collection="bookstore.book"))


def test_channels_map_back_to_their_stream(news: Stream) -> None:
    channel = news.channel("anything at all, even long" * 5)
    assert len(channel) <= 63
    assert stream_name_of(channel) == "news"
    assert registry.get_stream_for_channel(channel) is news
    assert stream_name_of("ddp_bookstore_book") is None
    assert registry.get_stream_for_channel("ddp_ev_unknown_0123456789abcdef") is None


def test_history_is_the_newest_events_oldest_first(news: Stream) -> None:
    ids = []
    for i in range(4):
        ids.append(events.publish_event(news, {"n": i}, key="h"))
    with transaction.atomic():  # two events in one transaction
        ids += [events.publish_event(news, {"n": i}, key="h") for i in (4, 5)]
    events.publish_event(news, {"n": 99}, key="other key")
    assert [d.id for d in events.history(news.cursor("h"))] == ids[-3:]
    assert [d.id for d in events.history(news.cursor("h", history=1))] == ids[-1:]
    assert all(d.collection == "headlines" for d in events.history(news.cursor("h")))


def test_a_publication_returning_a_stream_gets_a_shared_stream_spec(
    news: Stream, make_ctx: Any
) -> None:
    from django_app.publications import publish

    @publish("news.of")
    def news_of(ctx: Any, region: str) -> Any:
        if region == "secret":
            raise ClientError(403, "Not yours")
        return news.cursor(region)

    first = events.publish_event(news, {"title": "one"}, key="eu")
    backend = DjangoBackend()
    sub = subscribe(backend, make_ctx(), "news.of", ["eu"])
    (spec,) = sub.specs
    assert spec.stream is not None and spec.stream.cap == 3
    assert spec.route.channel == news.channel("eu") and spec.route.conditions == ()
    assert [d.id for d in sub.documents] == [first]
    assert sub.positions[news.channel("eu")][0] == 1
    again = subscribe(backend, make_ctx(), "news.of", ["eu"])
    assert again.specs[0].key == spec.key
    assert subscribe(backend, make_ctx(), "news.of", ["us"]).specs[0].key != spec.key
    with pytest.raises(ClientError):
        subscribe(backend, make_ctx(), "news.of", ["secret"])


def test_decode_change_turns_an_event_into_a_document(news: Stream) -> None:
    events.publish_event(news, {"n": 1.5, "at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, key="d")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT changes::text FROM ddp_changelog WHERE channel = %s", [news.channel("d")]
        )
        (text,) = cursor.fetchone()
    (change,) = parse_changes(loads_payload(text))
    decoded = DjangoBackend().decode_change(news.channel("d"), change)
    assert decoded is not None
    assert decoded.collection == "headlines" and decoded.op == "i" and decoded.routing == {}
    assert decoded.fields == {"n": 1.5, "at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}


def test_concurrent_writers_get_one_sequence_in_commit_order(news: Stream) -> None:
    """Writers on many threads: every event is in the changelog once, and the key's
    sequence has no gap."""
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(10):
                events.publish_event(news, {"w": n, "i": i}, key="busy")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = changelog_events(news.channel("busy"))
    assert len(got) == 40 and len({e["id"] for e in got}) == 40
    for n in range(4):  # each writer's own events stay in its order
        assert [e["i"] for e in got if e["w"] == n] == list(range(10))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT array_agg(seq ORDER BY seq) FROM ddp_changelog WHERE channel = %s",
            [news.channel("busy")],
        )
        (seqs,) = cursor.fetchone()
    assert seqs == list(range(1, 41))
