"""Validate DDP ``params`` against a publication's or method's Python signature.

Job: Meteor's ``check()``, written as type hints. A function registered with ``@method``
or ``@publish`` takes ``(ctx, *params)``; its signature gives the accepted count and its
annotations the accepted types. Anything else is refused with 400 "Match failed", the
exact error a Meteor server sends. The checks are compiled once, when the function is
registered, so a bad annotation fails at import, not on the first call. What must not
live here: calling the function, or coercing values (a string is never turned into an
int: clients must send the right JSON type).

Supported annotations: ``Any``/none (anything), ``str``, ``int`` (not bool), ``float``
(int or float, not bool), ``bool``, ``None``, ``bytes``, ``Decimal``, ``datetime``,
``list``/``list[T]``/``Sequence[T]``, ``dict``/``dict[str, T]``/``Mapping[str, T]``,
``tuple[T, ...]`` and ``tuple[A, B]`` (JSON arrays), unions (``str | None``),
``Literal[...]``, ``TypedDict`` (required and ``NotRequired`` keys; unknown keys are
refused, like Meteor's object patterns) and any other class (``isinstance``).
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from django_app.exceptions import MatchFailed

__all__ = ["Checker", "ParamsValidator", "compile_hint", "storable"]

#: A compiled check: does this decoded EJSON value match the annotation?
Checker = Callable[[Any], bool]


def _any(value: Any) -> bool:
    return True


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
        self._checks: dict[str, Checker] = {}
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
            self._checks[param.name] = compile_hint(hint, where=f"{func.__qualname__}.{param.name}")

    def validate(self, params: Sequence[Any]) -> None:
        """Raise ``MatchFailed`` unless ``params`` fit the signature and its annotations,
        and every value in them is ``storable`` (whatever the annotation, ``Any`` too)."""
        if not storable(params):
            raise MatchFailed()
        try:
            bound = self.signature.bind(None, *params)
        except TypeError:
            raise MatchFailed() from None
        for name, value in list(bound.arguments.items())[1:]:
            check = self._checks.get(name, _any)
            values = value if name == self._variadic else (value,)
            if not all(check(v) for v in values):
                raise MatchFailed()


def storable(value: Any) -> bool:
    """Whether a decoded parameter value can go to PostgreSQL and back to a client.

    Refused, at any depth (list items, object keys and values): strings with a NUL (no
    PostgreSQL text can hold one) or an unpaired surrogate (no UTF-8 can encode one), and
    non-finite numbers (EJSON's ``$InfNaN``; a ``Decimal`` NaN or infinity). Such values
    would otherwise pass the type checks and fail deep in the database as a 500.
    """
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v or not _utf8(v):
                return False
        elif isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, Decimal):
            if not v.is_finite():
                return False
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return True


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def compile_hint(hint: Any, *, where: str = "annotation") -> Checker:
    """Compile a type hint into a checker; unsupported hints raise ``TypeError``."""
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return _any
    if hint is None or hint is type(None):
        return lambda v: v is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return compile_hint(args[0], where=where)
    if origin is typing.Union or origin is types.UnionType:
        options = [compile_hint(arg, where=where) for arg in args]
        return lambda v: any(check(v) for check in options)
    if origin is typing.Literal:
        allowed = [(type(a), a) for a in args]
        return lambda v: (type(v), v) in allowed
    if typing.is_typeddict(hint):
        return _typeddict(hint, where)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin in (list, collections.abc.Sequence) or hint in (list, collections.abc.Sequence):
        item = compile_hint(args[0], where=where) if args else _any
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is tuple or hint is tuple:
        return _tuple(args, where)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        if args and args[0] is not str:
            raise TypeError(f"{where}: JSON object keys are strings; use dict[str, ...]")
        value_check = compile_hint(args[1], where=where) if args else _any
        return lambda v: (
            isinstance(v, dict)
            and all(isinstance(k, str) for k in v)
            and all(value_check(x) for x in v.values())
        )
    if origin is None and isinstance(hint, type):
        return lambda v: isinstance(v, hint)
    raise TypeError(f"{where}: unsupported annotation {hint!r} for DDP parameters")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _float(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_SCALARS: dict[Any, Checker] = {
    str: lambda v: isinstance(v, str),
    int: _int,
    float: _float,
    bool: lambda v: isinstance(v, bool),
    bytes: lambda v: isinstance(v, bytes),
    Decimal: lambda v: isinstance(v, Decimal),
    dt.datetime: lambda v: isinstance(v, dt.datetime),
}


def _tuple(args: tuple[Any, ...], where: str) -> Checker:
    if not args:
        return lambda v: isinstance(v, list)
    if len(args) == 2 and args[1] is Ellipsis:
        item = compile_hint(args[0], where=where)
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    items = [compile_hint(a, where=where) for a in args]
    return lambda v: (
        isinstance(v, list)
        and len(v) == len(items)
        and all(c(x) for c, x in zip(items, v, strict=True))
    )


def _typeddict(hint: Any, where: str) -> Checker:
    hints = typing.get_type_hints(hint)
    checks = {key: compile_hint(tp, where=f"{where}.{key}") for key, tp in hints.items()}
    # Python 3.11 computes __required_keys__ before string annotations are evaluated, so
    # NotRequired[...] under `from __future__ import annotations` is missed: re-read it.
    required = set(hint.__required_keys__)
    for key, tp in typing.get_type_hints(hint, include_extras=True).items():
        origin = typing.get_origin(tp)
        if origin is typing.NotRequired:
            required.discard(key)
        elif origin is typing.Required:
            required.add(key)

    def check(v: Any) -> bool:
        if not isinstance(v, dict) or not required <= v.keys() or not v.keys() <= checks.keys():
            return False
        return all(checks[k](x) for k, x in v.items())

    return check
