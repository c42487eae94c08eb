"""Methods through DjangoBackend.call: seeded ids, errors, transactions, ``unblock()`` and
``async def`` methods (also in a gevent monkey-patched process, as a relay runs them)."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from collections.abc import Awaitable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from bookstore.models import Author, Book
from django.core.exceptions import ValidationError
from django.db import connection

from django_app import DDPError, MethodContext, method
from django_app.backend import DjangoBackend
from django_app.context import current_method
from django_app.methods import Method
from django_app.registries import Registry
from relay.backend import (
    ANONYMOUS,
    CallContext,
    ClientError,
    Handshake,
    MethodOutcome,
    WritePosition,
)
from relay.protocol.alea import RandomStream

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.django_db

NEW_BOOK = {"title": "Mort", "authorId": "pratchett", "price": "7.99", "tags": ["discworld"]}


def error_of(info: pytest.ExceptionInfo[Any]) -> tuple[Any, Any]:
    assert isinstance(info.value, ClientError)
    return info.value.error, info.value.reason


def test_reference_vector() -> None:
    assert RandomStream("abc").sequence("/collection/books").id() == "HPRPFNS53Rhi6vc9F"


def test_create_returns_the_seeded_id(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    expected = RandomStream("abc").sequence("/collection/bookstore.book").id()
    outcome = backend.call(make_ctx("abc"), "books.create", [NEW_BOOK])
    assert outcome == MethodOutcome(result=expected)
    book = Book.objects.get(pk=expected)
    tags = sorted(book.tags.values_list("name", flat=True))
    assert (book.title, book.author_id, book.price, tags) == (
        "Mort",
        "pratchett",
        Decimal("7.99"),
        ["discworld"],
    )


def test_create_accepts_number_prices_and_no_tags(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    result = backend.call(
        make_ctx("s1"), "books.create", [{**NEW_BOOK, "price": 12, "tags": []}]
    ).result
    assert Book.objects.get(pk=result).price == Decimal("12.00")
    doc = {k: v for k, v in NEW_BOOK.items() if k != "tags"}
    result = backend.call(make_ctx("s2"), "books.create", [{**doc, "price": 3.5}]).result
    assert Book.objects.get(pk=result).tags.count() == 0


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({**NEW_BOOK, "authorId": "nobody"}, (404, "Author not found")),
        ({**NEW_BOOK, "title": "  "}, (400, "Title must not be empty")),
        ({**NEW_BOOK, "price": "cheap"}, (400, "Match failed")),
        ({**NEW_BOOK, "price": "NaN"}, (400, "Match failed")),
        ({**NEW_BOOK, "price": "-1"}, (400, "Price must not be negative")),
        ({**NEW_BOOK, "price": True}, (400, "Match failed")),
        ({**NEW_BOOK, "title": 5}, (400, "Match failed")),
        ({**NEW_BOOK, "extra": 1}, (400, "Match failed")),
        ({"title": "x"}, (400, "Match failed")),
    ],
)
def test_create_validation(
    backend: DjangoBackend, make_ctx: Any, seeded: str, doc: dict[str, Any], error: tuple[Any, Any]
) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx("abc"), "books.create", [doc])
    assert error_of(info) == error
    assert Book.objects.count() == 10


def test_model_validation_becomes_400(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    with pytest.raises(DDPError) as info:
        backend.call(make_ctx("abc"), "books.create", [{**NEW_BOOK, "title": "x" * 301}])
    assert info.value.error == 400
    assert info.value.reason is not None and info.value.reason.startswith(
        "title: Ensure this value"
    )
    assert list(info.value.details) == ["title"]


def test_rename_set_author_remove(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    before = Book.objects.get(pk="lathe").updated_at
    assert backend.call(make_ctx(), "books.rename", ["lathe", "The Lathe"]).result is None
    book = Book.objects.get(pk="lathe")
    assert book.title == "The Lathe" and book.updated_at > before
    backend.call(make_ctx(), "books.setAuthor", ["lathe", "jemisin"])
    assert Book.objects.get(pk="lathe").author_id == "jemisin"
    backend.call(make_ctx(), "books.remove", ["lathe"])
    assert not Book.objects.filter(pk="lathe").exists()


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [
        ("books.rename", ["nope", "x"], (404, "Book not found")),
        ("books.setAuthor", ["nope", "leguin"], (404, "Book not found")),
        ("books.setAuthor", ["lathe", "nope"], (404, "Author not found")),
        ("books.remove", ["nope"], (404, "Book not found")),
        ("books.rename", ["lathe"], (400, "Match failed")),
        ("books.rename", ["lathe", 5], (400, "Match failed")),
        ("books.slowRename", ["lathe", "x", "10"], (400, "Match failed")),
        ("books.fail", [1], (400, "Match failed")),
    ],
)
def test_method_errors(
    backend: DjangoBackend, make_ctx: Any, seeded: str, name: str, params: list[Any], error: Any
) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx(), name, params)
    assert error_of(info) == error


def test_fail_is_not_allowed(backend: DjangoBackend, make_ctx: Any) -> None:
    with pytest.raises(DDPError) as info:
        backend.call(make_ctx(), "books.fail", [])
    assert info.value.error == "not-allowed"
    assert info.value.reason == "books.fail always fails: it demonstrates a method error"


def test_slow_rename(backend: DjangoBackend, make_ctx: Any, seeded: str, monkeypatch: Any) -> None:
    import bookstore.ddp

    slept: list[float] = []
    monkeypatch.setattr(bookstore.ddp.time, "sleep", slept.append)
    backend.call(make_ctx(), "books.slowRename", ["lathe", "Slow", 250])
    backend.call(make_ctx(), "books.slowRename", ["lathe", "Slower", 10**9])
    backend.call(make_ctx(), "books.slowRename", ["lathe", "Now", -5])
    assert slept == [0.25, 60.0, 0.0]
    assert Book.objects.get(pk="lathe").title == "Now"


def test_unknown_method(backend: DjangoBackend, make_ctx: Any) -> None:
    assert not backend.has_method("nope")
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx(), "nope", [])
    assert error_of(info) == (404, "Method 'nope' not found")


@pytest.fixture
def transactional() -> DjangoBackend:
    reg = Registry()

    @method("boom", registry=reg)
    def boom(ctx: MethodContext, title: str) -> None:
        Author.objects.create(name="Partial", email="partial@example.org")
        Book.objects.filter(pk="lathe").update(title=title)
        raise RuntimeError("boom")

    @method("refuse", registry=reg)
    def refuse(ctx: MethodContext) -> None:
        Author.objects.create(name="Partial", email="partial@example.org")
        raise DDPError(403, "no")

    @method("invalid", registry=reg)
    def invalid(ctx: MethodContext) -> None:
        Author.objects.create(name="Partial", email="partial@example.org")
        raise ValidationError("bad value")

    @method("manual", atomic=False, registry=reg)
    def manual(ctx: MethodContext) -> None:
        Author.objects.create(name="Kept", email="kept@example.org")
        raise DDPError(500, "after the write")

    @method("whoami", registry=reg)
    def whoami(ctx: MethodContext) -> dict[str, Any]:
        return {
            "user_id": ctx.user_id,
            "authenticated": ctx.user.is_authenticated,
            "session": ctx.session_id,
            "seed": ctx.random_seed,
            "method": ctx.method,
            "remote": ctx.handshake.remote_addr if ctx.handshake else None,
        }

    return DjangoBackend(registry=reg)


def test_failing_method_rolls_back(
    transactional: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        transactional.call(make_ctx(), "boom", ["Changed"])
    with pytest.raises(DDPError):
        transactional.call(make_ctx(), "refuse", [])
    with pytest.raises(DDPError) as info:
        transactional.call(make_ctx(), "invalid", [])
    assert (info.value.error, info.value.reason) == (400, "bad value")
    assert not Author.objects.filter(name="Partial").exists()
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"


def test_non_atomic_methods_keep_their_writes(
    transactional: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    with pytest.raises(DDPError):
        transactional.call(make_ctx(), "manual", [])
    assert Author.objects.filter(name="Kept").exists()


def test_atomic_setting(
    transactional: DjangoBackend, make_ctx: Any, seeded: str, settings: Any
) -> None:
    settings.DDP_ATOMIC_METHODS = False
    with pytest.raises(RuntimeError):
        transactional.call(make_ctx(), "boom", ["Changed"])
    assert Author.objects.filter(name="Partial").exists()


def test_method_context(transactional: DjangoBackend, make_ctx: Any) -> None:
    result = transactional.call(make_ctx("seed"), "whoami", []).result
    assert result == {
        "user_id": None,
        "authenticated": False,
        "session": "session-1",
        "seed": "seed",
        "method": "whoami",
        "remote": "127.0.0.1",
    }


def test_the_client_address_is_the_handshakes(backend: Any) -> None:
    from django_app.context import SubscriptionContext
    from relay.backend import Handshake

    def ctx(addr: str) -> SubscriptionContext:
        hs = Handshake(headers={}, cookies={}, remote_addr=addr, path="/websocket")
        return SubscriptionContext(user=None, user_id=None, session_id="s", handshake=hs)

    assert ctx("203.0.113.7").client_address == "203.0.113.7"
    assert ctx("").client_address is None  # behind proxies that forwarded too little
    assert SubscriptionContext(user=None, user_id=None, session_id="s").client_address is None


# -- unblock (Meteor's this.unblock()) -------------------------------------------------------


def unblocking_ctx(hook: Any, seed: str | None = None) -> CallContext:
    handshake = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")
    return CallContext("session-1", ANONYMOUS, handshake, random_seed=seed, unblock=hook)


def test_slow_rename_unblocks_only_when_asked(
    backend: DjangoBackend, seeded: str, monkeypatch: Any
) -> None:
    events: list[str] = []
    monkeypatch.setattr("bookstore.ddp.time.sleep", lambda s: events.append(f"sleep {s}"))
    ctx = unblocking_ctx(lambda: events.append("unblock"))
    backend.call(ctx, "books.slowRename", ["lathe", "A", 100, {"unblock": True}])
    assert events == ["unblock", "sleep 0.1"]  # unblocked before it waits
    events.clear()
    no_unblock: list[list[Any]] = [[], [None], [{}], [{"unblock": False}]]
    for options in no_unblock:
        backend.call(ctx, "books.slowRename", ["lathe", "B", 100, *options])
    assert events == ["sleep 0.1"] * 4
    assert Book.objects.get(pk="lathe").title == "B"


@pytest.mark.parametrize(
    "options", [{"unblock": "yes"}, {"unblock": True, "extra": 1}, "unblock", [True]]
)
def test_slow_rename_refuses_options_of_the_wrong_shape(
    backend: DjangoBackend, make_ctx: Any, seeded: str, options: Any
) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx(), "books.slowRename", ["lathe", "A", 1, options])
    assert error_of(info) == (400, "Match failed")


def test_unblock_is_idempotent_and_forbids_set_user_after_it(db: None) -> None:
    from django.contrib.auth.models import AnonymousUser

    calls: list[int] = []
    ctx = MethodContext(
        user=AnonymousUser(), user_id=None, session_id="s", unblock=lambda: calls.append(1)
    )
    ctx.unblock()
    ctx.unblock()
    assert calls == [1] and ctx.unblocked
    with pytest.raises(DDPError) as info:
        ctx.set_user(None)
    assert "after calling unblock" in str(info.value.reason)
    # After set_user (allowed, as in Meteor), unblock() lets nothing go on: the new user
    # applies when the method returns, and later messages must not run as the old one.
    held: list[int] = []
    logged = MethodContext(
        user=AnonymousUser(), user_id=None, session_id="s", unblock=lambda: held.append(1)
    )
    logged.set_user(None)
    logged.unblock()
    assert logged.unblocked and held == []
    # Without a hook (a mutator, a test), unblock() only records that it was called.
    bare = MethodContext(user=AnonymousUser(), user_id=None, session_id="s")
    bare.unblock()
    assert bare.unblocked
    with pytest.raises(DDPError):
        bare.set_user(None)


def test_a_method_that_logs_in_after_unblocking_fails_and_writes_nothing(seeded: str) -> None:
    from django.contrib.auth import get_user_model

    reg = Registry()

    @method("sneaky", registry=reg)
    def sneaky(ctx: MethodContext) -> None:
        ctx.unblock()
        Book.objects.filter(pk="lathe").update(title="Sneaky")
        ctx.set_user(get_user_model().objects.get(username="reader"))

    with pytest.raises(DDPError):
        DjangoBackend(registry=reg).call(unblocking_ctx(lambda: None), "sneaky", [])
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"


# -- async def methods -----------------------------------------------------------------------


@pytest.fixture
def async_methods() -> DjangoBackend:
    reg = Registry()

    @method("async.boom", registry=reg)
    async def boom(ctx: MethodContext, title: str) -> None:
        await Author.objects.acreate(name="Partial", email="partial@example.org")
        await Book.objects.filter(pk="lathe").aupdate(title=title)
        await asyncio.sleep(0)
        raise RuntimeError("async boom")

    @method("async.refuse", registry=reg)
    async def refuse(ctx: MethodContext) -> None:
        await Author.objects.acreate(name="Partial", email="partial@example.org")
        raise DDPError(403, "no")

    @method("async.invalid", registry=reg)
    async def invalid(ctx: MethodContext) -> None:
        await Author.objects.acreate(name="Partial", email="partial@example.org")
        raise ValidationError("bad value")

    @method("async.manual", atomic=False, registry=reg)
    async def manual(ctx: MethodContext) -> None:
        await Author.objects.acreate(name="Kept", email="kept@example.org")
        raise DDPError(500, "after the write")

    @method("async.create", registry=reg)
    async def create(ctx: MethodContext, title: str) -> dict[str, Any]:
        # The seeded id comes from current_method(), read where the ORM runs.
        book = await Book.objects.acreate(title=title, author_id="pratchett", price=Decimal("1.00"))

        def where_the_orm_runs() -> dict[str, Any]:
            return {
                "current": current_method() is ctx,
                "atomic": connection.in_atomic_block,
                "sees_it": Book.objects.filter(pk=book.pk).exists(),
            }

        return {
            "id": book.pk,
            "current": current_method() is ctx,
            "orm": await sync_to_async(where_the_orm_runs)(),
            "method": ctx.method,
            "seed": ctx.random_seed,
            "session": ctx.session_id,
        }

    @method("async.unblock", registry=reg)
    async def unblock(ctx: MethodContext, n: int) -> int:
        ctx.unblock()
        await asyncio.sleep(0.01)
        return n + 1

    async def add(a: int, b: int) -> int:
        return a + b

    @method("async.wrapped", registry=reg)
    def wrapped(ctx: MethodContext, a: int, b: int) -> Awaitable[int]:
        return add(a, b)  # a plain function returning an awaitable: it is awaited too

    return DjangoBackend(registry=reg)


def test_async_methods_are_registered_as_they_are(async_methods: DjangoBackend) -> None:
    registered = async_methods.registry.get_method("async.create")
    assert isinstance(registered, Method) and registered.func is not None
    assert inspect.iscoroutinefunction(registered.func)


def test_an_async_method_sees_its_ctx_transaction_and_seeded_ids(
    async_methods: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    expected = RandomStream("s3").sequence("/collection/bookstore.book").id()
    outcome = async_methods.call(make_ctx("s3"), "async.create", ["Async"])
    assert outcome.result == {
        "id": expected,
        "current": True,
        "orm": {"current": True, "atomic": True, "sees_it": True},
        "method": "async.create",
        "seed": "s3",
        "session": "session-1",
    }
    assert Book.objects.get(pk=expected).title == "Async"


def test_a_failing_async_method_rolls_back(
    async_methods: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    with pytest.raises(RuntimeError, match="async boom"):
        async_methods.call(make_ctx(), "async.boom", ["Changed"])
    with pytest.raises(DDPError):
        async_methods.call(make_ctx(), "async.refuse", [])
    with pytest.raises(DDPError) as info:
        async_methods.call(make_ctx(), "async.invalid", [])
    assert (info.value.error, info.value.reason) == (400, "bad value")
    assert not Author.objects.filter(name="Partial").exists()
    assert Book.objects.get(pk="lathe").title == "The Lathe of Heaven"
    with pytest.raises(DDPError):
        async_methods.call(make_ctx(), "async.manual", [])
    assert Author.objects.filter(name="Kept").exists()  # atomic=False keeps its writes


@pytest.mark.parametrize(
    ("name", "params"),
    [("async.create", []), ("async.create", [5]), ("async.unblock", ["1"]), ("async.wrapped", [1])],
)
def test_async_method_params_are_checked_before_it_runs(
    async_methods: DjangoBackend, make_ctx: Any, seeded: str, name: str, params: list[Any]
) -> None:
    with pytest.raises(ClientError) as info:
        async_methods.call(make_ctx(), name, params)
    assert error_of(info) == (400, "Match failed")
    assert Book.objects.count() == 10


def test_an_async_method_may_unblock_and_awaitables_of_plain_functions_are_awaited(
    async_methods: DjangoBackend, make_ctx: Any
) -> None:
    hooked: list[str] = []
    ctx = unblocking_ctx(lambda: hooked.append("unblock"))
    assert async_methods.call(ctx, "async.unblock", [41]).result == 42
    assert hooked == ["unblock"]
    assert async_methods.call(make_ctx(), "async.wrapped", [2, 3]).result == 5


def test_the_async_example_renames_like_the_sync_one(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    assert backend.call(make_ctx(), "books.renameAsync", ["lathe", " New "]).result is None
    assert Book.objects.get(pk="lathe").title == "New"
    for params, error in (
        (["nope", "x"], (404, "Book not found")),
        (["lathe", "  "], (400, "Title must not be empty")),
        (["lathe", "x" * 301], (400, None)),
        (["lathe"], (400, "Match failed")),
    ):
        with pytest.raises(ClientError) as info:
            backend.call(make_ctx(), "books.renameAsync", params)
        got = error_of(info)
        assert got[0] == error[0] and (error[1] is None or got[1] == error[1])
    assert Book.objects.get(pk="lathe").title == "New"


@pytest.mark.django_db(transaction=True)
def test_an_async_methods_committed_writes_are_fenced(seeded: str) -> None:
    # Committed for real: the positions its transaction published are what the relay's
    # write fence waits for, as for a plain method.
    from tests.django_app.changestream_helpers import BOOKS, position

    backend = DjangoBackend()
    handshake = Handshake(headers={}, cookies={}, remote_addr="127.0.0.1", path="/websocket")
    ctx = CallContext("s", ANONYMOUS, handshake)
    start = position(BOOKS)
    outcome = backend.call(ctx, "books.renameAsync", ["lathe", "Fenced"])
    assert outcome.writes == (WritePosition(BOOKS, start + 1),)
    assert position(BOOKS) == start + 1


# A monkey-patched process, as a relay worker is: async methods of several greenlets at
# once, while other greenlets use the ORM synchronously. asyncio marks its running loop
# per OS thread; without django_app.coroutines' tracer every greenlet would see it and
# Django would refuse their queries (SynchronousOnlyOperation).
GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()
from psycogreen.gevent import patch_psycopg

patch_psycopg()
import asyncio
import django

django.setup()
import gevent
import greenlet
from asgiref.sync import sync_to_async
from bookstore.models import Author, Book
from django.db import connection, transaction

from django_app import MethodContext, method
from django_app.backend import DjangoBackend
from django_app.context import current_method
from django_app.registries import Registry
from relay.backend import ANONYMOUS, CallContext, Handshake

reg = Registry()


@method("nap", registry=reg)
async def nap(ctx: MethodContext, n: int, fail: bool) -> list[object]:
    await Author.objects.acreate(id=f"a{n}", name=f"A{n}", email=f"a{n}@example.org")
    await asyncio.sleep(0.05)  # the other greenlets run meanwhile
    count = await Author.objects.filter(pk=f"a{n}").acount()
    atomic = await sync_to_async(lambda: connection.in_atomic_block)()
    if fail:
        raise RuntimeError("rolled back")
    return [count, atomic, current_method() is ctx]


backend = DjangoBackend(registry=reg)
hs = Handshake({}, {}, "127.0.0.1", "/websocket")


def call(n):
    ctx = CallContext(f"s{n}", ANONYMOUS, hs)
    try:
        return backend.call(ctx, "nap", [n, n % 3 == 0]).result
    except RuntimeError as exc:
        return str(exc)


def plain(n):
    seen = []
    for _ in range(10):
        with transaction.atomic():
            seen.append(Book.objects.count() >= 0)
        gevent.sleep(0.01)
    return all(seen)


jobs = [gevent.spawn(call, n) for n in range(6)] + [gevent.spawn(plain, n) for n in range(3)]
gevent.joinall(jobs, timeout=30)
results = [job.value if job.successful() else repr(job.exception) for job in jobs]
print(results)
assert results[:6] == ["rolled back" if n % 3 == 0 else [1, True, True] for n in range(6)]
assert results[6:] == [True, True, True], results
kept = sorted(Author.objects.filter(pk__startswith="a").values_list("pk", flat=True))
assert kept == ["a1", "a2", "a4", "a5"], kept
assert greenlet.gettrace() is None and asyncio._get_running_loop() is None
Author.objects.filter(pk__in=kept).delete()
print("ok")
"""


@pytest.mark.django_db(transaction=True)
def test_async_methods_under_gevent_monkey_patching(django_database_url: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": django_database_url,
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "DJANGO_SECRET_KEY": "test-only-" + "k" * 50,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "example")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.endswith("ok\n"), done.stdout + done.stderr
