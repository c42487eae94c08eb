"""Parameter validation from signatures: Meteor's check(), 400 "Match failed"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal, NotRequired, TypedDict

import pytest

from django_app.exceptions import DDPError, MatchFailed
from django_app.signature import ParamsValidator, compile_hint


class Doc(TypedDict):
    title: str
    price: float
    tags: NotRequired[list[str]]


@pytest.mark.parametrize(
    ("hint", "good", "bad"),
    [
        (str, ["", "x"], [1, None, b"x"]),
        (int, [0, -3], [True, 1.5, "1", None]),
        (float, [1, 1.5], [True, "1.5"]),
        (bool, [True, False], [0, 1, "true"]),
        (None, [None], [0, ""]),
        (bytes, [b""], ["x"]),
        (Decimal, [Decimal("1.1")], [1.1]),
        (dt.datetime, [dt.datetime(2020, 1, 1, tzinfo=dt.UTC)], ["2020-01-01"]),
        (Any, [None, 1, "x", [], {}], []),
        (str | None, ["x", None], [1]),
        (list, [[], [1, "a"]], [(), "ab", {}]),
        (list[int], [[], [1, 2]], [[1, "2"], [True]]),
        (Sequence[str], [["a"]], [["a", 1]]),
        (tuple[int, ...], [[1, 2]], [[1, "x"]]),
        (tuple[int, str], [[1, "a"]], [[1], [1, 2], ["a", 1]]),
        (tuple, [[]], ["x"]),
        (dict, [{}, {"a": 1}], [[], "x"]),
        (dict[str, int], [{"a": 1}], [{"a": "1"}]),
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
    check = compile_hint(hint)
    assert all(check(v) for v in good)
    assert not any(check(v) for v in bad)


def test_unsupported_annotations_fail_early() -> None:
    with pytest.raises(TypeError, match="JSON object keys are strings"):
        compile_hint(dict[int, str])
    with pytest.raises(TypeError, match="unsupported annotation"):
        compile_hint(frozenset[int])


def test_arity_defaults_and_varargs() -> None:
    def fn(ctx: object, a: str, b: int = 0, *rest: bool) -> None: ...

    validator = ParamsValidator(fn)
    validator.validate(["x"])
    validator.validate(["x", 1, True, False])
    for params in ([], [1], ["x", "1"], ["x", 1, "no"]):
        with pytest.raises(MatchFailed) as info:
            validator.validate(params)
        assert isinstance(info.value, DDPError)
        assert (info.value.error, info.value.reason) == (400, "Match failed")


def test_unannotated_parameters_accept_anything() -> None:
    def fn(ctx, a, b=None):  # type: ignore[no-untyped-def]
        return None

    ParamsValidator(fn).validate([object()])


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
    ],
)
def test_values_postgresql_cannot_store_are_refused_whatever_the_annotation(value: Any) -> None:
    """A NUL, an unpaired surrogate or a non-finite number is a 400 at the boundary, not a
    500 from the database with SQL in the log."""

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
