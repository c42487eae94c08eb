"""DDP methods: ``@method("name")`` registers a function as a Meteor method.

Job: hold a method's name, function and compiled parameter checks, and run it with a
``MethodContext``. The function receives ``(ctx, *params)``; wrong argument counts or
types are refused with 400 "Match failed" before it runs. Raise ``DDPError`` for an error
the client may see; any other exception is logged by the relay and sent as 500. An
``async def`` function is run to completion in the caller's thread, connection and
transaction (``django_app.coroutines``).

Where it sits: above the registry (``@method`` adds to the ``registry=`` it is given,
default the project's ``django_app.registries.registry``), which stores a ``Method`` only
as a ``RegisteredMethod``. What must not live here: transactions, the current-invocation
context variable or error translation (``django_app.backend`` wraps every call), or the
collection mutators (``django_app.mutator``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from django_app import coroutines
from django_app.conf import ddp_settings
from django_app.registries import Registry
from django_app.registries import registry as default_registry
from django_app.signature import ParamsValidator

if TYPE_CHECKING:
    from django_app.context import MethodContext

__all__ = ["Method", "method"]

F = TypeVar("F", bound=Callable[..., Any])


class Method:
    """A registered DDP method.

    ``atomic`` overrides ``settings.DDP_ATOMIC_METHODS`` for this method: True runs it in
    ``transaction.atomic()`` (a failing method writes nothing), False leaves transactions
    to the function.
    """

    def __init__(
        self, name: str, func: Callable[..., Any] | None = None, *, atomic: bool | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError("a method name must be a non-empty string")
        self.name = name
        self.func = func
        self.atomic = atomic
        self._validator = ParamsValidator(func) if func is not None else None

    @property
    def is_atomic(self) -> bool:
        """Whether the backend wraps this method in ``transaction.atomic()``."""
        return ddp_settings.ATOMIC_METHODS if self.atomic is None else self.atomic

    def run(self, ctx: MethodContext, params: Sequence[Any]) -> Any:
        """Validate ``params`` and call the function (awaited, if it is ``async def``);
        returns its result."""
        if self.func is None or self._validator is None:
            raise NotImplementedError(f"{type(self).__name__} must override run()")
        return coroutines.call(self.func, ctx, *self._validator.validate(params))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def method(
    name: str, *, atomic: bool | None = None, registry: Registry | None = None
) -> Callable[[F], F]:
    """Decorator: register ``func(ctx, *params)`` (a function or an ``async def`` one)
    as the DDP method ``name``.

    ::

        @method("books.rename")
        def rename(ctx: MethodContext, book_id: str, title: str) -> None: ...
    """

    def decorator(func: F) -> F:
        target = registry if registry is not None else default_registry
        target.add_method(Method(name, func, atomic=atomic))
        return func

    return decorator
