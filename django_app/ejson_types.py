"""Custom EJSON types in DDP parameters: ``ejson_type(name, decode)``, Meteor's ``EJSON.addType``.

Job: let a project name an EJSON custom type, so that a client's ``{"$type": name,
"$value": v}`` reaches a method or a publication as ``decode(v)``, an object of the
project's own class; a parameter annotated with that class then accepts it
(``django_app.signature`` checks any class with ``isinstance``).

Where it sits: a leaf. The relay decodes ``params`` while it parses a message, before any
Django code runs (``relay.protocol.ejson``), so a registration goes into the relay's table
of decoders, in whatever process makes it: call ``ejson_type`` at import of an app's
``ddp.py``, which every relay worker imports when it loads the backend. A decoder error
never reaches the relay as anything but an EJSON error (the client gets ``Parse error``, as
from Meteor). What must not live here: checking values against annotations
(``django_app.signature``), or encoding results (return ``relay.protocol.ejson.CustomType``
to send one).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from relay.backend import ClientError
from relay.protocol import ejson
from relay.protocol.errors import EJSONError

__all__ = ["ejson_type"]

logger = logging.getLogger(__name__)

# name -> the project's decoder. The relay's table holds, per name, a dispatcher that looks
# the decoder up here: the relay's registration is once per process and name, this one
# may be made again by a module imported twice.
_decoders: dict[str, Callable[[Any], Any]] = {}
_lock = threading.Lock()


def ejson_type(name: str, decode: Callable[[Any], Any]) -> None:
    """Decode ``{"$type": name, "$value": v}`` in DDP params to ``decode(v)``.

    ``decode`` gets the raw JSON ``$value`` (plain JSON: a custom type's value is not
    EJSON-decoded, as in Meteor) and returns the object the function receives. It refuses
    a bad value by raising: ``ValueError``, ``TypeError``, ``LookupError``,
    ``ArithmeticError`` or a ``DDPError`` give the client ``Parse error: invalid value for
    EJSON type <name>: <message>``; any other exception is a bug of the decoder, logged
    here, and gives the client the same error without the message.

    A name is registered once per process: ``TypeError`` for a name that is not a
    non-empty string or a ``decode`` that is not callable, ``ValueError`` for a name
    already taken (``oid`` and ``Decimal`` are built in) by another decoder. Registering
    the same decoder again (same module and qualified name: a module imported twice) is a
    no-op that keeps the newer function.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("an EJSON type name must be a non-empty string")
    if not callable(decode):
        raise TypeError(f"the decoder of EJSON type {name!r} must be callable")
    with _lock:
        current = _decoders.get(name)
        if current is None:
            # Raises ValueError for a built-in type or one registered with the relay directly.
            ejson.register_type(name, functools.partial(_dispatch, name))
        elif _origin(current) != _origin(decode):
            raise ValueError(f"EJSON type {name!r} is already registered, by {_origin(current)}")
        _decoders[name] = decode


def _origin(decode: Callable[[Any], Any]) -> str:
    module = getattr(decode, "__module__", None)
    qualname = getattr(decode, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(decode)


def _dispatch(name: str, value: Any) -> Any:
    decode = _decoders[name]
    try:
        return decode(value)
    except (EJSONError, ValueError, TypeError, LookupError, ArithmeticError):
        raise  # the relay turns these into "Parse error: invalid value for EJSON type ..."
    except ClientError as exc:
        raise EJSONError(f"invalid value for EJSON type {name}: {exc.reason or exc.error}") from exc
    except Exception as exc:
        # Not the client's fault, and its text may say more than a client should read.
        logger.exception("the decoder of EJSON type %r failed", name)
        raise EJSONError(f"invalid value for EJSON type {name}") from exc
