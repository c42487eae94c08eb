"""relay.stream.routing: in-memory membership must agree with what the database's filter says.

A relay decides without a query whether a changed document belongs to a subscription
(invariant I2); if its answer differs from the SQL the publication's queryset runs, a
client gets a document it should not see, or misses one. So the operators are checked
against PostgreSQL itself, value by value, NULLs included.
"""

from __future__ import annotations

import itertools
from typing import Any

import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.backend import Condition
from relay.stream.routing import SUPPORTED_OPS, matches

VALUES: list[int | None] = [None, -1, 0, 1, 2, 5]
OPERANDS: dict[str, list[Any]] = {
    "exact": [None, 0, 1, 2],
    "gt": [0, 1, 2],
    "gte": [0, 1, 2],
    "lt": [0, 1, 2],
    "lte": [0, 1, 2],
    "in": [[], [1], [0, 2], [None, 1]],
    "isnull": [True, False],
}


def _sql(op: str, operand: Any) -> tuple[str, list[Any]]:
    """The WHERE clause Django builds for ``n__<op>=operand`` (``n`` an integer column)."""
    if op == "exact":
        return ("n IS NULL", []) if operand is None else ("n = %s", [operand])
    if op == "in":
        # Django drops NULLs from ``__in`` and turns an empty list into "no rows".
        kept = [v for v in operand if v is not None]
        return ("n = ANY(%s::int[])", [kept]) if kept else ("false", [])
    if op == "isnull":
        return ("n IS NULL", []) if operand else ("n IS NOT NULL", [])
    sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    return (f"n {sign} %s", [operand])


def test_every_operator_is_covered_here() -> None:
    assert set(OPERANDS) == SUPPORTED_OPS


@pytest.mark.pg
def test_each_operator_agrees_with_postgresql_including_nulls(pg_server: Any) -> None:
    conn = psycopg2.connect(pg_server.dsn("postgres"))
    try:
        cur = conn.cursor()
        disagreements = []
        for op, operands in OPERANDS.items():
            for operand, value in itertools.product(operands, VALUES):
                where, params = _sql(op, operand)
                cur.execute(
                    f"SELECT coalesce((SELECT {where} FROM (SELECT %s::int AS n) AS row), false)",
                    [*params, value],
                )
                (expected,) = cur.fetchone()
                got = matches([Condition("n", op, operand)], {"n": value})
                if got is not expected:
                    disagreements.append(
                        f"n={value!r} {op} {operand!r}: sql {expected}, ours {got}"
                    )
        assert disagreements == []
    finally:
        conn.close()


def test_conditions_are_anded_and_an_empty_list_matches() -> None:
    row = {"author": "ann", "price": 10}
    assert matches([], row)
    assert matches([Condition("author", "exact", "ann"), Condition("price", "gte", 10)], row)
    assert not matches([Condition("author", "exact", "ann"), Condition("price", "gt", 10)], row)


def test_a_path_the_change_does_not_carry_never_matches() -> None:
    assert not matches([Condition("author__email", "exact", "a@x")], {"author": "ann"})
    assert not matches([Condition("author__email", "isnull", True)], {"author": "ann"})


def test_an_unknown_operator_never_matches() -> None:
    assert not matches([Condition("n", "regex", ".*")], {"n": "x"})


def test_values_of_other_types_do_not_match_instead_of_raising() -> None:
    assert not matches([Condition("n", "gt", 1)], {"n": "a string"})
    assert not matches([Condition("n", "in", 5)], {"n": 5})  # not a container


@given(
    st.lists(st.tuples(st.sampled_from(sorted(SUPPORTED_OPS)), st.integers(-3, 3)), max_size=4),
    st.one_of(st.none(), st.integers(-3, 3)),
)
def test_a_conjunction_holds_exactly_when_each_condition_holds(
    ops: list[tuple[str, int]], value: int | None
) -> None:
    conditions = [
        Condition("n", op, [operand] if op == "in" else operand > 0 if op == "isnull" else operand)
        for op, operand in ops
    ]
    row = {"n": value}
    assert matches(conditions, row) == all(matches([c], row) for c in conditions)


