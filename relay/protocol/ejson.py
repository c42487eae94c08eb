"""EJSON, Meteor's extended JSON, to and from Python values.

Layer: pure core (stdlib only). This module converts Python values into plain JSON structures
that a Meteor peer decodes into the same values, and back, following ``packages/ejson/ejson.js``
(ejson 1.1.4; reference ``ddp-protocol.md`` section 5). It also holds how JavaScript writes a
number, because ids and Alea seeds must be formatted exactly as JS would.

It must not do I/O, read the clock, log, or import anything outside the standard library.
Decoding input from the peer raises only :class:`EJSONError`; encoding a value that EJSON
cannot represent is a bug on our side and raises ``TypeError`` (or ``ValueError`` for cyclic
or absurdly deep values).

Type mapping (Python -> EJSON -> Python):

* ``datetime`` (naive is UTC) and ``date`` -> ``{"$date": ms}`` -> aware UTC ``datetime``
* ``bytes`` / ``bytearray`` / ``memoryview`` -> ``{"$binary": base64}`` -> ``bytes``
* ``float`` NaN / inf / -inf -> ``{"$InfNaN": 0 | 1 | -1}`` -> ``float``
* :class:`Regex` / ``re.Pattern`` -> ``{"$regexp", "$flags"}`` -> :class:`Regex`
* ``Decimal`` -> ``{"$type": "Decimal", "$value": str}`` -> ``Decimal``
* :class:`ObjectID` -> ``{"$type": "oid", "$value": hex}`` -> :class:`ObjectID`
* :class:`CustomType` -> ``{"$type", "$value"}`` -> whatever the registered decoder returns
* ``uuid.UUID`` -> its string -> ``str``
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, NoReturn

from relay.protocol.errors import EJSONError

__all__ = [
    "CustomType",
    "ObjectID",
    "Regex",
    "dumps",
    "equals",
    "format_js_number",
    "from_json_value",
    "loads",
    "register_type",
    "to_json_value",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OID_RE = re.compile(r"[0-9a-f]{24}")
# decimal.js syntax (plus a sign on NaN): Python's Decimal() alone would also accept "1_000",
# surrounding blanks, "Inf", "sNaN" and non-ASCII digits, none of which a JS peer would send.
_DECIMAL_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|Infinity)")
# Meteor drops every regexp flag except these on decode (ejson.js, RegExp converter).
_JS_REGEX_FLAGS = "gimuy"
# Python re flags with a JS equivalent, in JS's canonical order; re.UNICODE is implied for str
# patterns and the rest (VERBOSE, ASCII, ...) have no JS meaning.
_PATTERN_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))
# Meteor cuts $flags at 50 chars before filtering, so a huge flags string costs nothing.
_MAX_FLAGS = 50
# Types that are already plain JSON and never need converting: checked with a set lookup on
# type() before any isinstance chain, because flat documents of these are the hot path.
_PLAIN = frozenset({str, int, bool, type(None)})
_PLAIN_DECODED = frozenset({str, int, float, bool, type(None)})
# The exact key sets a decoder treats as special (ejson.js ``matchJSONValue`` of each builtin
# converter). A plain dict with one of these key sets must be sent inside ``$escape``.
_SPECIAL_KEY_SETS = frozenset(
    {
        frozenset({"$date"}),
        frozenset({"$regexp", "$flags"}),
        frozenset({"$InfNaN"}),
        frozenset({"$binary"}),
        frozenset({"$escape"}),
        frozenset({"$type", "$value"}),
    }
)


@dataclass(frozen=True, slots=True)
class Regex:
    """A JavaScript regular expression, kept as text: Python's ``re`` dialect is not JS's."""

    source: str
    flags: str = ""


@dataclass(frozen=True, slots=True)
class ObjectID:
    """A MongoDB ObjectID (``mongo-id``): exactly 24 lowercase hex characters."""

    hex: str

    def __post_init__(self) -> None:
        # Validated here so that every ObjectID in the process is well formed; the decoder
        # turns this ValueError into an EJSONError.
        if not isinstance(self.hex, str) or _OID_RE.fullmatch(self.hex) is None:
            raise ValueError(f"ObjectID needs 24 lowercase hex characters, got {self.hex!r}")


@dataclass(frozen=True, slots=True)
class CustomType:
    """Any other EJSON custom type, sent as ``{"$type": type_name, "$value": value}``.

    ``value`` must be plain JSON (dict with str keys, list, tuple, str, int, finite float,
    bool, None): as in Meteor, a custom type's ``$value`` is raw JSON and is not itself
    EJSON-encoded. To decode a custom type, register its name with :func:`register_type`.
    """

    type_name: str
    value: Any


# -- Custom type registry ---------------------------------------------------------------------


def _decode_oid(value: Any) -> ObjectID:
    if not isinstance(value, str):
        raise EJSONError(f"oid value must be a string, got {_kind(value)}")
    # Meteor's ObjectID constructor lowercases before validating.
    try:
        return ObjectID(value.lower())
    except ValueError:
        raise EJSONError(f"Invalid hexadecimal string for an ObjectID: {value[:40]!r}") from None


def _decode_decimal(value: Any) -> Decimal:
    if not isinstance(value, str) or _DECIMAL_RE.fullmatch(value) is None:
        raise EJSONError(f"Decimal value must be a decimal string, got {_short(value)}")
    return Decimal(value)


# Module-level, like Meteor's ``EJSON.addType`` table. Decoders get the raw ``$value``.
_TYPE_DECODERS: dict[str, Callable[[Any], Any]] = {
    "oid": _decode_oid,
    "Decimal": _decode_decimal,
}


def register_type(name: str, decode: Callable[[Any], Any]) -> None:
    """Make ``{"$type": name, "$value": v}`` decode to ``decode(v)``.

    ``decode`` gets the raw JSON ``$value``. It should raise :class:`EJSONError` (``ValueError``,
    ``TypeError``, ``LookupError`` and ``ArithmeticError`` are turned into one) for a bad value.
    A name can be registered once, as with ``EJSON.addType``; this also protects the built-in
    ``oid`` and ``Decimal`` types.
    """
    if name in _TYPE_DECODERS:
        raise ValueError(f"EJSON type {name!r} is already registered")
    _TYPE_DECODERS[name] = decode


# -- Encoding ---------------------------------------------------------------------------------


def to_json_value(value: Any) -> Any:
    """Convert ``value`` into plain JSON (dict, list, str, int, float, bool, None) per EJSON.

    Dict key order is kept (MongoDB cares about it). ``None`` stays ``null``: Python has no
    ``undefined``. Raises ``TypeError`` for a value EJSON cannot represent.
    """
    t = type(value)
    if t in _PLAIN:
        return value
    try:
        return _encode_mapping(value) if t is dict else _encode(value)
    except RecursionError:
        raise ValueError("value is nested too deeply or contains a cycle") from None


def _encode(value: Any) -> Any:
    # Ordered by how often each type shows up in documents.
    t = type(value)
    if t in _PLAIN:
        return value
    if t is dict:
        return _encode_mapping(value)
    if t is float:
        return _encode_float(value)
    if t is list or t is tuple:
        return [item if type(item) in _PLAIN else _encode(item) for item in value]
    if isinstance(value, datetime):
        return {"$date": _datetime_ms(value)}
    if isinstance(value, date):
        return {"$date": _datetime_ms(datetime.combine(value, time(), UTC))}
    if isinstance(value, bytes | bytearray | memoryview):
        raw = value if t is bytes else bytes(value)
        return {"$binary": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, Decimal):
        return {"$type": "Decimal", "$value": _decimal_str(value)}
    if isinstance(value, ObjectID):
        return {"$type": "oid", "$value": value.hex}
    if isinstance(value, Regex):
        return {"$regexp": value.source, "$flags": value.flags}
    if isinstance(value, re.Pattern):
        return _encode_pattern(value)
    if isinstance(value, CustomType):
        if not isinstance(value.type_name, str):
            raise TypeError(f"CustomType.type_name must be a str, got {_kind(value.type_name)}")
        return {"$type": value.type_name, "$value": _plain_json(value.value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    # Subclasses of the plain types (str/int enums, OrderedDict, ...) become the plain type, so
    # that the result is exactly what json.dumps writes and a peer reads back.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _encode_float(float(value))
    if isinstance(value, Mapping):
        return _encode_mapping(value)
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    raise TypeError(f"cannot convert {_kind(value)} to EJSON")


def _encode_mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    plain = _PLAIN  # a local: this loop is the hot path of every added/changed message
    out: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise TypeError(f"EJSON object keys must be str, got {_kind(key)}")
            key = str.__str__(key)
        out[key] = item if type(item) in plain else _encode(item)
    # Meteor escapes a plain object only when a decoder would take it for a special value.
    if len(out) <= 2 and frozenset(out) in _SPECIAL_KEY_SETS:
        return {"$escape": out}
    return out


def _encode_float(value: float) -> Any:
    if math.isfinite(value):
        # JSON.stringify(-0) is "0"; json.dumps(-0.0) would write "-0.0".
        return 0 if value == 0.0 and math.copysign(1.0, value) < 0 else value
    if math.isnan(value):
        return {"$InfNaN": 0}
    return {"$InfNaN": 1 if value > 0 else -1}


def _datetime_ms(value: datetime) -> int:
    if value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    # Integer arithmetic: a float timestamp would be off by one ms for some datetimes. Sub-ms
    # precision is floored (timedelta keeps microseconds non-negative).
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _decimal_str(value: Decimal) -> str:
    # str() keeps the exponent exactly ("1.10" stays "1.10"). decimal.js knows a single NaN,
    # so sNaN and -NaN are all sent as "NaN"; infinities already print as decimal.js reads them.
    return "NaN" if value.is_nan() else str(value)


def _encode_pattern(pattern: re.Pattern[Any]) -> dict[str, str]:
    if not isinstance(pattern.pattern, str):
        raise TypeError("cannot convert a bytes regular expression to EJSON")
    flags = "".join(js for py, js in _PATTERN_FLAGS if pattern.flags & py)
    return {"$regexp": pattern.pattern, "$flags": flags}


def _plain_json(value: Any) -> Any:
    """Check that a custom type's value is plain JSON, copying it (tuples become lists)."""
    t = type(value)
    if t in _PLAIN:
        return value
    if t is float:
        if not math.isfinite(value):
            raise TypeError("a CustomType value cannot hold NaN or infinity")
        return value
    if isinstance(value, list | tuple):
        return [_plain_json(item) for item in value]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"EJSON object keys must be str, got {_kind(key)}")
            out[str.__str__(key)] = _plain_json(item)
        return out
    raise TypeError(f"a CustomType value must be plain JSON, got {_kind(value)}")


