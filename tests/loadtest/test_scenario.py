"""``loadtest/scenario.py`` without a server: URL derivation, titles, and one simulated user
driven against an in-memory fake of :class:`relay.client.DDPClient`.

Nothing here imports locust (it would monkey-patch this process with gevent).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from loadtest import scenario
from loadtest.scenario import (
    BOOKS,
    CREATED_PREFIX,
    RENAME_MARK,
    REQUEST_NAMES,
    TITLE_MAX,
    BookstoreScenario,
    ScenarioError,
    base_title,
    ddp_url,
    is_loopback,
    renamed_title,
    seeded_book_id,
)
from relay.client import DDPClientError
from relay.protocol.alea import RandomStream

# -- pure helpers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "sockjs", "url"),
    [
        ("http://127.0.0.1:8000", False, "ws://127.0.0.1:8000/websocket"),
        ("http://127.0.0.1:8000/", False, "ws://127.0.0.1:8000/websocket"),
        ("https://localhost:8443", False, "wss://localhost:8443/websocket"),
        ("http://127.0.0.1:8000/app/", False, "ws://127.0.0.1:8000/app/websocket"),
        ("ws://127.0.0.1:8000/websocket", False, "ws://127.0.0.1:8000/websocket"),
        ("http://127.0.0.1:8000/", True, "http://127.0.0.1:8000"),
        ("ws://127.0.0.1:8000", True, "http://127.0.0.1:8000"),
        ("https://[::1]:8443/app", True, "https://[::1]:8443/app"),
    ],
)
def test_ddp_url(host: str, sockjs: bool, url: str) -> None:
    assert ddp_url(host, sockjs=sockjs) == url


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "ftp://127.0.0.1", "", "http://"])
def test_ddp_url_rejects_what_is_not_a_host_url(host: str) -> None:
    with pytest.raises(ValueError, match="expected a host like"):
        ddp_url(host, sockjs=False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://127.5.6.7", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://192.0.2.10:8000", False),
        ("http://example.org", False),
        ("http://0.0.0.0:8000", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_renames_never_compound() -> None:
    once = renamed_title("The Lathe of Heaven", "ab12")
    assert once == f"The Lathe of Heaven{RENAME_MARK}ab12]"
    assert base_title(once) == "The Lathe of Heaven"
    assert base_title(renamed_title(base_title(once), "cd34")) == "The Lathe of Heaven"
    assert base_title("The Lathe of Heaven") == "The Lathe of Heaven"


def test_renamed_title_fits_the_column() -> None:
    title = renamed_title("x" * TITLE_MAX, "ab12")
    assert len(title) == TITLE_MAX
    assert title.endswith(f"{RENAME_MARK}ab12]")


def test_seeded_book_id_is_the_collection_stream_id() -> None:
    seed = "0123456789abcdef0123"
    assert seeded_book_id(seed) == RandomStream(seed).sequence(f"/collection/{BOOKS}").id()
    assert len(seeded_book_id(seed)) == 17


# -- the scenario against a fake client -----------------------------------------------------------


class FakeServer:
    """The bookstore's data and methods; ``live`` pushes changes into subscribed caches."""

    def __init__(self, *, live: bool = True) -> None:
        self.live = live
        self.authors = {
            "leguin": {"name": "Ursula K. Le Guin", "email": "ursula@example.org"},
            "pratchett": {"name": "Terry Pratchett", "email": "terry@example.org"},
        }
        self.books = {
            "lathe": {"title": "The Lathe of Heaven", "authorId": "leguin"},
            "mort": {"title": "Mort", "authorId": "pratchett"},
        }
        self.clients: list[FakeClient] = []
        self.fail_next: dict[str, Exception] = {}
        #: (method, n): the n-th call of method (from 1) raises this.
        self.fail_nth: dict[tuple[str, int], Exception] = {}
        self.counts: dict[str, int] = {}
        self.id_override: str | None = None

    def titles(self) -> dict[str, str]:
        return {k: str(v["title"]) for k, v in self.books.items()}

    def call(self, method: str, params: tuple[Any, ...], seed: str | None) -> Any:
        if method in self.fail_next:
            raise self.fail_next.pop(method)
        self.counts[method] = n = self.counts.get(method, 0) + 1
        if (method, n) in self.fail_nth:
            raise self.fail_nth.pop((method, n))
        if method == "books.rename":
            book_id, title = params
            if book_id not in self.books:
                raise DDPClientError({"error": 404, "reason": "Book not found"})
            self.books[book_id]["title"] = title
            self._push(book_id)
            return None
        if method == "books.create":
            (doc,) = params
            new_id = self.id_override or RandomStream(seed).sequence(f"/collection/{BOOKS}").id()
            self.books[new_id] = {"title": doc["title"], "authorId": doc["authorId"]}
            self._push(new_id)
            return new_id
        if method == "books.remove":
            (book_id,) = params
            if self.books.pop(book_id, None) is None:
                raise DDPClientError({"error": 404, "reason": "Book not found"})
            self._push(book_id)
            return None
        raise DDPClientError({"error": 404, "reason": f"Method '{method}' not found"})

    def _push(self, book_id: str) -> None:
        if not self.live:
            return
        for client in self.clients:
            if client.subscribed:
                cache = client.collections.setdefault(BOOKS, {})
                if book_id in self.books:
                    fields = dict(self.books[book_id])
                    cache[book_id] = fields
                    msg = {"msg": "changed", "collection": BOOKS, "id": book_id, "fields": fields}
                    if client.on_message is not None:
                        client.on_message(msg)
                else:
                    cache.pop(book_id, None)


