"""Tests for relay.protocol.ids: the idStringify / idParse table of reference section 2.11."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.ejson import ObjectID
from relay.protocol.errors import EJSONError
from relay.protocol.ids import DocumentId, id_parse, id_stringify, session_tag

PROPERTY = settings(max_examples=300, deadline=None)
OID_HEX = "0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (ObjectID(OID_HEX), OID_HEX),
        (OID_HEX, "-" + OID_HEX),
        ("-x", "--x"),
        ("-", "--"),
        ("~5", "-~5"),
        ("{}", "-{}"),
        ("", ""),
        ("abc", "abc"),
        ("HPRPFNS53Rhi6vc9F", "HPRPFNS53Rhi6vc9F"),
        # Uppercase hex is not an ObjectID for Meteor, so it passes unchanged.
        (OID_HEX.upper(), OID_HEX.upper()),
        (OID_HEX[:-1], OID_HEX[:-1]),
        ("x-", "x-"),
        (5, "~5"),
        (-5, "~-5"),
        (5.0, "~5"),
        (1.5, "~1.5"),
        (1e21, "~1e+21"),
        (1e-7, "~1e-7"),
        (-0.0, "~0"),
        (True, "~true"),
        (False, "~false"),
        (None, "~null"),
    ],
)
def test_stringify_table(value: DocumentId, wire: str) -> None:
    assert id_stringify(value) == wire


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (OID_HEX, ObjectID(OID_HEX)),
        ("-" + OID_HEX, OID_HEX),
        ("--x", "-x"),
        ("-~5", "~5"),
        ("-{}", "{}"),
        ("-", None),  # JS undefined
        ("", ""),
        ("abc", "abc"),
        (OID_HEX.upper(), OID_HEX.upper()),
        ("~5", 5),
        ("~1.5", 1.5),
        ("~1e+21", 1e21),
        ("~true", True),
        ("~false", False),
        ("~null", None),
    ],
)
def test_parse_table(wire: str, value: DocumentId) -> None:
    parsed = id_parse(wire)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    "wire",
    ["{}", '{"a":1}', "~", "~x", '~"abc"', "~[1]", "~{}", "~NaN", "~Infinity", "~1e400", "~5 5"],
)
def test_parse_rejects_what_stringify_never_writes(wire: str) -> None:
    with pytest.raises(EJSONError):
        id_parse(wire)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_stringify_rejects_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        id_stringify(value)


@pytest.mark.parametrize("value", [{"a": 1}, [1], b"x", object()])
def test_stringify_rejects_objects(value: Any) -> None:
    with pytest.raises(TypeError):
        id_stringify(value)


document_ids = st.one_of(
    st.text(),
    st.text(alphabet="-~{0123456789abcdef", max_size=26),
    st.from_regex(r"[0-9a-f]{24}", fullmatch=True),
    st.from_regex(r"[0-9a-f]{24}", fullmatch=True).map(ObjectID),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@PROPERTY
@given(document_ids)
def test_round_trip(value: DocumentId) -> None:
    wire = id_stringify(value)
    parsed = id_parse(wire)
    if isinstance(value, float) and isinstance(parsed, int):
        # An integral float of 2**53 or more is written as JS writes it, e.g. 6.7e16 as
        # "~67000000000000000", which parses back as that exact int; the double is the same.
        assert float(parsed) == value
    else:
        assert parsed == value
    # bool is an int in Python; the wire keeps them apart.
    assert isinstance(parsed, bool) is isinstance(value, bool)
    assert isinstance(parsed, str) is isinstance(value, str)
    assert id_stringify(parsed) == wire


@PROPERTY
@given(st.text())
def test_parse_any_text_raises_only_ejson_error(wire: str) -> None:
    try:
        parsed = id_parse(wire)
    except EJSONError:
        return
    # A peer may escape more than needed ("-0"), so only the parsed value is canonical.
    reparsed = id_parse(id_stringify(parsed))
    if isinstance(parsed, float):
        assert float(reparsed) == parsed  # type: ignore[arg-type]
    else:
        assert reparsed == parsed


def test_large_integral_float_is_written_as_js_does() -> None:
    assert id_stringify(6.738700667020066e16) == "~67387006670200660"
    assert id_parse("~67387006670200660") == 67387006670200660
    assert id_parse("~6.738700667020066e+16") == 6.738700667020066e16


def test_a_session_tag_names_a_session_without_revealing_its_id() -> None:
    sid = "aGAyuyZwCFxWdJyGm"
    tag = session_tag(sid)
    assert tag == session_tag(sid) and tag.startswith("s:") and sid not in tag
    assert session_tag("bGAyuyZwCFxWdJyGm") != tag and session_tag(None) == "-"
