"""Parameter validation from signatures: Meteor's check(), 400 "Match failed", and the
lossless conversions it makes (a ``Decimal`` from an EJSON Decimal, a decimal string or a
number), checked on values decoded by the relay's own message parser and compared with
brute-force models; then through ``Method``, ``Publication`` and ``DjangoBackend.call``
(the example's ``books.create`` storing an EJSON Decimal price exactly)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal, NotRequired, TypedDict

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from django_app.exceptions import DDPError, MatchFailed
from django_app.methods import Method
from django_app.publications import Publication
from django_app.registries import Registry
from django_app.signature import (
    MAX_DECIMAL_DIGITS,
    MAX_DECIMAL_TEXT,
    REFUSED,
    ParamsValidator,
    compile_hint,
)
from relay.backend import ClientError
from relay.protocol import ejson, messages
from relay.protocol.ejson import CustomType


class Doc(TypedDict):
    title: str
    price: float
    tags: NotRequired[list[str]]


class Priced(TypedDict):
    price: Decimal
    discount: NotRequired[Decimal | None]


def wire(*params: Any, raw: Any = None) -> tuple[Any, ...]:
    """``params`` as a method handler gets them: EJSON-encoded by a client, sent as JSON
    text, parsed by the relay (``raw``: plain JSON params written by hand)."""
    sent = ejson.to_json_value(list(params)) if raw is None else raw
    text = json.dumps({"msg": "method", "id": "1", "method": "m", "params": sent})
    msg = messages.parse_client_message(messages.parse_json(text), "1")
    assert isinstance(msg, messages.Method)
    return msg.params


def accepts(hint: Any, value: Any) -> bool:
    return compile_hint(hint)(value) is not REFUSED


@pytest.mark.parametrize(
    ("hint", "good", "bad"),
    [
        (str, ["", "x"], [1, None, b"x", Decimal(1)]),
        (int, [0, -3], [True, 1.5, "1", None, Decimal(1)]),
        (float, [1, 1.5], [True, "1.5", Decimal("1.5")]),
        (bool, [True, False], [0, 1, "true"]),
        (None, [None], [0, ""]),
        (bytes, [b""], ["x", "AA=="]),
        (Decimal, [Decimal("1.1"), "1.1", 1, 1.1], [True, None, "x", [], Decimal("NaN")]),
        (dt.datetime, [dt.datetime(2020, 1, 1, tzinfo=dt.UTC)], ["2020-01-01", 0]),
        (Any, [None, 1, "x", [], {}], []),
        (str | None, ["x", None], [1]),
        (list, [[], [1, "a"]], [(), "ab", {}]),
        (list[int], [[], [1, 2]], [[1, "2"], [True]]),
        (Sequence[str], [["a"]], [["a", 1]]),
        (tuple[int, ...], [[1, 2]], [[1, "x"]]),
        (tuple[int, str], [[1, "a"]], [[1], [1, 2], ["a", 1]]),
        (tuple, [[]], ["x"]),
        (dict, [{}, {"a": 1}], [[], "x"]),
        (dict[str, int], [{"a": 1}], [{"a": "1"}, {1: 1}]),
        (Mapping[str, Any], [{"a": None}], [[]]),
        (Literal["a", 1], ["a", 1], ["b", True, 2]),
        (
            Doc,
            [{"title": "t", "price": 1}, {"title": "t", "price": 1.5, "tags": ["x"]}],
            [
                {"title": "t"},
                {"title": "t", "price": 1, "extra": 1},
                {"title": 1, "price": 1},
                {"title": "t", "price": 1, "tags": [1]},
                [],
            ],
        ),
    ],
)
def test_compiled_checks(hint: Any, good: list[Any], bad: list[Any]) -> None:
    convert = compile_hint(hint)
    for value in good:
        got = convert(value)
        assert got is not REFUSED
        assert got == value or hint is Decimal  # a Decimal from "1.1" is not "1.1"
    for value in bad:
        assert convert(value) is REFUSED


def test_only_decimals_are_converted() -> None:
    """Every other accepted value reaches the function as the very object decoded."""
    doc = {"title": "t", "price": 1, "tags": ["x"]}
    for hint, value in [(Doc, doc), (float, 1), (Any, doc), (dict[str, Any], doc)]:
        assert type(compile_hint(hint)(value)) is type(value)
    assert compile_hint(Any)(doc) is doc
    assert compile_hint(float)(1) == 1 and type(compile_hint(float)(1)) is int


def test_unsupported_annotations_fail_early() -> None:
    with pytest.raises(TypeError, match="JSON object keys are strings"):
        compile_hint(dict[int, str])
    with pytest.raises(TypeError, match="unsupported annotation"):
        compile_hint(frozenset[int])


def test_arity_defaults_and_varargs() -> None:
    def fn(ctx: object, a: str, b: int = 0, *rest: bool) -> None: ...

    validator = ParamsValidator(fn)
    assert validator.validate(["x"]) == ("x",)
    assert validator.validate(["x", 1, True, False]) == ("x", 1, True, False)
    for params in ([], [1], ["x", "1"], ["x", 1, "no"]):
        with pytest.raises(MatchFailed) as info:
            validator.validate(params)
        assert isinstance(info.value, DDPError)
        assert (info.value.error, info.value.reason) == (400, "Match failed")


def test_unannotated_parameters_accept_anything() -> None:
    def fn(ctx, a, b=None):  # type: ignore[no-untyped-def]
        return None

    thing = object()
    assert ParamsValidator(fn).validate([thing])[0] is thing


def test_signature_requirements() -> None:
    def no_ctx() -> None: ...

    def kwonly(ctx: object, *, a: int) -> None: ...

    with pytest.raises(TypeError, match="context as its first argument"):
        ParamsValidator(no_ctx)
    with pytest.raises(TypeError, match="keyword-only parameter 'a'"):
        ParamsValidator(kwonly)


def test_unresolvable_annotation() -> None:
    def fn(ctx: object, a: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(TypeError, match="cannot resolve the annotations"):
        ParamsValidator(fn)


@pytest.mark.parametrize(
    "value",
    [
        "nul\x00inside",
        "lone \ud800 surrogate",
        float("inf"),
        float("-inf"),
        float("nan"),
        Decimal("NaN"),
        Decimal("Infinity"),
        ["ok", ["deep", "x\x00"]],
        {"key\x00": 1},
        {"k": {"k": float("nan")}},
        CustomType("Unknown", 1),
        {"deep": [CustomType("Unknown", {"a": 1})]},
    ],
)
def test_values_postgresql_cannot_store_are_refused_whatever_the_annotation(value: Any) -> None:
    """A NUL, an unpaired surrogate or a non-finite number is a 400 at the boundary, not a
    500 from the database with SQL in the log; so is an EJSON type no decoder of this
    process turned into an object (the relay's ``CustomType``)."""

    def untyped(ctx: Any, x: Any) -> None: ...

    def typed(ctx: Any, x: str | float | Decimal | list[Any] | dict[str, Any]) -> None: ...

    for func in (untyped, typed):
        with pytest.raises(MatchFailed):
            ParamsValidator(func).validate([value])


def test_ordinary_values_are_storable() -> None:
    def untyped(ctx: Any, x: Any) -> None: ...

    ParamsValidator(untyped).validate(
        [{"s": "Ünïcode ✓ \U0001f600", "f": 1.5, "d": Decimal("1.10"), "l": [None, True, 2]}]
    )


# -- Decimal: what reaches the function --------------------------------------------------


def decimal_validator() -> ParamsValidator:
    def fn(ctx: Any, amount: Decimal) -> None: ...

    return ParamsValidator(fn)


def written_out_digits(value: Decimal) -> int:
    """The model of the bound: the digits of the number written out in full."""
    return sum(c.isdigit() for c in format(value, "f"))


decimals = st.builds(
    lambda sign, coefficient, exponent: Decimal(
        (sign, tuple(map(int, str(coefficient))), exponent)
    ),
    st.integers(0, 1),
    st.integers(0, 10**105),
    st.integers(-110, 110),
)


@given(decimals)
@example(Decimal("1.10"))
@example(Decimal("-0"))
@example(Decimal("1E+2"))
@example(Decimal("0E+5"))
def test_any_decimal_sent_as_ejson_or_as_its_string_arrives_equal(value: Decimal) -> None:
    """An EJSON Decimal and its string form reach the function as the same Decimal,
    exponent kept ("1.10" stays "1.10"), unless it takes more than MAX_DECIMAL_DIGITS
    digits written out."""
    fits = written_out_digits(value) <= MAX_DECIMAL_DIGITS
    for params in (wire(value), wire(str(value))):
        if not fits:
            with pytest.raises(MatchFailed):
                decimal_validator().validate(params)
            continue
        (got,) = decimal_validator().validate(params)
        assert type(got) is Decimal
        assert got.as_tuple() == value.as_tuple()


@given(st.floats(allow_nan=False, allow_infinity=False))
@example(12.5)
@example(0.1)
@example(-0.0)
@example(1e16)
@example(5e-324)
@example(1.7976931348623157e308)
def test_json_floats_arrive_as_their_shortest_decimal(value: float) -> None:
    """A float becomes the Decimal of its shortest repr, the digits a client wrote
    (12.5 is Decimal("12.5"), 0.1 never 0.1000000000000000055...), and reads back as the
    same double; beyond the digit bound it is refused."""
    expected = Decimal(repr(value))
    (sent,) = wire(raw=[value])
    if written_out_digits(expected) > MAX_DECIMAL_DIGITS:
        with pytest.raises(MatchFailed):
            decimal_validator().validate([sent])
        return
    (got,) = decimal_validator().validate([sent])
    assert got.as_tuple() == expected.as_tuple()
    assert float(got) == value
    assert len(got.as_tuple().digits) <= 17


@given(st.integers(-(10**110), 10**110))
@example(10**MAX_DECIMAL_DIGITS - 1)
@example(10**MAX_DECIMAL_DIGITS)
def test_json_integers_arrive_exactly(value: int) -> None:
    (sent,) = wire(raw=[value])
    if len(str(abs(value))) > MAX_DECIMAL_DIGITS:
        with pytest.raises(MatchFailed):
            decimal_validator().validate([sent])
        return
    (got,) = decimal_validator().validate([sent])
    assert got == value and got.as_tuple().exponent == 0


def model_decimal_text(text: str) -> Fraction | None:
    """A brute-force reading of decimal.js's syntax, one character at a time: sign,
    digits, an optional point and fraction (at least one digit in all), an optional
    exponent. None for anything else."""
    i, n = 0, len(text)
    sign = 1
    if i < n and text[i] in "+-":
        sign = -1 if text[i] == "-" else 1
        i += 1
    whole = frac = ""
    while i < n and text[i] in "0123456789":
        whole += text[i]
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i] in "0123456789":
            frac += text[i]
            i += 1
    if not whole and not frac:
        return None
    exponent = 0
    if i < n and text[i] in "eE":
        i += 1
        exp_sign = 1
        if i < n and text[i] in "+-":
            exp_sign = -1 if text[i] == "-" else 1
            i += 1
        digits = ""
        while i < n and text[i] in "0123456789":
            digits += text[i]
            i += 1
        if not digits:
            return None
        exponent = exp_sign * int(digits)
    if i != n:
        return None
    return sign * Fraction(int(whole + frac)) * Fraction(10) ** (exponent - len(frac))


