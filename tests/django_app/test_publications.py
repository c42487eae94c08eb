"""Subscriptions through DjangoBackend.subscribe: documents, routes, params, visibility, and
``async def`` publications."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from bookstore.models import Author, Book
from django.db import DatabaseError, connection, connections
from django.db.models import Q

from django_app import Collection, Cursor, DDPError, Publication, SubscriptionContext, publish
from django_app.backend import DjangoBackend
from django_app.context import current_method
from django_app.registries import Registry, registry
from relay.backend import ClientError, Condition, Identity, Route
from relay.protocol import ejson
from tests.django_app.publishing import RecordingSink, subscribe

pytestmark = pytest.mark.django_db


def by_collection(data: Any) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in data.documents:
        assert doc.id not in out.setdefault(doc.collection, {})
        out[doc.collection][doc.id] = doc.fields
    return out


def test_books_all(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    data = subscribe(backend, make_ctx(), "books.all", [])
    docs = by_collection(data)
    assert len(docs["bookstore.author"]) == 3
    assert len(docs["bookstore.book"]) == 10
    assert len(data.documents) == 13
    assert docs["bookstore.author"]["pratchett"] == {
        "name": "Terry Pratchett",
        "email": "terry.pratchett@example.org",
    }
    book = docs["bookstore.book"]["small-gods"]
    assert sorted(book) == sorted(BOOK_FIELDS)
    assert book["tags"] == ["discworld", "fantasy"]  # tag names, sorted by code point
    wire = ejson.to_json_value(book)
    assert wire["price"] == "8.99"
    assert wire["published"] == {"$date": 704678400000}
    assert wire["authorId"] == "pratchett"
    assert data.routes == (
        Route("ddp_bookstore_author", "bookstore.author", ()),
        Route("ddp_bookstore_book", "bookstore.book", ()),
    )


#: The book document's fields, in the order ``BookCollection.fields`` declares them.
BOOK_FIELDS = ["title", "authorId", "published", "price", "tags", "updatedAt", "details", "ratings"]


def test_book_fields_keep_their_declared_order(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(backend, make_ctx(), "books.all", [])
    assert list(by_collection(data)["bookstore.book"]["small-gods"]) == BOOK_FIELDS


def test_books_by_author_email(backend: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    email = "nk.jemisin@example.org"
    data = subscribe(backend, make_ctx(), "books.byAuthorEmail", [email])
    docs = by_collection(data)
    assert list(docs["bookstore.author"]) == ["jemisin"]
    assert set(docs["bookstore.book"]) == {"fifth-season", "obelisk-gate", "stone-sky"}
    assert data.routes == (
        Route("ddp_bookstore_author", "bookstore.author", (Condition("email", "exact", email),)),
        Route(
            "ddp_bookstore_book", "bookstore.book", (Condition("author__email", "exact", email),)
        ),
    )
    assert by_collection(subscribe(backend, make_ctx(), "books.byAuthorEmail", ["x@y.z"])) == {}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("books.byAuthorEmail", []),
        ("books.byAuthorEmail", [5]),
        ("books.byAuthorEmail", [None]),
        ("books.byAuthorEmail", ["a", "b"]),
        ("books.all", ["extra"]),
    ],
)
def test_bad_params_are_match_failed(
    backend: DjangoBackend, make_ctx: Any, name: str, params: list[Any]
) -> None:
    with pytest.raises(Exception) as info:
        subscribe(backend, make_ctx(), name, params)
    assert (info.value.error, info.value.reason) == (400, "Match failed")  # type: ignore[attr-defined]


def test_unknown_publication(backend: DjangoBackend, make_ctx: Any) -> None:
    assert not backend.has_publication("nope")
    assert backend.has_publication("books.all")
    with pytest.raises(Exception) as info:
        subscribe(backend, make_ctx(), "nope", [])
    assert (info.value.error, info.value.reason) == (404, "Subscription 'nope' not found")  # type: ignore[attr-defined]


@pytest.fixture
def private() -> Any:
    """A registry whose author collection shows each user only their own author row."""
    reg = Registry()

    @reg.register
    class PrivateAuthors(Collection):
        model = Author
        fields = ["name"]
        related = ["email"]  # not published, but visible() filters on it

        def visible(self, user: Any) -> Any:
            if not user.is_authenticated:
                return {"pk__in": []}
            return {"email": user.email}

    @reg.register
    class OrBooks(Collection):
        model = Book
        fields = ["title"]

        def visible(self, user: Any) -> Any:
            return Q(price__lt=9) | Q(title__startswith="The")

    Publication("authors", cursors=[Author.objects.all()], registry=reg)
    Publication("books", cursors=[Cursor(Book, author="pratchett")], registry=reg)
    Publication("sliced", cursors=[Book.objects.order_by("title")[:2]], registry=reg)

    @publish("twice", registry=reg)
    def twice(ctx: Any) -> Any:
        return [Cursor(Book), Book.objects.filter(title="x")]

    @publish("bad", registry=reg)
    def bad(ctx: Any) -> Any:
        return "not a cursor"

    @publish("nothing", registry=reg)
    def nothing(ctx: Any) -> None:
        return None

    @publish("single", registry=reg)
    def single(ctx: Any) -> Any:
        assert ctx.session_id == "session-1"
        return Author.objects

    return DjangoBackend(registry=reg)


def test_visibility_rule_filters_and_routes(
    private: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    from django.contrib.auth.models import User

    anonymous = subscribe(private, make_ctx(), "authors", [])
    assert anonymous.documents == ()
    assert anonymous.routes == (
        Route("ddp_bookstore_author", "bookstore.author", (Condition("id", "in", ()),)),
    )

    user = User.objects.create(username="u", email="terry.pratchett@example.org")
    data = subscribe(private, make_ctx(identity=Identity(user, str(user.pk))), "authors", [])
    assert [d.id for d in data.documents] == ["pratchett"]
    assert data.routes[0].conditions == (
        Condition("email", "exact", "terry.pratchett@example.org"),
    )

    reloaded = subscribe(private, make_ctx(identity=Identity(None, str(user.pk))), "authors", [])
    assert [d.id for d in reloaded.documents] == ["pratchett"]
    gone = subscribe(private, make_ctx(identity=Identity(None, "999999")), "authors", [])
    assert gone.documents == ()


def test_unroutable_visibility_makes_unroutable_routes(
    private: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(private, make_ctx(), "books", [])
    titles = sorted(d.fields["title"] for d in data.documents)
    assert titles == ["Guards! Guards!", "Small Gods"]  # Going Postal costs 9.49
    assert data.routes == (Route("ddp_bookstore_book", "bookstore.book", None),)


def test_sliced_queryset_keeps_top_n_of_visible_rows(
    private: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    data = subscribe(private, make_ctx(), "sliced", [])
    # Top 2 by title among the visible (price < 9 or "The ...") books, not of all books.
    assert [d.fields["title"] for d in data.documents] == ["Guards! Guards!", "Small Gods"]
    assert data.routes[0].conditions is None


def test_publication_shapes(private: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    with pytest.raises(ValueError, match=r"multiple cursors for collection bookstore\.book"):
        subscribe(private, make_ctx(), "twice", [])
    with pytest.raises(TypeError, match="can only return a Cursor or an array of Cursors"):
        subscribe(private, make_ctx(), "bad", [])
    assert subscribe(private, make_ctx(), "nothing", []).documents == ()
    assert len(subscribe(private, make_ctx(), "single", []).documents) == 0  # nobody logged in


def test_static_querysets_are_reevaluated(
    backend: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    assert len(subscribe(backend, make_ctx(), "books.all", []).documents) == 13
    Book.objects.filter(pk="stone-sky").delete()
    assert len(subscribe(backend, make_ctx(), "books.all", []).documents) == 12


def test_publication_declaration_errors() -> None:
    reg = Registry()
    with pytest.raises(TypeError):
        Publication("", cursors=[], registry=reg)
    with pytest.raises(TypeError):
        Publication("x", cursors=[], func=lambda ctx: None, registry=reg)
    with pytest.raises(TypeError, match="can only return"):
        Publication("x", cursors=[42], registry=reg)  # type: ignore[list-item]


# -- async def publications --------------------------------------------------------------------


@pytest.fixture
def async_pubs() -> Iterator[DjangoBackend]:
    """The project's registry plus async publications, and sync twins to compare with."""
    with registry.isolated():

        @publish("async.byAuthor")
        async def by_author(ctx: SubscriptionContext, author_id: str) -> Cursor:
            author = await Author.objects.filter(pk=author_id).afirst()
            if author is None:
                raise DDPError(404, "Author not found")
            return Cursor(Book, author=author)

        @publish("sync.byAuthor")
        def by_author_sync(ctx: SubscriptionContext, author_id: str) -> Cursor:
            return Cursor(Book, author=Author.objects.get(pk=author_id))

        @publish("async.stats")
        async def stats(ctx: SubscriptionContext) -> None:
            def where_the_orm_runs() -> dict[str, Any]:
                return {"atomic": connection.in_atomic_block, "method": current_method()}

            where = await sync_to_async(where_the_orm_runs)()
            ctx.added("stats", "books", {"count": await Book.objects.acount(), **where})
            ctx.ready()

        yield DjangoBackend()


