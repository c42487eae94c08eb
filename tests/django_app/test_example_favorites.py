"""The example's favorites (``example/bookstore/ddp.py``) through DjangoBackend: the
``favorites.add`` / ``favorites.remove`` methods, the ``favorites.mine`` publication, and
how a favorite's live changes decode and route."""

from __future__ import annotations

from typing import Any

import pytest
from bookstore.models import Book, Favorite
from django.contrib.auth.models import User
from django.db.models.query import QuerySet

from django_app.backend import DjangoBackend
from django_app.registries import registry
from relay.backend import ANONYMOUS, ClientError, Identity, MethodOutcome, Route
from relay.protocol.alea import RandomStream
from relay.stream.routing import matches
from tests.django_app.changestream_helpers import flush_now, tx_changes
from tests.django_app.publishing import subscribe

pytestmark = pytest.mark.django_db

CHANNEL = "ddp_bookstore_favorite"


def identity(user: User) -> Identity:
    return Identity(user=user, user_id=str(user.pk))


def error_of(info: pytest.ExceptionInfo[Any]) -> tuple[Any, Any]:
    assert isinstance(info.value, ClientError)
    return info.value.error, info.value.reason


@pytest.fixture
def reader(seeded: str) -> User:
    return User.objects.get(username="reader")


@pytest.fixture
def admin(seeded: str) -> User:
    return User.objects.get(username="admin")


def test_add_returns_the_id_the_stub_drew(
    backend: DjangoBackend, make_ctx: Any, reader: User
) -> None:
    expected = RandomStream("seed-1").sequence("/collection/bookstore.favorite").id()
    outcome = backend.call(make_ctx("seed-1", identity(reader)), "favorites.add", ["lathe"])
    assert outcome == MethodOutcome(result=expected)
    favorite = Favorite.objects.get(pk=expected)
    assert (favorite.user_id, favorite.book_id) == (reader.pk, "lathe")


def test_adding_an_existing_favorite_returns_its_id(
    backend: DjangoBackend, make_ctx: Any, reader: User
) -> None:
    first = backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"]).result
    again = backend.call(make_ctx("b", identity(reader)), "favorites.add", ["lathe"]).result
    assert again == first
    assert Favorite.objects.filter(user=reader).count() == 1


def test_each_user_has_their_own_favorite_of_a_book(
    backend: DjangoBackend, make_ctx: Any, reader: User, admin: User
) -> None:
    mine = backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"]).result
    theirs = backend.call(make_ctx("b", identity(admin)), "favorites.add", ["lathe"]).result
    assert mine != theirs
    assert Favorite.objects.get(pk=theirs).user_id == admin.pk


def test_unknown_book_is_404(backend: DjangoBackend, make_ctx: Any, reader: User) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx("a", identity(reader)), "favorites.add", ["no-such-book"])
    assert error_of(info) == (404, "Book not found")
    assert not Favorite.objects.exists()


@pytest.mark.parametrize("params", [[], [5], [None], ["lathe", "extra"], [["lathe"]]])
@pytest.mark.parametrize("name", ["favorites.add", "favorites.remove"])
def test_bad_params_are_match_failed(
    backend: DjangoBackend, make_ctx: Any, reader: User, name: str, params: list[Any]
) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx("a", identity(reader)), name, params)
    assert error_of(info) == (400, "Match failed")


@pytest.mark.parametrize("name", ["favorites.add", "favorites.remove"])
def test_nobody_logged_in_is_not_authorized(
    backend: DjangoBackend, make_ctx: Any, seeded: str, name: str
) -> None:
    with pytest.raises(ClientError) as info:
        backend.call(make_ctx("a", ANONYMOUS), name, ["lathe"])
    assert info.value.error == "not-authorized"
    assert not Favorite.objects.exists()


def test_a_deactivated_user_is_not_authorized(
    backend: DjangoBackend, make_ctx: Any, reader: User
) -> None:
    """A session that still carries the id of a user deactivated since (the backend
    reloads it and hands an anonymous user) may not write favorites either."""
    backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"])
    User.objects.filter(pk=reader.pk).update(is_active=False)
    stale = Identity(user=None, user_id=str(reader.pk))
    for name in ("favorites.add", "favorites.remove"):
        with pytest.raises(ClientError) as info:
            backend.call(make_ctx("b", stale), name, ["small-gods"])
        assert info.value.error == "not-authorized"
    assert list(Favorite.objects.values_list("book_id", flat=True)) == ["lathe"]


def test_remove_takes_only_the_callers_favorite(
    backend: DjangoBackend, make_ctx: Any, reader: User, admin: User
) -> None:
    backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"])
    backend.call(make_ctx("b", identity(reader)), "favorites.add", ["small-gods"])
    kept = backend.call(make_ctx("c", identity(admin)), "favorites.add", ["lathe"]).result
    outcome = backend.call(make_ctx("d", identity(reader)), "favorites.remove", ["lathe"])
    assert outcome == MethodOutcome(result=None)
    assert sorted(Favorite.objects.values_list("user_id", "book_id")) == sorted(
        [(reader.pk, "small-gods"), (admin.pk, "lathe")]
    )
    # Removing what is not (or no longer) a favorite, or an unknown book, does nothing.
    for book in ("lathe", "no-such-book"):
        backend.call(make_ctx("e", identity(reader)), "favorites.remove", [book])
    assert Favorite.objects.filter(pk=kept).exists()
    assert Favorite.objects.count() == 2


