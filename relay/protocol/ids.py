"""Document ids on the wire: Meteor's ``mongo-id`` ``idStringify`` / ``idParse``.

Layer: L1 (pure, stdlib only). The ``id`` of ``added`` / ``changed`` / ``removed`` is a string
encoding of the document's ``_id`` (reference ``ddp-protocol.md`` section 2.11). Without it a
string ``_id`` that looks like an ObjectID would become an ObjectID on the client, and ``"-x"``
would become ``"x"``.

It must not do I/O or know about collections; it only maps one id value to text and back.

====================================  ====================
``_id``                               wire ``id``
====================================  ====================
ObjectID                              its 24 hex chars
str: 24 lowercase hex, or starting    ``"-" + str``
with ``-``, ``~`` or ``{``
``""``                                ``""``
any other str                         unchanged
number, True, False, None (null)      ``"~" + JSON``
(JS ``undefined``)                    ``"-"``, parsed to None
====================================  ====================
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import NoReturn, TypeAlias

from relay.protocol.ejson import ObjectID, format_js_number
from relay.protocol.errors import EJSONError

__all__ = ["DocumentId", "id_parse", "id_stringify", "session_tag"]

#: The Python values a Meteor document ``_id`` can take.
DocumentId: TypeAlias = str | int | float | bool | ObjectID | None

# Meteor's _looksLikeObjectID: lowercase only, so "ABC..." (24 chars) is an ordinary string.
_OID_RE = re.compile(r"[0-9a-f]{24}")


def id_stringify(value: DocumentId) -> str:
    """Encode a document ``_id`` for the wire, as Meteor's ``MongoID.idStringify``.

    ``None`` is JSON ``null`` and gives ``"~null"`` (JS ``undefined``, which Python lacks, would
    give ``"-"``). Raises ``TypeError`` for other types, as Meteor throws for objects, and
    ``ValueError`` for NaN and infinities, which JS would send as ``"~null"`` and so lose.
    """
    if isinstance(value, ObjectID):
        return value.hex
    if isinstance(value, str):
        if value == "":
            return value
        # Escape whatever idParse would otherwise read as an ObjectID, a JSON value, or an
        # already escaped string.
        if value[0] in "-~{" or _OID_RE.fullmatch(value):
            return "-" + value
        return value
    if value is None:
        return "~null"
    if isinstance(value, bool):
        return "~true" if value else "~false"
    if isinstance(value, int):
        return "~" + str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a document id cannot be {value!r}")
        # JSON.stringify(5.0) is "5": the wire must match what a JS server would send.
        return "~" + format_js_number(value)
    raise TypeError(f"a document id cannot be a {type(value).__qualname__}")


def id_parse(wire: str) -> DocumentId:
    """Decode a wire ``id`` into the document ``_id``, as Meteor's ``MongoID.idParse``.

    ``"-"`` (JS ``undefined``) gives None. Raises :class:`EJSONError` for text that
    :func:`id_stringify` never produces: a ``~`` that is not followed by a finite number,
    ``true``, ``false`` or ``null``, and an unescaped leading ``{``.
    """
    if wire == "":
        return wire
    if wire == "-":
        return None
    first = wire[0]
    if first == "-":
        return wire[1:]
    if first == "~":
        return _parse_scalar(wire)
    if first == "{":
        # Meteor's idParse would hand this back as a plain string, but idStringify always
        # escapes a leading "{", so only a broken or hostile peer sends it.
        raise EJSONError(f"unescaped '{{' at the start of document id {wire[:40]!r}")
    if _OID_RE.fullmatch(wire):
        return ObjectID(wire)
    return wire


def _reject_constant(name: str) -> NoReturn:
    raise EJSONError(f"invalid document id number {name}")


def _parse_scalar(wire: str) -> DocumentId:
    try:
        value = json.loads(wire[1:], parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise EJSONError(f"invalid JSON in document id {wire[:40]!r}") from None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    # JSON.parse would accept strings, arrays and objects (and "1e400" -> Infinity), but no
    # id_stringify output has them.
    raise EJSONError(f"document id {wire[:40]!r} is not a number, boolean or null")


def session_tag(session_id: str | None) -> str:
    """How logs name a DDP session: a short digest, never the id itself.

    A session id is what a reconnecting client presents to get its session back, so it
    is a credential: anyone who reads it in a log could resume the session. The tag is
    stable, so one session's log lines still go together.
    """
    if session_id is None:
        return "-"
    return "s:" + hashlib.sha256(session_id.encode()).hexdigest()[:10]