# -- many: a path across a multi-valued relation (tags__name) -------------------------------

#: What a change carries for a multi-valued path: the distinct values the writer's LEFT
#: JOIN reaches; None stands for a missing related row or a NULL value. The empty tuple
#: (never written, accepted) means the same as (None,).
TUPLES: list[tuple[int | None, ...]] = [(), (None,), (1,), (None, 2), (0, 5), (-1, 1, 2)]


@pytest.mark.pg
def test_many_conditions_agree_with_a_postgresql_left_join(pg_server: Any) -> None:
    """Django filters ``tags__n__<op>=operand`` over one joined row per related value
    (a LEFT JOIN when it tests ``isnull``): a row belongs when one joined row passes."""
    conn = psycopg2.connect(pg_server.dsn("postgres"))
    try:
        cur = conn.cursor()
        disagreements = []
        for op, operands in OPERANDS.items():
            for operand, values in itertools.product(operands, TUPLES):
                where, params = _sql(op, operand)
                cur.execute(
                    f"SELECT EXISTS (SELECT 1 FROM (SELECT 1) z"
                    f" LEFT JOIN unnest(%s::int[]) AS joined(n) ON true WHERE {where})",
                    [list(values), *params],
                )
                (expected,) = cur.fetchone()
                got = matches([Condition("n", op, operand, many=True)], {"n": values})
                if got is not expected:
                    disagreements.append(
                        f"n={values!r} {op} {operand!r}: sql {expected}, ours {got}"
                    )
        assert disagreements == []
    finally:
        conn.close()


def _one_of(cond: Condition, values: tuple[Any, ...]) -> bool:
    """The brute-force model: the single-valued test of each value, ANY; no value at all
    is one NULL (the LEFT JOIN's row)."""
    single = Condition(cond.path, cond.op, cond.value)
    return any(matches([single], {cond.path: v}) for v in (values or (None,)))


@given(
    st.sampled_from(sorted(SUPPORTED_OPS)),
    st.integers(-3, 3),
    st.lists(st.one_of(st.none(), st.integers(-3, 3)), max_size=4, unique=True),
)
def test_a_many_condition_holds_when_any_value_does(
    op: str, operand: int, values: list[int | None]
) -> None:
    value: Any = [operand] if op == "in" else operand > 0 if op == "isnull" else operand
    cond = Condition("n", op, value, many=True)
    assert matches([cond], {"n": tuple(values)}) == _one_of(cond, tuple(values))


def test_many_exact_none_is_isnull() -> None:
    for values in TUPLES:
        assert matches([Condition("n", "exact", None, many=True)], {"n": values}) == matches(
            [Condition("n", "isnull", True, many=True)], {"n": values}
        )


def test_many_and_single_conditions_are_anded() -> None:
    row = {"tags__name": ("a", "b"), "title": "x"}
    assert matches(
        [Condition("tags__name", "exact", "b", many=True), Condition("title", "exact", "x")], row
    )
    assert not matches(
        [Condition("tags__name", "exact", "c", many=True), Condition("title", "exact", "x")], row
    )
    # Independent conditions on one path (two filter() calls): each may pass on a
    # different value.
    assert matches(
        [
            Condition("tags__name", "exact", "a", many=True),
            Condition("tags__name", "exact", "b", many=True),
        ],
        row,
    )
    assert not matches([Condition("tags__name", "exact", "a", many=True)], {"title": "x"})


def test_a_many_condition_takes_a_single_value_as_a_one_value_tuple() -> None:
    assert matches([Condition("n", "exact", 1, many=True)], {"n": 1})
    assert matches([Condition("n", "in", ("ab",), many=True)], {"n": "ab"})  # not its letters
    assert not matches([Condition("n", "gt", 1, many=True)], {"n": ("a", "b")})
    assert not matches([Condition("n", "regex", ".*", many=True)], {"n": ("x",)})
