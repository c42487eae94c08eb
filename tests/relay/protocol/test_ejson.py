"""Tests for relay.protocol.ejson: reference ddp-protocol.md section 5, plus property tests."""

from __future__ import annotations

import contextlib
import json
import math
import re
import string
import uuid
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol import ejson
from relay.protocol.ejson import (
    CustomType,
    ObjectID,
    Regex,
    dumps,
    equals,
    format_js_number,
    from_json_value,
    loads,
    register_type,
    to_json_value,
)
from relay.protocol.errors import EJSONError, RemoteProtocolError

PROPERTY = settings(max_examples=300, deadline=None)


def _ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


# ---------------------------------------------------------------------------------------------
# Reference section 5.2, row by row
# ---------------------------------------------------------------------------------------------

ROUND_TRIP_EXAMPLES: list[tuple[str, Any, str]] = [
    ("Date(0)", _ms(0), '{"$date":0}'),
    (
        "Date(2024-01-02T03:04:05.678Z)",
        datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        '{"$date":1704164645678}',
    ),
    ("Uint8Array", bytes([0, 1, 2, 253, 254, 255]), '{"$binary":"AAEC/f7/"}'),
    ("empty Uint8Array", b"", '{"$binary":""}'),
    ("regexp", Regex("ab+c", "gi"), '{"$regexp":"ab+c","$flags":"gi"}'),
    ("NaN", math.nan, '{"$InfNaN":0}'),
    ("Infinity", math.inf, '{"$InfNaN":1}'),
    ("-Infinity", -math.inf, '{"$InfNaN":-1}'),
    ("{a: NaN}", {"a": math.nan}, '{"a":{"$InfNaN":0}}'),
    ("plain {$date: 10000}", {"$date": 10000}, '{"$escape":{"$date":10000}}'),
    ("plain {$date: Date}", {"$date": _ms(32491)}, '{"$escape":{"$date":{"$date":32491}}}'),
    ("plain {$type, $value}", {"$type": "a", "$value": 1}, '{"$escape":{"$type":"a","$value":1}}'),
    ("plain {$foo: 1}", {"$foo": 1}, '{"$foo":1}'),
    (
        "ObjectID",
        ObjectID("0123456789abcdef01234567"),
        '{"$type":"oid","$value":"0123456789abcdef01234567"}',
    ),
    ("Decimal 1.10", Decimal("1.10"), '{"$type":"Decimal","$value":"1.10"}'),
]


@pytest.mark.parametrize(
    ("value", "text"),
    [(value, text) for _, value, text in ROUND_TRIP_EXAMPLES],
    ids=[name for name, _, _ in ROUND_TRIP_EXAMPLES],
)
def test_reference_examples_encode_and_round_trip(value: Any, text: str) -> None:
    assert dumps(value) == text
    decoded = loads(text)
    assert equals(decoded, value)
    assert dumps(decoded) == text


def test_reference_none_is_null_not_undefined() -> None:
    # Meteor drops undefined from objects and sends it as null in arrays; Python's None is
    # JSON null, so it is kept in both places.
    assert dumps([1, None]) == "[1,null]"
    assert dumps({"a": None}) == '{"a":null}'
    assert loads('{"a":null}') == {"a": None}


def test_reference_parse_only_examples() -> None:
    assert loads('{"$InfNaN":5}') == math.inf
    assert loads('{"$regexp":"a","$flags":"gzgx"}') == Regex("a", "g")
    with pytest.raises(EJSONError, match="Custom EJSON type nope is not defined"):
        loads('{"$type":"nope","$value":1}')


def test_reference_decimal_keeps_exponent() -> None:
    decoded = loads('{"$type":"Decimal","$value":"1.10"}')
    assert isinstance(decoded, Decimal)
    assert str(decoded) == "1.10"
    assert dumps(Decimal("1.10")) == '{"$type":"Decimal","$value":"1.10"}'


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


