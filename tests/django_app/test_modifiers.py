"""The modifier compiler (django_app.modifiers): parsing against brute-force models, the
bounds, and the SQL it writes run against PostgreSQL, concurrently and without a lock."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from bookstore.models import Author, Book
from django.db import connection, connections, transaction
from hypothesis import given
from hypothesis import strategies as st

from django_app.exceptions import DDPError
from django_app.modifiers import (
    MAX_ARRAY_INDEX,
    MAX_ELEMENTS,
    MAX_JSON_NUMBER,
    MAX_OPERATIONS,
    MAX_PADDING,
    MAX_PATH_DEPTH,
    MAX_PATH_LENGTH,
    MAX_QUERY_FIELDS,
    MAX_VALUE_BYTES,
    MAX_VALUE_DEPTH,
    ArraySteps,
    ColumnSteps,
    JsonSteps,
    NumberSteps,
    Operation,
    PullQuery,
    apply_update,
    json_problem,
    parse_modifier,
    touched_fields,
)


def refusal(modifier: Any) -> tuple[Any, Any]:
    with pytest.raises(DDPError) as info:
        parse_modifier(modifier)
    return info.value.error, info.value.reason


# -- parsing ------------------------------------------------------------------------------

NO_REPLACE = (
    "Access denied. In a restricted collection you can only update documents, not replace"
    " them. Use a Mongo update operator, such as '$set'."
)


@pytest.mark.parametrize(
    ("modifier", "error"),
    [
        ({}, (403, NO_REPLACE)),
        ({"title": "x"}, (403, NO_REPLACE)),
        ({"$set": {"a": 1}, "title": "x"}, (403, NO_REPLACE)),
        (
            {"$rename": {"a": "b"}},
            (403, "Access denied. Operator $rename not allowed in a restricted collection."),
        ),
        (
            {"$set": {"a": 1}, "$currentDate": {"b": True}},
            (403, "Access denied. Operator $currentDate not allowed in a restricted collection."),
        ),
        ({"$set": "a"}, (400, "Match failed")),
        ({"$set": ["a"]}, (400, "Match failed")),
        (
            {"$pushAll": {"a": [1]}},
            (400, "$pushAll is not supported (MongoDB removed it): use $push with $each"),
        ),
        ({"$bit": {"a": {"and": 1}}}, (400, "$bit is not supported")),
        ({"$set": {"": 1}}, (400, "An empty update path is not valid.")),
        (
            {"$set": {"a..b": 1}},
            (400, "The update path 'a..b' contains an empty field name, which is not allowed."),
        ),
        (
            {"$set": {"a.": 1}},
            (400, "The update path 'a.' contains an empty field name, which is not allowed."),
        ),
        ({"$set": {"a.$.b": 1}}, (400, "The positional operator is not supported: 'a.$.b'")),
        ({"$set": {"a.$[].b": 1}}, (400, "The positional operator is not supported: 'a.$[].b'")),
        ({"$inc": {"a": "1"}}, (400, "Modifier $inc allowed for numbers only")),
        ({"$inc": {"a": True}}, (400, "Modifier $inc allowed for numbers only")),
        ({"$inc": {"a": None}}, (400, "Modifier $inc allowed for numbers only")),
        ({"$pop": {"a": 2}}, (400, "$pop expects 1 or -1, found: 2")),
        ({"$pop": {"a": "1"}}, (400, "$pop expects 1 or -1, found: '1'")),
        ({"$push": {"a": {"$each": 1}}}, (400, "$each must be an array")),
        (
            {"$push": {"a": {"$each": [1], "$slice": -5}}},
            (400, "$push with $slice is not supported; only $each is"),
        ),
        (
            {"$addToSet": {"a": {"$each": [1], "x": 1}}},
            (400, "$addToSet with x is not supported; only $each is"),
        ),
        ({"$pullAll": {"a": 1}}, (400, "Modifier $pushAll/pullAll allowed for arrays only")),
        (
            {"$set": {"a": 1}, "$inc": {"a": 1}},
            (409, "Updating the path 'a' would create a conflict at 'a'"),
        ),
        (
            {"$set": {"a.b.c": 1}, "$unset": {"a.b": 1}},
            (409, "Updating the path 'a.b.c' would create a conflict at 'a.b'"),
        ),
    ],
)
def test_refused_modifiers(modifier: Any, error: tuple[Any, Any]) -> None:
    assert refusal(modifier) == error


PULL_REFUSED = (
    "$pull of 'a' with this query is not supported: only a value, or a query {field: value,"
    " ...} of strings, numbers and booleans"
)


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"$gt": 4},
        {"x": {"$gt": 4}},
        {"x.y": 1},
        {"x": None},
        {"x": [1]},
        {"x": {"y": 1}},
        {f"k{i}": 1 for i in range(MAX_QUERY_FIELDS + 1)},
    ],
)
def test_pull_queries_beyond_field_equality_are_400(query: dict[str, Any]) -> None:
    assert refusal({"$pull": {"a": query}}) == (400, PULL_REFUSED)


def test_arguments_are_normalised() -> None:
    ops = parse_modifier(
        {
            "$push": {"a": 1, "b": {"$each": [1, 2]}, "c": {"x": 1}},
            "$addToSet": {"d": {"$each": []}},
            "$pull": {"e": [1], "f": {"id": 2, "ok": True}},
            "$pullAll": {"g": [1, 2]},
            "$pop": {"h": -1.0},
            "$unset": {"i": ""},
            "$inc": {"j": 1.5},
            "$set": {"k.l": {"m": [1]}},
        }
    )
    assert [(op.operator, op.key, op.argument, op.index) for op in ops] == [
        ("$push", "a", (1,), 0),
        ("$push", "b", (1, 2), 1),
        ("$push", "c", ({"x": 1},), 2),
        ("$addToSet", "d", (), 3),
        ("$pull", "e", ([1],), 4),
        ("$pull", "f", PullQuery((("id", 2), ("ok", True))), 5),
        ("$pullAll", "g", (1, 2), 6),
        ("$pop", "h", -1, 7),
        ("$unset", "i", None, 8),
        ("$inc", "j", 1.5, 9),
        ("$set", "k.l", {"m": [1]}, 10),
    ]
    assert ops[10].path == ("k", "l")


def test_bounds_are_400_that_name_them() -> None:
    many = {f"f{i}": 1 for i in range(MAX_OPERATIONS + 1)}
    assert refusal({"$set": many}) == (
        400,
        f"The modifier has {MAX_OPERATIONS + 1} paths; at most {MAX_OPERATIONS} are allowed",
    )
    # Split over operators, the same count.
    half = dict(itertools.islice(many.items(), MAX_OPERATIONS // 2 + 1))
    rest = {f"g{i}": 1 for i in range(MAX_OPERATIONS // 2)}
    assert refusal({"$set": half, "$inc": rest})[0] == 400
    deep = ".".join(["a"] * (MAX_PATH_DEPTH + 1))
    assert refusal({"$set": {deep: 1}}) == (
        400,
        f"The update path '{deep}' has {MAX_PATH_DEPTH + 1} parts; at most {MAX_PATH_DEPTH}",
    )
    long = "a" * (MAX_PATH_LENGTH + 1)
    assert refusal({"$set": {long: 1}}) == (
        400,
        f"An update path is {MAX_PATH_LENGTH + 1} characters long; at most {MAX_PATH_LENGTH}",
    )
    huge = list(range(MAX_ELEMENTS + 1))
    for modifier in ({"$push": {"a": {"$each": huge}}}, {"$pullAll": {"a": huge}}):
        assert refusal(modifier) == (
            400,
            f"{MAX_ELEMENTS + 1} values in one operation; at most {MAX_ELEMENTS}",
        )
    # At the bounds: accepted.
    assert len(parse_modifier({"$set": dict(itertools.islice(many.items(), MAX_OPERATIONS))})) == (
        MAX_OPERATIONS
    )
    assert parse_modifier({"$set": {".".join(["a"] * MAX_PATH_DEPTH): 1}})
    assert parse_modifier({"$push": {"a": {"$each": huge[:-1]}}})


def test_a_huge_modifier_is_refused_before_its_keys_are_read() -> None:
    """A million keys: the count is refused at once, no path of it parsed."""
    modifier = {"$set": {f"k{i}": 1 for i in range(1_000_000)}}
    started = time.monotonic()
    assert refusal(modifier)[0] == 400
    assert time.monotonic() - started < 1.0


segments = st.sampled_from(["a", "b", "0"])
paths = st.lists(segments, min_size=1, max_size=3).map(tuple)
operators = st.sampled_from(["$set", "$unset", "$inc", "$push"])


def _arg(op: str) -> Any:
    return 1 if op in ("$inc", "$push", "$set") else ""


@given(st.lists(st.tuples(operators, paths), max_size=8))
def test_conflicts_and_field_names_agree_with_brute_force(
    pairs: list[tuple[str, tuple[str, ...]]],
) -> None:
    modifier: dict[str, dict[str, Any]] = {}
    for op, path in pairs:
        modifier.setdefault(op, {})[".".join(path)] = _arg(op)
    sent = [(op, tuple(key.split("."))) for op, spec in modifier.items() for key in spec]
    overlapping = [
        (p, q)
        for (i, (_, p)), (j, (_, q)) in itertools.product(enumerate(sent), repeat=2)
        if i != j and len(p) <= len(q) and q[: len(p)] == p
    ]
    if not sent:
        assert refusal(modifier) == (403, NO_REPLACE)
        return
    if overlapping:
        error, reason = refusal(modifier)
        assert error == 409
        named = {
            f"Updating the path '{'.'.join(q)}' would create a conflict at '{'.'.join(p)}'"
            for p, q in overlapping
        }
        assert reason in named
        return
    ops = parse_modifier(modifier)
    assert [(op.operator, op.path) for op in ops] == sent
    assert [op.index for op in ops] == list(range(len(sent)))
    first_segments: list[str] = []
    for _, path in sent:
        if path[0] not in first_segments:
            first_segments.append(path[0])
    assert touched_fields(ops) == first_segments


# -- JSON values ---------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "$x", "x.y", "0"])
json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.text("ab", max_size=2)
    | st.sampled_from([1.5, 10**309, -(10**309), 1.7e308]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(keys, children, max_size=3)
        | st.just(Decimal("1.5"))
    ),
    max_leaves=12,
)


def _brute_problem(value: Any, depth: int = 0) -> bool:
    if isinstance(value, list | dict):
        if depth >= MAX_VALUE_DEPTH:
            return True
        if isinstance(value, dict):
            if any(k.startswith("$") or "." in k for k in value):
                return True
            return any(_brute_problem(v, depth + 1) for v in value.values())
        return any(_brute_problem(v, depth + 1) for v in value)
    if isinstance(value, int) and abs(value) > MAX_JSON_NUMBER:
        return True
    return not (value is None or isinstance(value, str | int | float))


@given(json_like)
def test_json_problem_agrees_with_a_recursive_check(value: Any) -> None:
    assert (json_problem(value) is not None) == _brute_problem(value)


def test_json_problem_names_the_problem_and_is_not_recursive() -> None:
    import datetime as dt

    assert json_problem({"a": [{"$x": 1}]}) == "Key $x must not start with '$'"
    assert json_problem({"a.b": 1}) == "Key a.b must not contain '.'"
    assert json_problem([dt.datetime(2020, 1, 1, tzinfo=dt.UTC)]) == (
        "Only JSON values can be stored here, not a date"
    )
    assert json_problem(b"x") == "Only JSON values can be stored here, not binary data"
    assert json_problem(Decimal(1)) == "Only JSON values can be stored here, not a Decimal"
    assert json_problem({"n": -(10**400)}) == "Numbers beyond ±1.798e+308 cannot be stored"
    assert json_problem([1.7976931348623157e308, 10**308]) is None
    nested: Any = 1
    for _ in range(100_000):  # far deeper than Python's recursion limit
        nested = [nested]
    assert json_problem(nested) == (
        f"Values nested deeper than {MAX_VALUE_DEPTH} levels cannot be stored"
    )
    at_bound: Any = 1
    for _ in range(MAX_VALUE_DEPTH):
        at_bound = {"a": at_bound}
    assert json_problem(at_bound) is None


# -- the SQL, against PostgreSQL --------------------------------------------------------------


def op(operator: str, key: str, argument: Any, index: int = 0) -> Operation:
    return Operation(operator, tuple(key.split(".")), argument, index)


def details_field() -> Any:
    return Book._meta.get_field("details")


@pytest.fixture
def book(db: None) -> Book:
    author = Author.objects.create(id="a1", name="A", email="a@example.org")
    return Book.objects.create(
        id="b1", title="T", author=author, price=Decimal("1.00"), details={}, ratings=[]
    )


def run(book: Book, *columns: ColumnSteps, values: dict[str, Any] | None = None) -> Book:
    apply_update(Book, book.pk, values or {}, list(columns))
    return Book.objects.get(pk=book.pk)


def json_steps(*ops: Operation) -> JsonSteps:
    steps = JsonSteps(Book, details_field())
    for o in ops:
        steps.add(o)
    return steps


def test_every_step_reads_what_the_previous_one_left(book: Book) -> None:
    """One column, several operations: applied in order, each on the previous result."""
    steps = json_steps(
        op("$set", "details.a.b", 1, 0),
        op("$set", "details.a.c", [1], 1),
        op("$push", "details.a.d", (2, 3), 2),
        op("$inc", "details.a.e.0", 5, 3),
        op("$unset", "details.gone", None, 4),
    )
    assert run(book, steps).details == {"a": {"b": 1, "c": [1], "d": [2, 3], "e": {"0": 5}}}


def test_a_failing_step_leaves_the_row_alone_and_names_the_first_failure(book: Book) -> None:
    Book.objects.filter(pk=book.pk).update(details={"s": "text", "n": 1}, price=Decimal("2.00"))
    steps = json_steps(
        op("$set", "details.ok", 1, 0),
        op("$inc", "details.n", 1, 1),
        op("$inc", "details.s", 1, 2),
        op("$push", "details.n", (1,), 3),
    )
    price = NumberSteps(Book, Book._meta.get_field("price"))
    price.add(op("$inc", "price", 1, 4))
    with pytest.raises(DDPError) as info:
        run(book, price, steps, values={"title": "changed"})
    assert (info.value.error, info.value.reason) == (
        409,
        "Cannot apply $inc modifier to non-number: 'details.s' is a string",
    )
    row = Book.objects.get(pk=book.pk)
    assert (row.details, row.price, row.title) == ({"s": "text", "n": 1}, Decimal("2.00"), "T")


def test_numbers_and_arrays_of_columns(book: Book) -> None:
    price = NumberSteps(Book, Book._meta.get_field("price"))
    price.add(op("$inc", "price", Decimal("0.25")))
    ratings_field = Book._meta.get_field("ratings")
    ratings = ArraySteps(Book, ratings_field, str(ratings_field.db_type(connection)))
    ratings.add(op("$push", "ratings", (1, 2, 2), 1), [1, 2, 2])
    row = run(book, price, ratings)
    assert (row.price, row.ratings) == (Decimal("1.25"), [1, 2, 2])
    cases: list[tuple[str, Any, list[Any], list[int]]] = [
        ("$addToSet", (2, 3, 3, 4), [2, 3, 3, 4], [1, 2, 2, 3, 4]),
        ("$pull", (2,), [2], [1, 3, 4]),
        ("$pullAll", (1, 4, 9), [1, 4, 9], [3]),
        ("$pop", 1, [], []),
        ("$pop", -1, [], []),
    ]
    ratings_now = [1, 2, 2]
    for operator, argument, values, expected in cases:
        steps = ArraySteps(Book, ratings_field, str(ratings_field.db_type(connection)))
        steps.add(op(operator, "ratings", argument), values)
        row = run(book, steps)
        assert row.ratings == expected, (operator, ratings_now)
        ratings_now = expected


def test_a_parent_tables_column_cannot_be_computed() -> None:
    with pytest.raises(DDPError) as info:
        JsonSteps(Author, Book._meta.get_field("details"))
    assert info.value.error == 400


def test_the_largest_modifier_plans_and_runs_quickly(book: Book) -> None:
    """MAX_OPERATIONS paths of MAX_PATH_DEPTH segments, through numeric segments (the
    widest SQL per level) on one column: linear SQL, no exponential plan."""
    ops = [
        op("$set", ".".join(["details", f"k{i}", *["0"] * (MAX_PATH_DEPTH - 2)]), i, i)
        for i in range(MAX_OPERATIONS)
    ]
    steps = json_steps(*ops)
    assert len(steps.value.text) < 2_000_000
    started = time.monotonic()
    row = run(book, steps)
    assert time.monotonic() - started < 10
    leaf: Any = row.details["k7"]
    for _ in range(MAX_PATH_DEPTH - 2):
        leaf = leaf["0"]
    assert leaf == 7


def test_an_index_past_the_bound_is_400_only_on_an_array(book: Book) -> None:
    big = str(MAX_ARRAY_INDEX + 1)
    Book.objects.filter(pk=book.pk).update(details={"arr": [], "obj": {}})
    assert run(book, json_steps(op("$set", f"details.obj.{big}", 1))).details["obj"] == {big: 1}
    with pytest.raises(DDPError) as info:
        run(book, json_steps(op("$set", f"details.arr.{big}", 1)))
    assert (info.value.error, info.value.reason) == (
        400,
        f"The array index {big} in 'details.arr.{big}' is larger than {MAX_ARRAY_INDEX}",
    )
    edge = run(book, json_steps(op("$set", f"details.arr.{MAX_ARRAY_INDEX}", 1)))
    assert len(edge.details["arr"]) == MAX_ARRAY_INDEX + 1


def test_a_new_value_over_the_size_bound_is_400_and_writes_nothing(book: Book) -> None:
    """The bound is on the JSON text of the column's new value, as PostgreSQL prints it
    (a multi-byte character counts its UTF-8 bytes); a value over it by one byte is
    refused in the guard, the row left as it was."""
    wrapper = len('{"s": ""}')
    fill = "é" + "x" * (MAX_VALUE_BYTES - wrapper - len("é".encode()))
    Book.objects.filter(pk=book.pk).update(details={"s": "é"}, title="T")
    at_bound = run(book, json_steps(op("$set", "details.s", fill)))
    assert at_bound.details == {"s": fill}
    Book.objects.filter(pk=book.pk).update(details={"s": "é"})
    with pytest.raises(DDPError) as info:
        run(book, json_steps(op("$set", "details.s", fill + "x")), values={"title": "changed"})
    assert (info.value.error, info.value.reason) == (
        400,
        f"The update would make 'details' {MAX_VALUE_BYTES + 1} bytes as JSON; at most"
        f" {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)",
    )
    row = Book.objects.get(pk=book.pk)
    assert (row.details, row.title) == ({"s": "é"}, "T")
    # Server code may store more: a modifier that leaves it over is refused, one that
    # brings it under the bound applies.
    big = {"s": fill + "xx", "t": 1}
    Book.objects.filter(pk=book.pk).update(details=big)
    with pytest.raises(DDPError):
        run(book, json_steps(op("$inc", "details.t", 1)))
    assert Book.objects.get(pk=book.pk).details == big
    assert run(book, json_steps(op("$unset", "details.s", None))).details == {"t": 1}


def test_an_array_column_is_bounded_too(book: Book) -> None:
    ratings_field = Book._meta.get_field("ratings")

    def ratings(operator: str, argument: Any, values: list[Any]) -> ArraySteps:
        steps = ArraySteps(Book, ratings_field, str(ratings_field.db_type(connection)))
        steps.add(op(operator, "ratings", argument), values)
        return steps

    count = MAX_VALUE_BYTES // 3  # "[1, 1, ..., 1]": 3 bytes an element
    Book.objects.filter(pk=book.pk).update(ratings=[1] * count)
    with pytest.raises(DDPError) as info:
        run(book, ratings("$push", (2,), [2]))
    assert (info.value.error, info.value.reason) == (
        400,
        f"The update would make 'ratings' {3 * count + 3} bytes as JSON; at most"
        f" {MAX_VALUE_BYTES} (MAX_VALUE_BYTES)",
    )
    assert Book.objects.get(pk=book.pk).ratings == [1] * count
    assert len(run(book, ratings("$pop", 1, [])).ratings) == count - 1


def test_only_the_new_value_is_sized_and_a_failing_step_is_named_first(book: Book) -> None:
    """The bound is on what is written: steps may pass it on the way (adding keys while a
    later step removes a large one); a step that fails is reported rather than the size."""
    adds = [op("$set", f"details.k{i}", "y" * 100_000, i) for i in range(9)]
    before = {"big": "x" * (MAX_VALUE_BYTES - 100)}
    Book.objects.filter(pk=book.pk).update(details=before)
    row = run(book, json_steps(*adds, op("$unset", "details.big", None, 9)))
    assert sorted(row.details) == [f"k{i}" for i in range(9)]
    Book.objects.filter(pk=book.pk).update(details=before)
    with pytest.raises(DDPError) as info:
        run(book, json_steps(*adds, op("$inc", "details.big", 1, 9)))
    assert (info.value.error, info.value.reason) == (
        409,
        "Cannot apply $inc modifier to non-number: 'details.big' is a string",
    )
    with pytest.raises(DDPError) as info:
        run(book, json_steps(*adds))
    assert info.value.error == 400
    assert "(MAX_VALUE_BYTES)" in str(info.value.reason)
    assert Book.objects.get(pk=book.pk).details == before


def test_padding_is_bounded_over_all_paths_of_one_update(book: Book) -> None:
    """Only the nulls actually added count (an index inside an array, an object's numeric
    key or a missing key, which becomes an object, pad nothing), in arrays at any depth."""
    before = {"a": [], "b": [1, 2, 3], "o": {}, "c": [[]]}
    first = MAX_PADDING // 2

    def padding(last: int) -> JsonSteps:
        return json_steps(
            op("$set", f"details.a.{first}", 1, 0),
            op("$set", "details.b.0", 0, 1),
            op("$set", f"details.o.{MAX_ARRAY_INDEX}", 1, 2),
            op("$set", f"details.n.{MAX_ARRAY_INDEX}", 1, 3),
            op("$push", f"details.c.0.{last}", (1,), 4),
        )

    Book.objects.filter(pk=book.pk).update(details=before)
    last = MAX_PADDING - first
    with pytest.raises(DDPError) as info:
        run(book, padding(last + 1))
    assert (info.value.error, info.value.reason) == (
        400,
        f"The update would pad arrays of 'details' with {MAX_PADDING + 1} nulls (at"
        f" 'details.c.0.{last + 1}'); at most {MAX_PADDING} (MAX_PADDING)",
    )
    assert Book.objects.get(pk=book.pk).details == before
    row = run(book, padding(last)).details
    assert (len(row["a"]), len(row["c"][0]), row["c"][0][last]) == (first + 1, last + 1, [1])
    assert row["o"] == row["n"] == {str(MAX_ARRAY_INDEX): 1}
    assert row["b"] == [0, 2, 3]


# -- concurrency: the database computes every new value -------------------------------------

WRITERS = 8
WRITES = 10


@pytest.fixture
def committed_book(transactional_db: None) -> Book:
    author = Author.objects.create(id="a1", name="A", email="a@example.org")
    return Book.objects.create(
        id="b1", title="T", author=author, price=Decimal("0.00"), details={}, ratings=[]
    )


def in_threads(work: Callable[[int, int], None]) -> None:
    """``work(writer, i)`` for every write, from WRITERS threads started together."""
    barrier = threading.Barrier(WRITERS)

    def writer(w: int) -> None:
        try:
            barrier.wait()
            for i in range(WRITES):
                work(w, i)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(WRITERS) as pool:
        for future in [pool.submit(writer, w) for w in range(WRITERS)]:
            future.result()


def test_concurrent_writers_without_a_lock_lose_nothing(committed_book: Book) -> None:
    """No SELECT ... FOR UPDATE here: the UPDATE alone computes each value from the row
    it updates, so concurrent $inc, $push and $addToSet all count."""
    ratings_field = Book._meta.get_field("ratings")

    def write(w: int, i: int) -> None:
        details = json_steps(
            op("$inc", "details.count", 1, 0),
            op("$push", "details.log", (f"{w}-{i}",), 1),
            op("$addToSet", "details.writers", (w,), 2),
        )
        price = NumberSteps(Book, Book._meta.get_field("price"))
        price.add(op("$inc", "price", Decimal("0.01"), 3))
        ratings = ArraySteps(Book, ratings_field, str(ratings_field.db_type(connection)))
        ratings.add(op("$push", "ratings", (1,), 4), [1])
        with transaction.atomic():
            apply_update(Book, committed_book.pk, {}, [details, price, ratings])

    in_threads(write)
    row = Book.objects.get(pk=committed_book.pk)
    total = WRITERS * WRITES
    assert row.details["count"] == total
    assert sorted(row.details["log"]) == sorted(
        f"{w}-{i}" for w in range(WRITERS) for i in range(WRITES)
    )
    assert sorted(row.details["writers"]) == list(range(WRITERS))
    assert row.price == Decimal(total) / 100
    assert row.ratings == [1] * total