# -- Decoding ---------------------------------------------------------------------------------


def from_json_value(value: Any) -> Any:
    """Convert parsed JSON into Python values per EJSON; the inverse of :func:`to_json_value`.

    An object is special only if it has at most 2 keys, all starting with ``$``, forming exactly
    one of the known key sets; any other object (``{"$foo": 1}``) is kept, its values decoded.
    Raises only :class:`EJSONError`, whatever the input (a decoder added with
    :func:`register_type` must keep to the contract written there).
    """
    try:
        return _decode(value)
    except RecursionError:
        raise EJSONError("EJSON value is nested too deeply") from None


def _decode(value: Any) -> Any:
    t = type(value)
    if t in _PLAIN_DECODED:
        return value
    if t is dict or isinstance(value, dict):
        return _decode_dict(value)
    if t is list or isinstance(value, list):
        return [item if type(item) in _PLAIN_DECODED else _decode(item) for item in value]
    return value


def _decode_dict(value: dict[Any, Any]) -> Any:
    if len(value) <= 2 and all(isinstance(key, str) and key.startswith("$") for key in value):
        decoder = _SPECIAL_DECODERS.get(frozenset(value))
        if decoder is not None:
            return decoder(value)
    plain = _PLAIN_DECODED  # a local: this loop is the hot path of every method call
    out: dict[Any, Any] = {}
    for key, item in value.items():
        out[key] = item if type(item) in plain else _decode(item)
    return out


