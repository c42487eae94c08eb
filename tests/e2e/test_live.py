"""Live updates end to end: commits reach subscribed clients through the change stream.

Real gunicorn relays, real PostgreSQL (triggers, changelog, NOTIFY), the project's DDP
client. Writes come from other DDP clients (methods) and from plain SQL, which the relay
never sees except through the stream.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any

import psycopg2
import pytest
import websocket

from relay.client import DDPClient
from tests.fixtures.postgres import kill_listeners
from tests.fixtures.relays import RelayStack, RelayStacks

pytestmark = pytest.mark.e2e


def connect(url: str, **kwargs: Any) -> DDPClient:
    client = DDPClient(url, **kwargs)
    client.connect()
    return client


def book_titles(client: DDPClient) -> dict[str, str]:
    return {k: v["title"] for k, v in client.docs("bookstore.book").items()}


def test_method_writes_reach_other_sessions(relay_server: Any) -> None:
    watcher, writer = connect(relay_server.ws_url), connect(relay_server.url, sockjs=True)
    try:
        watcher.subscribe("books.all")
        writer.subscribe("books.byAuthorEmail", "nk.jemisin@example.org")
        new_id = writer.call(
            "books.create",
            {"title": "Live", "authorId": "jemisin", "price": "1.00", "tags": []},
        )
        # the writer's own subscription has it before `updated` (the write fence)
        assert new_id in writer.docs("bookstore.book")
        watcher.wait_for(lambda: new_id in watcher.collections.get("bookstore.book", {}))
        writer.call("books.rename", new_id, "Live 2")
        watcher.wait_for(lambda: watcher.collections["bookstore.book"][new_id]["title"] == "Live 2")
        # moving the book to another author takes it out of the writer's filtered sub
        writer.call("books.setAuthor", new_id, "leguin")
        assert new_id not in writer.docs("bookstore.book")
        watcher.wait_for(
            lambda: watcher.collections["bookstore.book"][new_id]["authorId"] == "leguin"
        )
        writer.call("books.remove", new_id)
        watcher.wait_for(lambda: new_id not in watcher.collections["bookstore.book"])
        assert watcher.violations == [] and writer.violations == []
    finally:
        watcher.close()
        writer.close()


def test_updated_follows_the_methods_own_data_messages(relay_server: Any) -> None:
    client = connect(relay_server.ws_url)
    try:
        client.subscribe("books.all")
        for n in range(20):
            client.call("books.rename", "small-gods", f"Small Gods {n}")
        client.call("books.rename", "small-gods", "Small Gods")
        order: dict[str, list[str]] = {}
        pending_changes: list[str] = []
        for msg in client.received:
            if msg["msg"] == "changed" and msg["id"] == "small-gods":
                pending_changes.append(msg["fields"].get("title", ""))
            elif msg["msg"] == "updated":
                for method_id in msg["methods"]:
                    order[method_id] = list(pending_changes)
        # each rename's `updated` came after the change carrying its title
        for n in range(20):
            assert f"Small Gods {n}" in order[str(n + 1)], order[str(n + 1)]
    finally:
        client.close()


def test_sql_writes_outside_django_are_published(relay_server: Any, e2e_database: str) -> None:
    client = connect(relay_server.ws_url)
    try:
        client.subscribe("books.all")
        with psycopg2.connect(e2e_database) as conn, conn.cursor() as cur:
            cur.execute("UPDATE bookstore_book SET title = 'Raw SQL' WHERE id = 'lathe'")
        conn.close()
        client.wait_for(lambda: client.collections["bookstore.book"]["lathe"]["title"] == "Raw SQL")
        with psycopg2.connect(e2e_database) as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE bookstore_book SET title = 'The Lathe of Heaven' WHERE id = 'lathe'"
            )
        conn.close()
        client.wait_for(
            lambda: client.collections["bookstore.book"]["lathe"]["title"] == "The Lathe of Heaven"
        )
    finally:
        client.close()


def test_rolled_back_writes_publish_nothing(relay_server: Any, e2e_database: str) -> None:
    client = connect(relay_server.ws_url)
    try:
        client.subscribe("books.all")
        conn = psycopg2.connect(e2e_database)
        with conn.cursor() as cur:
            cur.execute("UPDATE bookstore_book SET title = 'Never' WHERE id = 'left-hand'")
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("UPDATE bookstore_book SET title = 'Then' WHERE id = 'left-hand'")
        conn.commit()
        client.wait_for(
            lambda: client.collections["bookstore.book"]["left-hand"]["title"] == "Then"
        )
        titles = [
            m["fields"].get("title")
            for m in client.received
            if m["msg"] == "changed" and m["id"] == "left-hand"
        ]
        assert "Never" not in titles
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE bookstore_book SET title = 'The Left Hand of Darkness'"
                " WHERE id = 'left-hand'"
            )
        conn.commit()
        conn.close()
    finally:
        client.close()


def metric(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not want or want in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- a relay of our own, on a PostgreSQL we may break --------------------------------------


@pytest.fixture
def relay_env() -> dict[str, str]:
    """Extra environment for ``own_stack``'s relay (tests override it)."""
    return {}


@pytest.fixture
def own_stack(relay_stack: RelayStacks, relay_env: dict[str, str]) -> RelayStack:
    """One relay of one worker on a PostgreSQL of its own: these tests kill its listener's
    backend and restart the server, which must not hit the session's shared relays."""
    return relay_stack(workers=1, env=relay_env, database="own")