def test_a_concurrent_add_of_the_same_pair_returns_the_winners_id(
    backend: DjangoBackend, make_ctx: Any, reader: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sessions of one user add the same book at once: the second insert hits the
    unique constraint (for real, in PostgreSQL), which must roll back to a savepoint only
    and answer the row the first one committed."""
    winner = Favorite.objects.create(user=reader, book=Book.objects.get(pk="lathe"))
    real_first = QuerySet.first
    lookups: list[Any] = []

    def first_misses_once(self: QuerySet[Any]) -> Any:
        if self.model is not Favorite:
            return real_first(self)
        found = None if not lookups else real_first(self)
        lookups.append(found)  # the first misses: the winner's row was not yet visible
        return found

    monkeypatch.setattr(QuerySet, "first", first_misses_once)
    result = backend.call(make_ctx("late", identity(reader)), "favorites.add", ["lathe"]).result
    # Missed, inserted, hit the constraint, looked again in the same transaction.
    assert lookups == [None, winner]
    assert result == winner.id
    assert Favorite.objects.filter(user=reader).count() == 1


def test_favorites_mine_is_empty_and_unrouted_when_logged_out(
    backend: DjangoBackend, make_ctx: Any, reader: User
) -> None:
    backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"])
    data = subscribe(backend, make_ctx(None, ANONYMOUS), "favorites.mine", [])
    assert (tuple(data.documents), tuple(data.routes)) == ((), ())


def test_favorites_mine_publishes_the_users_own(
    backend: DjangoBackend, make_ctx: Any, reader: User, admin: User
) -> None:
    ids = {
        book: backend.call(make_ctx(book, identity(reader)), "favorites.add", [book]).result
        for book in ("lathe", "small-gods")
    }
    backend.call(make_ctx("x", identity(admin)), "favorites.add", ["lathe"])
    data = subscribe(backend, make_ctx(None, identity(reader)), "favorites.mine", [])
    docs = {d.id: (d.collection, d.fields) for d in data.documents}
    assert docs == {
        ids[book]: ("bookstore.favorite", {"userId": str(reader.pk), "bookId": book})
        for book in ids
    }
    (route,) = data.routes
    assert (route.channel, route.collection) == (CHANNEL, "bookstore.favorite")
    assert route.conditions, "favorites.mine must stay routable in memory"
    assert {(c.path, c.op, c.value) for c in route.conditions} == {("user_id", "exact", reader.pk)}
    assert CHANNEL in data.positions


def test_favorites_mine_takes_no_parameters(
    backend: DjangoBackend, make_ctx: Any, reader: User
) -> None:
    with pytest.raises(ClientError) as info:
        subscribe(backend, make_ctx(None, identity(reader)), "favorites.mine", [str(reader.pk)])
    assert error_of(info) == (400, "Match failed")


def test_live_changes_decode_like_the_initial_load_and_reach_only_the_owner(
    backend: DjangoBackend, make_ctx: Any, reader: User, admin: User
) -> None:
    """What a relay does with a committed favorite: decode the change once, then decide
    in memory which subscriptions get it. The reader's ``favorites.mine`` route takes the
    reader's favorites and never the admin's; the fields equal the initial load's."""
    mine = backend.call(make_ctx("a", identity(reader)), "favorites.add", ["lathe"]).result
    theirs = backend.call(make_ctx("b", identity(admin)), "favorites.add", ["lathe"]).result
    flush_now()
    reader_route = subscribe(backend, make_ctx(None, identity(reader)), "favorites.mine", []).routes
    admin_route = subscribe(backend, make_ctx(None, identity(admin)), "favorites.mine", []).routes
    collection = registry.collection_for_model(Favorite)
    decoded = {}
    for change in tx_changes(CHANNEL):
        one = backend.decode_change(CHANNEL, change)
        assert one is not None and one.op == "i"
        decoded[one.id] = one
        _, fields = collection.serialize(Favorite.objects.get(pk=one.id))
        assert one.fields == fields
    assert set(decoded) == {mine, theirs}
    assert decoded[mine].fields == {"userId": str(reader.pk), "bookId": "lathe"}

    def routed_to(routes: Any, change_id: str) -> bool:
        (route,) = routes
        assert isinstance(route, Route) and route.conditions is not None
        return matches(route.conditions, decoded[change_id].routing)

    assert routed_to(reader_route, mine) and not routed_to(reader_route, theirs)
    assert routed_to(admin_route, theirs) and not routed_to(admin_route, mine)
    # Removing travels the same way (a delete carries only the key: the relay drops the
    # document from whichever subscription holds it).
    backend.call(make_ctx("c", identity(reader)), "favorites.remove", ["lathe"])
    flush_now()
    deletes = [c for c in tx_changes(CHANNEL) if c.op == "d"]
    assert [backend.decode_change(CHANNEL, c).id for c in deletes] == [mine]  # type: ignore[union-attr]