def _decode_date(obj: dict[str, Any]) -> datetime:
    raw = obj["$date"]
    if isinstance(raw, str):
        return _parse_date_string(raw)
    if not _is_number(raw):
        raise EJSONError(f"$date must be a number of milliseconds, got {_kind(raw)}")
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise EJSONError("$date must be finite")
        # JS Date truncates a fractional time value toward zero (TimeClip).
        raw = math.trunc(raw)
    try:
        return _EPOCH + timedelta(milliseconds=raw)
    except OverflowError:
        raise EJSONError(f"$date out of range: {_short(raw)}") from None


def _parse_date_string(text: str) -> datetime:
    # Meteor decodes with ``new Date(value)``, which accepts date strings. We take ISO-8601
    # (what Date.toISOString writes); a value without an offset is read as UTC, since a relay
    # has no meaningful local time zone.
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.utcoffset() is None:
            parsed = parsed.replace(tzinfo=UTC)
        else:
            parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise EJSONError(f"invalid $date string: {text[:60]!r}") from None
    # A JS Date holds whole milliseconds.
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _decode_regexp(obj: dict[str, Any]) -> Regex:
    source, flags = obj["$regexp"], obj["$flags"]
    if not isinstance(source, str) or not isinstance(flags, str):
        raise EJSONError("$regexp and $flags must be strings")
    kept: list[str] = []
    for flag in flags[:_MAX_FLAGS]:
        if flag in _JS_REGEX_FLAGS and flag not in kept:
            kept.append(flag)
    return Regex(source, "".join(kept))