class Colour(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 3


def test_plain_values_pass_through_unchanged() -> None:
    doc = {"s": "x", "i": 1, "b": True, "n": None, "f": 1.5}
    out = to_json_value(doc)
    assert out == doc
    assert out is not doc
    assert list(out) == list(doc)


def test_key_order_is_preserved() -> None:
    doc = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
    assert dumps(doc) == '{"z":1,"a":2,"m":{"y":1,"b":2}}'
    assert list(loads(dumps(doc))) == ["z", "a", "m"]


def test_negative_zero_is_sent_as_zero() -> None:
    assert dumps(-0.0) == "0"
    assert dumps([0.0, -0.0]) == "[0.0,0]"


def test_datetimes() -> None:
    naive = datetime(2024, 1, 2, 3, 4, 5, 678000)
    assert to_json_value(naive) == {"$date": 1704164645678}
    plus_two = datetime(2024, 1, 2, 5, 4, 5, 678000, tzinfo=timezone(timedelta(hours=2)))
    assert to_json_value(plus_two) == {"$date": 1704164645678}
    # Sub-millisecond precision is floored, also before the epoch.
    assert to_json_value(_ms(5) + timedelta(microseconds=999)) == {"$date": 5}
    assert to_json_value(_ms(-5) + timedelta(microseconds=1)) == {"$date": -5}
    assert to_json_value(date(2024, 1, 2)) == {"$date": 1704153600000}


def test_bytes_like_values() -> None:
    assert to_json_value(bytearray(b"\xff")) == {"$binary": "/w=="}
    assert to_json_value(memoryview(b"ab")) == {"$binary": "YWI="}
    strided = memoryview(b"abcd")[::2]
    assert to_json_value(strided) == {"$binary": "YWM="}


def test_regular_expressions() -> None:
    pattern = re.compile("a.b", re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE)
    assert to_json_value(pattern) == {"$regexp": "a.b", "$flags": "ims"}
    assert to_json_value(re.compile("x")) == {"$regexp": "x", "$flags": ""}
    with pytest.raises(TypeError, match="bytes regular expression"):
        to_json_value(re.compile(b"x"))


def test_decimals() -> None:
    assert to_json_value(Decimal("1E+5")) == {"$type": "Decimal", "$value": "1E+5"}
    assert to_json_value(Decimal("-0")) == {"$type": "Decimal", "$value": "-0"}
    for value, text in [("NaN", "NaN"), ("-NaN", "NaN"), ("sNaN", "NaN")]:
        assert to_json_value(Decimal(value)) == {"$type": "Decimal", "$value": text}
    assert to_json_value(Decimal("Infinity")) == {"$type": "Decimal", "$value": "Infinity"}
    assert to_json_value(Decimal("-Inf")) == {"$type": "Decimal", "$value": "-Infinity"}


def test_other_encodings() -> None:
    assert to_json_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert to_json_value((1, (2, 3))) == [1, [2, 3]]
    assert to_json_value(Colour.RED) == "red"
    assert type(to_json_value(Colour.RED)) is str
    assert to_json_value(Level.HIGH) == 3
    assert type(to_json_value(Level.HIGH)) is int
    assert to_json_value(OrderedDict(a=1)) == {"a": 1}
    assert to_json_value({Colour.RED: 1}) == {"red": 1}


class _Sub(float):
    pass


class _SubList(list[Any]):
    pass


def test_subclasses_of_plain_types() -> None:
    assert to_json_value(_Sub(2.5)) == 2.5
    assert to_json_value(_Sub("nan")) == {"$InfNaN": 0}
    assert to_json_value(_SubList([1, datetime(1970, 1, 1)])) == [1, {"$date": 0}]
    assert to_json_value(type("FrozenMap", (dict,), {})(a=1)) == {"a": 1}


def test_custom_type_encoding() -> None:
    value = CustomType("point", {"x": 1, "y": [2, (3,)]})
    assert to_json_value(value) == {"$type": "point", "$value": {"x": 1, "y": [2, [3]]}}
    # $value is raw JSON, as in Meteor: nothing inside is escaped.
    assert to_json_value(CustomType("t", {"$date": 1})) == {"$type": "t", "$value": {"$date": 1}}
    assert to_json_value(CustomType("t", 1.5)) == {"$type": "t", "$value": 1.5}
    with pytest.raises(TypeError, match="plain JSON"):
        to_json_value(CustomType("t", datetime(2024, 1, 1)))
    with pytest.raises(TypeError, match="NaN"):
        to_json_value(CustomType("t", [math.inf]))
    with pytest.raises(TypeError, match="keys must be str"):
        to_json_value(CustomType("t", {1: 2}))
    with pytest.raises(TypeError, match="type_name"):
        to_json_value(CustomType(1, 2))  # type: ignore[arg-type]


def test_escaping_happens_only_for_the_exact_special_key_sets() -> None:
    for key_set in (["$date"], ["$regexp", "$flags"], ["$InfNaN"], ["$binary"], ["$escape"]):
        special = dict.fromkeys(key_set, "v")
        assert to_json_value(special) == {"$escape": special}
    assert to_json_value({"$type": "x", "$value": "v"}) == {
        "$escape": {"$type": "x", "$value": "v"}
    }
    ordinary: list[dict[str, Any]] = [
        {"$date": 1, "$x": 2},
        {"$regexp": "a"},
        {"$type": "x"},
        {"date": 1},
        {},
    ]
    for plain in ordinary:
        assert to_json_value(plain) == plain
    # Only one level is literal: a special inside the escaped value is encoded normally.
    nested = {"$escape": {"$binary": "x"}}
    assert to_json_value(nested) == {"$escape": {"$escape": {"$escape": {"$binary": "x"}}}}
    assert loads(dumps(nested)) == nested


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {1: "a"}, {"a": [object()]}, datetime.now().time(), 1j, frozenset()],
    ids=["object", "set", "int-key", "nested", "time", "complex", "frozenset"],
)
def test_unsupported_values_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        to_json_value(value)


