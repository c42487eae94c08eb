"""Third-party npm DDP clients, and the real Meteor client, against a running relay.

Each case runs ``node tests/e2e/node/scenario.js <client> <url> <transport>`` once: the
scenario (connect, books.all, books.create with a randomSeed, rename, errors, unsub,
books.byAuthorEmail, an unknown publication, cleanup) is the same for every client; it
prints one JSON report and this module makes the assertions. The clients:

* ``ddp`` (oortcloud node-ddp-client 0.12.1) on ``/websocket`` and ``/sockjs/websocket``;
* ``simpleddp`` 2.2.4 and ``ddpjs`` (ddp.js 2.2.1) on ``/websocket``;
* ``meteor``: npm ``meteor-client-side`` 1.3.5, the Meteor 1.3 client itself, under jsdom
  over SockJS. Its own stubs choose the randomSeed; the server must return the ids the
  stubs drew (latency compensation with matching ids).

Every run creates books and removes them again, and checks at the end that ``books.all``
is back to what it was at the start; a run that fails half-way still removes what it made.
Needs ``node`` and ``npm ci`` in tests/e2e/node (``make deps``): without them the tests fail
in CI / under ``make test`` (``CI`` or ``RELAY_REQUIRE_SERVICES=1``) and are skipped elsewhere.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.protocol.alea import RandomStream
from tests.e2e.node_runs import run_report
from tests.fixtures.relays import RelayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.node]

#: The scenario's own hard limit; the subprocess gets a little more on top.
SCENARIO_TIMEOUT_MS = 25_000

BOOKS = "bookstore.book"
BOOK_FIELDS = {
    "_id",
    "title",
    "authorId",
    "published",
    "price",
    "tags",
    "updatedAt",
    "details",
    "ratings",
}
AUTHOR_FIELDS = {"_id", "name", "email"}
UNKNOWN_METHOD = "e2e.noSuchMethod"
UNKNOWN_PUBLICATION = "e2e.noSuchPublication"
#: What books.fail raises (example/bookstore/ddp.py).
FAIL_ERROR = "not-allowed"
#: sockjs-client's /<server>/<session>/websocket: 3 digits, 8 of [a-z0-9_].
SOCKJS_WEBSOCKET = re.compile(r"^ws://127\.0\.0\.1:\d+/sockjs/\d{3}/[0-9a-z_]{8}/websocket$")


@dataclass(frozen=True)
class Case:
    client: str
    transport: str
    #: The harness picks books.create's randomSeed (False: the client's stub does).
    seeded: bool
    #: The client decodes EJSON ($date -> Date); ddp.js hands over plain JSON.
    ejson: bool

    @property
    def id(self) -> str:
        return f"{self.client}-{self.transport}"


CASES = [
    Case("ddp", "raw", seeded=True, ejson=True),
    Case("ddp", "sockjs-raw", seeded=True, ejson=True),
    Case("simpleddp", "raw", seeded=True, ejson=True),
    Case("ddpjs", "raw", seeded=True, ejson=False),
    Case("meteor", "sockjs", seeded=False, ejson=True),
]


@pytest.fixture(scope="session")
def node_clients(node_toolchain: Path) -> Path:
    """The scenario script, once node and the npm clients are known to be there."""
    return node_toolchain / "scenario.js"


def run_scenario(script: Path, case: Case, relay: RelayProcess, seed: str) -> dict[str, Any]:
    """Run one scenario; its JSON report, or a test failure with everything it printed."""
    env = {
        **os.environ,
        "SCENARIO_SEED": seed,
        "SCENARIO_TIMEOUT_MS": str(SCENARIO_TIMEOUT_MS),
    }
    report, proc = run_report(
        [str(script), case.client, relay.url, case.transport],
        env,
        case.id,
        SCENARIO_TIMEOUT_MS / 1000 + 10,
    )
    if not report.get("ok") or proc.returncode != 0:
        pytest.fail(
            f"{case.id}: scenario failed at {report.get('stage')!r} (exit {proc.returncode}): "
            f"{json.dumps(report.get('error'))}\n"
            f"report:\n{json.dumps(report, indent=1)[-12000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return report


def first_id(seed: str) -> str:
    """The first id Meteor draws for collection bookstore.book in a method with ``seed``."""
    return RandomStream(seed).sequence(f"/collection/{BOOKS}").id()


def date_value(value: Any, case: Case) -> str:
    """An ISO timestamp from a date as the client presented it (Date, or raw $date)."""
    if case.ejson:
        assert isinstance(value, dict) and value.get("$js") == "Date", value
        return str(value["iso"])
    assert isinstance(value, dict) and set(value) == {"$date"}, value
    ms = value["$date"]
    assert isinstance(ms, int), value
    stamp = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def by_id(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ids = [d["_id"] for d in docs]
    assert len(ids) == len(set(ids)), f"a document appears twice on the client: {ids}"
    return {d["_id"]: d for d in docs}


def check_error(error: dict[str, Any], code: Any, reason: str | None = None) -> None:
    """A DDP error as Meteor shapes it (what clients rebuild: error, reason; message)."""
    assert error.get("error") == code, error
    if reason is not None:
        assert error.get("reason") == reason, error
    assert isinstance(error.get("reason"), str), error
    assert error.get("message") == f"{error['reason']} [{code}]", error
    assert error.get("errorType") == "Meteor.Error", error


def check_seeded_data(report: dict[str, Any], case: Case) -> None:
    """books.all delivered the seeded demo data, EJSON-typed, each document once."""
    from bookstore.management.commands import seed_demo

    authors = by_id(report["all"]["authors"])
    books = by_id(report["all"]["books"])
    assert {a["id"] for a in seed_demo.AUTHORS} <= set(authors)
    assert {b["id"] for b in seed_demo.BOOKS} <= set(books)
    assert len(seed_demo.AUTHORS) == 3 and len(seed_demo.BOOKS) == 10
    for author in seed_demo.AUTHORS:
        doc = authors[author["id"]]
        assert set(doc) == AUTHOR_FIELDS, doc
        assert doc["email"] == author["email"]
    for book in seed_demo.BOOKS:
        doc = books[book["id"]]
        assert set(doc) == BOOK_FIELDS, doc
        assert isinstance(doc["title"], str)
        assert doc["authorId"] in authors
        assert doc["price"] == str(book["price"]), doc
        assert doc["tags"] == sorted(book["tags"]), doc  # tag names, by code point
        midnight_utc = f"{book['published'].isoformat()}T00:00:00.000Z"
        assert date_value(doc["published"], case) == midnight_utc, doc
        assert date_value(doc["updatedAt"], case).endswith("Z")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_node_client_scenario(node_clients: Path, relay_server: RelayProcess, case: Case) -> None:
    seed = f"e2e-{case.id}-{secrets.token_hex(4)}"
    report = run_scenario(node_clients, case, relay_server, seed)

    assert report["ejson"] is case.ejson
    assert isinstance(report["connect"]["session"], str) and report["connect"]["session"]
    if case.transport == "raw":
        assert report["endpoint"] == relay_server.ws_url
    elif case.transport == "sockjs-raw":
        assert report["endpoint"] == relay_server.url.replace("http", "ws", 1) + "/sockjs/websocket"

    check_seeded_data(report, case)
    initial_books = sorted(b["_id"] for b in report["all"]["books"])
    initial_authors = sorted(a["_id"] for a in report["all"]["authors"])

    # books.create: the id comes from the method's randomSeed, stream /collection/bookstore.book.
    created = report["create"]
    if case.seeded:
        assert created["seed"] == seed
        assert created["id"] == first_id(seed)
    else:
        # The Meteor client drew a seed for its stub; the server's id equals the stub's.
        assert re.fullmatch(r"[0-9a-f]{20}", created["seed"]), created
        assert created["stubId"] == first_id(created["seed"]), created
        assert created["id"] == created["stubId"], created
        assert created["stubDocVisible"] is True, "the stub's insert is visible at once"
    created_id = created["id"]
    assert created_id not in initial_books

    check_error(report["fail"]["error"], FAIL_ERROR)
    check_error(report["unknownMethod"]["error"], 404, f"Method '{UNKNOWN_METHOD}' not found")
    no_pub = f"Subscription '{UNKNOWN_PUBLICATION}' not found"
    check_error(report["unknownSub"]["error"], 404, no_pub)

    # unsub books.all: every published document removed, then a nosub without error.
    assert "error" not in report["unsub"]["nosub"], report["unsub"]
    assert (report["unsub"]["books"], report["unsub"]["authors"]) == (0, 0), report["unsub"]

    # A new subscription sees the committed writes: created + renamed (+ Meteor's insert).
    by_email = report["byEmail"]
    author_id = by_email["authorId"]
    assert [a["_id"] for a in by_email["authors"]] == [author_id]
    expected = {b["_id"] for b in report["all"]["books"] if b["authorId"] == author_id}
    expected.add(created_id)
    if case.client == "meteor":
        expected.add(report["insert"]["id"])
    books = by_id(by_email["books"])
    assert set(books) == expected
    mine = books[created_id]
    assert mine["title"] == report["rename"]["title"]
    assert set(mine) == BOOK_FIELDS
    assert (mine["authorId"], mine["price"]) == (author_id, "12.50")
    assert mine["tags"] == sorted(["e2e", case.client])

    if case.client == "meteor":
        check_meteor(report, books)

    # Cleanup happened and the data is back to where the run found it.
    assert "lateCleanups" not in report
    assert report["final"] == {"bookIds": initial_books, "authorIds": initial_authors}

    # Wire: every method got one result and one `updated`; nothing odd arrived.
    for m in report["methods"]:
        assert (m["results"], m["updated"]) == (1, 1), m
    assert report["errors"] == []
    assert report["unexpected"] == []
    assert report["dataProblems"] == []
    check_client_warnings(report, case)


def check_client_warnings(report: dict[str, Any], case: Case) -> None:
    """No unhandled rejections, but the one simpleddp always makes on a nosub with error."""
    warnings = report["clientWarnings"]
    if case.client == "simpleddp":
        # Its subscribe() starts the sub in a constructor and drops that promise.
        expected = {"unhandledRejection": report["unknownSub"]["error"]}
        warnings = [w for w in warnings if w != expected]
    assert warnings == []


def check_meteor(report: dict[str, Any], books: dict[str, dict[str, Any]]) -> None:
    """The real Meteor client: SockJS transport, mutator insert ids, a quiet console."""
    inserted = report["insert"]
    # Books.insert -> /bookstore.book/insert; Meteor's stub drew the id from the seed sent.
    assert re.fullmatch(r"[0-9a-f]{20}", inserted["seed"]), inserted
    assert inserted["id"] == first_id(inserted["seed"]), inserted
    doc = books[inserted["id"]]
    assert (doc["title"], doc["price"]) == (inserted["params"]["title"], "3.00"), doc
    assert doc["tags"] == ["e2e", "mutator"], doc  # written by the mutator
    assert report["status"] == {"status": "connected", "connected": True, "retryCount": 0}
    seen = report["transportSeen"]
    assert seen["protocol"] == "websocket", seen
    assert len(seen["webSockets"]) == 1 and SOCKJS_WEBSOCKET.match(seen["webSockets"][0]), seen
    assert any(x.startswith("GET ") and "/sockjs/info" in x for x in seen["xhr"]), seen
    assert report["pageErrors"] == []
    assert report["console"] == []