def _decode_inf_nan(obj: dict[str, Any]) -> float:
    raw = obj["$InfNaN"]
    if not _is_number(raw):
        raise EJSONError(f"$InfNaN must be a number, got {_kind(raw)}")
    # Meteor computes value / 0: positive -> Infinity, negative -> -Infinity, 0 (or NaN) -> NaN.
    if raw > 0:
        return math.inf
    if raw < 0:
        return -math.inf
    return math.nan


def _decode_binary(obj: dict[str, Any]) -> bytes:
    raw = obj["$binary"]
    if not isinstance(raw, str):
        raise EJSONError(f"$binary must be a base64 string, got {_kind(raw)}")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise EJSONError(f"invalid base64 in $binary: {raw[:60]!r}") from None


def _decode_escape(obj: dict[str, Any]) -> dict[Any, Any]:
    inner = obj["$escape"]
    if not isinstance(inner, dict):
        raise EJSONError(f"$escape must hold an object, got {_kind(inner)}")
    # Only this level's keys are literal; the values are ordinary EJSON.
    return {key: _decode(item) for key, item in inner.items()}


def _decode_custom(obj: dict[str, Any]) -> Any:
    name = obj["$type"]
    decode = _TYPE_DECODERS.get(name) if isinstance(name, str) else None
    if decode is None:
        shown = name[:60] if isinstance(name, str) else _short(name)
        raise EJSONError(f"Custom EJSON type {shown} is not defined")
    try:
        return decode(obj["$value"])
    except EJSONError:
        raise
    except (ValueError, TypeError, LookupError, ArithmeticError) as exc:
        raise EJSONError(f"invalid value for EJSON type {name}: {exc}") from exc


_SPECIAL_DECODERS: dict[frozenset[str], Callable[[dict[str, Any]], Any]] = {
    frozenset({"$date"}): _decode_date,
    frozenset({"$regexp", "$flags"}): _decode_regexp,
    frozenset({"$InfNaN"}): _decode_inf_nan,
    frozenset({"$binary"}): _decode_binary,
    frozenset({"$escape"}): _decode_escape,
    frozenset({"$type", "$value"}): _decode_custom,
}


# -- Text, equality and number formatting -----------------------------------------------------


