"""What DjangoBackend gives the relay to share live queries: keys, windows, counts, the
low-level publish API and universal publications, against PostgreSQL."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import F

from django_app import Collection, Count, Cursor, Publication, publish
from django_app.backend import DjangoBackend
from django_app.exceptions import DDPError
from django_app.registries import Registry
from relay.backend import Condition, CountOf, Identity, Order, Window
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db


@pytest.fixture
def reg() -> Registry:
    reg = Registry()

    @reg.register
    class Authors(Collection):
        model = Author
        fields = ["name", "email"]

    @reg.register
    class Books(Collection):
        model = Book
        fields = ["title", "author_id", "published", "price"]

        def visible(self, user: Any) -> Any:
            # Staff see every book, others the ones under 20.
            return None if user.is_staff else {"price__lt": 20}

    Publication("all", cursors=[Cursor(Book)], registry=reg)
    Publication("same", cursors=[Book.objects.all()], registry=reg)

    @publish("latest", registry=reg)
    def latest(ctx: Any, n: int) -> Any:
        return Cursor(Book).order_by("-published")[:n]

    @publish("titles", registry=reg)
    def titles(ctx: Any, skip: int, n: int) -> Any:
        return Cursor(Book).order_by("title")[skip : skip + n]

    @publish("shuffled", registry=reg)
    def shuffled(ctx: Any) -> Any:
        return Cursor(Book).order_by("?")[:3]

    @publish("count", registry=reg)
    def count(ctx: Any, author_id: str) -> Any:
        return Count(Cursor(Book, author_id=author_id), id=author_id)

    return reg


@pytest.fixture
def live(reg: Registry) -> DjangoBackend:
    return DjangoBackend(registry=reg)


def _staff() -> Identity:
    user = User.objects.create(username="staff", is_staff=True)
    return Identity(user, str(user.pk))


def test_identical_queries_share_a_key_whoever_runs_them(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    (anonymous,) = subscribe(live, make_ctx(), "all", []).specs
    (again,) = subscribe(live, make_ctx(), "all", []).specs
    (other_pub,) = subscribe(live, make_ctx(), "same", []).specs
    (staff,) = subscribe(live, make_ctx(identity=_staff()), "all", []).specs
    assert anonymous.key == again.key == other_pub.key  # the same SQL: one shared query
    assert staff.key != anonymous.key  # another visibility: another result
    assert anonymous.route.conditions == (Condition("price", "lt", Decimal(20)),)
    assert staff.route.conditions == ()


def test_a_window_sorts_like_meteor_null_last_descending_and_ties_by_id(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    # Two undated books and two on the same day as Going Postal (ties by _id, ascending).
    author = Author.objects.get(pk="pratchett")
    for book_id, published in [("zz", None), ("aa", None), ("b-tie", dt.date(2004, 9, 25))]:
        Book.objects.create(id=book_id, title=book_id, author=author, published=published, price=1)
    sub = subscribe(live, make_ctx(identity=_staff()), "latest", [20])
    (spec,) = sub.specs
    assert spec.window == Window(
        (Order("published", descending=True), Order("id")), limit=20, skip=0
    )
    ids = [d.id for d in sub.data[0].documents]
    assert ids[:4] == ["stone-sky", "obelisk-gate", "fifth-season", "b-tie"]
    assert ids[4] == "going-postal"  # same date: "b-tie" < "going-postal"
    assert ids[-2:] == ["aa", "zz"]  # no date: last, by id
    assert sub.data[0].complete  # 13 rows < capacity 40
    assert sub.data[0].keys is not None and sub.data[0].keys[0] == (
        dt.date(2017, 8, 15),
        "stone-sky",
    )


def test_a_window_reads_its_buffer_and_says_when_more_may_follow(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    sub = subscribe(live, make_ctx(identity=_staff()), "titles", [1, 2])
    (spec,) = sub.specs
    assert spec.window is not None and spec.window.capacity == 5  # skip + 2 * limit
    data = sub.data[0]
    assert len(data.documents) == 5 and not data.complete
    assert [d.fields["title"] for d in sub.documents] == ["Going Postal", "Guards! Guards!"]


def test_text_sorts_by_code_point_whatever_the_collation(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    author = Author.objects.get(pk="pratchett")
    Book.objects.all().delete()
    for book_id, title in [("1", "apple"), ("2", "Banana"), ("3", "Émile"), ("4", "zebra")]:
        Book.objects.create(id=book_id, title=title, author=author, price=1)
    # A linguistic collation on the column (the test database's own is C.UTF-8, which
    # already sorts by code point): a plain ORDER BY title now puts "apple" first.
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # run the pending flushes first
        # The update trigger names the column; the test's transaction puts it back.
        cursor.execute("DROP TRIGGER ddp_g_row_bookstore_book_u ON bookstore_book")
        cursor.execute(
            'ALTER TABLE bookstore_book ALTER COLUMN title TYPE varchar(300) COLLATE "und-x-icu"'
        )
    assert list(Book.objects.order_by("title").values_list("title", flat=True))[:2] == [
        "apple",
        "Banana",
    ]
    sub = subscribe(live, make_ctx(identity=_staff()), "titles", [0, 10])
    assert [d.fields["title"] for d in sub.documents] == ["Banana", "apple", "zebra", "Émile"]


def test_an_unreadable_order_is_run_as_it_is_and_re_read_on_change(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    sub = subscribe(live, make_ctx(identity=_staff()), "shuffled", [])
    (spec,) = sub.specs
    assert spec.window is None and spec.route.conditions is None
    assert len(sub.documents) == 3


def test_a_refetch_reads_the_rows_again(live: DjangoBackend, make_ctx: Any, seeded: str) -> None:
    """The relay keeps a spec's source to read it again (an unroutable change): the
    second fetch must see what was committed since, not the rows the first one cached."""
    Publication(
        "unroutable", cursors=[Cursor(Book.objects.extra(where=["1 = 1"]))], registry=live.registry
    )
    sub = subscribe(live, make_ctx(identity=_staff()), "unroutable", [])
    (spec,) = sub.specs
    before = {d.id for d in sub.documents}
    Book.objects.filter(pk=next(iter(before))).delete()
    (again,) = live.fetch([spec])
    assert {d.id for d in again.documents} == before - {next(iter(before))}


def test_a_count_is_one_document_of_a_shareable_query(
    live: DjangoBackend, make_ctx: Any, seeded: str
) -> None:
    sub = subscribe(live, make_ctx(), "count", ["pratchett"])
    (spec,) = sub.specs
    assert spec.count == CountOf("counts", "pratchett", "count")
    assert spec.route.conditions == (
        Condition("author_id", "exact", "pratchett"),
        Condition("price", "lt", Decimal(20)),
    )
    assert [(d.collection, d.id, d.fields) for d in sub.documents] == [
        ("counts", "pratchett", {"count": Book.objects.filter(author_id="pratchett").count()})
    ]
    (leguin,) = subscribe(live, make_ctx(), "count", ["leguin"]).specs
    assert leguin.key != spec.key


def test_count_refuses_a_sliced_cursor() -> None:
    with pytest.raises(TypeError, match="not sliced"):
        Count(Cursor(Book).order_by("title")[:3], id="x")


def test_universal_publications_run_for_everyone_but_cannot_be_subscribed(
    reg: Registry, make_ctx: Any, seeded: str
) -> None:
    @publish(None, registry=reg)
    def announcements(ctx: Any) -> Any:
        return Cursor(Author, pk="leguin")

    backend = DjangoBackend(registry=reg)
    (name,) = backend.universal_publications()
    assert name.endswith("announcements") and not backend.has_publication(name)
    assert [d.id for d in subscribe(backend, make_ctx(), name, []).documents] == ["leguin"]


def test_the_low_level_api_reaches_the_sink_and_defers_ready(
    reg: Registry, make_ctx: Any, seeded: str
) -> None:
    seen: list[Any] = []

    @publish("custom", registry=reg)
    def custom(ctx: Any, n: int) -> None:
        ctx.added("stats", "books", {"n": Book.objects.count()})
        ctx.changed("stats", "books", {"n": n}, cleared=["old"])
        ctx.added(Author, Author.objects.get(pk="leguin"), {"name": "UKL"})
        ctx.removed(Author, "leguin")
        ctx.on_stop(lambda: seen.append("stopped"))
        ctx.observe(Book, lambda changes: seen.append(list(changes)))
        ctx.ready()

    @publish("mixed", registry=reg)
    def mixed(ctx: Any) -> Any:
        ctx.added("stats", "x", {})
        return Cursor(Author)

    @publish("failing", registry=reg)
    def failing(ctx: Any) -> None:
        ctx.error(403, "no stats for you")

    backend = DjangoBackend(registry=reg)
    sub = subscribe(backend, make_ctx(), "custom", [7])
    assert sub.sink.calls == [
        ("added", "stats", "books", {"n": 10}),
        ("changed", "stats", "books", {"n": 7}, ("old",)),
        ("added", "bookstore.author", "leguin", {"name": "UKL"}),
        ("removed", "bookstore.author", "leguin"),
        ("ready",),
    ]
    assert not sub.plan.auto_ready and sub.specs == []
    ((channel, collection, callback, position),) = sub.sink.observers
    assert (channel, collection) == ("ddp_bookstore_book", "bookstore.book")
    assert position[0] >= 0
    callback(["a change"])
    (stop,) = sub.sink.stop_callbacks
    stop()
    assert seen == [["a change"], "stopped"]
    assert subscribe(backend, make_ctx(), "mixed", []).plan.auto_ready  # returned a cursor
    failed = subscribe(backend, make_ctx(), "failing", [])
    assert failed.sink.calls == [("error", 403, "no stats for you")] and failed.sink.stopped


def test_the_low_level_api_needs_a_relay_subscription() -> None:
    from django_app.context import SubscriptionContext

    ctx = SubscriptionContext(user=None, user_id=None, session_id="s")
    with pytest.raises(RuntimeError, match="no relay subscription"):
        ctx.added("x", "1", {})
    assert isinstance(DDPError(403, "x"), Exception)


def test_window_expressions_accept_f_objects(reg: Registry, make_ctx: Any, seeded: str) -> None:
    @publish("cheapest", registry=reg)
    def cheapest(ctx: Any) -> Any:
        return Cursor(Book).order_by(F("price").asc(), "-title")[:2]

    backend = DjangoBackend(registry=reg)
    sub = subscribe(backend, make_ctx(identity=_staff()), "cheapest", [])
    (spec,) = sub.specs
    assert spec.window is not None
    assert spec.window.order == (Order("price"), Order("title", descending=True), Order("id"))
    prices = [d.fields["price"] for d in sub.documents]
    assert prices == sorted(prices)