def test_cycles_raise_value_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="cycle"):
        to_json_value(cycle)


def test_object_id_is_validated() -> None:
    for bad in ("0123456789ABCDEF01234567", "abc", "0123456789abcdef0123456g", 5):
        with pytest.raises(ValueError):
            ObjectID(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def test_date_decoding() -> None:
    assert loads('{"$date":1.9}') == _ms(1)
    assert loads('{"$date":-1.9}') == _ms(-1)
    assert loads('{"$date":"2024-01-02T03:04:05.678Z"}') == _ms(1704164645678)
    assert loads('{"$date":"2024-01-02T05:04:05.6789+02:00"}') == _ms(1704164645678)
    assert loads('{"$date":"2024-01-02"}') == datetime(2024, 1, 2, tzinfo=UTC)
    decoded = loads('{"$date":1704164645678}')
    assert decoded.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        '{"$date":"yesterday"}',
        '{"$date":"0001-01-01T00:00:00+01:00"}',
        '{"$date":true}',
        '{"$date":null}',
        '{"$date":[1]}',
        '{"$date":1e300}',
        '{"$date":1e400}',
        '{"$date":-62135596800001}',
        '{"$date":' + "9" * 40 + "}",
        '{"$binary":"AAE"}',
        '{"$binary":"A*=="}',
        '{"$binary":"é"}',
        '{"$binary":5}',
        '{"$InfNaN":"1"}',
        '{"$InfNaN":true}',
        '{"$InfNaN":null}',
        '{"$regexp":1,"$flags":""}',
        '{"$regexp":"a","$flags":null}',
        '{"$escape":[1]}',
        '{"$escape":"x"}',
        '{"$type":"oid","$value":"abc"}',
        '{"$type":"oid","$value":1}',
        '{"$type":"Decimal","$value":1.1}',
        '{"$type":"Decimal","$value":"1_000"}',
        '{"$type":"Decimal","$value":" 1"}',
        '{"$type":"Decimal","$value":"sNaN"}',
        '{"$type":"Decimal","$value":"\\u0661"}',
        '{"$type":1,"$value":1}',
        '{"$type":["oid"],"$value":1}',
        '{"a":{"b":{"$type":"nope","$value":1}}}',
    ],
)
def test_invalid_specials_raise_ejson_error(text: str) -> None:
    with pytest.raises(EJSONError):
        loads(text)


def test_ejson_error_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        loads('{"$type":"nope","$value":1}')


def test_non_special_objects_pass_through_and_are_decoded_inside() -> None:
    assert loads('{"$foo":{"$date":0}}') == {"$foo": _ms(0)}
    assert loads('{"$binary":"x","$other":1}') == {"$binary": "x", "$other": 1}
    assert loads('{"$date":0,"x":1}') == {"$date": 0, "x": 1}
    assert loads('{"$a":1,"$b":2,"$c":3}') == {"$a": 1, "$b": 2, "$c": 3}
    assert loads("{}") == {}
    assert loads('[{"$date":0},[{"$InfNaN":-1}]]') == [_ms(0), [-math.inf]]


