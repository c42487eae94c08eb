"""PyPI ``python-ddp`` (module ``DDPClient``, ws4py underneath) against the real relay."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from relay.protocol.alea import RandomStream

pytestmark = pytest.mark.e2e

DDPClient = pytest.importorskip("DDPClient").DDPClient


class Recorder:
    def __init__(self, url: str) -> None:
        self.client = DDPClient(url, auto_reconnect=False)
        self.connected = threading.Event()
        self.docs: dict[str, dict[str, dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self.client.on("connected", self.connected.set)
        self.client.on("added", self._added)
        self.client.on("removed", self._removed)

    def _added(self, collection: str, doc_id: str, fields: dict[str, Any]) -> None:
        with self.lock:
            self.docs.setdefault(collection, {})[doc_id] = fields

    def _removed(self, collection: str, doc_id: str) -> None:
        with self.lock:
            self.docs.get(collection, {}).pop(doc_id, None)

    def call(self, method: str, params: list[Any]) -> tuple[Any, Any]:
        done = threading.Event()
        box: list[Any] = []

        def callback(error: Any, result: Any) -> None:
            box.extend([error, result])
            done.set()

        self.client.call(method, params, callback)
        assert done.wait(10), f"no result for {method}"
        return box[0], box[1]

    def subscribe(self, name: str, params: list[Any]) -> tuple[Any, Any]:
        done = threading.Event()
        box: list[Any] = []

        def callback(error: Any, sub_id: Any) -> None:
            box.extend([error, sub_id])
            done.set()

        self.client.subscribe(name, params, callback)
        assert done.wait(10), f"no ready/nosub for {name}"
        return box[0], box[1]


def test_python_ddp_subscribes_and_calls(relay_server: Any) -> None:
    rec = Recorder(relay_server.ws_url)
    rec.client.connect()
    # ws4py's reader thread may drop its reference to the socket without closing it when
    # the close handshake races our close_connection(): keep one and close it ourselves.
    sock = rec.client.ddpsocket.sock
    try:
        assert rec.connected.wait(10)
        error, _ = rec.subscribe("books.all", [])
        assert error is None
        assert len(rec.docs["bookstore.author"]) == 3
        assert len(rec.docs["bookstore.book"]) >= 10
        book = next(iter(rec.docs["bookstore.book"].values()))
        assert set(book) >= {"title", "authorId", "price", "tags"}

        author_id = next(iter(rec.docs["bookstore.author"]))
        # python-ddp sends no randomSeed: the server draws the id from a random seed.
        error, new_id = rec.call(
            "books.create", [{"title": "Py", "authorId": author_id, "price": "1.50", "tags": []}]
        )
        assert error is None and isinstance(new_id, str) and len(new_id) == 17
        error, _ = rec.call("books.rename", [new_id, "Py 2"])
        assert error is None
        error, _ = rec.call("books.remove", [new_id])
        assert error is None

        error, _ = rec.call("books.fail", [])
        assert error["error"] == "not-allowed"
        error, _ = rec.call("no.such.method", [])
        assert error["error"] == 404 and error["reason"] == "Method 'no.such.method' not found"
        error, _ = rec.subscribe("no.such.pub", [])
        assert error["reason"] == "Subscription 'no.such.pub' not found"
    finally:
        rec.client.close()
        # ws4py closes its socket from its own thread, maybe after the test: close it now.
        rec.client.ddpsocket.close_connection()
        if sock is not None:
            sock.close()


def test_seeded_ids_match_meteor_vectors_over_the_wire(relay_server: Any) -> None:
    from relay.client import DDPClient as OurClient

    client = OurClient(relay_server.ws_url)
    client.connect()
    try:
        client.subscribe("books.all")
        author_id = next(iter(client.docs("bookstore.author")))
        seed = RandomStream(None).seed[0]  # fresh per run, so reruns never collide
        expected = RandomStream(seed).sequence("/collection/bookstore.book").id()
        new_id = client.call(
            "books.create",
            {"title": "Seeded", "authorId": author_id, "price": "2.00", "tags": ["y", "x"]},
            random_seed=seed,
        )
        assert new_id == expected
        # Creating the tags drew from their own stream: the book's id is unchanged, and
        # the book arrives (before `updated`) with its tag names sorted.
        assert client.docs("bookstore.book")[new_id]["tags"] == ["x", "y"]
        client.call("books.remove", new_id)
    finally:
        client.close()