def dumps(value: Any) -> str:
    """Serialize ``value`` to compact EJSON text (no spaces, UTF-8 kept, never bare NaN)."""
    return json.dumps(
        to_json_value(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _reject_constant(name: str) -> NoReturn:
    # json.loads accepts the non-standard NaN / Infinity tokens; JSON.parse does not.
    raise EJSONError(f"invalid JSON token {name}")


def loads(text: str) -> Any:
    """Parse EJSON text. Raises only :class:`EJSONError`."""
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError, and ints beyond the digit limit
        raise EJSONError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise EJSONError("JSON text is nested too deeply") from None
    return from_json_value(parsed)


def equals(a: Any, b: Any) -> bool:
    """EJSON equality (``EJSON.equals``), as the mergebox needs it.

    NaN equals NaN, bytes-like values compare by content, dict key order is ignored, dates
    compare as instants at millisecond precision, ``True`` differs from ``1``, and a Decimal
    equals only a Decimal of the same value (so ``1.10`` equals ``1.1``, as in decimal.js).
    """
    if a is b:
        # The hot path: live updates share value objects between sessions' mergeboxes,
        # so an unchanged field is usually the very same object (NaN is NaN: equal too).
        return True
    ta = type(a)
    if ta is type(b) and (ta is str or ta is int or ta is bool or a is None):
        return bool(a == b)
    return _equals(a, b)


def _equals(a: Any, b: Any) -> bool:
    family = _family(a)
    if family != _family(b):
        return False
    if family == "number":
        if a != a and b != b:  # both NaN
            return True
        return bool(a == b)
    if family == "decimal":
        if a.is_nan() or b.is_nan():
            return bool(a.is_nan() and b.is_nan())
        return bool(a == b)
    if family == "bytes":
        return bytes(a) == bytes(b)
    if family == "date":
        return _to_json_date(a) == _to_json_date(b)
    if family == "regex":
        return _regex_key(a) == _regex_key(b)
    if family == "custom":
        return bool(a.type_name == b.type_name and equals(a.value, b.value))
    if family == "list":
        return len(a) == len(b) and all(equals(x, y) for x, y in zip(a, b, strict=True))
    if family == "dict":
        return a.keys() == b.keys() and all(equals(item, b[key]) for key, item in a.items())
    if family == "str":
        return str(a) == str(b)
    return bool(a == b)


def _family(value: Any) -> str:
    # Which values can be equal at all: JS has one number type, but true is not 1.
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str | uuid.UUID):
        return "str"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bytes"
    if isinstance(value, date):
        return "date"
    if isinstance(value, Regex | re.Pattern):
        return "regex"
    if isinstance(value, CustomType):
        return "custom"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "dict"
    return type(value).__qualname__


def _regex_key(value: Regex | re.Pattern[Any]) -> tuple[object, str]:
    if isinstance(value, Regex):
        source: object = value.source
        flags = value.flags
    else:
        source = value.pattern
        flags = "".join(js for py, js in _PATTERN_FLAGS if value.flags & py)
    # A JS RegExp's flags read back in canonical order, so the order written does not matter.
    return source, "".join(sorted(set(flags)))


def _to_json_date(value: date) -> int:
    if isinstance(value, datetime):
        return _datetime_ms(value)
    return _datetime_ms(datetime.combine(value, time(), UTC))


def format_js_number(value: int | float) -> str:
    """Write a number as JavaScript's ``String(n)`` / ``JSON.stringify(n)`` would.

    ``5.0`` gives ``"5"``, ``1e21`` gives ``"1e+21"``, ``1e-7`` gives ``"1e-7"``, ``-0.0`` gives
    ``"0"``. Non-finite floats give ``"NaN"`` / ``"Infinity"`` / ``"-Infinity"`` (what
    ``String()`` writes; ``JSON.stringify`` would write ``null``). Python ints are written
    exactly, even beyond 2**53 where a JS number would round.
    """
    if isinstance(value, bool):
        raise TypeError("format_js_number() takes a number, not a bool")
    if isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digit string that round-trips, which is the digit string
    # ECMAScript's Number::toString picks; only the layout differs.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    scale = (int(exp_text) if exp_text else 0) - len(frac)
    stripped = digits.rstrip("0")
    scale += len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    n = scale + k  # value = 0.<digits> * 10**n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        exponent = n - 1
        exp_sign = "+" if exponent >= 0 else "-"
        head = digits if k == 1 else digits[0] + "." + digits[1:]
        body = f"{head}e{exp_sign}{abs(exponent)}"
    return sign + body


# -- Small helpers for checks and messages ----------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return type(value).__qualname__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
