"""The demo page (``example/demo``, served at ``/``) in a real headless Chromium, over
SockJS's WebSocket transport, against real relays on a real PostgreSQL.

What a person would see, checked in real time (explicit waits on the DOM, never a
virtual time budget): every book's title listed as text and kept live; a rename made in
a second window appearing in the first; a book created from the page showing at once,
before the server's answer, and keeping its id when the server confirms; the connection
indicator going to "reconnecting" with the next retry time when the relay goes away, and
back to connected (resumed or new session, as the wire says) with the list right when it
returns; login as ``reader`` with Meteor's own accounts client, chat and presence; the
page as ``make run`` prints and serves it; and through ``make cluster`` (HAProxy round
robin, no stickiness) a session that resumes on another relay when its relay is stopped.
Screenshots are saved under the test's directory and decoded: they must not be blank
(``check_screenshot``, itself checked against a pixel-by-pixel model at the end).

A second, independent view of the server is the project's Python DDP client
(``relay.client.DDPClient``): what the page must show is read from it, never hard-coded.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from devstack.cluster import Cluster, RelayNode
from devstack.launch import ROOT
from devstack.processes import (
    free_port,
    http_status,
    log_tail,
    spawn,
    stop_process_group,
    wait_until_ready,
)
from relay.client import DDPClient
from tests.e2e.browser import (
    Browser,
    ScreenshotStats,
    check_screenshot,
    open_browser,
    screenshot_stats,
    wait_until,
)
from tests.fixtures.postgres import require_pg_bin
from tests.fixtures.relays import RelayStacks, manage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BOOKS = "bookstore.book"
#: Generous for a loaded 2-core machine: the page's first load includes a 340 kB bundle.
LOAD_TIMEOUT = 60
#: How long a change may take to reach another window.
LIVE_TIMEOUT = 30
READER_PASSWORD = "bookworm-2026"  # seed_demo's default (DEMO_READER_PASSWORD)


def server_books(ws_url: str) -> dict[str, dict[str, Any]]:
    """The books as a fresh DDP session of the Python client sees them."""
    client = DDPClient(ws_url, timeout=20)
    try:
        client.connect()
        client.subscribe("books.all")
        return {k: dict(v) for k, v in client.collections[BOOKS].items()}
    finally:
        client.close()


def page_books(browser: Browser) -> dict[str, dict[str, str]]:
    """``id -> {title, pending}`` of the page's list, as rendered (text, not Minimongo)."""
    rows = browser.js(
        "return Array.from(document.querySelectorAll('#books > li')).map(function (li) {"
        "  return [li.dataset.id, li.querySelector('.title').textContent,"
        "          li.dataset.pending || ''];"
        "});"
    )
    return {row[0]: {"title": row[1], "pending": row[2]} for row in rows}


def text_of(browser: Browser, element_id: str) -> str:
    return str(browser.js("return document.getElementById(arguments[0]).textContent;", element_id))


def data_of(browser: Browser, element_id: str) -> dict[str, str]:
    """The ``data-*`` attributes of the element ``element_id``."""
    return dict(
        browser.js(
            "return Object.assign({}, document.getElementById(arguments[0]).dataset);", element_id
        )
    )


def click_book(browser: Browser, book_id: str) -> None:
    """Click the book's row, as a person picks a book (for the rename form and its chat)."""
    browser.driver.find_element("css selector", f'#books > li[data-id="{book_id}"]').click()


def fill_and_submit(browser: Browser, form: str, **fields: str) -> None:
    """Type ``fields`` (element id -> text; what was there is cleared) and press the
    ``form``'s submit button."""
    for element_id, text in fields.items():
        element = browser.driver.find_element("id", element_id)
        element.clear()
        element.send_keys(text)
    browser.driver.find_element("css selector", f"#{form} button[type=submit]").click()


def titles_match(browser: Browser, expected: dict[str, str]) -> bool:
    shown = page_books(browser)
    return {k: v["title"] for k, v in shown.items()} == expected