decimal_texts = st.one_of(
    # Short: an exponent of 7 digits would make the model write out 10**7 digits.
    st.text(alphabet="0123456789+-.eE", max_size=8),
    st.text(alphabet="0123456789.eE _-+NaInfity\u0661\n", max_size=8),
    st.from_regex(r"[+-]?[0-9]{0,30}\.?[0-9]{0,30}([eE][+-]?[0-9]{1,3})?", fullmatch=True),
)


@settings(deadline=None)  # "1e999999" makes the model write out a million digits
@given(decimal_texts)
@example("12.50")
@example("-3")
@example("1e-2")
@example("5.")
@example(".5")
@example("NaN")
@example("-Infinity")
@example("")
@example(" 1")
@example("1 ")
@example("1\n")
@example("1_000")
@example("\u0661")
@example("1e")
@example(".")
@example("1" * (MAX_DECIMAL_TEXT + 1))
@example("0." + "0" * (MAX_DECIMAL_TEXT - 3) + "1")
def test_decimal_strings_agree_with_a_brute_force_reading(text: str) -> None:
    """Exactly the strings the model reads, at most MAX_DECIMAL_TEXT long and within the
    digit bound, are accepted, as the exact value the text says."""
    model = model_decimal_text(text)
    expected = model is not None and len(text) <= MAX_DECIMAL_TEXT
    if expected:
        expected = written_out_digits(Decimal(text)) <= MAX_DECIMAL_DIGITS
    got = compile_hint(Decimal)(text)
    if not expected:
        assert got is REFUSED
        return
    assert type(got) is Decimal and Fraction(got) == model
    assert got.as_tuple() == Decimal(text).as_tuple()