def test_special_decoding_details() -> None:
    assert loads('{"$binary":"AAEC/f7/"}') == bytes([0, 1, 2, 253, 254, 255])
    assert math.isnan(loads('{"$InfNaN":0}'))
    assert math.isnan(loads('{"$InfNaN":-0.0}'))
    assert loads('{"$InfNaN":-0.5}') == -math.inf
    assert loads('{"$regexp":"a","$flags":"yumigyumig"}') == Regex("a", "yumig")
    assert loads('{"$regexp":"a","$flags":"' + "x" * 50 + 'g"}') == Regex("a", "")
    assert loads('{"$regexp":"a","$flags":"' + "x" * 49 + 'g"}') == Regex("a", "g")
    oid = loads('{"$type":"oid","$value":"0123456789ABCDEF01234567"}')
    assert oid == ObjectID("0123456789abcdef01234567")
    assert loads('{"$escape":{"$date":{"$date":0},"$x":{"$escape":{"$y":1}}}}') == {
        "$date": _ms(0),
        "$x": {"$y": 1},
    }
    for text in ("1e5", "-.5", "5.", "+1.5E-3", "NaN", "-Infinity", "Infinity", "0"):
        decoded = loads('{"$type":"Decimal","$value":"' + text + '"}')
        assert str(decoded) == str(Decimal(text))


def test_from_json_value_leaves_other_python_values_alone() -> None:
    marker = object()
    assert from_json_value(marker) is marker
    assert from_json_value(("a",)) == ("a",)
    assert from_json_value({1: {"$date": 0}}) == {1: _ms(0)}


def test_loads_rejects_bad_json() -> None:
    for text in ("{", "[1,]", "NaN", "[Infinity]", "-Infinity", "", "1" * 5000, "'a'"):
        with pytest.raises(EJSONError):
            loads(text)


def test_deep_nesting_raises_ejson_error() -> None:
    with pytest.raises(EJSONError):
        loads("[" * 100_000 + "]" * 100_000)
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EJSONError, match="deeply"):
        from_json_value(deep)


def test_registered_custom_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ejson, "_TYPE_DECODERS", dict(ejson._TYPE_DECODERS))

    def decode_point(value: Any) -> CustomType:
        return CustomType("point", {"x": value["x"], "y": value["y"]})

    register_type("point", decode_point)
    point = CustomType("point", {"x": 1, "y": 2})
    assert loads(dumps(point)) == point
    # A KeyError from the decoder becomes an EJSONError, as does an explicit one.
    with pytest.raises(EJSONError, match="invalid value for EJSON type point"):
        loads('{"$type":"point","$value":{}}')

    def strict(value: Any) -> Any:
        raise EJSONError("nope")

    register_type("strict", strict)
    with pytest.raises(EJSONError, match="nope"):
        loads('{"$type":"strict","$value":1}')
    for name in ("point", "oid", "Decimal"):
        with pytest.raises(ValueError, match="already registered"):
            register_type(name, decode_point)


def test_registry_is_restored_after_the_test() -> None:
    with pytest.raises(EJSONError):
        loads('{"$type":"point","$value":{"x":1,"y":2}}')


# ---------------------------------------------------------------------------------------------
# Equality
# ---------------------------------------------------------------------------------------------

EQUAL_PAIRS: list[tuple[Any, Any]] = [
    (1, 1.0),
    (0, -0.0),
    (math.nan, math.nan),
    (b"ab", bytearray(b"ab")),
    (b"ab", memoryview(b"ab")),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
    ([1, {"x": math.nan}], (1, {"x": math.nan})),
    (datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)),
    (datetime(2024, 1, 1, 0, 0, 0, 1), datetime(2024, 1, 1, tzinfo=UTC)),
    (date(2024, 1, 1), datetime(2024, 1, 1, tzinfo=UTC)),
    (Decimal("1.10"), Decimal("1.1")),
    (Decimal("NaN"), Decimal("sNaN")),
    (Regex("a", "gi"), Regex("a", "ig")),
    (Regex("a", "i"), re.compile("a", re.I)),
    (ObjectID("0" * 24), ObjectID("0" * 24)),
    (CustomType("t", [1]), CustomType("t", (1.0,))),
    (uuid.UUID(int=0), "00000000-0000-0000-0000-000000000000"),
    ("red", Colour.RED),
    (None, None),
    (True, True),
]

UNEQUAL_PAIRS: list[tuple[Any, Any]] = [
    (True, 1),
    (False, 0),
    (1, "1"),
    (None, 0),
    (math.nan, 1.0),
    (1, Decimal(1)),
    (Decimal("NaN"), Decimal(1)),
    (Decimal(1), Decimal(2)),
    (b"a", "a"),
    (b"a", b"b"),
    ({"a": 1}, {"a": 1, "b": 2}),
    ({"a": 1}, {"b": 1}),
    ([1, 2], [1]),
    ([1, 2], [2, 1]),
    (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)),
    (Regex("a", "g"), Regex("a", "i")),
    (Regex("a", ""), Regex("b", "")),
    (CustomType("t", 1), CustomType("u", 1)),
    (ObjectID("0" * 24), "0" * 24),
    ("a", "b"),
    (object(), object()),
]