def status(browser: Browser) -> tuple[str, str]:
    """``(data-state, text)`` of the connection indicator."""
    state, text = browser.js(
        "var s = document.getElementById('status'); return [s.dataset.state, s.textContent];"
    )
    return str(state), str(text)


def open_page(browser: Browser, url: str, books: dict[str, str], query: str = "") -> None:
    """Load the page at ``url`` and wait until it is connected and lists exactly ``books``."""
    browser.open(url + "/" + query)
    browser.wait(lambda d: status(browser)[0] == "connected", LOAD_TIMEOUT, "connected")
    browser.wait(
        lambda d: titles_match(browser, books), LOAD_TIMEOUT, f"the list of {len(books)} books"
    )


def wait_connected_and(browser: Browser, expected: dict[str, str], timeout: float) -> None:
    browser.wait(
        lambda d: status(browser)[0] == "connected" and titles_match(browser, expected),
        timeout,
        f"connected with {expected}",
    )


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder


def test_every_book_is_listed_and_a_rename_in_one_window_shows_in_the_other(
    relay_stack: RelayStacks, shots: Path
) -> None:
    relay = relay_stack(workers=2).relay
    books = {k: v["title"] for k, v in server_books(relay.ws_url).items()}
    assert len(books) >= 10, books  # the seeded demo
    with open_browser(shots, "first") as first, open_browser(shots, "second") as second:
        open_page(first, relay.url, books)
        # The SockJS transport whitelist of the page's URL (for HTTP fallbacks): the forced
        # reconnect it makes must leave the page as right as the first.
        open_page(second, relay.url, books, "?transports=websocket")
        # The text a person reads, not only the DOM: a decoded screenshot with ink in it.
        check_screenshot(first.screenshot("list"))
        body = first.js("return document.body.innerText;")
        assert all(title in body for title in books.values()), body
        for browser in (first, second):
            assert data_of(browser, "transport")["transport"] == "websocket"

        # Rename in the second window, the way a person does: pick, type, submit.
        book_id = sorted(books)[3]
        renamed = f"Renamed in another window {time.monotonic_ns()}"
        click_book(second, book_id)
        assert second.js("return document.getElementById('rename-book').value;") == book_id
        fill_and_submit(second, "rename-form", **{"rename-title": renamed})
        expected = {**books, book_id: renamed}
        first.wait(lambda d: titles_match(first, expected), LIVE_TIMEOUT, "the rename")
        second.wait(
            lambda d: text_of(second, "rename-result") == f"Renamed to “{renamed}”.",
            LIVE_TIMEOUT,
            "the rename's confirmation",
        )
        assert server_books(relay.ws_url)[book_id]["title"] == renamed

        # A rename the server refuses: the stub's guess shows, then the server's "no" and
        # the title it kept.
        fill_and_submit(second, "rename-form", **{"rename-title": "   "})
        second.wait(
            lambda d: text_of(second, "rename-result") == "Not renamed: Title must not be empty",
            LIVE_TIMEOUT,
            "the refused rename",
        )
        second.wait(lambda d: titles_match(second, expected), LIVE_TIMEOUT, "the kept title")
        assert data_of(second, "rename-result")["kind"] == "error"

        # A change made by another client entirely (Python, over plain WebSocket) too.
        outside = f"Renamed from Python {time.monotonic_ns()}"
        client = DDPClient(relay.ws_url)
        try:
            client.connect()
            client.call("books.rename", book_id, outside)
        finally:
            client.close()
        expected[book_id] = outside
        first.wait(lambda d: titles_match(first, expected), LIVE_TIMEOUT, outside)
        second.wait(lambda d: titles_match(second, expected), LIVE_TIMEOUT, outside)
        check_screenshot(second.screenshot("renamed"))
        for browser in (first, second):  # no script error, no failed request
            assert [line for line in browser.console() if line.startswith("SEVERE")] == []


