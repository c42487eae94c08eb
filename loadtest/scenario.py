"""The bookstore load scenario, independent of locust: one simulated DDP user.

``locustfile.py`` wraps :class:`BookstoreScenario` in a locust ``User`` and turns every
``report(...)`` into ``events.request.fire``; this module never imports locust or gevent,
so the pure parts are unit-tested in ``tests/loadtest`` without monkey-patching pytest.

It speaks DDP only through :class:`relay.client.DDPClient` and ``relay.protocol``: there is
no second DDP implementation here. Under locust (gevent monkey-patched) the client's reader
thread is a greenlet, so a blocked call only blocks its own simulated user.

What one user does (the example app, ``example/bookstore/ddp.py``):

* connect (raw WebSocket ``ws://HOST/websocket``, or SockJS when asked) and subscribe
  ``books.all``;
* rename a random book to ``<title> [locust <token>@<sent_ms>]`` and straight back to its
  title (the stamp lets subscribers report commit-to-client latency: ``loadtest/live.py``);
* ``books.create`` with a ``randomSeed`` (the id must be the one ``RandomStream`` draws from
  that seed) then ``books.remove``;
* subscribe ``books.byAuthorEmail`` for a random author, then unsubscribe.

With ``check_live`` (``LOADTEST_CHECK_LIVE=1`` under locust) a completed request also fails
when the local cache does not show its effect yet: the created book must be in the cache
when ``books.create`` completes and gone when ``books.remove`` does (the write fence: DDP's
``updated`` follows the method's data messages), and unsubscribing ``books.byAuthorEmail``
must not remove the author ``books.all`` still publishes. Off by default for now: the relay
does not push live changes yet (no change stream), so every create would fail the check.

Data is left as found: every rename is undone, every created book removed; what a user
stopped mid-way could not undo, :meth:`BookstoreScenario.cleanup` does (locust's
``on_stop``). Renames never compound even when users rename the same book at once: the
original title is the current title with any ``[locust ...]`` suffix cut off.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loadtest.live import LiveObserver, LiveReport, now_ms, stamp
from relay.client import DDPClient, DDPClientError
from relay.protocol.alea import RandomStream, collection_stream_name

logger = logging.getLogger(__name__)

#: Where ``make run`` serves the demo.
DEFAULT_HOST = "http://127.0.0.1:8000"
AUTHORS = "bookstore.author"
BOOKS = "bookstore.book"

#: The request names reported, all with request type ``DDP``.
CONNECT = "connect"
SUB_ALL = "books.all"
RENAME = "books.rename"
CREATE = "books.create"
REMOVE = "books.remove"
SUB_BY_AUTHOR = "books.byAuthorEmail"
UNSUB_BY_AUTHOR = "unsub books.byAuthorEmail"
REQUEST_NAMES = (CONNECT, SUB_ALL, RENAME, CREATE, REMOVE, SUB_BY_AUTHOR, UNSUB_BY_AUTHOR)

#: Renamed titles end in ``RENAME_MARK + token + "]"``.
RENAME_MARK = " [locust "
#: Titles of the books the load test creates (never picked for renames).
CREATED_PREFIX = "locust book "
#: ``Book.title`` max_length in the example app.
TITLE_MAX = 300

#: ``report(name, response_time_ms, response_length, exception)``.
Report = Callable[[str, float, int, BaseException | None], None]


class ScenarioError(Exception):
    """A request that completed but broke a DDP guarantee the scenario checks."""


# -- pure helpers ---------------------------------------------------------------------------


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() not in ("", "0", "false", "no")


def is_loopback(host: str) -> bool:
    """True when ``host`` (a URL such as ``http://127.0.0.1:8000``) names this machine."""
    name = urlsplit(host).hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def ddp_url(host: str, *, sockjs: bool) -> str:
    """The URL :class:`DDPClient` takes for ``host`` (locust's ``-H``, e.g.
    ``http://127.0.0.1:8000``): ``ws://127.0.0.1:8000/websocket`` for the raw WebSocket,
    the HTTP base itself for SockJS (the client appends ``/sockjs/<server>/<session>/...``).
    """
    parts = urlsplit(host.strip())
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ValueError(f"expected a host like http://127.0.0.1:8000, got {host!r}")
    secure = parts.scheme in ("https", "wss")
    path = parts.path.rstrip("/")
    if sockjs:
        return urlunsplit(("https" if secure else "http", parts.netloc, path, "", ""))
    if not path.endswith("/websocket"):
        path += "/websocket"
    return urlunsplit(("wss" if secure else "ws", parts.netloc, path, "", ""))


def base_title(title: str) -> str:
    """``title`` without the suffix a (possibly concurrent) load-test rename added."""
    cut = title.find(RENAME_MARK)
    return title if cut < 0 else title[:cut]


def renamed_title(base: str, token: str) -> str:
    suffix = f"{RENAME_MARK}{token}]"
    return base[: TITLE_MAX - len(suffix)] + suffix


def seeded_book_id(seed: str) -> str:
    """The ``_id`` a ``books.create`` called with ``randomSeed=seed`` must return."""
    return RandomStream(seed).sequence(collection_stream_name(BOOKS)).id()


def message_bytes(messages: list[dict[str, Any]]) -> int:
    """Size of ``messages`` as compact JSON: the client keeps parsed messages, not frames."""
    return sum(len(json.dumps(m, separators=(",", ":"))) for m in messages)


# -- the scenario -------------------------------------------------------------------------------


class BookstoreScenario:
    """One simulated user of the example bookstore; every request goes to ``report``.

    ``response_length`` is the size (compact JSON) of what the connection received while
    the request was outstanding: for a subscription its initial data, for a method its
    ``result``/``updated`` and the data messages it caused (plus any other traffic that
    arrived meanwhile). A failure is reported with the exception, never raised; a failed
    step ends the current task.
    """

    def __init__(
        self,
        host: str,
        *,
        sockjs: bool,
        report: Report,
        rng: random.Random | None = None,
        timeout: float = 10.0,
        check_live: bool = False,
        live_report: LiveReport | None = None,
        keep_received: bool = True,
    ) -> None:
        self.url = ddp_url(host, sockjs=sockjs)
        self.sockjs = sockjs
        self.report = report
        self.rng = rng or random.Random()
        self.timeout = timeout
        self.check_live = check_live
        #: With ``live_report``, every stamped rename this user's subscriptions receive
        #: (its own and other users') is reported as a commit-to-client latency.
        self.live = LiveObserver(live_report) if live_report is not None else None
        #: False for users that only listen (no request measures what they received):
        #: the client then keeps no message history, so long runs stay flat in memory.
        self.keep_received = keep_received
        self.client: DDPClient | None = None
        #: book id -> title to restore, while a rename of ours may still stand.
        self.renamed: dict[str, str] = {}
        #: ids of books we created (or may have created) and not yet removed.
        self.created: set[str] = set()
        self._violations = 0
        self._errors = 0

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> bool:
        """Open a connection and subscribe ``books.all``; False (reported) on failure."""
        self.close()
        client = self.new_client()
        self._violations = self._errors = 0
        if not self._request(CONNECT, client, client.connect)[0]:
            self._close_quietly(client)
            return False
        if not self._request(SUB_ALL, client, lambda: client.subscribe(SUB_ALL))[0]:
            self._close_quietly(client)  # the next task reconnects
            return False
        self.client = client
        return True

    def new_client(self) -> DDPClient:
        """A client for this user's connection, not yet connected."""
        return DDPClient(
            self.url,
            sockjs=self.sockjs,
            timeout=self.timeout,
            on_message=self.live,
            keep_received=self.keep_received,
        )

    def ensure_connected(self) -> DDPClient | None:
        """The live client; reconnects (and reports a lost connection) when needed."""
        client = self.client
        if client is not None and client.closed.is_set():
            self.report(CONNECT, 0.0, 0, ConnectionError("connection closed by the server"))
            self._close_quietly(client)
            client = self.client = None
        if client is None and not self.connect():
            return None
        return self.client

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            self._close_quietly(client)

    @staticmethod
    def _close_quietly(client: DDPClient) -> None:
        try:
            client.close()
        except Exception:
            logger.debug("closing a DDP connection failed", exc_info=True)

    # -- tasks ------------------------------------------------------------------------------

    def rename_book(self) -> None:
        """Rename a random book and rename it back: two ``books.rename`` requests."""
        client = self.ensure_connected()
        if client is None:
            return
        books = [
            (book_id, str(doc.get("title", "")))
            for book_id, doc in client.docs(BOOKS).items()
            if not str(doc.get("title", "")).startswith(CREATED_PREFIX)
        ]
        if not books:
            self.report(RENAME, 0.0, 0, ScenarioError("books.all published no books"))
            return
        book_id, title = self.rng.choice(books)
        base = self.renamed.get(book_id) or base_title(title)
        self.renamed[book_id] = base
        # Stamped with the send time: subscribers report how long the change took to reach
        # them (loadtest/live.py). ``base_title`` cuts the stamp off like any rename mark.
        new_title = stamp(base, secrets.token_hex(4), now_ms())
        if not self._call(client, RENAME, book_id, new_title)[0]:
            return
        if self._call(client, RENAME, book_id, base)[0]:
            del self.renamed[book_id]

    def create_and_remove(self) -> None:
        """``books.create`` with a randomSeed, then ``books.remove`` of that book."""
        client = self.ensure_connected()
        if client is None:
            return
        authors = list(client.docs(AUTHORS))
        if not authors:
            self.report(CREATE, 0.0, 0, ScenarioError("books.all published no authors"))
            return
        seed = RandomStream(None).seed[0]
        expected = seeded_book_id(seed)
        self.created.add(expected)
        doc = {
            "title": f"{CREATED_PREFIX}{expected}",
            "authorId": self.rng.choice(authors),
            "price": "1.00",
            "tags": ["locust"],
        }

        def created(new_id: Any) -> str | None:
            if new_id != expected:
                return f"books.create returned {new_id!r}, the seed gives {expected!r}"
            if self.check_live and expected not in client.docs(BOOKS):
                return f"book {expected} not in the cache when books.create completed"
            return None

        new_id = self._call(client, CREATE, doc, random_seed=seed, check=created)[1]
        if not isinstance(new_id, str):
            return  # the call failed; cleanup removes the book if it was made after all
        self.created.add(new_id)
        # Removed even when a check failed: the book exists, and the data must stay as found.

        def removed(_: Any) -> str | None:
            if self.check_live and new_id in client.docs(BOOKS):
                return f"book {new_id} still in the cache when books.remove completed"
            return None

        if self._call(client, REMOVE, new_id, check=removed)[0]:
            self.created.discard(new_id)
            if new_id != expected:
                self.created.discard(expected)  # that id was never used

    def resubscribe_by_author(self) -> None:
        """Subscribe ``books.byAuthorEmail`` for a random author, then unsubscribe."""
        client = self.ensure_connected()
        if client is None:
            return
        emails = [str(a["email"]) for a in client.docs(AUTHORS).values() if "email" in a]
        if not emails:
            self.report(SUB_BY_AUTHOR, 0.0, 0, ScenarioError("books.all published no authors"))
            return
        email = self.rng.choice(emails)
        ok, sub_id = self._request(
            SUB_BY_AUTHOR, client, lambda: client.subscribe(SUB_BY_AUTHOR, email)
        )
        if not ok:
            return

        def author_kept(_: Any) -> str | None:
            # books.all still publishes the author: the unsub must not remove it.
            if self.check_live and email not in {
                a.get("email") for a in client.docs(AUTHORS).values()
            }:
                return f"author {email} left the cache on unsub although books.all has it"
            return None

        self._request(
            UNSUB_BY_AUTHOR, client, lambda: client.unsubscribe(sub_id), check=author_kept
        )

    def cleanup(self) -> None:
        """Undo what an interrupted task left: restore titles, remove created books.

        Not reported (it is not load); failures are logged. Uses a fresh connection when
        the current one is gone.
        """
        if not self.renamed and not self.created:
            return
        client = self.client
        own = client is None or client.closed.is_set()
        if own:
            client = DDPClient(self.url, sockjs=self.sockjs, timeout=self.timeout)
            try:
                client.connect()
            except Exception:
                logger.warning("cleanup: cannot connect to %s", self.url, exc_info=True)
                return
        assert client is not None
        try:
            for book_id, title in list(self.renamed.items()):
                try:
                    client.call(RENAME, book_id, title)
                    del self.renamed[book_id]
                except DDPClientError as exc:
                    if exc.error == 404:  # removed meanwhile: nothing to restore
                        del self.renamed[book_id]
                    else:
                        logger.warning("cleanup: restoring %s failed: %s", book_id, exc)
                except Exception as exc:
                    logger.warning("cleanup: restoring %s failed: %r", book_id, exc)
            for book_id in list(self.created):
                try:
                    client.call(REMOVE, book_id)
                    self.created.discard(book_id)
                except DDPClientError as exc:
                    if exc.error == 404:  # never created, or already removed
                        self.created.discard(book_id)
                    else:
                        logger.warning("cleanup: removing %s failed: %s", book_id, exc)
                except Exception as exc:
                    logger.warning("cleanup: removing %s failed: %r", book_id, exc)
        finally:
            if own:
                self._close_quietly(client)

    # -- measuring ----------------------------------------------------------------------------

    def _call(
        self,
        client: DDPClient,
        method: str,
        *params: Any,
        random_seed: str | None = None,
        check: Callable[[Any], str | None] | None = None,
    ) -> tuple[bool, Any]:
        return self._request(
            method, client, lambda: client.call(method, *params, random_seed=random_seed), check
        )

    def _request(
        self,
        name: str,
        client: DDPClient,
        action: Callable[[], Any],
        check: Callable[[Any], str | None] | None = None,
    ) -> tuple[bool, Any]:
        """Run ``action``, time it and report it; ``(succeeded, result)``.

        A request also fails when ``check(result)`` returns a message, or when the client
        recorded a cache violation or a DDP ``error`` message meanwhile.
        """
        # The client keeps every message for inspection; drop the old ones (memory) and
        # measure what arrives while this request is outstanding.
        client.received.clear()
        start = time.perf_counter()
        result: Any = None
        exception: BaseException | None = None
        try:
            result = action()
        except Exception as exc:
            exception = exc
        elapsed_ms = (time.perf_counter() - start) * 1000
        length = message_bytes(list(client.received))
        if exception is None and check is not None:
            problem = check(result)
            if problem is not None:
                exception = ScenarioError(problem)
        if exception is None:
            exception = self._new_client_problem(client)
        self.report(name, elapsed_ms, length, exception)
        return exception is None, result

    def _new_client_problem(self, client: DDPClient) -> ScenarioError | None:
        violations, errors = list(client.violations), list(client.errors)
        problem = None
        if len(violations) > self._violations:
            problem = ScenarioError(f"cache violations: {violations[self._violations :]}")
        elif len(errors) > self._errors:
            problem = ScenarioError(f"DDP error messages: {errors[self._errors :]}")
        self._violations, self._errors = len(violations), len(errors)
        return problem
