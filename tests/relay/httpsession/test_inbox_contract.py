"""One contract suite for every ``Inbox``: PostgreSQL (``ddp_sockjs_inbox``, with a real
LISTEN connection hearing its rings) and the in-memory twin."""

from __future__ import annotations

import select
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg2
import psycopg2.extensions
import pytest

from relay.httpsession.inbox import CHANNEL, Inbox, MemoryInbox, PostgresInbox
from relay.transport.base import Oversized

pytestmark = pytest.mark.timeout(60)


@dataclass
class Backend:
    inbox: Inbox
    #: The payloads rung on CHANNEL so far (waiting briefly for PostgreSQL's).
    rings: Callable[[int], list[str]]


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.django_db)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        heard: list[str] = []
        yield Backend(MemoryInbox(heard.append), lambda n: list(heard))
        return
    url: str = request.getfixturevalue("django_database_url")
    listener = psycopg2.connect(url)
    listener.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with listener.cursor() as cur:
        cur.execute(f"LISTEN {CHANNEL}")
    got: list[str] = []

    def rings(expected: int) -> list[str]:
        for _ in range(50):
            if len(got) >= expected:
                break
            select.select([listener], [], [], 0.1)
            listener.poll()
            while listener.notifies:
                got.append(listener.notifies.pop(0).payload)
        return list(got)

    inbox = PostgresInbox(url)
    try:
        yield Backend(inbox, rings)
    finally:
        inbox.close()
        listener.close()


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex


def test_what_is_put_is_taken_once_in_order_and_rings_the_holder(
    backend: Backend, key: str
) -> None:
    inbox = backend.inbox
    inbox.put(key, ["a", "b"])
    inbox.put(key, ["c"])
    inbox.put(key + "x", ["other"])
    assert backend.rings(3) == ["s " + key, "s " + key, "s " + key + "x"]
    assert inbox.take(key) == ["a", "b", "c"]
    assert inbox.take(key) == []
    assert inbox.take(key + "x") == ["other"]


def test_a_message_too_large_travels_as_its_report(backend: Backend, key: str) -> None:
    backend.inbox.put(key, ["before", Oversized(2_000_000, 1_048_576, '{"msg":"me'), "after"])
    assert backend.inbox.take(key) == [
        "before",
        Oversized(2_000_000, 1_048_576, '{"msg":"me'),
        "after",
    ]


def test_any_text_comes_back_as_it_went(backend: Backend, key: str) -> None:
    texts = ["é☃", "\x00", '"\\', "</script>", "\u2028"]
    backend.inbox.put(key, texts)
    assert backend.inbox.take(key) == texts


def test_ring_and_drop(backend: Backend, key: str) -> None:
    backend.inbox.ring("r " + key)
    assert backend.rings(1) == ["r " + key]
    backend.inbox.put(key, ["x"])
    backend.inbox.drop(key)
    backend.inbox.prune(3600)
    assert backend.inbox.take(key) == []
