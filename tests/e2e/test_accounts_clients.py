"""Real third-party DDP clients log in to the example app through the relay (issue #9's matrix).

The libraries, and what each one really sends (read in their installed sources):

* npm ``ddp-login`` 1.0.10 on npm ``ddp`` 0.12.1: a password always goes as
  ``{user: {username}|{email}, password: {digest, algorithm: "sha-256"}}`` (Node's SHA-256
  over UTF-8: for non-BMP characters it differs from Meteor's client, which hashes CESU-8);
  plaintext only after an error 400 and with ``plaintext: true``. ``method: "account"``
  sends ``{email}`` for anything that looks like an address and retries as ``{username}``
  after a 400 (not after a 403). A token goes as ``{resume}``; if the environment variable
  (``METEOR_TOKEN``) is set it is tried first whatever the method, and on failure the
  method runs. Each attempt is wrapped in ``async.retry(5)``: one wrong password costs five
  ``login`` calls, exactly Meteor's default limit per connection and 10 s.
* npm ``asteroid`` 2.0.3 on ddp.js 2.2.1: ``loginWithPassword`` sends the password in
  PLAINTEXT under ``user: {username, email}`` (JSON drops the missing one, so one key on the
  wire unless the app passes both, which Meteor refuses with 400). The token is stored per
  endpoint (localStorage, else a module-level object shared by every instance of the
  process) and sent as ``{resume}`` by itself on every ``connected``. No collections: the
  harness keeps ``users`` from raw events.
* npm ``simpleddp`` 2.2.4 + ``simpleddp-plugin-login`` 4.0.2: ``login(obj)`` sends ``obj``
  untouched (digest or plaintext, the app's choice), keeps ``userId``/``token`` and emits
  ``login``/``loginResume``/``logout``; after a socket loss simpleddp reconnects (sending
  its old ``session`` but no ``receivedCount``), clears its collections and the plugin
  logs in again with ``{resume}`` at the head of the queue.
* PyPI ``python-meteor`` 0.1.6 (``MeteorClient``, on python-ddp/ws4py): ``login`` sends
  ``{user: {email}}`` if the name contains "@", else ``{username}``, with
  ``password: {digest: sha256(password).hexdigest(), algorithm: "sha-256"}``. On Python 3
  ``hashlib.sha256(str)`` raises TypeError, so the password must be given as bytes (that is
  the only Python 3 problem met; nothing is patched). ``login(..., token=t)`` sends
  ``{resume: t}`` and silently falls back to the password on an error, so the tests check
  the result's ``type``. Results are EJSON-decoded (``tokenExpires`` is a datetime).

Every client also shows the server's side of the contract: error 403 "Something went
wrong..." for a wrong password, ``users`` filled with the user's document (``username``,
``emails``) before the login's ``result`` (Meteor's setUserId rerun) and emptied before the
logout's, the token working on another connection of another relay until a ``logout``
destroys it, and the sixth ``login`` of a connection within 10 s refused with
``too-many-requests``. The node harness is ``tests/e2e/node/clients/accounts.js`` (one JSON
report per run); the assertions are here. Two relays share one fresh database per module.

Must not: leave favorites behind (each test removes what it adds) or share its relays with
other modules (their rate-limit counters and tokens would mix with these).
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import json
import math
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from tests.e2e.node_runs import run_report
from tests.fixtures.relays import RelayStack, RelayStacks
from tests.fixtures.services import services_required

pytestmark = pytest.mark.e2e

#: The npm login libraries the harness needs besides the node_toolchain ones.
LOGIN_PACKAGES = ("ddp-login", "asteroid", "simpleddp-plugin-login")
#: The harness's own hard limit; the subprocess gets a little more on top.
HARNESS_TIMEOUT_MS = 40_000
#: How long a live update or a callback may take before the test gives up.
WAIT = 10.0

AMBIGUOUS = "Something went wrong. Please check your credentials."
LOGGED_OUT = "You've been logged out by the server. Please log in again."
TOO_MANY = re.compile(
    r"Error, too many requests\. Please slow down\. "
    r"You must wait (\d+) seconds before trying again\."
)
ANONYMOUS = {"userId": None, "username": None}
FAVORITES = "bookstore.favorite"
LOGIN_RESULT_KEYS = {"id", "token", "tokenExpires", "type"}
USER_FIELDS = {"username", "emails", "profile"}
#: python-meteor's collections at one moment: collection -> id -> fields.
Seen = dict[str, dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Account:
    username: str
    email: str
    password: str


#: The example's seeded users (example/bookstore/management/commands/seed_demo.py).
ADMIN = Account("admin", "admin@example.com", "ddp-relay-demo")
READER = Account("reader", "reader@example.com", "bookworm-2026")


@pytest.fixture(scope="module")
def relays(module_relay_stack: RelayStacks) -> RelayStack:
    """Two relays on one fresh database: a token from one must work on the other."""
    return module_relay_stack(2, workers=1)


@pytest.fixture(scope="session")
def accounts_harness(node_toolchain: Path) -> Path:
    """tests/e2e/node/clients/accounts.js, once the npm login libraries are installed."""
    modules = node_toolchain / "node_modules"
    missing = [p for p in LOGIN_PACKAGES if not (modules / p / "package.json").exists()]
    if missing:
        reason = f"npm {', '.join(missing)} not installed in {node_toolchain} (npm ci there)"
        if services_required():
            pytest.fail(f"node login clients required (CI, RELAY_REQUIRE_SERVICES): {reason}")
        pytest.skip(f"NODE LOGIN CLIENT TESTS SKIPPED: {reason}")
    return node_toolchain / "clients" / "accounts.js"


@pytest.fixture(scope="session")
def meteor_client_class() -> Any:
    """python-meteor's ``MeteorClient`` class (the ``test`` extra installs it)."""
    try:
        return importlib.import_module("MeteorClient").MeteorClient
    except ModuleNotFoundError as exc:
        reason = f"PyPI python-meteor is not installed ({exc}); pip install -e '.[test]'"
        if services_required():
            pytest.fail(reason)
        pytest.skip(reason)


