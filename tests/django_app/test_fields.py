"""MeteorIdField: ids from the current method's seeded stream, else crypto-random."""

from __future__ import annotations

from bookstore.models import Author, Book

from django_app.context import MethodContext, current_method, method_invocation
from django_app.fields import MeteorIdField, random_meteor_id
from relay.protocol.alea import UNMISTAKABLE_CHARS, RandomStream


def ctx(seed: str | None) -> MethodContext:
    return MethodContext(user=None, user_id=None, session_id="s", random_seed=seed)


def test_outside_a_method_ids_are_random() -> None:
    assert current_method() is None
    ids = {Book().id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 17 and set(i) <= set(UNMISTAKABLE_CHARS) for i in ids)
    assert len(random_meteor_id()) == 17


def test_inside_a_method_ids_follow_the_collection_stream() -> None:
    stream = RandomStream("seed-one")
    books = stream.sequence("/collection/bookstore.book")
    authors = stream.sequence("/collection/bookstore.author")
    with method_invocation(ctx("seed-one")) as invocation:
        assert current_method() is invocation
        assert [Book().id, Author().id, Book().id] == [books.id(), authors.id(), books.id()]
    assert current_method() is None


def test_new_id_by_name_or_model_shares_the_stream() -> None:
    invocation = ctx("abc")
    expected = RandomStream("abc").sequence("/collection/books")
    assert invocation.new_id("books") == expected.id() == "HPRPFNS53Rhi6vc9F"
    assert invocation.new_id("books") == expected.id() == "zRsJopjPfogKyjsJG"
    book_stream = RandomStream("abc").sequence("/collection/bookstore.book")
    assert invocation.new_id(Book) == book_stream.id()


def test_seedless_invocations_still_draw_ids() -> None:
    a, b = ctx(None), ctx(None)
    assert a.new_id(Book) != b.new_id(Book)
    assert a.random_stream is a.random_stream


def test_loading_from_the_database_does_not_draw() -> None:
    invocation = ctx("abc")
    with method_invocation(invocation):
        Book.from_db("default", ["id"], ["given"])
    assert (
        invocation.new_id(Book) == RandomStream("abc").sequence("/collection/bookstore.book").id()
    )


def test_deconstruct_keeps_migrations_small() -> None:
    field = MeteorIdField(primary_key=True)
    assert field.max_length == 17 and not field.editable
    _, path, _, kwargs = field.deconstruct()
    assert path == "django_app.fields.MeteorIdField"
    assert kwargs == {"primary_key": True}
    _, _, _, kwargs = MeteorIdField(max_length=30, editable=True).deconstruct()
    assert kwargs == {"max_length": 30, "editable": True}


def test_non_pk_or_custom_default_fields_keep_their_default() -> None:
    plain = MeteorIdField()
    plain.model = Book
    with method_invocation(ctx("abc")):
        assert (
            plain.get_default() != RandomStream("abc").sequence("/collection/bookstore.book").id()
        )
        assert MeteorIdField(primary_key=True, default="fixed").get_default() == "fixed"