def storm(url: str, rounds: int, tag: str, breaker: Any = None) -> dict[str, str]:
    """Rename every seeded book ``rounds`` times in separate transactions, riding out
    connection loss; return the final titles the database holds."""
    ids = ["earthsea-1", "left-hand", "lathe", "dispossessed", "guards-guards"]
    conn = None
    for n in range(rounds):
        if breaker is not None and n == rounds // 2:
            breaker()
        for book_id in ids:
            for _attempt in range(50):
                try:
                    if conn is None or conn.closed:
                        conn = psycopg2.connect(url)
                    with conn.cursor() as cur:
                        cur.execute(
                            "UPDATE bookstore_book SET title = %s WHERE id = %s",
                            (f"{tag} {book_id} {n}", book_id),
                        )
                    conn.commit()
                    break
                except psycopg2.OperationalError:
                    conn = None
                    time.sleep(0.2)
    assert conn is not None
    with conn.cursor() as cur:
        cur.execute("SELECT id, title FROM bookstore_book")
        final = dict(cur.fetchall())
    conn.close()
    return final


def test_listener_killed_mid_storm_loses_nothing(own_stack: RelayStack) -> None:
    relay, url = own_stack.relay, own_stack.database_url
    client = connect(relay.ws_url)
    try:
        client.subscribe("books.all")

        def kill_listener() -> None:
            assert kill_listeners(url), "no listener backend to kill"

        final = storm(url, 40, "kill", kill_listener)
        client.wait_for(lambda: book_titles(client) == final, timeout=30)
        assert client.violations == []
    finally:
        client.close()


def test_postgres_restart_mid_storm_loses_nothing(own_stack: RelayStack) -> None:
    pg, relay, url = own_stack.postgres, own_stack.relay, own_stack.database_url
    assert pg is not None
    client = connect(relay.ws_url)
    try:
        client.subscribe("books.all")
        final = storm(url, 30, "restart", pg.restart)
        client.wait_for(lambda: book_titles(client) == final, timeout=60)
        assert client.violations == []
    finally:
        client.close()


def test_a_relay_listens_only_to_channels_its_clients_need(own_stack: RelayStack) -> None:
    relay, url = own_stack.relay, own_stack.database_url
    client = connect(relay.ws_url)
    try:
        client.subscribe("authors.all")
        storm(url, 3, "unseen")
        with psycopg2.connect(url) as conn, conn.cursor() as cur:
            cur.execute("UPDATE bookstore_author SET name = 'Ursula Le Guin' WHERE id = 'leguin'")
        conn.close()
        client.wait_for(
            lambda: client.collections["bookstore.author"]["leguin"]["name"] == "Ursula Le Guin",
            timeout=30,
        )
        assert metric(relay.url, "ddp_relay_notifications_total", channel="ddp_bookstore_book") == 0
        assert (
            metric(relay.url, "ddp_relay_notifications_total", channel="ddp_bookstore_author") >= 1
        )
        assert json.dumps(client.docs("bookstore.book")) == "{}"
    finally:
        client.close()


@pytest.mark.parametrize("relay_env", [{"RELAY_SEND_BUFFER_BYTES": "1048576"}])
def test_a_slow_client_is_cut_off_without_slowing_the_others(own_stack: RelayStack) -> None:
    relay, url = own_stack.relay, own_stack.database_url
    # A tiny receive window set before connecting (after it, Linux keeps autotuning).
    slow = websocket.create_connection(
        relay.ws_url, timeout=10, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
    )
    slow.send(json.dumps({"msg": "connect", "version": "1", "support": ["1"]}))
    slow.send(json.dumps({"msg": "sub", "id": "s", "name": "books.all"}))
    fast = connect(relay.ws_url)
    try:
        fast.subscribe("books.all")
        with psycopg2.connect(url) as conn:
            with conn.cursor() as cur:
                # 200 tags of 100 characters on the book, linked in one statement on the
                # through table (its trigger republishes the book once).
                cur.execute(
                    "INSERT INTO bookstore_tag (id, name) SELECT 'slow' || i,"
                    " lpad(i::text, 3, '0') || repeat('x', 97) FROM generate_series(1, 200) i"
                )
                cur.execute(
                    "INSERT INTO bookstore_book_tags (book_id, tag_id)"
                    " SELECT 'lathe', 'slow' || i FROM generate_series(1, 200) i"
                )
            conn.commit()
            for n in range(500):
                with conn.cursor() as cur:
                    # Renaming one of its tags republishes the book (the tag table's
                    # trigger) with a new 20 KB array of names, which every subscriber
                    # gets: spilled payloads, 10 MB in all, more than the kernel's and the
                    # relay's buffers for one client.
                    cur.execute(
                        "UPDATE bookstore_tag SET name = %s WHERE id = %s",
                        (f"n{n:04}" + "y" * 95, f"slow{n % 200 + 1}"),
                    )
                    cur.execute(
                        "UPDATE bookstore_book SET title = %s WHERE id = 'lathe'", (f"slow {n}",)
                    )
                conn.commit()
        conn.close()
        fast.wait_for(
            lambda: fast.docs("bookstore.book")["lathe"]["title"] == "slow 499", timeout=120
        )
        tags = fast.docs("bookstore.book")["lathe"]["tags"]
        assert len(tags) == 201 and len(json.dumps(tags)) > 20_000  # + "science fiction"
        assert "n0499" + "y" * 95 in tags
        assert fast.violations == []
        # the slow reader was closed with a clear reason instead of holding everyone up
        deadline = time.monotonic() + 20
        while metric(relay.url, "ddp_relay_disconnects_total", reason="slow") < 1:
            assert time.monotonic() < deadline, "the slow client was never cut off"
            time.sleep(0.2)
    finally:
        fast.close()
        slow.shutdown()