@pytest.mark.parametrize(
    "value",
    [
        "NaN",
        "nan",
        "Infinity",
        "-Infinity",
        "sNaN",
        "",
        " 12.50",
        "12.50 ",
        "1,5",
        "0x10",
        "1e101",
        "1e-100",
        "1e99999999999999999999",  # beyond the decimal module's exponents
        "1e999999999999999999",
        "1" * (MAX_DECIMAL_TEXT + 1),
        True,
        None,
        [],
        {},
        Decimal("NaN"),
        Decimal("-sNaN"),
        Decimal("Infinity"),
        Decimal("1e101"),
        float("inf"),
        float("nan"),
        10**MAX_DECIMAL_DIGITS,
        b"1",
        dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    ],
)
def test_decimal_refusals(value: Any) -> None:
    assert compile_hint(Decimal)(value) is REFUSED
    with pytest.raises(MatchFailed):
        decimal_validator().validate([value])


def test_decimals_are_converted_at_any_depth() -> None:
    def fn(
        ctx: Any,
        doc: Priced,
        many: list[Decimal],
        named: dict[str, Decimal],
        maybe: Decimal | None,
        pair: tuple[Decimal, str],
        *rest: Decimal,
    ) -> None: ...

    params = wire(
        {"price": Decimal("12.50"), "discount": "0.5"},
        [1, 2.5, "3e1"],
        {"a": "7"},
        None,
        ["1.0", "1.0"],
        4,
        "5",
    )
    assert ParamsValidator(fn).validate(params) == (
        {"price": Decimal("12.50"), "discount": Decimal("0.5")},
        [Decimal(1), Decimal("2.5"), Decimal("3e1")],
        {"a": Decimal(7)},
        None,
        [Decimal("1.0"), "1.0"],
        Decimal(4),
        Decimal(5),
    )
    (doc,) = ParamsValidator(lambda ctx, d: None).validate(wire({"price": "1"}))
    assert doc == {"price": "1"}  # unannotated: as decoded
    with pytest.raises(MatchFailed):
        ParamsValidator(fn).validate(wire({"price": "x"}, [], {}, None, ["1", "1"]))


