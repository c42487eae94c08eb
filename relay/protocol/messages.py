"""DDP messages: inbound text to typed client messages, outbound messages to text.

Layer: pure core. Validation follows Meteor's server (``reference/ddp-protocol.md`` 1.2,
1.8 and 2.4-2.5) with the error ``reason`` strings Meteor uses; every rejection raises a
``RemoteProtocolError`` carrying the ``error`` reply to send, so a bad message never
crashes a session. Only ``fields``, ``params`` and ``result`` go through EJSON, as in
Meteor's ``parseDDP``/``stringifyDDP``.

Must not: do I/O, keep state (that is ``connection.py``), or know about sessions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from relay.protocol import ejson
from relay.protocol.errors import EJSONError, RemoteProtocolError

#: DDP versions this server speaks, most preferred first (Meteor's SUPPORTED_DDP_VERSIONS).
SUPPORTED_VERSIONS: tuple[str, ...] = ("1", "pre2", "pre1")

#: How much of an unparseable frame is echoed back in ``offendingMessage``.
_ECHO_LIMIT = 1024


@dataclass(frozen=True, slots=True)
class Connect:
    version: str
    support: tuple[str, ...]
    #: The session id the client had before (sent on reconnect), if any.
    session: str | None = None
    #: Messages received on that session, ping/pong excluded (Meteor >= 3.5 only).
    received_count: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: Any = None


@dataclass(frozen=True, slots=True)
class Pong:
    id: Any = None


@dataclass(frozen=True, slots=True)
class Sub:
    id: str
    name: str
    params: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Unsub:
    #: Not type-checked, as in Meteor: it is echoed back in ``nosub``.
    id: Any = None


@dataclass(frozen=True, slots=True)
class Method:
    id: str
    method: str
    params: tuple[Any, ...] = ()
    random_seed: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Meteor >= 3.5 announces a deliberate disconnect (no resume grace period)."""


ClientMessage = Connect | Ping | Pong | Sub | Unsub | Method | Disconnect


def error(reason: str, offending: Any = None, *, with_offending: bool = True) -> dict[str, Any]:
    """A top-level DDP ``error`` message; the offending message is echoed as Meteor does,
    but at most ``_ECHO_LIMIT`` characters of it (a larger one is echoed as the start of its
    JSON text), so a client cannot make the server send back what it sent, at any size."""
    msg: dict[str, Any] = {"msg": "error", "reason": reason}
    if with_offending and offending is not None:
        msg["offendingMessage"] = _echo(offending)
    return msg


