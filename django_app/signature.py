"""Validate DDP ``params`` against a publication's or method's Python signature.

Job: Meteor's ``check()``, written as type hints. A function registered with ``@method``
or ``@publish`` takes ``(ctx, *params)``; its signature gives the accepted count and its
annotations the accepted types. Anything else is refused with 400 "Match failed", the
exact error a Meteor server sends. The checks are compiled once, when the function is
registered, so a bad annotation fails at import, not on the first call.

Params arrive EJSON-decoded by the relay (``$date`` is an aware UTC ``datetime``,
``$binary`` is ``bytes``, ``{"$type": "Decimal"}`` a ``Decimal``, a registered custom type
whatever its decoder returns: ``django_app.ejson_types``). ``validate`` returns them as the
function receives them, and the only values it converts are the lossless spellings of a
decimal: where the annotation says ``Decimal`` (at any depth), an EJSON Decimal, an exact
decimal string (``"12.50"``, ``"-3"``, ``"1e-2"``) or a JSON number (an int exactly, a
float through its shortest repr: ``12.5`` is ``Decimal("12.5")``) all become a finite
``Decimal`` of at most ``MAX_DECIMAL_DIGITS`` digits. Nothing else is coerced: a string is
never an int, a number never a string, a string never a ``datetime``. What must not live
here: calling the function, or decoding EJSON (the relay's ``relay.protocol.ejson``).

Supported annotations: ``Any``/none (anything), ``str``, ``int`` (not bool), ``float``
(int or float, not bool), ``bool``, ``None``, ``bytes``, ``Decimal``, ``datetime``,
``list``/``list[T]``/``Sequence[T]``, ``dict``/``dict[str, T]``/``Mapping[str, T]``,
``tuple[T, ...]`` and ``tuple[A, B]`` (JSON arrays), unions (``str | None``; the first
member that accepts a value decides what the function gets), ``Literal[...]``,
``TypedDict`` (required and ``NotRequired`` keys; unknown keys are refused, like Meteor's
object patterns) and any other class (``isinstance``: a registered EJSON custom type).
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Final

from django_app.exceptions import MatchFailed
from relay.protocol.ejson import CustomType

__all__ = [
    "MAX_DECIMAL_DIGITS",
    "MAX_DECIMAL_TEXT",
    "REFUSED",
    "Converter",
    "ParamsValidator",
    "compile_hint",
    "storable",
]

#: The most digits a ``Decimal`` parameter has when written out in full, without an
#: exponent (``"12.50"`` has 4, ``"1e-2"`` is 0.01: 3, ``"1e100"`` has 101): a value
#: beyond any column or amount, refused before ``1e999999999`` reaches a query or a
#: ``quantize`` as a 500.
MAX_DECIMAL_DIGITS: Final = 100
#: The longest string a ``Decimal`` parameter accepts, refused before it is parsed.
MAX_DECIMAL_TEXT: Final = 128
# decimal.js syntax without NaN and Infinity, ASCII digits only: Python's Decimal() alone
# would also take "1_000", blanks around the number, "Inf", "sNaN" and non-ASCII digits.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class _Refused:
    __slots__ = ()

    def __repr__(self) -> str:
        return "REFUSED"


#: What a converter returns for a value its annotation does not accept.
REFUSED: Final = _Refused()

#: A compiled annotation: the value the function gets for a decoded EJSON value, or REFUSED.
Converter = Callable[[Any], Any]


def _any(value: Any) -> Any:
    return value


class ParamsValidator:
    """The compiled parameter checks of one ``(ctx, *params)`` function."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.signature = inspect.signature(func)
        parameters = list(self.signature.parameters.values())
        if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"{func.__qualname__} must take the context as its first argument")
        try:
            hints = typing.get_type_hints(func)
        except Exception as exc:
            raise TypeError(
                f"cannot resolve the annotations of {func.__qualname__}: {exc}"
            ) from exc
        self._converters: dict[str, Converter] = {}
        self._variadic: str | None = None
        for param in parameters[1:]:
            if param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is param.empty:
                raise TypeError(
                    f"{func.__qualname__}: keyword-only parameter {param.name!r} cannot be"
                    " passed by a DDP client; give it a default or make it positional"
                )
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                self._variadic = param.name
            hint = hints.get(param.name, Any)
            self._converters[param.name] = compile_hint(
                hint, where=f"{func.__qualname__}.{param.name}"
            )

    def validate(self, params: Sequence[Any]) -> tuple[Any, ...]:
        """The params as the function receives them (``func(ctx, *result)``), converted
        where the annotations say ``Decimal``; ``MatchFailed`` unless they fit the
        signature and its annotations, every value in them is ``storable`` and none is an
        EJSON type no decoder of this process knows (whatever the annotation, ``Any`` too).
        """
        if not _acceptable(params, custom=False):
            raise MatchFailed()
        try:
            bound = self.signature.bind(None, *params)
        except TypeError:
            raise MatchFailed() from None
        out: list[Any] = []
        for name, value in list(bound.arguments.items())[1:]:
            convert = self._converters.get(name, _any)
            for item in value if name == self._variadic else (value,):
                converted = convert(item)
                if converted is REFUSED:
                    raise MatchFailed()
                out.append(converted)
        return tuple(out)