class FakeClient:
    """The part of ``relay.client.DDPClient`` the scenario uses."""

    server: FakeServer

    def __init__(
        self,
        url: str,
        *,
        sockjs: bool = False,
        timeout: float = 10.0,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        keep_received: bool = True,
    ) -> None:
        self.url = url
        self.sockjs = sockjs
        self.on_message = on_message
        self.keep_received = keep_received
        self.closed = threading.Event()
        self.received: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.errors: list[dict[str, Any]] = []
        self.collections: dict[str, dict[str, dict[str, Any]]] = {}
        self.subscribed = False
        self.connected = False
        self.server.clients.append(self)

    def connect(self) -> str:
        if "connect" in self.server.fail_next:
            raise self.server.fail_next.pop("connect")
        self.connected = True
        return "session"

    def subscribe(self, name: str, *params: Any) -> str:
        self.received.append({"msg": "ready", "subs": [name]})
        if name == "books.all":
            self.subscribed = True
            self.collections["bookstore.author"] = {
                k: dict(v) for k, v in self.server.authors.items()
            }
            self.collections[BOOKS] = {k: dict(v) for k, v in self.server.books.items()}
        return f"sub-{name}"

    def unsubscribe(self, sub_id: str) -> None:
        self.received.append({"msg": "nosub", "id": sub_id})

    def call(self, method: str, *params: Any, random_seed: str | None = None) -> Any:
        assert self.connected and not self.closed.is_set()
        result = self.server.call(method, params, random_seed)
        self.received.append({"msg": "result", "id": "1", "result": result})
        return result

    def docs(self, collection: str) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.collections.get(collection, {}).items()}

    def close(self) -> None:
        self.closed.set()


Reports = list[tuple[str, float, int, BaseException | None]]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    FakeClient.server = fake
    monkeypatch.setattr(scenario, "DDPClient", FakeClient)
    return fake


def make_user(reports: Reports, *, check_live: bool = False, seed: int = 1) -> BookstoreScenario:
    def report(name: str, ms: float, length: int, exc: BaseException | None) -> None:
        reports.append((name, ms, length, exc))

    return BookstoreScenario(
        "http://127.0.0.1:8000",
        sockjs=False,
        report=report,
        rng=random.Random(seed),
        check_live=check_live,
    )


def failures(reports: Reports) -> list[tuple[str, BaseException]]:
    return [(name, exc) for name, _, _, exc in reports if exc is not None]


@pytest.mark.parametrize("check_live", [False, True])
def test_every_task_reports_every_name_and_leaves_the_data_as_found(
    server: FakeServer, check_live: bool
) -> None:
    before = server.titles()
    reports: Reports = []
    user = make_user(reports, check_live=check_live)
    assert user.connect()
    for _ in range(5):
        user.rename_book()
        user.create_and_remove()
        user.resubscribe_by_author()
    user.cleanup()
    user.close()

    assert failures(reports) == []
    assert {name for name, *_ in reports} == set(REQUEST_NAMES)
    assert all(ms >= 0 and length >= 0 for _, ms, length, _ in reports)
    assert next(length for name, _, length, _ in reports if name == "books.create") > 0
    assert server.titles() == before
    assert user.renamed == {} and user.created == set()


def test_the_created_id_must_be_the_seeded_one(server: FakeServer) -> None:
    server.id_override = "NotTheSeededId123"
    reports: Reports = []
    user = make_user(reports)
    assert user.connect()
    user.create_and_remove()
    [(name, exc)] = failures(reports)
    assert name == "books.create" and isinstance(exc, ScenarioError)
    assert "the seed gives" in str(exc)
    assert "NotTheSeededId123" not in server.books  # removed all the same