def _echo(offending: Any) -> Any:
    if isinstance(offending, str):
        return offending[:_ECHO_LIMIT]
    try:
        text = json.dumps(offending, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return offending if len(text) <= _ECHO_LIMIT else text[:_ECHO_LIMIT]


def bad(reason: str, offending: Any = None) -> RemoteProtocolError:
    """The RemoteProtocolError for a message the session answers with ``error`` and survives."""
    return RemoteProtocolError(reason, error(reason, offending))


def parse_json(text: str) -> dict[str, Any]:
    """Parse one DDP frame into a JSON object, or raise with Meteor's ``Bad request``."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        raise bad("Bad request", text[:_ECHO_LIMIT]) from None
    if not isinstance(obj, dict):
        # Meteor answers arrays the same way (typeof [] is "object" but it has no msg).
        raise bad("Bad request", obj if isinstance(obj, list) else text[:_ECHO_LIMIT])
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    # ``1e400`` is valid JSON but overflows to infinity, which no reply could carry back
    # (EJSON writes infinities as ``{"$InfNaN": 1}``): a bad request, answered as such.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:32]} overflows a double")
    return value


def _params(obj: dict[str, Any], key: str = "params") -> tuple[Any, ...] | None:
    """EJSON-decoded params, or None when present but not an array."""
    raw = obj.get(key, [])
    if not isinstance(raw, list):
        return None
    return tuple(ejson.from_json_value(raw))


def parse_client_message(obj: dict[str, Any], version: str | None) -> ClientMessage:
    """Validate one parsed frame as a client message of DDP ``version``.

    ``version`` is None before ``connect``. Raises RemoteProtocolError with the reply.
    """
    kind = obj.get("msg")
    if not isinstance(kind, str):
        raise bad("Bad request", obj)
    try:
        if kind == "connect":
            return _connect(obj)
        if kind == "sub":
            return _sub(obj)
        if kind == "unsub":
            return Unsub(obj.get("id"))
        if kind == "method":
            return _method(obj)
        if kind in ("ping", "pong") and version != "pre1":
            return Ping(obj.get("id")) if kind == "ping" else Pong(obj.get("id"))
        if kind == "disconnect":
            return Disconnect()
    except EJSONError as exc:
        raise bad(f"Parse error: {exc.reason}", obj) from None
    raise bad("Bad request", obj)


def _connect(obj: dict[str, Any]) -> Connect:
    version = obj.get("version")
    support = obj.get("support")
    if (
        not isinstance(version, str)
        or not isinstance(support, list)
        or not all(isinstance(v, str) for v in support)
        or version not in support
    ):
        # Meteor answers ``failed`` with its own first preference, then closes.
        raise RemoteProtocolError(
            "Bad connect", {"msg": "failed", "version": SUPPORTED_VERSIONS[0]}, close=True
        )
    session = obj.get("session")
    count = obj.get("receivedCount")
    return Connect(
        version=version,
        support=tuple(support),
        session=session if isinstance(session, str) else None,
        received_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
    )


def negotiate(connect: Connect) -> str:
    """The version to speak: the client's first supported choice we also support."""
    for candidate in connect.support:
        if candidate in SUPPORTED_VERSIONS:
            return candidate
    return SUPPORTED_VERSIONS[0]


def _sub(obj: dict[str, Any]) -> Sub:
    sub_id, name = obj.get("id"), obj.get("name")
    params = _params(obj)
    if not isinstance(sub_id, str) or not isinstance(name, str) or params is None:
        raise bad("Malformed subscription", obj)
    return Sub(sub_id, name, params)


def _method(obj: dict[str, Any]) -> Method:
    method_id, name, seed = obj.get("id"), obj.get("method"), obj.get("randomSeed")
    params = _params(obj)
    if (
        not isinstance(method_id, str)
        or not isinstance(name, str)
        or params is None
        or (seed is not None and not isinstance(seed, str))
    ):
        raise bad("Malformed method invocation", obj)
    return Method(method_id, name, params, seed)


# -- outbound -----------------------------------------------------------------------------


def encode(msg: dict[str, Any]) -> str:
    """Serialize a server message; ``fields`` and ``result`` are EJSON-converted."""
    out = msg
    if "fields" in msg or "result" in msg:
        out = dict(msg)
        if "fields" in out:
            out["fields"] = ejson.to_json_value(out["fields"])
        if "result" in out:
            out["result"] = ejson.to_json_value(out["result"])
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def connected(session_id: str) -> dict[str, Any]:
    return {"msg": "connected", "session": session_id}


def pong(ping_id: Any) -> dict[str, Any]:
    return {"msg": "pong"} if ping_id is None else {"msg": "pong", "id": ping_id}


def ping() -> dict[str, Any]:
    return {"msg": "ping"}


def ready(sub_ids: list[str]) -> dict[str, Any]:
    return {"msg": "ready", "subs": sub_ids}


def nosub(sub_id: Any, err: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"msg": "nosub"}
    if sub_id is not None:
        msg["id"] = sub_id
    if err is not None:
        msg["error"] = err
    return msg


def result(method_id: str, value: Any = None, err: dict[str, Any] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"msg": "result", "id": method_id}
    if err is not None:
        msg["error"] = err
    elif value is not None:
        msg["result"] = value
    return msg


def updated(method_ids: list[str]) -> dict[str, Any]:
    return {"msg": "updated", "methods": method_ids}


def meteor_error(
    error_code: str | int, reason: str | None = None, details: Any = None
) -> dict[str, Any]:
    """A Meteor.Error object as Meteor serializes it (reference 1.8), key order included."""
    err: dict[str, Any] = {"isClientSafe": True, "error": error_code}
    if reason is not None:
        err["reason"] = reason
    if details is not None:
        err["details"] = details
    err["message"] = f"{reason} [{error_code}]" if reason is not None else f"[{error_code}]"
    err["errorType"] = "Meteor.Error"
    return err


INTERNAL_ERROR = meteor_error(500, "Internal server error")