def storable(value: Any) -> bool:
    """Whether a decoded parameter value can go to PostgreSQL and back to a client.

    Refused, at any depth (list items, object keys and values): strings with a NUL (no
    PostgreSQL text can hold one) or an unpaired surrogate (no UTF-8 can encode one), and
    non-finite numbers (EJSON's ``$InfNaN``; a ``Decimal`` NaN or infinity). Such values
    would otherwise pass the type checks and fail deep in the database as a 500.
    """
    return _acceptable(value, custom=True)


def _acceptable(value: Any, *, custom: bool) -> bool:
    """``storable``, and with ``custom`` False no ``CustomType`` either: the relay's value
    for an EJSON type that no registered decoder turned into a Python object."""
    for v in _leaves(value):
        if isinstance(v, str):
            if "\x00" in v or not _utf8(v):
                return False
        elif isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, Decimal):
            if not v.is_finite():
                return False
        elif not custom and isinstance(v, CustomType):
            return False
    return True


def _leaves(value: Any) -> Iterator[Any]:
    """Every value inside ``value`` that is not a dict, list or tuple, keys included."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
        else:
            yield v


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def compile_hint(hint: Any, *, where: str = "annotation") -> Converter:
    """Compile a type hint into a converter; unsupported hints raise ``TypeError``."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return _any
    if hint is None or hint is type(None):
        return lambda v: v if v is None else REFUSED
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return compile_hint(args[0], where=where)
    if origin is typing.Union or origin is types.UnionType:
        return _union([compile_hint(arg, where=where) for arg in args])
    if origin is typing.Literal:
        allowed = [(type(a), a) for a in args]
        return lambda v: v if (type(v), v) in allowed else REFUSED
    if typing.is_typeddict(hint):
        return _typeddict(hint, where)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin in (list, collections.abc.Sequence) or hint in (list, collections.abc.Sequence):
        return _array(compile_hint(args[0], where=where) if args else _any)
    if origin is tuple or hint is tuple:
        return _tuple(args, where)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON object keys are strings; use dict[str, ...]")
        return _object(compile_hint(args[1], where=where) if args else _any)
    if origin is None and isinstance(hint, type):
        return lambda v: v if isinstance(v, hint) else REFUSED
    raise TypeError(f"{where}: unsupported annotation {hint!r} for DDP parameters")


def _union(options: list[Converter]) -> Converter:
    def convert(v: Any) -> Any:
        for option in options:
            converted = option(v)
            if converted is not REFUSED:
                return converted
        return REFUSED

    return convert


def _str(v: Any) -> Any:
    return v if isinstance(v, str) else REFUSED


def _int(v: Any) -> Any:
    return v if isinstance(v, int) and not isinstance(v, bool) else REFUSED


def _float(v: Any) -> Any:
    return v if isinstance(v, int | float) and not isinstance(v, bool) else REFUSED


def _bool(v: Any) -> Any:
    return v if isinstance(v, bool) else REFUSED


def _bytes(v: Any) -> Any:
    return v if isinstance(v, bytes) else REFUSED