@pytest.mark.parametrize(("a", "b"), EQUAL_PAIRS)
def test_equal_values(a: Any, b: Any) -> None:
    assert equals(a, b)
    assert equals(b, a)


@pytest.mark.parametrize(("a", "b"), UNEQUAL_PAIRS)
def test_unequal_values(a: Any, b: Any) -> None:
    assert not equals(a, b)
    assert not equals(b, a)


# ---------------------------------------------------------------------------------------------
# JS number formatting
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (5, "5"),
        (-5, "-5"),
        (2**64, "18446744073709551616"),
        (5.0, "5"),
        (1.5, "1.5"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (123.456, "123.456"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (1e-6, "0.000001"),
        (1.25e-6, "0.00000125"),
        (1e-7, "1e-7"),
        (-1.5e-7, "-1.5e-7"),
        (5e-324, "5e-324"),
        (math.nan, "NaN"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
    ],
)
def test_format_js_number(value: float, text: str) -> None:
    # Expected strings are what Node's String(n) prints for the same doubles.
    assert format_js_number(value) == text


def test_format_js_number_rejects_bool() -> None:
    with pytest.raises(TypeError):
        format_js_number(True)


@PROPERTY
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_format_js_number_round_trips(value: float) -> None:
    assert float(format_js_number(value)) == value


# ---------------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------------

SPECIAL_KEYS = ["$date", "$regexp", "$flags", "$InfNaN", "$binary", "$escape", "$type", "$value"]
keys = st.one_of(st.sampled_from([*SPECIAL_KEYS, "$foo", "_id"]), st.text(max_size=6))

ms_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone.min]),
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))

regex_flags = st.lists(st.sampled_from("gimuy"), unique=True).map("".join)

ejson_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(max_size=20),
    ms_datetimes,
    st.decimals(),
    st.builds(Regex, st.text(max_size=10), regex_flags),
    st.from_regex(r"[0-9a-f]{24}", fullmatch=True).map(ObjectID),
)
ejson_values = st.recursive(
    ejson_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
        # Small dicts of special keys are the ones that need escaping.
        st.dictionaries(st.sampled_from(SPECIAL_KEYS), children, min_size=1, max_size=2),
    ),
    max_leaves=20,
)


@PROPERTY
@given(ejson_values)
def test_round_trip(value: Any) -> None:
    json_value = to_json_value(value)
    assert equals(from_json_value(json_value), value)
    text = dumps(value)
    decoded = loads(text)
    assert equals(decoded, value)
    # Decoding then encoding again gives byte-identical text: nothing drifts in a relay.
    assert dumps(decoded) == text


@PROPERTY
@given(ejson_values)
def test_encoding_is_plain_json(value: Any) -> None:
    json_value = to_json_value(value)
    assert json.loads(json.dumps(json_value, allow_nan=False)) == json_value


json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=12),
    st.sampled_from(["oid", "Decimal", "nope", "1.10", "0123456789abcdef01234567", "2024-01-02"]),
)


def _special_shapes(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(keys, children, max_size=3),
        st.builds(lambda v: {"$date": v}, children),
        st.builds(lambda v: {"$InfNaN": v}, children),
        st.builds(lambda v: {"$binary": v}, children),
        st.builds(lambda v: {"$escape": v}, children),
        st.builds(lambda s, f: {"$regexp": s, "$flags": f}, children, children),
        st.builds(lambda t, v: {"$type": t, "$value": v}, children, children),
    )


json_values = st.recursive(json_leaves, _special_shapes, max_leaves=12)


@PROPERTY
@given(json_values)
def test_decoding_any_json_raises_only_ejson_error(value: Any) -> None:
    with contextlib.suppress(EJSONError):
        from_json_value(value)


@PROPERTY
@given(st.one_of(st.text(), json_values.map(json.dumps)), st.integers(0, 40), st.text(max_size=2))
def test_loads_any_text_raises_only_ejson_error(text: str, cut: int, junk: str) -> None:
    for candidate in (text, text[:cut] + junk + text[cut:]):
        with contextlib.suppress(EJSONError):
            loads(candidate)
