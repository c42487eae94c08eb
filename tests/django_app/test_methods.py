"""Methods through DjangoBackend.call: seeded ids, errors, transactions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.core.exceptions import ValidationError

from django_app import DDPError, MethodContext, method
from django_app.backend import DjangoBackend
from django_app.registries import Registry
from relay.backend import ClientError, MethodOutcome
from relay.protocol.alea import RandomStream

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
        ({**NEW_BOOK, "price": "cheap"}, (400, "Price must be a decimal number")),
        ({**NEW_BOOK, "price": "NaN"}, (400, "Price must be a decimal number")),
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
