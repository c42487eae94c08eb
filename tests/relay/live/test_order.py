"""relay.live.order: keys must rank documents exactly as Meteor (and the database) do.

A window's prefix is fetched in the database's order and maintained here; if a key ranks
two documents differently, a document lands on the wrong side of the window's edge and a
client shows the wrong "latest N". So the keys are checked against a plain comparison
(``helpers.compare``) on every type a sort column holds, mixed with None, both directions.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.backend import Order
from relay.live.order import sort_key, sort_keyer
from tests.relay.live.helpers import brute_sorted, compare

ASC = (Order("x"),)
DESC = (Order("x", descending=True),)


def ranked(values: list[Any], order: tuple[Order, ...]) -> list[Any]:
    return sorted(values, key=lambda v: sort_key((v,), order))


def test_none_comes_first_ascending_and_last_descending() -> None:
    assert ranked([2, None, 1], ASC) == [None, 1, 2]
    assert ranked([2, None, 1], DESC) == [2, 1, None]
    assert ranked(["b", None, "a"], DESC) == ["b", "a", None]
    assert sort_key((None,), ASC) == sort_key((None,), ASC)


def test_strings_compare_by_code_point_not_by_locale() -> None:
    words = ["é", "a", "Z", "ab", "", "中", "\U0001f600", "e", "A"]
    assert ranked(words, ASC) == ["", "A", "Z", "a", "ab", "e", "é", "中", "\U0001f600"]
    assert ranked(words, DESC) == ["\U0001f600", "中", "é", "e", "ab", "a", "Z", "A", ""]


def test_numbers_of_mixed_types_compare_by_value_both_ways() -> None:
    values: list[Any] = [Decimal("1.5"), 2, -0.5, Decimal("-3"), 1, 10**30, float("-inf")]
    expected = [float("-inf"), Decimal("-3"), -0.5, 1, Decimal("1.5"), 2, 10**30]
    assert ranked(values, ASC) == expected
    assert ranked(values, DESC) == expected[::-1]


def test_a_descending_decimal_keeps_every_digit() -> None:
    # Unary minus would round to the context's 28 digits and make these two equal.
    a = Decimal("1." + "0" * 40 + "1")
    b = Decimal("1." + "0" * 40 + "2")
    assert sort_key((a,), DESC) > sort_key((b,), DESC)
    assert sort_key((a,), DESC) != sort_key((b,), DESC)


def test_nan_sorts_above_every_number_as_postgresql_sorts_it() -> None:
    nan = float("nan")
    assert ranked([1.0, nan, None, float("inf")], ASC)[1:3] == [1.0, float("inf")]
    assert sort_key((nan,), ASC) == sort_key((Decimal("NaN"),), ASC)
    assert ranked([1.0, None, nan], DESC)[0] is nan
    assert ranked([1.0, None, nan], DESC)[2] is None


def test_bools_dates_datetimes_and_uuids_compare_naturally() -> None:
    assert ranked([True, None, False], DESC) == [True, False, None]
    days = [date(2024, 1, 2), date(1999, 12, 31), date(2024, 1, 1)]
    assert ranked(days, DESC) == sorted(days, reverse=True)
    plus2 = timezone(timedelta(hours=2))
    # 11:00+02:00 is 09:00 UTC: earlier than 10:00 UTC although its wall clock is later.
    moments = [datetime(2024, 1, 1, 10, tzinfo=UTC), datetime(2024, 1, 1, 11, tzinfo=plus2)]
    assert ranked(moments, ASC) == moments[::-1]
    assert ranked(moments, DESC) == moments
    same = datetime(2024, 1, 1, 12, tzinfo=plus2)
    assert sort_key((same,), DESC) == sort_key((same.astimezone(UTC),), DESC)
    ids = [UUID(int=5), UUID(int=2**127), UUID(int=0)]
    assert ranked(ids, ASC) == sorted(ids)
    assert ranked(ids, DESC) == sorted(ids, reverse=True)


def test_components_rank_left_to_right_and_the_primary_key_breaks_ties() -> None:
    order = (Order("published", descending=True), Order("pk"))
    rows = [(None, 1), (date(2024, 1, 1), 3), (date(2024, 1, 1), 2), (date(2025, 1, 1), 4)]
    keys = {row: sort_key(row, order) for row in rows}
    assert sorted(rows, key=keys.__getitem__) == [
        (date(2025, 1, 1), 4),
        (date(2024, 1, 1), 2),
        (date(2024, 1, 1), 3),
        (None, 1),
    ]
    assert len(set(keys.values())) == len(rows)


def test_a_wrong_number_of_values_is_refused() -> None:
    with pytest.raises(ValueError, match="2 sort values for an order of 1"):
        sort_key((1, 2), ASC)
    with pytest.raises(ValueError):
        sort_keyer((Order("a"), Order("b")))((1,))


def test_the_key_function_is_built_once_per_order() -> None:
    assert sort_keyer(DESC) is sort_keyer((Order("x", descending=True),))


# -- against the brute-force comparison -------------------------------------------------

_FIXED_ZONES = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439)
)

#: One strategy per column type: the values of one position have one type (numbers mix).
COLUMN_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "int": st.integers(-5, 5) | st.integers(),
    "number": st.one_of(
        st.integers(-3, 3),
        st.floats(allow_nan=True, allow_infinity=True),
        st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-5, max_value=5),
        st.sampled_from([Decimal("Infinity"), Decimal("-Infinity"), Decimal("NaN")]),
    ),
    "str": st.text(alphabet="aAzZé中\U0001f600 ", max_size=3) | st.text(max_size=4),
    "bool": st.booleans(),
    "date": st.dates(),
    "datetime": st.datetimes(timezones=_FIXED_ZONES | st.just(UTC)),
    "uuid": st.uuids() | st.sampled_from([UUID(int=0), UUID(int=1)]),
}


@st.composite
def rows_and_order(draw: st.DrawFn) -> tuple[list[tuple[Any, ...]], tuple[Order, ...]]:
    kinds = draw(st.lists(st.sampled_from(sorted(COLUMN_TYPES)), min_size=1, max_size=3))
    order = tuple(Order(f"c{i}", descending=draw(st.booleans())) for i in range(len(kinds)))
    row = st.tuples(*(st.none() | COLUMN_TYPES[kind] for kind in kinds))
    return draw(st.lists(row, max_size=12)), order


@given(rows_and_order())
def test_keys_sort_like_the_brute_force_comparison(
    case: tuple[list[tuple[Any, ...]], tuple[Order, ...]],
) -> None:
    rows, order = case
    keyed = sorted(rows, key=lambda row: sort_key(row, order))
    expected = brute_sorted(rows, order)
    # Rows that compare equal may come in either order: each place must hold an equal row.
    assert [compare(r, e, order) for r, e in zip(keyed, expected, strict=True)] == [0] * len(rows)


@given(rows_and_order())
def test_every_pair_of_keys_compares_as_its_rows_do(
    case: tuple[list[tuple[Any, ...]], tuple[Order, ...]],
) -> None:
    rows, order = case
    keys = [sort_key(row, order) for row in rows]
    for a, ka in zip(rows, keys, strict=True):
        for b, kb in zip(rows, keys, strict=True):
            assert ((ka > kb) - (ka < kb), ka == kb) == (
                compare(a, b, order),
                compare(a, b, order) == 0,
            )