def test_the_first_union_member_that_accepts_decides() -> None:
    assert compile_hint(str | Decimal)("1.5") == "1.5"
    assert compile_hint(Decimal | str)("1.5") == Decimal("1.5")
    assert compile_hint(Decimal | str)("cheap") == "cheap"
    assert type(compile_hint(int | Decimal)(1)) is int
    assert type(compile_hint(Decimal | int)(1)) is Decimal
    assert compile_hint(Decimal | None)(None) is None


# -- $date, $binary and classes -------------------------------------------------------------


def test_dates_come_from_ejson_only() -> None:
    def fn(ctx: Any, when: dt.datetime) -> None: ...

    (got,) = ParamsValidator(fn).validate(wire(raw=[{"$date": 1704164645678}]))
    assert got == dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert got.utcoffset() == dt.timedelta(0)
    for raw in ("2024-01-02T03:04:05.678Z", 1704164645678, None, {"date": 1}):
        with pytest.raises(MatchFailed):
            ParamsValidator(fn).validate(wire(raw=[raw]))


def test_binary_comes_from_ejson_only() -> None:
    def fn(ctx: Any, data: bytes) -> None: ...

    assert ParamsValidator(fn).validate(wire(raw=[{"$binary": "AAEC/f7/"}])) == (
        bytes([0, 1, 2, 253, 254, 255]),
    )
    for raw in ("AAEC/f7/", [0, 1], None):
        with pytest.raises(MatchFailed):
            ParamsValidator(fn).validate(wire(raw=[raw]))


class Token:
    """Any class: what a registered EJSON custom type decodes to, say."""


def test_classes_are_checked_with_isinstance() -> None:
    def fn(ctx: Any, money: Token, oid: ejson.ObjectID | None) -> None: ...

    money = Token()
    params = [money, ejson.ObjectID("0123456789abcdef01234567")]
    assert ParamsValidator(fn).validate(params) == (money, params[1])
    with pytest.raises(MatchFailed):
        ParamsValidator(fn).validate([{"amount": 1}, None])


# -- what the functions receive ----------------------------------------------------------