def test_live_check_fails_a_write_missing_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeClient.server = server = FakeServer(live=False)
    monkeypatch.setattr(scenario, "DDPClient", FakeClient)
    reports: Reports = []
    user = make_user(reports, check_live=True)
    assert user.connect()
    user.create_and_remove()
    [(name, exc)] = failures(reports)
    assert name == "books.create" and "not in the cache" in str(exc)
    assert not [t for t in server.titles().values() if t.startswith(CREATED_PREFIX)]


def test_a_failed_call_is_reported_not_raised_and_cleanup_restores(server: FakeServer) -> None:
    before = server.titles()
    reports: Reports = []
    user = make_user(reports)
    assert user.connect()
    # The rename goes through, the rename back times out: the title is left changed.
    server.fail_nth[("books.rename", 2)] = TimeoutError("method books.rename did not complete")
    user.rename_book()
    [(name, exc)] = failures(reports)
    assert name == "books.rename" and isinstance(exc, TimeoutError)
    assert server.titles() != before and user.renamed

    user.cleanup()
    assert server.titles() == before and user.renamed == {}


def test_cleanup_removes_a_book_whose_create_never_answered(server: FakeServer) -> None:
    reports: Reports = []
    user = make_user(reports)
    assert user.connect()
    author = next(iter(server.authors))
    seed = "feedfacefeedfacefeed"
    # As if books.create went out with this seed and the user was stopped before the result.
    server.call("books.create", ({"title": CREATED_PREFIX + "x", "authorId": author},), seed)
    user.created.update({seeded_book_id(seed), "NeverCreated12345"})
    user.close()  # cleanup opens a connection of its own
    user.cleanup()
    assert not [t for t in server.titles().values() if t.startswith(CREATED_PREFIX)]
    assert user.created == set()  # the 404 for the one never created is not an error


def test_a_lost_connection_is_reported_and_the_next_task_reconnects(server: FakeServer) -> None:
    reports: Reports = []
    user = make_user(reports)
    assert user.connect()
    first = user.client
    assert first is not None
    first.closed.set()  # the server went away
    user.resubscribe_by_author()
    names = [name for name, *_ in reports]
    assert names[2:] == [
        "connect",
        "connect",
        "books.all",
        "books.byAuthorEmail",
        "unsub books.byAuthorEmail",
    ]
    [(name, exc)] = failures(reports)
    assert name == "connect" and isinstance(exc, ConnectionError)
    assert user.client is not None and user.client is not first


def test_a_failed_connect_is_reported_and_retried(server: FakeServer) -> None:
    reports: Reports = []
    user = make_user(reports)
    server.fail_next["connect"] = ConnectionRefusedError(111, "Connection refused")
    assert not user.connect()
    user.rename_book()  # reconnects first
    assert [name for name, *_ in reports] == [
        "connect",
        "connect",
        "books.all",
        "books.rename",
        "books.rename",
    ]
    assert [name for name, _ in failures(reports)] == ["connect"]


def test_client_violations_fail_the_request_that_saw_them(server: FakeServer) -> None:
    reports: Reports = []
    user = make_user(reports)
    assert user.connect()
    assert user.client is not None
    user.client.violations.append("duplicate added bookstore.book/lathe")
    user.resubscribe_by_author()
    [(name, exc)] = failures(reports)
    assert name == "books.byAuthorEmail" and "duplicate added" in str(exc)
    user.resubscribe_by_author()
    assert len(failures(reports)) == 1  # reported once


def test_stamped_renames_are_reported_as_commit_to_client_by_every_subscriber(
    server: FakeServer,
) -> None:
    """One user renames; it and a second, listening user each report the stamped change
    (type LIVE) once; the rename back carries no stamp and is not reported."""
    live: list[tuple[str, str, float, int]] = []

    def live_report(kind: str, name: str, ms: float, size: int, exc: BaseException | None) -> None:
        assert exc is None
        live.append((kind, name, ms, size))

    reports: Reports = []
    writer = BookstoreScenario(
        "http://127.0.0.1:8000", sockjs=False, report=lambda *a: reports.append(a),
        rng=random.Random(3), live_report=live_report,
    )  # fmt: skip
    listener = BookstoreScenario(
        "http://127.0.0.1:8000", sockjs=False, report=lambda *a: reports.append(a),
        live_report=live_report, keep_received=False,
    )  # fmt: skip
    assert writer.connect() and listener.connect()
    assert server.clients[-1].keep_received is False
    writer.rename_book()
    assert failures(reports) == []
    assert [(kind, name) for kind, name, _, _ in live] == [("LIVE", "commit-to-client")] * 2
    assert all(0 <= ms < 60_000 and size > 0 for _, _, ms, size in live)
    assert not any("@" in t for t in server.titles().values())  # renamed back