def _datetime(v: Any) -> Any:
    # Only an EJSON $date: Meteor's check(Date) refuses a string too.
    return v if isinstance(v, dt.datetime) else REFUSED


def _decimal(v: Any) -> Any:
    """An EJSON Decimal, an exact decimal string or a JSON number, as a bounded finite
    ``Decimal``; never a bool, a blank-padded string, NaN or an infinity."""
    if isinstance(v, Decimal):
        value = v
    elif isinstance(v, str):
        if len(v) > MAX_DECIMAL_TEXT or _DECIMAL_TEXT.fullmatch(v) is None:
            return REFUSED
        try:
            value = Decimal(v)
        except ArithmeticError:  # an exponent beyond what the decimal module holds
            return REFUSED
    elif isinstance(v, bool):
        return REFUSED
    elif isinstance(v, int):
        value = Decimal(v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            return REFUSED
        # repr() is the shortest text that reads back as this double, the digits a JS
        # client wrote: Decimal(12.1) itself would be 12.09999999999999964472863211...
        value = Decimal(repr(v))
    else:
        return REFUSED
    if not value.is_finite() or _digits_written_out(value) > MAX_DECIMAL_DIGITS:
        return REFUSED
    return value


def _digits_written_out(value: Decimal) -> int:
    """How many digits ``format(value, "f")`` writes (``1E+2`` is ``100``: 3; ``1E-2`` is
    ``0.01``: 3), computed from the exponent, never by writing out a billion digits."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: checked by the caller
    # A zero coefficient is (0,) and is written "0" whatever a positive exponent says.
    whole = 1 if digits == (0,) else max(len(digits) + exponent, 1)
    return whole + max(-exponent, 0)


_SCALARS: dict[Any, Converter] = {
    str: _str,
    int: _int,
    float: _float,
    bool: _bool,
    bytes: _bytes,
    Decimal: _decimal,
    dt.datetime: _datetime,
}


def _array(item: Converter) -> Converter:
    def convert(v: Any) -> Any:
        if not isinstance(v, list):
            return REFUSED
        out = []
        for x in v:
            converted = item(x)
            if converted is REFUSED:
                return REFUSED
            out.append(converted)
        return out

    return convert


def _object(value_converter: Converter) -> Converter:
    def convert(v: Any) -> Any:
        if not isinstance(v, dict):
            return REFUSED
        out = {}
        for key, x in v.items():
            if not isinstance(key, str):
                return REFUSED
            converted = value_converter(x)
            if converted is REFUSED:
                return REFUSED
            out[key] = converted
        return out

    return convert


def _tuple(args: tuple[Any, ...], where: str) -> Converter:
    if not args:
        return lambda v: v if isinstance(v, list) else REFUSED
    if len(args) == 2 and args[1] is Ellipsis:
        return _array(compile_hint(args[0], where=where))
    items = [compile_hint(a, where=where) for a in args]

    def convert(v: Any) -> Any:
        if not isinstance(v, list) or len(v) != len(items):
            return REFUSED
        out = [c(x) for c, x in zip(items, v, strict=True)]
        return REFUSED if any(x is REFUSED for x in out) else out

    return convert


def _typeddict(hint: Any, where: str) -> Converter:
    hints = typing.get_type_hints(hint)
    converters = {key: compile_hint(tp, where=f"{where}.{key}") for key, tp in hints.items()}
    # Python 3.11 computes __required_keys__ before string annotations are evaluated, so
    # NotRequired[...] under `from __future__ import annotations` is missed: re-read it.
    required = set(hint.__required_keys__)
    for key, tp in typing.get_type_hints(hint, include_extras=True).items():
        origin = typing.get_origin(tp)
        if origin is typing.NotRequired:
            required.discard(key)
        elif origin is typing.Required:
            required.add(key)

    def convert(v: Any) -> Any:
        if not isinstance(v, dict) or not required <= v.keys() or not v.keys() <= converters.keys():
            return REFUSED
        out = {}
        for key, x in v.items():
            converted = converters[key](x)
            if converted is REFUSED:
                return REFUSED
            out[key] = converted
        return out

    return convert