def test_methods_and_publications_receive_the_converted_values() -> None:
    received: list[tuple[Any, ...]] = []

    def record(ctx: Any, price: Decimal, doc: Priced, *more: Decimal) -> None:
        received.append((price, doc, *more))

    params = wire("12.50", {"price": 3.5}, Decimal("1e-2"))
    expected = (Decimal("12.50"), {"price": Decimal("3.5")}, Decimal("0.01"))
    Method("m", record).run(None, params)  # type: ignore[arg-type]
    publication = Publication("p", func=record, registry=Registry())
    assert publication.run(None, params) == ([], False)  # type: ignore[arg-type]
    assert received == [expected, expected]
    assert all(type(r[0]) is Decimal and type(r[1]["price"]) is Decimal for r in received)
    for bad in (wire("NaN", {"price": 1}), wire("1", {"price": "1 "})):
        with pytest.raises(MatchFailed):
            Method("m", record).run(None, bad)  # type: ignore[arg-type]
        with pytest.raises(MatchFailed):
            publication.run(None, bad)  # type: ignore[arg-type]
    assert len(received) == 2


# -- through the real backend: the example's books.create --------------------------------

NEW_BOOK = {"title": "Mort", "authorId": "pratchett", "tags": []}


def book_params(**fields: Any) -> tuple[Any, ...]:
    """``books.create`` params, as the relay hands them to the backend; a value given as
    ``raw_<name>`` is written into the JSON as is."""
    doc = {**NEW_BOOK, **{k: v for k, v in fields.items() if not k.startswith("raw_")}}
    raw = {k.removeprefix("raw_"): v for k, v in fields.items() if k.startswith("raw_")}
    return wire(raw=[{**ejson.to_json_value(doc), **raw}])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "stored"),
    [
        (book_params(price=Decimal("12.50")), "12.50"),
        (book_params(raw_price={"$type": "Decimal", "$value": "12.50"}), "12.50"),
        (book_params(raw_price={"$type": "Decimal", "$value": "12.5"}), "12.50"),
        (book_params(price="12.50"), "12.50"),
        (book_params(price="1e1"), "10.00"),
        (book_params(price=12.5), "12.50"),
        (book_params(price=0.1), "0.10"),
        (book_params(price=12), "12.00"),
    ],
)
def test_books_create_stores_the_exact_price(
    backend: Any, make_ctx: Any, seeded: str, params: tuple[Any, ...], stored: str
) -> None:
    from bookstore.models import Book

    book_id = backend.call(make_ctx(), "books.create", params).result
    price = Book.objects.get(pk=book_id).price
    assert type(price) is Decimal and str(price) == stored


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("params", "error"),
    [
        (book_params(raw_price={"$type": "Decimal", "$value": "NaN"}), (400, "Match failed")),
        (book_params(raw_price={"$type": "Decimal", "$value": "1e101"}), (400, "Match failed")),
        (book_params(price="NaN"), (400, "Match failed")),
        (book_params(price="cheap"), (400, "Match failed")),
        (book_params(price=" 1"), (400, "Match failed")),
        (book_params(price=True), (400, "Match failed")),
        (book_params(raw_price={"$InfNaN": 1}), (400, "Match failed")),
        (book_params(price="-1"), (400, "Price must not be negative")),
        (book_params(price="1e50"), (400, "Price is too large")),
        (
            book_params(price="1e6"),
            (400, "price: Ensure that there are no more than 8 digits in total."),
        ),
        (book_params(price="1", raw_published="2024-01-02"), (400, "Match failed")),
        (book_params(price="1", raw_published=1704164645678), (400, "Match failed")),
    ],
)
def test_books_create_refuses_what_is_not_a_price(
    backend: Any, make_ctx: Any, seeded: str, params: tuple[Any, ...], error: tuple[Any, Any]
) -> None:
    from bookstore.models import Book

    with pytest.raises(ClientError) as info:
        backend.call(make_ctx(), "books.create", params)
    assert (info.value.error, info.value.reason) == error
    assert Book.objects.count() == 10


@pytest.mark.django_db
def test_books_create_takes_an_ejson_date(backend: Any, make_ctx: Any, seeded: str) -> None:
    from bookstore.models import Book

    params = book_params(price="1", raw_published={"$date": 1704164645678})
    book_id = backend.call(make_ctx(), "books.create", params).result
    assert Book.objects.get(pk=book_id).published == dt.date(2024, 1, 2)
