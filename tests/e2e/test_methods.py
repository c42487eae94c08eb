"""Method order end to end: Meteor's ``this.unblock()`` and ``async def`` methods, on a
real gunicorn relay (gevent monkey-patched workers) with the project's DDP client.

One session calls the example's ``books.slowRename(id, title, ms, {unblock: true})`` and
then ``books.rename``: the second result arrives first, and a subscription sent behind
them is ready before the slow method ends; without ``unblock`` the results come in call
order. ``books.renameAsync`` (Django's async ORM under gevent) answers over the wire with
its write fence: the caller's subscription holds the new title when ``updated`` arrives.

Must not: leave the shared relay's data changed (titles are put back).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.client import DDPClient, DDPClientError

pytestmark = pytest.mark.e2e

SLOW, FAST = "earthsea-1", "left-hand"
#: How long the slow call sleeps, and how much sooner the fast one must be done.
SLOW_MS = 1500
MARGIN = 0.5


@pytest.fixture
def client(relay_server: Any) -> Iterator[DDPClient]:
    ddp = DDPClient(relay_server.ws_url, timeout=15)
    ddp.connect()
    ddp.subscribe("books.all")
    titles = {book: ddp.docs("bookstore.book")[book]["title"] for book in (SLOW, FAST)}
    try:
        yield ddp
    finally:
        for book, title in titles.items():
            ddp.call("books.rename", book, title)
        ddp.close()


class Background:
    """A call made from a thread of its own; ``done`` is when its result came."""

    def __init__(self, client: DDPClient, method: str, *params: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = 0.0
        self.thread = threading.Thread(target=self._run, args=(client, method, params))
        self.thread.start()

    def _run(self, client: DDPClient, method: str, params: tuple[Any, ...]) -> None:
        try:
            self.result = client.call(method, *params)
        except BaseException as exc:  # re-raised in the test's thread by ``join``
            self.error = exc
        self.done = time.monotonic()

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the call never ended"
        if self.error is not None:
            raise self.error
        return self.result


def last_two_results(client: DDPClient) -> tuple[str, str]:
    """Of the last two results, which call came first ("first": sent first) and second."""
    ids = [m["id"] for m in client.received if m["msg"] == "result"][-2:]
    sent_first = min(ids, key=int)  # the client numbers its calls in sending order
    first, second = ("first" if i == sent_first else "second" for i in ids)
    return first, second


def call_in_order(client: DDPClient, *calls: Callable[[], Background]) -> list[Background]:
    """Start each call once the one before it was sent (the client sends at once)."""
    started = []
    for start in calls:
        started.append(start())
        time.sleep(0.2)
    return started


def test_an_unblocked_slow_method_lets_a_later_call_finish_first(client: DDPClient) -> None:
    begun = time.monotonic()
    slow, fast = call_in_order(
        client,
        lambda: Background(client, "books.slowRename", SLOW, "Slow A", SLOW_MS, {"unblock": True}),
        lambda: Background(client, "books.rename", FAST, "Fast B"),
    )
    fast.join()
    # The write fence held for the fast call although the slow one still runs.
    assert client.docs("bookstore.book")[FAST]["title"] == "Fast B"
    # The session's queue went on too: a subscription is ready before the slow call ends.
    client.subscribe("books.latest", 3)
    ready_at = time.monotonic()
    slow.join()
    assert fast.done - begun < SLOW_MS / 1000 - MARGIN
    assert ready_at < slow.done
    assert last_two_results(client) == ("second", "first")
    assert client.docs("bookstore.book")[SLOW]["title"] == "Slow A"
    assert client.violations == []


def test_without_unblock_the_results_come_in_call_order(client: DDPClient) -> None:
    slow, fast = call_in_order(
        client,
        lambda: Background(client, "books.slowRename", SLOW, "Slow C", 800),
        lambda: Background(client, "books.rename", FAST, "Fast D"),
    )
    slow.join()
    fast.join()
    assert slow.done <= fast.done
    assert last_two_results(client) == ("first", "second")
    # ``{unblock: false}`` is the same as no options.
    slow, fast = call_in_order(
        client,
        lambda: Background(client, "books.slowRename", SLOW, "Slow E", 800, {"unblock": False}),
        lambda: Background(client, "books.rename", FAST, "Fast F"),
    )
    slow.join()
    fast.join()
    assert last_two_results(client) == ("first", "second")


def test_an_async_method_answers_with_its_write_fence(client: DDPClient) -> None:
    for n in range(5):
        title = f"Async {n}"
        assert client.call("books.renameAsync", FAST, title) is None
        # ``updated`` came after the rename's own data message.
        assert client.docs("bookstore.book")[FAST]["title"] == title
    with pytest.raises(DDPClientError) as info:
        client.call("books.renameAsync", "no-such-book", "x")
    assert (info.value.error, info.value.reason) == (404, "Book not found")
    with pytest.raises(DDPClientError) as info:
        client.call("books.renameAsync", FAST, "   ")
    assert info.value.error == 400
    assert client.docs("bookstore.book")[FAST]["title"] == "Async 4"
    assert client.violations == []


def test_async_methods_of_many_sessions_overlap_with_plain_ones(relay_server: Any) -> None:
    # Several sessions at once on the same workers: an async method's event loop must
    # not make the others' plain ORM calls fail (SynchronousOnlyOperation, a 500).
    clients = [DDPClient(relay_server.ws_url, timeout=15) for _ in range(6)]
    errors: list[BaseException] = []
    try:
        for ddp in clients:
            ddp.connect()

        def work(index: int, ddp: DDPClient) -> None:
            try:
                for n in range(10):
                    method = "books.renameAsync" if index % 2 else "books.rename"
                    ddp.call(method, FAST if index % 2 else SLOW, f"Overlap {index}.{n}")
                    ddp.call("users.whoami")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i, ddp)) for i, ddp in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    finally:
        clients[0].call("books.rename", FAST, "The Left Hand of Darkness")
        clients[0].call("books.rename", SLOW, "A Wizard of Earthsea")
        for ddp in clients:
            ddp.close()