#: Installed in the page before the create: when the new book's element first appears
#: (and how), and when the method's `result` and `updated` arrive on the wire.
TIMELINE_JS = """
var title = arguments[0];
var seen = window.__timeline = {title: title};
var stream = Meteor.connection._stream;
new MutationObserver(function () {
  if (seen.appearedAt) return;
  var rows = document.querySelectorAll('#books > li');
  for (var i = 0; i < rows.length; i++) {
    if (rows[i].querySelector('.title').textContent === title) {
      seen.appearedAt = performance.now();
      seen.firstId = rows[i].dataset.id;
      seen.firstPending = rows[i].dataset.pending;
      seen.resultBeforeAppearing = Boolean(seen.resultAt);
      return;
    }
  }
}).observe(document.getElementById('books'), {childList: true, subtree: true,
                                               characterData: true, attributes: true});
var send = stream.send;
stream.send = function (raw) {
  var msg = JSON.parse(raw);
  if (msg.msg === 'method' && msg.method === 'books.create') {
    seen.methodId = msg.id;
    seen.sentAt = performance.now();
    seen.randomSeed = msg.randomSeed;
  }
  return send.apply(this, arguments);
};
stream.on('message', function (raw) {
  var msg = JSON.parse(raw);
  if (msg.msg === 'result' && msg.id === seen.methodId) {
    seen.resultAt = performance.now();
    seen.result = msg.result;
  }
  if (msg.msg === 'updated' && (msg.methods || []).indexOf(seen.methodId) >= 0) {
    seen.updatedAt = performance.now();
  }
});
"""


def test_a_created_book_shows_at_once_and_keeps_its_id(
    relay_stack: RelayStacks, shots: Path
) -> None:
    relay = relay_stack(workers=2).relay
    books = {k: v["title"] for k, v in server_books(relay.ws_url).items()}
    title = f"Written in the browser {time.monotonic_ns()}"
    with open_browser(shots, "creator") as creator, open_browser(shots, "watcher") as watcher:
        open_page(creator, relay.url, books)
        open_page(watcher, relay.url, books)
        creator.js(TIMELINE_JS, title)
        fill_and_submit(creator, "create-form", **{"create-title": title, "create-price": "12.5"})
        server_id = creator.wait(
            lambda d: data_of(creator, "create-result").get("serverId"),
            LIVE_TIMEOUT,
            "the server's answer to books.create",
        )
        timeline = creator.js("return window.__timeline;")
        stub_id = data_of(creator, "create-result")["stubId"]
        # The stub's guess was on screen before the server had said anything, marked as
        # not yet confirmed, under the id the server then returned.
        assert timeline.get("appearedAt") is not None, timeline
        assert timeline["resultBeforeAppearing"] is False, timeline
        assert timeline["appearedAt"] < timeline["resultAt"], timeline
        assert timeline["firstPending"] == "creating", timeline
        assert timeline["randomSeed"], timeline  # what lets both sides draw the same id
        assert timeline["firstId"] == stub_id == server_id == timeline["result"], timeline
        # Confirmed: the same element id, no longer pending, and the server's price text.
        creator.wait(
            lambda d: page_books(creator).get(server_id) == {"title": title, "pending": ""},
            LIVE_TIMEOUT,
            "the confirmed book",
        )
        assert server_books(relay.ws_url)[server_id]["price"] == "12.50"
        watcher.wait(
            lambda d: titles_match(watcher, {**books, server_id: title}),
            LIVE_TIMEOUT,
            "the new book in the other window",
        )
        check_screenshot(creator.screenshot("created"))

        # A create the server refuses (a blank title): the guess goes away again.
        fill_and_submit(creator, "create-form", **{"create-title": "   "})
        creator.wait(
            lambda d: text_of(creator, "create-result").startswith("Not added: "),
            LIVE_TIMEOUT,
            "the refused create",
        )
        assert text_of(creator, "create-result") == "Not added: Title must not be empty"
        assert not [row for row in page_books(creator).values() if row["pending"]]
        creator.wait(
            lambda d: titles_match(creator, {**books, server_id: title}),
            LIVE_TIMEOUT,
            "the list without the refused book",
        )