def test_an_async_publication_publishes_what_its_sync_twin_does(
    async_pubs: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    got = subscribe(async_pubs, make_ctx(), "async.byAuthor", ["pratchett"])
    twin = subscribe(async_pubs, make_ctx(), "sync.byAuthor", ["pratchett"])
    assert got.documents == twin.documents and len(got.documents) > 0
    assert got.routes == twin.routes
    assert [s.key for s in got.specs] == [s.key for s in twin.specs]
    assert got.plan.auto_ready


def test_an_async_publication_checks_params_and_raises_client_errors(
    async_pubs: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    for params in ([], [5], ["pratchett", 1]):
        with pytest.raises(ClientError) as info:
            subscribe(async_pubs, make_ctx(), "async.byAuthor", params)
        assert (info.value.error, info.value.reason) == (400, "Match failed")
    with pytest.raises(ClientError) as info:
        subscribe(async_pubs, make_ctx(), "async.byAuthor", ["nobody"])
    assert (info.value.error, info.value.reason) == (404, "Author not found")


def test_an_async_publication_may_use_the_low_level_api_in_its_snapshot(
    async_pubs: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    got = subscribe(async_pubs, make_ctx(), "async.stats", [])
    assert not got.plan.auto_ready  # it marks itself ready, as a sync one would
    assert got.sink.calls == [
        ("added", "stats", "books", {"count": 10, "atomic": True, "method": None}),
        ("ready",),
    ]


# -- the snapshot, begun at a publish function's first query -----------------------------------


@pytest.fixture
def snapshot_pubs() -> Iterator[DjangoBackend]:
    """Publish functions that report the connection and transaction they run in."""
    with registry.isolated():

        @publish("lazy.nothing")
        def reads_nothing(ctx: SubscriptionContext) -> Cursor:
            raw = connection.connection
            seen["status"] = raw.info.transaction_status
            seen["pid"] = raw.info.backend_pid
            return Cursor(Book)

        @publish("lazy.reads")
        def reads(ctx: SubscriptionContext) -> Cursor:
            runs["lazy.reads"] += 1
            with connection.cursor() as cursor:
                cursor.execute("SHOW transaction_isolation")
                seen["isolation"] = cursor.fetchone()[0]
                cursor.execute("SHOW transaction_read_only")
                seen["read_only"] = cursor.fetchone()[0]
            seen["authors"] = Author.objects.count()
            return Cursor(Book)

        @publish("lazy.after")
        def writes_after(ctx: SubscriptionContext) -> Cursor:
            ctx.after_snapshot(lambda: seen.__setitem__("after", Author.objects.count()))
            return Cursor(Book)

        @publish("lazy.swallows")
        def swallows(ctx: SubscriptionContext) -> Cursor:
            runs["lazy.swallows"] += 1
            try:
                seen["authors"] = Author.objects.count()
            except DatabaseError:
                seen["authors"] = None
            return Cursor(Book)

        @publish("lazy.published")
        def published_first(ctx: SubscriptionContext) -> None:
            ctx.added("stats", "x", {"n": 1})
            ctx.added("stats", "y", {"n": Author.objects.count()})
            ctx.ready()

        seen: dict[str, Any] = {}
        runs = {"lazy.reads": 0, "lazy.swallows": 0}
        backend = DjangoBackend()
        backend.seen = seen  # type: ignore[attr-defined]
        backend.runs = runs  # type: ignore[attr-defined]
        yield backend


@pytest.fixture
def dead_connection(transactional_db: None) -> Iterator[int]:
    """The default connection as the example project runs it (persistent, health-checked
    per call), its server process then terminated; yields that process's pid."""
    saved = {k: connection.settings_dict[k] for k in ("CONN_HEALTH_CHECKS", "CONN_MAX_AGE")}
    connection.close()
    connection.settings_dict.update(CONN_HEALTH_CHECKS=True, CONN_MAX_AGE=None)
    try:
        connection.ensure_connection()
        pid = connection.connection.info.backend_pid
        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # gone
        finally:
            other.close()
        yield pid
    finally:
        connection.close()
        connection.settings_dict.update(saved)


@pytest.mark.django_db(transaction=True)
def test_a_publish_function_that_reads_nothing_sends_nothing(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str, dead_connection: int
) -> None:
    """No BEGIN, no SET TRANSACTION, not even the health check's SELECT 1: the function
    runs on the dead connection, unnoticed (the documents are fetched on a new one)."""
    got = subscribe(snapshot_pubs, make_ctx(), "lazy.nothing", [])
    seen = snapshot_pubs.seen  # type: ignore[attr-defined]
    assert (seen["pid"], seen["status"]) == (dead_connection, 0)  # psycopg's IDLE
    assert len(got.documents) == 10 and not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_a_publish_function_that_queries_reads_one_read_only_repeatable_snapshot(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    subscribe(snapshot_pubs, make_ctx(), "lazy.reads", [])
    seen = snapshot_pubs.seen  # type: ignore[attr-defined]
    assert (seen["isolation"], seen["read_only"]) == ("repeatable read", "on")
    assert seen["authors"] > 0 and not connection.in_atomic_block


@pytest.mark.django_db(transaction=True)
def test_a_connection_found_dead_at_the_first_query_is_replaced(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str, dead_connection: int
) -> None:
    """The health check, made at the first query outside the transaction: the dead
    connection is replaced and the function runs again, in a snapshot."""
    subscribe(snapshot_pubs, make_ctx(), "lazy.reads", [])
    seen = snapshot_pubs.seen  # type: ignore[attr-defined]
    assert (seen["isolation"], seen["read_only"]) == ("repeatable read", "on")
    assert connection.connection.info.backend_pid != dead_connection
    assert snapshot_pubs.runs["lazy.reads"] == 2  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_after_snapshot_callbacks_meet_a_checked_connection(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str, dead_connection: int
) -> None:
    """A function that reads nothing leaves the connection unchecked, as it found it: the
    callback that writes after it (presence joins there) gets a live one."""
    subscribe(snapshot_pubs, make_ctx(), "lazy.after", [])
    assert snapshot_pubs.seen["after"] > 0  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_a_function_that_catches_the_dead_connection_still_runs_again(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str, dead_connection: int
) -> None:
    subscribe(snapshot_pubs, make_ctx(), "lazy.swallows", [])
    assert snapshot_pubs.seen["authors"] > 0  # type: ignore[attr-defined]
    assert snapshot_pubs.runs["lazy.swallows"] == 2  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_a_function_that_published_before_the_dead_connection_is_not_run_twice(
    snapshot_pubs: DjangoBackend, make_ctx: Any, seeded: str, dead_connection: int
) -> None:
    """Its first document went to the client: a second run would send it twice, so the
    subscription fails instead (the client gets its error), once."""
    sink = RecordingSink()
    with pytest.raises(DatabaseError):
        snapshot_pubs.subscribe(make_ctx(), "lazy.published", [], sink)
    assert sink.calls == [("added", "stats", "x", {"n": 1})]