# --- the node harness -------------------------------------------------------------------


def run_harness(
    script: Path,
    client: str,
    account: Account,
    url: str,
    url2: str | None = None,
    token: str | None = None,
    expect_ok: bool = True,
) -> dict[str, Any]:
    """One run of accounts.js; its JSON report, or a test failure with all it printed
    (with ``expect_ok=False``, the report of a run that must fail, and fail cleanly)."""
    env = {k: v for k, v in os.environ.items() if k != "METEOR_TOKEN"}
    env.update(
        ACCOUNTS_USERNAME=account.username,
        ACCOUNTS_EMAIL=account.email,
        ACCOUNTS_PASSWORD=account.password,
        ACCOUNTS_TIMEOUT_MS=str(HARNESS_TIMEOUT_MS),
    )
    if token is not None:
        env["METEOR_TOKEN"] = token  # how ddp-login scripts receive a token
    argv = [str(script), client, url, *([url2] if url2 else [])]
    report, proc = run_report(argv, env, client, HARNESS_TIMEOUT_MS / 1000 + 10)
    if not expect_ok:
        assert (report.get("ok"), proc.returncode) == (False, 1), report
        return report
    if not report.get("ok") or proc.returncode != 0:
        pytest.fail(
            f"{client}: failed at {report.get('stage')!r} (exit {proc.returncode}): "
            f"{json.dumps(report.get('error'))}\n"
            f"report:\n{json.dumps(report, indent=1)[-15000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    assert report["clientWarnings"] == [], report["clientWarnings"]
    return report


def check_error(error: dict[str, Any], code: Any, reason: str | None = None) -> None:
    """A DDP error as the client surfaced it: Meteor.Error's error, reason and message."""
    assert error.get("error") == code, error
    assert isinstance(error.get("reason"), str), error
    if reason is not None:
        assert error["reason"] == reason, error
    assert error.get("message") == f"{error['reason']} [{code}]", error
    assert error.get("errorType") == "Meteor.Error", error


def check_rate_limited(error: dict[str, Any]) -> None:
    """Meteor's DDPRateLimiter refusal: reason with the wait in seconds, details.timeToReset."""
    check_error(error, "too-many-requests")
    match = TOO_MANY.fullmatch(error["reason"])
    assert match, error
    time_to_reset = error.get("details", {}).get("timeToReset")
    assert isinstance(time_to_reset, int | float) and 0 < time_to_reset <= 10_000, error
    assert int(match.group(1)) == math.ceil(time_to_reset / 1000), error


def js_date(value: Any) -> dt.datetime:
    """A Date as the node harness describes it ({"$js": "Date", "iso": ...})."""
    assert isinstance(value, dict) and value.get("$js") == "Date", value
    return dt.datetime.fromisoformat(str(value["iso"]).replace("Z", "+00:00"))


def check_login_result(result: dict[str, Any], kind: str) -> None:
    """``{id, token, tokenExpires, type}``: string id, a token, a future expiry."""
    assert set(result) == LOGIN_RESULT_KEYS, result
    assert isinstance(result["id"], str) and result["id"], result
    assert isinstance(result["token"], str) and len(result["token"]) >= 20, result
    assert result["type"] == kind, result
    assert js_date(result["tokenExpires"]) > dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


def check_user_doc(doc: dict[str, Any], account: Account, user_id: str, id_key: str) -> None:
    """The logged-in user's document in ``users``, as Meteor's null publication sends it."""
    assert doc[id_key] == user_id, doc
    assert set(doc) - {id_key} <= USER_FIELDS, doc
    assert doc["username"] == account.username, doc
    emails = doc["emails"]
    assert [e["address"] for e in emails] == [account.email], doc
    assert all(
        set(e) == {"address", "verified"} and isinstance(e["verified"], bool) for e in emails
    )


def check_logged_in(state: dict[str, Any], account: Account, user_id: str, id_key: str) -> None:
    """whoami says ``user_id`` and the client holds exactly that user's document."""
    assert state["whoami"] == {"userId": user_id, "username": account.username}, state
    users = state["users"]
    assert len(users) == 1, state
    check_user_doc(users[0], account, user_id, id_key)


def check_logged_out(state: dict[str, Any]) -> None:
    assert state["whoami"] == ANONYMOUS, state
    assert state["users"] == [], state


def check_wire(report: dict[str, Any]) -> None:
    """Every connection: one result and one updated per method, nothing odd, and the
    setUserId rerun: users added before a login's result, removed before a logout's."""
    for label, conn in report["connections"].items():
        assert conn["errors"] == [], (label, conn["errors"])
        assert conn["unexpected"] == [], (label, conn["unexpected"])
        assert conn["dataProblems"] == [], (label, conn["dataProblems"])
        logged_in: str | None = None
        for call in conn["calls"]:
            assert (call["results"], call["updated"]) == (1, 1), (label, call)
            if call["method"] == "login" and call["error"] is None:
                result = call["result"]
                assert set(result) == LOGIN_RESULT_KEYS, (label, call)
                assert set(result["tokenExpires"]) == {"$date"}, (label, call)
                assert isinstance(result["tokenExpires"]["$date"], int), (label, call)
                added = {"msg": "added", "collection": "users", "id": result["id"]}
                if logged_in != result["id"]:
                    assert added in call["dataBeforeResult"], (label, call)
                logged_in = result["id"]
            elif call["method"] == "logout" and logged_in is not None:
                removed = {"msg": "removed", "collection": "users", "id": logged_in}
                assert removed in call["dataBeforeResult"], (label, call)
                logged_in = None


def logins(report: dict[str, Any], label: str) -> list[dict[str, Any]]:
    return [c for c in report["connections"][label]["calls"] if c["method"] == "login"]


def password_sent(kind: str, right: bool, user: dict[str, str]) -> dict[str, Any]:
    """A login request's shape as the harness reports it (loginShape in accounts-harness.js)."""
    if kind == "digest":
        password: dict[str, Any] = {
            "kind": "digest",
            "keys": ["algorithm", "digest"],
            "algorithm": "sha-256",
            "isAccountPassword": right,
        }
    else:
        password = {"kind": "plaintext", "isAccountPassword": right}
    return {"keys": ["password", "user"], "user": user, "password": password}


def resume_sent(token: str) -> dict[str, Any]:
    return {"keys": ["resume"], "resume": token}


# --- node clients -----------------------------------------------------------------------


@pytest.mark.node
def test_ddp_login(accounts_harness: Path, relays: RelayStack) -> None:
    account = ADMIN
    first, second = relays.relays
    report = run_harness(accounts_harness, "ddp-login", account, first.url, second.url)
    check_wire(report)

    check_logged_out(report["anonymous"])
    check_error(report["wrongPassword"]["error"], 403, AMBIGUOUS)

    password = report["password"]
    check_login_result(password["result"], "password")
    user_id = password["result"]["id"]
    token = password["result"]["token"]
    check_logged_in(password, account, user_id, "_id")
    by_username = {"username": account.username}
    assert [c["params"] for c in logins(report, "A")] == [
        password_sent("digest", False, by_username),
        password_sent("digest", True, by_username),
    ]

    # method "account" with an address: {user: {email}}, a token of its own; then logout.
    email = report["email"]
    check_login_result(email["result"], "password")
    assert email["result"]["id"] == user_id and email["result"]["token"] != token
    check_logged_in(email, account, user_id, "_id")
    assert [c["params"] for c in logins(report, "B")] == [
        password_sent("digest", True, {"email": account.email})
    ]
    check_logged_out(email["afterLogout"])

    # The token on the other relay (loginWithToken) and from METEOR_TOKEN: the same token,
    # the same expiry, type "resume".
    assert report["connections"]["C"]["origin"] == second.url
    for key, label in (("token", "C"), ("envToken", "D")):
        resumed = report[key]
        check_login_result(resumed["result"], "resume")
        assert resumed["result"]["id"] == user_id
        assert resumed["result"]["token"] == token
        assert resumed["result"]["tokenExpires"] == password["result"]["tokenExpires"]
        check_logged_in(resumed, account, user_id, "_id")
        assert [c["params"] for c in logins(report, label)] == [resume_sent(token)]

    # logout destroys the token: METEOR_TOKEN no longer logs in (tried twice: env, retry).
    check_logged_out(report["logout"])
    check_error(report["deadToken"]["error"], 403, LOGGED_OUT)
    dead = logins(report, "E")
    assert [c["params"] for c in dead] == [resume_sent(token)] * 2
    assert all(c["error"]["reason"] == LOGGED_OUT for c in dead)
    check_logged_out(report["deadToken"]["after"])

    # ddp-login's retries: five wrong passwords answered 403, the sixth and a right one
    # after it refused by the rate limiter; the connection stays logged out.
    check_rate_limited(report["retries"]["error"])
    check_rate_limited(report["retries"]["rightPassword"]["error"])
    limited = logins(report, "F")
    assert [c["params"]["password"]["isAccountPassword"] for c in limited] == [False] * 6 + [True]
    for call in limited[:5]:
        check_error(call["error"], 403, AMBIGUOUS)
    for call in limited[5:]:
        check_rate_limited(call["error"])
    check_logged_out(report["retries"]["after"])


@pytest.mark.node
def test_asteroid(accounts_harness: Path, relays: RelayStack) -> None:
    account = READER
    first, second = relays.relays
    report = run_harness(accounts_harness, "asteroid", account, first.url, second.url)
    check_wire(report)

    # No token stored yet: Asteroid sends no login on connect.
    assert report["connections"]["A"]["calls"][0]["method"] == "users.whoami"
    check_logged_out(report["anonymous"])
    check_error(report["wrongPassword"]["error"], 403, AMBIGUOUS)
    by_username = {"username": account.username}
    a_logins = logins(report, "A")
    assert [c["params"] for c in a_logins] == [
        password_sent("plaintext", False, by_username),
        password_sent("plaintext", True, by_username),
    ]
    result = a_logins[1]["result"]
    user_id, token = result["id"], result["token"]
    assert result["type"] == "password"
    password = report["password"]
    assert password["resolved"] == user_id
    assert (password["userId"], password["loggedIn"]) == (user_id, True)
    check_logged_in(password, account, user_id, "_id")

    # B: a new Asteroid on the same endpoint resumed by itself; C: explicit, other relay.
    for key, label in (("autoResume", "B"), ("resume", "C")):
        state = report[key]
        assert (state["userId"], state["loggedIn"]) == (user_id, True), state
        check_logged_in(state, account, user_id, "_id")
        sent = logins(report, label)
        assert [c["params"] for c in sent] == [resume_sent(token)]
        assert sent[0]["result"]["type"] == "resume"
        assert sent[0]["result"]["token"] == token
    assert report["connections"]["B"]["calls"][0]["method"] == "login"
    assert report["connections"]["C"]["origin"] == second.url

    logout = report["logout"]
    assert (logout["resolved"], logout["userId"], logout["loggedIn"]) == (None, None, False)
    check_logged_out(logout)
    # connect (a failed resume without a token counts as loggedOut), login, logout.
    events = [e["event"] for e in logout["events"]]
    assert events[:4] == ["connected", "loggedOut", "loggedIn", "loggedOut"], events

    # D: the dead token, both keys at once (Meteor: exactly one), then the email.
    check_error(report["deadToken"]["error"], 403, LOGGED_OUT)
    check_error(report["twoKeys"]["error"], 400)
    email = report["email"]
    assert email["resolved"] == user_id
    check_logged_in(email, account, user_id, "_id")
    check_logged_out(email["afterLogout"])
    assert [c["params"] for c in logins(report, "D")] == [
        resume_sent(token),
        password_sent("plaintext", True, {"email": account.email, "username": account.username}),
        password_sent("plaintext", True, {"email": account.email}),
    ]


@pytest.mark.node
def test_simpleddp_login_plugin(accounts_harness: Path, relays: RelayStack) -> None:
    account = ADMIN
    report = run_harness(accounts_harness, "simpleddp-login", account, relays.relay.url)
    check_wire(report)

    check_logged_out(report["anonymous"])
    assert report["anonymous"]["user"] == []
    check_error(report["wrongPassword"]["error"], 403, AMBIGUOUS)
    password = report["password"]
    check_login_result(password["result"], "password")
    user_id, token = password["result"]["id"], password["result"]["token"]
    assert (password["userId"], password["token"]) == (user_id, token)
    # Meteor.user(): the users document of userId (simpleddp keys documents by `id`).
    check_logged_in(password, account, user_id, "id")
    assert password["user"] == password["users"]

    # After a socket loss the plugin logged in again with its token on the new connection.
    reconnect = report["reconnect"]
    check_login_result(reconnect["result"], "resume")
    assert (reconnect["result"]["id"], reconnect["result"]["token"]) == (user_id, token)
    assert reconnect["userId"] == user_id
    check_logged_in(reconnect, account, user_id, "id")
    assert reconnect["user"] == reconnect["users"]
    assert len(report["connections"]["A"]["sessions"]) == 2
    by_username = {"username": account.username}
    assert [c["params"] for c in logins(report, "A")] == [
        password_sent("digest", False, by_username),
        password_sent("digest", True, by_username),
        resume_sent(token),
    ]

    logout = report["logout"]
    assert (logout["token"], logout["userId"], logout["user"]) == (None, None, [])
    check_logged_out(logout)
    events = [e["event"] for e in logout["events"]]
    assert events == [
        "connected",
        "login",
        "disconnected",
        "loginSessionLost",
        "connected",
        "loginResume",
        "logout",
        "disconnected",
    ]

    # B: plaintext password with the email address.
    email = report["email"]
    check_login_result(email["result"], "password")
    assert email["result"]["id"] == user_id
    check_logged_in(email, account, user_id, "id")
    check_logged_out(email["afterLogout"])
    assert [c["params"] for c in logins(report, "B")] == [
        password_sent("plaintext", True, {"email": account.email})
    ]


# --- python-meteor ----------------------------------------------------------------------


class Meteor:
    """A python-meteor client with blocking calls, and what its collections held at the
    moment each answer arrived (to see what came before a login's or logout's result)."""

    def __init__(self, cls: Any, url: str) -> None:
        self.client = cls(url, auto_reconnect=False)
        self.lock = threading.Condition()
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []
        self.connected = threading.Event()
        self.client.on("connected", self.connected.set)
        for name in ("added", "changed", "removed"):
            self.client.on(name, self._recorder(name))
        self.sock: Any = None

    def _recorder(self, name: str) -> Callable[..., None]:
        def record(collection: str, doc_id: str, fields: Any = None, *_: Any) -> None:
            with self.lock:
                self.events.append((name, collection, doc_id, dict(fields or {})))
                self.lock.notify_all()

        return record

    def connect(self) -> Meteor:
        self.client.connect()
        # ws4py's reader may drop its socket without closing it on a racing close: keep it.
        self.sock = self.client.ddp_client.ddpsocket.sock
        assert self.connected.wait(WAIT), "python-meteor: no connected"
        return self

    def close(self) -> None:
        self.client.close()
        if self.sock is not None:
            self.sock.close()

    def _snapshot(self) -> Seen:
        # Runs on ws4py's thread inside the callback: before any later message is applied.
        return copy.deepcopy(self.client.collection_data.data)

    def _blocking(self, start: Callable[[Callable[..., None]], None], what: str) -> list[Any]:
        done = threading.Event()
        box: list[Any] = []

        def callback(*args: Any) -> None:
            box.extend([*args, self._snapshot()])
            done.set()

        start(callback)
        assert done.wait(WAIT), f"python-meteor: no answer to {what}"
        return box

    def login(
        self, account: Account, password: str | None = None, token: str | None = None
    ) -> tuple[Any, Any, Seen]:
        """(error, data, collections at the result). python-meteor hashes ``password`` with
        hashlib, which takes bytes only on Python 3."""
        secret = (account.password if password is None else password).encode()
        error, data, seen = self._blocking(
            lambda cb: self.client.login(account.username, secret, token=token, callback=cb),
            "login",
        )
        return error, data, cast(Seen, seen)

    def logout(self) -> Seen:
        error, _, seen = self._blocking(lambda cb: self.client.logout(callback=cb), "logout")
        assert error is None, error
        return cast(Seen, seen)

    def call(self, method: str, *params: Any) -> tuple[Any, Any]:
        error, result, _ = self._blocking(
            lambda cb: self.client.call(method, list(params), callback=cb), method
        )
        return error, result

    def subscribe(self, name: str) -> None:
        (reason, _) = self._blocking(lambda cb: self.client.subscribe(name, [], callback=cb), name)
        assert reason is None, f"subscribe {name}: {reason}"

    def wait_for(self, event: tuple[str, str, str], what: str) -> dict[str, Any]:
        """The fields of the first (msg, collection, id) event, waiting for it."""

        def find() -> dict[str, Any] | None:
            return next((e[3] for e in self.events if e[:3] == event), None)

        with self.lock:
            assert self.lock.wait_for(lambda: find() is not None, WAIT), f"no {what}"
            found = find()
        assert found is not None
        return found


@pytest.fixture
def meteor(meteor_client_class: Any) -> Iterator[Callable[[str], Meteor]]:
    """Connected python-meteor clients, closed after the test."""
    opened: list[Meteor] = []

    def connect(url: str) -> Meteor:
        client = Meteor(meteor_client_class, url)
        opened.append(client)
        return client.connect()

    yield connect
    for client in opened:
        client.close()


def favorites(seen: Seen) -> dict[str, dict[str, Any]]:
    return seen.get(FAVORITES, {})


def check_python_login(data: Any, kind: str) -> tuple[str, str]:
    """python-meteor's login data (EJSON-decoded): the user id and the token."""
    assert isinstance(data, dict) and set(data) == LOGIN_RESULT_KEYS, data
    assert data["type"] == kind, data
    assert isinstance(data["id"], str) and isinstance(data["token"], str), data
    expires = data["tokenExpires"]  # meteor-ejson: an aware UTC datetime
    assert isinstance(expires, dt.datetime) and expires.tzinfo is not None, data
    assert expires > dt.datetime.now(dt.UTC) + dt.timedelta(days=1), data
    return data["id"], data["token"]


def check_python_user(seen: Seen, account: Account, user_id: str) -> None:
    users = seen.get("users", {})
    assert list(users) == [user_id], users
    check_user_doc({"_id": user_id, **users[user_id]}, account, user_id, "_id")


def test_python_meteor_login_and_favorites(
    meteor: Callable[[str], Meteor], relays: RelayStack
) -> None:
    account, book = READER, "earthsea-1"
    client = meteor(relays.relay.ws_url)
    client.subscribe("favorites.mine")
    error, _ = client.call("favorites.add", book)
    assert (error or {}).get("error") == "not-authorized", error

    error, data, seen = client.login(account, password=account.password + "-not-it")
    check_error(error, 403, AMBIGUOUS)
    assert data is None and seen.get("users", {}) == {}

    error, data, seen = client.login(account)
    assert error is None, error
    user_id, _ = check_python_login(data, "password")
    check_python_user(seen, account, user_id)  # before the result: the setUserId rerun
    assert client.call("users.whoami") == (None, {"userId": user_id, "username": account.username})

    try:
        error, favorite_id = client.call("favorites.add", book)
        assert error is None and isinstance(favorite_id, str) and favorite_id, error
        fields = client.wait_for(("added", FAVORITES, favorite_id), "favorite arriving")
        assert fields == {"userId": user_id, "bookId": book}
        assert client.call("favorites.add", book) == (None, favorite_id)

        # Logout reruns favorites.mine: the favorite and the user leave before the result.
        seen = client.logout()
        assert seen.get("users", {}) == {} and favorite_id not in favorites(seen), seen
        assert client.call("users.whoami") == (None, ANONYMOUS)
        error, _ = client.call("favorites.add", book)
        assert (error or {}).get("error") == "not-authorized", error

        # Logging in again brings it back, again before the result.
        error, data, seen = client.login(account)
        assert error is None, error
        assert check_python_login(data, "password")[0] == user_id
        check_python_user(seen, account, user_id)
        assert favorites(seen).get(favorite_id) == {"userId": user_id, "bookId": book}, seen
    finally:
        error, _ = client.call("favorites.remove", book)
    assert error is None, error
    client.wait_for(("removed", FAVORITES, favorite_id), "favorite leaving")
    client.logout()


def test_python_meteor_resume_token_on_another_relay(
    meteor: Callable[[str], Meteor], relays: RelayStack
) -> None:
    """A token from relay 1 logs in a connection on relay 2; a favorite added there
    arrives live at the first connection."""
    account, book = READER, "left-hand"
    first, second = relays.relays
    one = meteor(first.ws_url)
    error, data, _ = one.login(account)
    assert error is None, error
    user_id, token = check_python_login(data, "password")
    one.subscribe("favorites.mine")

    two = meteor(second.ws_url)
    error, data, seen = two.login(account, token=token)
    assert error is None, error
    # "resume", not python-meteor's silent fallback to the password.
    assert check_python_login(data, "resume") == (user_id, token)
    check_python_user(seen, account, user_id)
    assert two.call("users.whoami") == (None, {"userId": user_id, "username": account.username})
    two.subscribe("favorites.mine")

    error, favorite_id = two.call("favorites.add", book)
    assert error is None and isinstance(favorite_id, str), error
    try:
        expected = {"userId": user_id, "bookId": book}
        assert one.wait_for(("added", FAVORITES, favorite_id), "live favorite") == expected
        assert two.wait_for(("added", FAVORITES, favorite_id), "own favorite") == expected
    finally:
        error, _ = two.call("favorites.remove", book)
    assert error is None, error
    one.wait_for(("removed", FAVORITES, favorite_id), "live removal")
    two.close()
    one.logout()


@pytest.mark.node
def test_ddp_login_resumes_a_python_meteor_token_on_another_relay(
    accounts_harness: Path, meteor: Callable[[str], Meteor], relays: RelayStack
) -> None:
    """python-meteor logs in on relay 1; ddp-login, given the token in METEOR_TOKEN as its
    CLI usage suggests, logs in with it on relay 2; after the logout it no longer can."""
    account = READER
    first, second = relays.relays
    client = meteor(first.ws_url)
    error, data, _ = client.login(account)
    assert error is None, error
    user_id, token = check_python_login(data, "password")

    report = run_harness(accounts_harness, "ddp-login-env", account, second.url, token=token)
    check_wire(report)
    assert report["connections"]["A"]["origin"] == second.url
    check_logged_out(report["before"])
    login = report["login"]
    check_login_result(login["result"], "resume")
    assert (login["result"]["id"], login["result"]["token"]) == (user_id, token)
    check_logged_in(login, account, user_id, "_id")
    assert [c["params"] for c in logins(report, "A")] == [resume_sent(token)]

    client.logout()
    report = run_harness(
        accounts_harness, "ddp-login-env", account, second.url, token=token, expect_ok=False
    )
    assert report["stage"] == "A: ddp-login token from METEOR_TOKEN", report
    check_error(report["error"], 403, LOGGED_OUT)
    dead = logins(report, "A")
    assert [c["params"] for c in dead] == [resume_sent(token)] * 2
    assert all(c["error"]["reason"] == LOGGED_OUT for c in dead)