@pytest.mark.parametrize(
    ("resume_window", "kind"),
    [
        # The relay parks the session on SIGTERM; the restarted relay (same coordinator
        # file, same database) gives it back: the page keeps its documents, gets the diff.
        ("300", "resumed"),
        # Resuming off: a new session, and Meteor's full resync of every collection.
        ("0", "new"),
    ],
)
def test_the_indicator_shows_reconnecting_and_the_list_is_right_after_a_relay_restart(
    relay_stack: RelayStacks, shots: Path, resume_window: str, kind: str
) -> None:
    stack = relay_stack(workers=1, env={"RELAY_RESUME_WINDOW": resume_window})
    relay = stack.relay
    books = {k: v["title"] for k, v in server_books(relay.ws_url).items()}
    with open_browser(shots, "page") as page:
        open_page(page, relay.url, books)
        first_session = data_of(page, "session")["session"]
        assert first_session

        relay.stop()
        # Meteor's client retries at once, then waits: the page says when it tries next.
        page.wait(lambda d: status(page)[0] == "waiting", LIVE_TIMEOUT, "the reconnect countdown")
        text = status(page)[1]
        assert re.fullmatch(r"reconnecting in \d+ s \(attempt \d+\)", text), text
        check_screenshot(page.screenshot("reconnecting"))

        # While no relay runs, the data changes behind the page's back.
        book_id = sorted(books)[0]
        renamed = f"Renamed while the relay was down {time.monotonic_ns()}"
        manage(
            stack.database_url,
            "shell",
            "-c",
            "from bookstore.models import Book; "
            f"Book.objects.filter(pk={book_id!r}).update(title={renamed!r})",
        )

        relay.start()
        # Meteor's backoff may wait ~25 s before its next try on a slow restart.
        expected = {**books, book_id: renamed}
        wait_connected_and(page, expected, 90)
        session = data_of(page, "session")
        # The page tells resumed from new exactly as the wire does: the same session id.
        assert session["connects"] == "2", session
        assert session["kind"] == kind, session
        assert (session["session"] == first_session) == (kind == "resumed"), session
        assert session["session"] in text_of(page, "session"), session
        assert status(page) == ("connected", "connected")
        check_screenshot(page.screenshot("reconnected"))


def test_reader_logs_in_chats_and_is_seen_present(relay_stack: RelayStacks, shots: Path) -> None:
    relay = relay_stack(workers=2).relay
    books = {k: v["title"] for k, v in server_books(relay.ws_url).items()}
    book_id = sorted(books)[1]
    with open_browser(shots, "reader") as reader, open_browser(shots, "guest") as guest:
        for browser in (reader, guest):
            open_page(browser, relay.url, books)
            click_book(browser, book_id)
        # A guest may read the chat but not post to it.
        fill_and_submit(guest, "chat-form", **{"chat-text": "hello?"})
        guest.wait(
            lambda d: text_of(guest, "chat-result") == "Log in to chat.",
            LIVE_TIMEOUT,
            "the guest's refusal",
        )
        # A wrong password is refused, and says so.
        fill_and_submit(reader, "login-form", **{"login-password": "not the password"})
        reader.wait(
            lambda d: text_of(reader, "login-result").startswith("Login failed: "),
            LIVE_TIMEOUT,
            "the refused login",
        )

        fill_and_submit(reader, "login-form", **{"login-password": READER_PASSWORD})
        reader.wait(
            lambda d: text_of(reader, "user") == "Logged in as reader.", LIVE_TIMEOUT, "the login"
        )
        user_id = data_of(reader, "user")["userId"]
        assert user_id

        message = f"Who else is reading this? {time.monotonic_ns()}"
        fill_and_submit(reader, "chat-form", **{"chat-text": message})
        reader.wait(lambda d: f"you: {message}" in text_of(reader, "chat"), LIVE_TIMEOUT, "chat")
        guest.wait(
            lambda d: f"user {user_id}: {message}" in text_of(guest, "chat"),
            LIVE_TIMEOUT,
            "the reader's message in the guest's window",
        )
        guest.wait(
            lambda d: text_of(guest, "presence") == f"user {user_id}, 1 anonymous",
            LIVE_TIMEOUT,
            "the reader and the guest present",
        )
        reader.wait(
            lambda d: text_of(reader, "presence") == "you, 1 anonymous",
            LIVE_TIMEOUT,
            "the reader's view of who is here",
        )
        check_screenshot(reader.screenshot("chat"))


def test_make_run_prints_the_page_first_and_serves_it(tmp_path: Path, shots: Path) -> None:
    """``make run`` as a newcomer meets it: the first URL it prints is the page, and the
    page there lists the seeded books (its bundles found by collectstatic's finder)."""
    require_pg_bin()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RELAY_ZOOKEEPER")}
    env.update(PORT=str(port), RELAY_STATE_DIR=str(tmp_path / "state"))
    log = tmp_path / "devserver.log"
    proc = spawn([sys.executable, "-m", "devstack.devserver"], log, env=env, cwd=ROOT)
    try:
        wait_until_ready(
            proc,
            lambda: (
                "Press Ctrl-C" in log.read_text(errors="replace")
                and http_status(f"http://127.0.0.1:{port}/readyz") == 200
            ),
            120,
            name="make run",
            log_path=log,
            error=AssertionError,
            interval=0.5,
        )
        urls = re.findall(r"(?:https?|wss?)://\S+", log.read_text(errors="replace"))
        assert urls[0] == f"http://127.0.0.1:{port}/", urls
        books = {k: v["title"] for k, v in server_books(f"ws://127.0.0.1:{port}/websocket").items()}
        with open_browser(shots, "make-run") as page:
            open_page(page, urls[0].rstrip("/"), books)
            check_screenshot(page.screenshot("list"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log_tail(log)
    finally:
        stop_process_group(proc, 60)


def open_sessions(relay: RelayNode) -> float:
    """``ddp_relay_sessions`` on ``relay``'s internal port (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(relay.internal_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    found = re.search(r"^ddp_relay_sessions(?:\{[^}]*\})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_through_the_round_robin_cluster_a_stopped_relay_s_session_resumes(
    cluster: Cluster, shots: Path
) -> None:
    """``make cluster``: the page from the web tier behind HAProxy, DDP to three relays
    round robin; the relay holding the page's session is stopped (SIGTERM, as ``docker
    stop``), and the page's session resumes on another relay with the list right."""
    books = {k: v["title"] for k, v in server_books(cluster.ws_url).items()}
    with open_browser(shots, "cluster") as page:
        open_page(page, cluster.url, books)
        first_session = data_of(page, "session")["session"]
        # The Python client above has left: the one relay with a session holds the page's.
        holders = wait_until(
            lambda: [i for i, r in enumerate(cluster.relays) if open_sessions(r) >= 1],
            LIVE_TIMEOUT,
            "the relay holding the page's session",
        )
        assert len(holders) == 1, holders
        victim = holders[0]
        cluster.restart_relay(victim)

        book_id = sorted(books)[2]
        renamed = f"Renamed after the failover {time.monotonic_ns()}"
        client = DDPClient(cluster.ws_url, timeout=20)
        try:
            client.connect()
            client.call("books.rename", book_id, renamed)
        finally:
            client.close()
        wait_connected_and(page, {**books, book_id: renamed}, 90)
        session = data_of(page, "session")
        assert (session["kind"], session["session"], session["connects"]) == (
            "resumed",
            first_session,
            "2",
        ), session
        check_screenshot(page.screenshot("resumed"))


def test_without_websockets_the_page_works_through_the_round_robin_cluster_while_relays_restart(
    cluster: Cluster, shots: Path
) -> None:
    """``make cluster`` with WebSockets ruled out in the browser (the SockJS client's
    transport whitelist): one window on xhr-streaming, one on xhr-polling, each request
    balanced round robin over three relays with no stickiness. The list is right, a rename
    in either window shows in the other, a create keeps the id its stub drew, and it stays
    so while every relay is restarted in turn (a page whose relay went away reconnects and
    resumes its session)."""
    books = {k: v["title"] for k, v in server_books(cluster.ws_url).items()}
    with (
        open_browser(shots, "streaming") as streaming,
        open_browser(shots, "polling") as polling,
    ):
        open_page(streaming, cluster.url, books, "?transports=xhr-streaming")
        open_page(polling, cluster.url, books, "?transports=xhr-polling")
        assert data_of(streaming, "transport")["transport"] == "xhr-streaming"
        assert data_of(polling, "transport")["transport"] == "xhr-polling"
        check_screenshot(streaming.screenshot("http-fallback"))

        expected = dict(books)
        ids = sorted(books)
        for round_, writer in enumerate([polling, streaming]):
            renamed = f"Renamed over HTTP {round_} {time.monotonic_ns()}"
            click_book(writer, ids[round_])
            fill_and_submit(writer, "rename-form", **{"rename-title": renamed})
            expected[ids[round_]] = renamed
            for page in (streaming, polling):
                wait_connected_and(page, expected, LIVE_TIMEOUT)

        # A create over xhr-polling: the stub's guess at once, the server's id the same.
        title = f"Written without WebSockets {time.monotonic_ns()}"
        fill_and_submit(polling, "create-form", **{"create-title": title})
        server_id = polling.wait(
            lambda d: data_of(polling, "create-result").get("serverId"),
            LIVE_TIMEOUT,
            "the server's answer to books.create",
        )
        assert data_of(polling, "create-result")["stubId"] == server_id
        expected[server_id] = title
        for page in (streaming, polling):
            wait_connected_and(page, expected, LIVE_TIMEOUT)

        for victim in range(len(cluster.relays)):
            cluster.restart_relay(victim)
            renamed = f"Renamed after relay {victim} restarted {time.monotonic_ns()}"
            client = DDPClient(cluster.ws_url, timeout=20)
            try:
                client.connect()
                client.call("books.rename", ids[2 + victim], renamed)
            finally:
                client.close()
            expected[ids[2 + victim]] = renamed
            for page in (streaming, polling):
                wait_connected_and(page, expected, 90)
        for page, transport in ((streaming, "xhr-streaming"), (polling, "xhr-polling")):
            assert data_of(page, "transport")["transport"] == transport
            session = data_of(page, "session")
            # A page whose relay went away reconnected and got its session back.
            assert session["connects"] == "1" or session["kind"] == "resumed", session
        assert server_books(cluster.ws_url)[ids[4]]["title"] == expected[ids[4]]
        check_screenshot(polling.screenshot("http-fallback-after-restarts"))
        for page in (streaming, polling):
            assert [line for line in page.console() if line.startswith("SEVERE")] == []


_PIXEL = st.tuples(*[st.integers(0, 255)] * 3)


@given(
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    palette=st.lists(st.one_of(st.just((255, 255, 255)), _PIXEL), min_size=1, max_size=6),
    data=st.data(),
)
def test_screenshot_stats_count_like_the_brute_force_model(
    size: tuple[int, int], palette: list[tuple[int, int, int]], data: st.DataObject
) -> None:
    """What ``check_screenshot`` decides on, against counting the pixels one by one."""
    width, height = size
    pixels = data.draw(st.lists(st.sampled_from(palette), min_size=width * height,
                                max_size=width * height))  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shot.png"
        image = Image.new("RGB", size)
        image.putdata(pixels)
        image.save(path)
        stats = screenshot_stats(path)
    ink = sum(1 for p in pixels if sum(abs(c - 255) for c in p) > 60)
    assert stats == ScreenshotStats(width, height, len(set(pixels)), ink)


def test_a_blank_or_flat_screenshot_fails_the_check(tmp_path: Path) -> None:
    for name, colour in (("white", (255, 255, 255)), ("black", (0, 0, 0))):
        path = tmp_path / f"{name}.png"
        Image.new("RGB", (300, 200), colour).save(path)
        with pytest.raises(AssertionError, match="looks blank"):
            check_screenshot(path)
